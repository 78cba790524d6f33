//! Rate limiting with `governor`: one keyed limiter for API callers (by API key and by customer)
//! and a tighter one for `/v1/auth/*` (by client IP and by the `email` or `phone` in the body).
//! Keys, tokens, emails and phones are kept only as SHA-256 digests, never in the clear.
//!
//! A customer is counted by the customer id of a valid access token, so every session of one
//! customer shares one budget; a token that does not verify is counted by its digest (and is
//! refused later anyway). Unverified claims are never trusted: anyone could name another
//! customer in one and spend that customer's budget.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use poem::{
    Request, Response,
    http::{HeaderValue, StatusCode, header},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{body_limit::LimitedBody, problem::Problem, settings::RateLimitSettings};

/// Requests under this prefix are counted by the auth limiter too.
const AUTH_PATH_PREFIX: &str = "/v1/auth/";

/// How often (in checks) idle keys are dropped from the limiters' maps.
const PRUNE_EVERY: u64 = 4096;

type Digest32 = [u8; 32];

/// Who an API request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CallerKey {
    ApiKey(Digest32),
    Customer(Uuid),
    UnverifiedToken(Digest32),
}

/// Who an auth request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AuthKey {
    ClientIp(IpAddr),
    Email(Digest32),
    Phone(Digest32),
}

/// The customer of a valid access token.
pub type TokenVerifier = Arc<dyn Fn(&str) -> Option<Uuid> + Send + Sync>;

/// The limiters of one running app.
pub struct RateLimiter {
    callers: DefaultKeyedRateLimiter<CallerKey>,
    auth: DefaultKeyedRateLimiter<AuthKey>,
    callers_burst: NonZeroU32,
    auth_burst: NonZeroU32,
    checks: AtomicU64,
    verify_token: TokenVerifier,
}

/// A refused request: how long to wait and the size of the bucket that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    pub limit: NonZeroU32,
}

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings, verify_token: TokenVerifier) -> Self {
        let callers = Quota::per_second(settings.per_second).allow_burst(settings.burst);
        let auth = Quota::per_minute(settings.auth_per_minute).allow_burst(settings.auth_burst);
        Self {
            callers: DefaultKeyedRateLimiter::keyed(callers),
            auth: DefaultKeyedRateLimiter::keyed(auth),
            callers_burst: settings.burst,
            auth_burst: settings.auth_burst,
            checks: AtomicU64::new(0),
            verify_token,
        }
    }

    /// Counts `req` against every key it carries; the first exhausted one refuses it.
    pub fn check(&self, req: &Request) -> Result<(), Limited> {
        self.prune_now_and_then();
        for key in caller_keys(req, self.verify_token.as_ref()) {
            check_key(&self.callers, &key, self.callers_burst)?;
        }
        if req.uri().path().starts_with(AUTH_PATH_PREFIX) {
            for key in auth_keys(req) {
                check_key(&self.auth, &key, self.auth_burst)?;
            }
        }
        Ok(())
    }

    fn prune_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.callers.retain_recent();
            self.auth.retain_recent();
        }
    }
}

fn check_key<K>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    limit: NonZeroU32,
) -> Result<(), Limited>
where
    K: Clone + std::hash::Hash + Eq,
{
    limiter.check_key(key).map_err(|not_until| Limited {
        retry_after: not_until.wait_time_from(limiter.clock().now()),
        limit,
    })
}

fn caller_keys(
    req: &Request,
    verify_token: &(dyn Fn(&str) -> Option<Uuid> + Send + Sync),
) -> Vec<CallerKey> {
    let api_key = req
        .header(header::AUTHORIZATION)
        .map(|v| CallerKey::ApiKey(sha256(v)));
    let token = req
        .header("x-auth-token")
        .map(|token| match verify_token(token) {
            Some(customer) => CallerKey::Customer(customer),
            None => CallerKey::UnverifiedToken(sha256(token)),
        });
    api_key.into_iter().chain(token).collect()
}

