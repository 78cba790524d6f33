//! Settings of the HTTP layer: body and header sizes and rate limits. The binary fills them from flags and
//! environment; tests and benchmarks build them directly (for example without rate limits).

use std::{num::NonZeroU32, time::Duration};

use crate::rate_limit::RedisBudgets;

/// Default largest request body: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Default largest total size of the request headers: 32 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

/// How the HTTP layer treats requests before they reach the API.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest total size of the request headers accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Rate limits; `None` turns rate limiting (and the failed-login limit) off.
    pub rate_limits: Option<RateLimitSettings>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            rate_limits: Some(RateLimitSettings::default()),
        }
    }
}

impl HttpSettings {
    /// The defaults without rate limits: for tests and benchmarks.
    pub fn without_rate_limits() -> Self {
        Self {
            rate_limits: None,
            ..Self::default()
        }
    }
}

/// The budgets and the guessing limit (`rate_limit` has the rules of who counts against what).
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Requests per second refilled into each budget of a customer, an API key or an address.
    pub per_second: NonZeroU32,
    /// Requests each of those budgets holds at once.
    pub burst: NonZeroU32,
    /// One-time codes per minute refilled into the budget of one email or phone.
    pub codes_per_minute: NonZeroU32,
    /// Codes one email or phone may be sent at once.
    pub codes_burst: NonZeroU32,
    /// Failed logins (password or code) allowed per target account within the window.
    pub failed_logins: NonZeroU32,
    /// The sliding window failed logins are counted in.
    pub failed_login_window: Duration,
    /// Where budgets and failed logins are shared by all replicas; `None`: budgets in this
    /// process, failed logins in the database.
    pub redis: Option<RedisBudgets>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(50).expect("50 is not zero"),
            burst: NonZeroU32::new(100).expect("100 is not zero"),
            codes_per_minute: NonZeroU32::new(5).expect("5 is not zero"),
            codes_burst: NonZeroU32::new(5).expect("5 is not zero"),
            failed_logins: NonZeroU32::new(10).expect("10 is not zero"),
            failed_login_window: Duration::from_secs(15 * 60),
            redis: None,
        }
    }
}
