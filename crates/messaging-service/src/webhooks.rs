//! Webhooks for store backends (brief section 9): endpoints, and the delivery of every event of
//! an endpoint's store, mode and types as a signed POST, retried on a fixed schedule.
//!
//! - `endpoints`: the six operations (secret key only).
//! - `signing`: Standard Webhooks 1.0 signatures and the `whsec_` secret form.
//! - `outgoing`: the HTTP client that refuses addresses the endpoint's mode may not reach.
//! - `dispatcher`: reads the event feed and queues one delivery per event and matching
//!   endpoint (the feed is the source: every event that reaches a stream reaches endpoints).
//! - `worker`: claims due deliveries (one replica per attempt), attempts, records, retries.
//!
//! Storage: `webhook_dispatch_positions` (how far the feed was dispatched), `webhook_endpoints`, `webhook_deliveries` (one per event and endpoint, unique, with
//! the exact body sent on every attempt) and `webhook_attempts` (every attempt, numbered).

mod dispatcher;
mod endpoints;
mod outgoing;
mod signing;
mod worker;

/// Names of the webhook metrics, which the server describes and buckets.
pub mod metrics {
    pub use super::dispatcher::CREATED_METRIC;
    pub use super::worker::{ATTEMPT_DURATION_METRIC, ATTEMPTS_METRIC, COMPLETED_METRIC};
}
