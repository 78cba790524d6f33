//! Settings of the service: the server secret, token lifetimes and how one-time codes travel.

/// How one-time codes reach customers.
#[derive(Debug, Clone, Default)]
pub enum OtpDelivery {
    /// Development default: the code is written to the server log (target `otp`).
    #[default]
    Log,
}

/// Settings of the service.
#[derive(Debug, Clone)]
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
        }
    }
}