fn auth_keys(req: &Request) -> Vec<AuthKey> {
    let ip = req
        .remote_addr()
        .as_socket_addr()
        .map(|addr| AuthKey::ClientIp(addr.ip()));
    let (email, phone) = req
        .extensions()
        .get::<LimitedBody>()
        .map(|body| identities_of(&body.0))
        .unwrap_or_default();
    let email = email.map(|email| AuthKey::Email(sha256(&email)));
    let phone = phone.map(|phone| AuthKey::Phone(sha256(&phone)));
    ip.into_iter().chain(email).chain(phone).collect()
}

/// The `email` (trimmed, lower-cased) and `phone` (trimmed) fields of a JSON body.
fn identities_of(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    (field("email").map(|e| e.to_lowercase()), field("phone"))
}

fn sha256(value: &str) -> Digest32 {
    Sha256::digest(value.as_bytes()).into()
}

impl Limited {
    /// Whole seconds to wait, at least one.
    fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }

    /// 429 problem+json with `Retry-After` and the `RateLimit-*` headers.
    pub fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many requests. Retry after {secs} seconds."),
        )
        .into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit.get()));
        headers.insert("ratelimit-remaining", HeaderValue::from(0u32));
        headers.insert("ratelimit-reset", HeaderValue::from(secs));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(burst: u32) -> RateLimitSettings {
        let n = NonZeroU32::new(burst).unwrap();
        RateLimitSettings {
            per_second: n,
            burst: n,
            auth_per_minute: n,
            auth_burst: n,
        }
    }

    fn request(path: &str, api_key: &str) -> Request {
        Request::builder()
            .uri_str(path)
            .header(header::AUTHORIZATION, api_key)
            .finish()
    }

    #[test]
    fn each_api_key_has_its_own_bucket() {
        let limiter = RateLimiter::new(&settings(2), Arc::new(|_| None));
        assert!(
            limiter
                .check(&request("/v1/messaging/threads", "Bearer a"))
                .is_ok()
        );
        assert!(
            limiter
                .check(&request("/v1/messaging/threads", "Bearer a"))
                .is_ok()
        );
        let limited = limiter
            .check(&request("/v1/messaging/threads", "Bearer a"))
            .unwrap_err();
        assert_eq!(limited.limit.get(), 2);
        assert!(
            limiter
                .check(&request("/v1/messaging/threads", "Bearer b"))
                .is_ok()
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limit = NonZeroU32::new(1).unwrap();
        let limited = Limited {
            retry_after: Duration::from_millis(10),
            limit,
        };
        assert_eq!(limited.retry_after_secs(), 1);
        let limited = Limited {
            retry_after: Duration::from_millis(2500),
            limit,
        };
        assert_eq!(limited.retry_after_secs(), 3);
    }

    #[test]
    fn emails_and_phones_are_read_from_json_bodies() {
        assert_eq!(
            identities_of(br#"{"email":" Jane@Example.com "}"#),
            (Some("jane@example.com".to_owned()), None)
        );
        assert_eq!(
            identities_of(br#"{"phone":"+14155550123"}"#),
            (None, Some("+14155550123".to_owned()))
        );
        assert_eq!(identities_of(b"not json"), (None, None));
    }

    #[test]
    fn every_session_of_one_customer_shares_a_bucket() {
        let customer = Uuid::now_v7();
        // Tokens that start with "valid" verify as `customer`.
        let verify: TokenVerifier =
            Arc::new(move |token| token.starts_with("valid").then_some(customer));
        let limiter = RateLimiter::new(&settings(2), verify);
        let with_token = |key: &str, token: &str| {
            Request::builder()
                .uri_str("/v1/messaging/threads")
                .header(header::AUTHORIZATION, key)
                .header("x-auth-token", token)
                .finish()
        };
        assert!(limiter.check(&with_token("Bearer a", "valid-1")).is_ok());
        assert!(limiter.check(&with_token("Bearer b", "valid-2")).is_ok());
        assert!(
            limiter.check(&with_token("Bearer c", "valid-3")).is_err(),
            "a third session of the same customer is over the customer's budget"
        );
        assert!(limiter.check(&with_token("Bearer d", "forged")).is_ok());
    }
}
