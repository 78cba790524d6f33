//! Server side of the messaging API: wire types, response enums, the `MessagingApi` trait and
//! the poem-openapi glue, all generated from `openapi/messaging.yaml` by `cargo xtask codegen`.
//!
//! This crate knows HTTP and JSON and nothing of storage.

#[rustfmt::skip]
mod generated;

pub use generated::*;

pub mod json;
pub use json::Json;
