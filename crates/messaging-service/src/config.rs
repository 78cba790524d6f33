//! Settings of the service: the server secret, token lifetimes, how one-time codes travel and
//! how webhooks are delivered.

use std::time::Duration;

pub use crate::auth::{
    OtpChannel, OtpDelivery, OtpMessage, OtpOutbox, SmtpConfigError, SmtpSender,
};

/// Settings of the service.
#[derive(Clone)]
pub struct ServiceConfig {
    /// Secret that signs access tokens and cursors and keys the API key hashes. When absent, a
    /// random secret is generated once and kept in the database, so replicas share it.
    pub secret: Option<String>,
    /// Lifetime of an access token, in seconds.
    pub access_token_ttl_secs: i64,
    /// Lifetime of a refresh token, in seconds.
    pub refresh_token_ttl_secs: i64,
    /// Lifetime of a one-time code, in seconds.
    pub otp_ttl_secs: i64,
    /// Wrong guesses allowed per one-time code.
    pub otp_max_attempts: i32,
    /// How one-time codes are delivered.
    pub otp: OtpDelivery,
    /// Retention and timing of the event feed.
    pub events: crate::EventFeedSettings,
    /// How webhook deliveries are attempted and retried.
    pub webhooks: WebhookSettings,
    /// The most connections this process opens to PostgreSQL; one of them stays open for the
    /// event feed's `LISTEN`. Each replica opens its own pool, so the replicas together need
    /// this many times their number (PostgreSQL allows 100 connections by default). SQLite's
    /// connections are fixed: one writer, one checkpointer and two readers per core.
    pub postgres_max_connections: u32,
}

/// Connections of a process's PostgreSQL pool unless configured (sqlx's own default).
pub const DEFAULT_POSTGRES_MAX_CONNECTIONS: u32 = 10;

/// How the webhook worker attempts deliveries. The defaults are the production settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Delays before each retry after the first attempt; when they run out the delivery fails.
    pub retry_schedule: Vec<Duration>,
    /// Longest an attempt may take, connecting included; longer is a failed attempt.
    pub timeout: Duration,
    /// How often the worker looks for due deliveries it was not told about (retries, work
    /// dispatched by other replicas).
    pub poll_interval: Duration,
    /// Attempts running at once in this process.
    pub max_in_flight: usize,
    /// Attempts running at once to one endpoint in this process, so a slow receiver holds at
    /// most this many slots.
    pub max_in_flight_per_endpoint: usize,
}

/// The production retry schedule: first retry within 10 seconds, then minutes, then hours; the
/// last of eight attempts is about 28 hours after the first.
pub const WEBHOOK_RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(5 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
];

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry_schedule: WEBHOOK_RETRY_SCHEDULE.to_vec(),
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            max_in_flight: 64,
            max_in_flight_per_endpoint: 4,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            secret: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 60 * 60,
            otp_ttl_secs: 5 * 60,
            otp_max_attempts: 5,
            otp: OtpDelivery::Log,
            events: crate::EventFeedSettings::default(),
            webhooks: WebhookSettings::default(),
            postgres_max_connections: DEFAULT_POSTGRES_MAX_CONNECTIONS,
        }
    }
}

/// Never shows the secret.
impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("refresh_token_ttl_secs", &self.refresh_token_ttl_secs)
            .field("otp_ttl_secs", &self.otp_ttl_secs)
            .field("otp_max_attempts", &self.otp_max_attempts)
            .field("otp", &self.otp)
            .field("events", &self.events)
            .field("webhooks", &self.webhooks)
            .field("postgres_max_connections", &self.postgres_max_connections)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented schedule: first retry within 10 s, then minutes, then hours, and the
    /// last attempt more than a day after the first.
    #[test]
    fn the_production_retry_schedule_spans_more_than_a_day() {
        let schedule = WebhookSettings::default().retry_schedule;
        assert!(schedule[0] <= Duration::from_secs(10));
        assert!(schedule[1] >= Duration::from_secs(60) && schedule[1] < Duration::from_secs(3600));
        assert!(schedule.windows(2).all(|w| w[0] <= w[1]), "delays grow");
        let total: Duration = schedule.iter().sum();
        assert!(total > Duration::from_secs(24 * 60 * 60), "{total:?}");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let config = ServiceConfig {
            secret: Some("hunter2".to_owned()),
            ..ServiceConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
