//! Settings of the HTTP layer: body and header sizes and rate limits. The binary fills them from flags and
//! environment; tests and benchmarks build them directly (for example without rate limits).

use std::num::NonZeroU32;

/// Default largest request body: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Default largest total size of the request headers: 32 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

/// How the HTTP layer treats requests before they reach the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest total size of the request headers accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Rate limits; `None` turns rate limiting off.
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

/// Token buckets: one per API key and one per customer (the customer of a valid access token,
/// else the token itself), refilled `per_second` and holding `burst`; on `/v1/auth/*` also one
/// per client IP, one per email and one per phone, refilled `auth_per_minute` and holding
/// `auth_burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub auth_per_minute: NonZeroU32,
    pub auth_burst: NonZeroU32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(50).expect("50 is not zero"),
            burst: NonZeroU32::new(100).expect("100 is not zero"),
            auth_per_minute: NonZeroU32::new(10).expect("10 is not zero"),
            auth_burst: NonZeroU32::new(10).expect("10 is not zero"),
        }
    }
}
