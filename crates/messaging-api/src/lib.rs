//! Server side of the messaging API: wire types, response enums, the `MessagingApi` trait and
//! the poem-openapi glue, all generated from `openapi/messaging.yaml` by `cargo xtask codegen`.
//!
//! Hand-written beside it: [`SseStream`], the `text/event-stream` body the generated responses
//! use, whose events are serialised once and shared by every stream; and [`patterns`], the
//! `pattern` validator the generated code uses, which compiles each pattern once.
//!
//! This crate knows HTTP and JSON and nothing of storage.

mod event_stream;
#[rustfmt::skip]
mod generated;
mod patterns;

pub use event_stream::{SseEvent, SseStream};
pub use generated::*;

pub mod json;
pub use json::Json;
