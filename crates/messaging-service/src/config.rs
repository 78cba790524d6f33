//! Settings of the service: the server secret, token lifetimes and how one-time codes travel.

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
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
