//! SeaORM entities: the rows the service stores. Never wire types; `wire` converts explicitly.

pub mod api_key;
pub mod channel;
pub mod channel_member;
pub mod customer;
pub mod event;
pub mod event_prune_mark;
pub mod idempotency_key;
pub mod login_failure;
pub mod message;
pub mod message_edit;
pub mod message_reaction;
pub mod otp_code;
pub mod refresh_token;
pub mod server_secret;
pub mod store;
pub mod thread;
pub mod thread_subscriber;
pub mod webhook_attempt;
pub mod webhook_delivery;
pub mod webhook_dispatch_position;
pub mod webhook_endpoint;
