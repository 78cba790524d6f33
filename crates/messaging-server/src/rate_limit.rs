//! Rate limits, the one layer that answers 429: which budgets a request counts against, the
//! guessing limit on logins, and where both are kept. Entry point: [`RateLimiter::enforce`].
//!
//! Budgets (token buckets refilled `per_second` and holding `burst`):
//! - a request whose `x-auth-token` verifies counts against its customer only, whatever key it
//!   came with: customers who share a publishable key never share a budget, and every session
//!   of one customer shares one;
//! - a request without a token counts against its API key (a secret key alone is the store's
//!   backend); without a well-formed key, against the client address;
//! - a request whose token does not verify counts against the key and the client address, so
//!   made-up tokens cannot mint fresh budgets;
//! - `POST /v1/auth/otp` also counts against the email or phone it sends a code to
//!   (`codes_per_minute`, `codes_burst`). There is no per-address budget on `/v1/auth/*` with a
//!   well-formed key: the address there is the store's backend, not the customer.
//!
//! Guessing: `POST /v1/auth/login` and `POST /v1/auth/verify-otp` reserve one attempt against
//! their target account (the API key and the email or phone) before they run; a target with
//! `failed_logins` failures in the last `failed_login_window` is answered 429 without running.
//! An attempt that does not end in 401 is forgotten, so only failures count.
//!
//! Where: with Redis ([`RedisBudgets`]) budgets and attempts are shared by every replica using
//! it, each check one atomic script. Without it budgets are this process's (`governor`) and
//! attempts are rows in the database (so replicas on one PostgreSQL still agree). When Redis
//! fails at runtime, budgets fall back to this process's and attempts to the database, logged
//! at error level and counted in `rate_limit_redis_errors_total`.
//!
//! Keys, tokens, emails and phones are kept only as SHA-256 digests (attempts in the database
//! as keyed hashes), never in the clear.

mod redis_store;

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use messaging_service::{ApiKeyParts, LoginAttempt, MessagingService};
use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use redis_store::{RedisBudgets, RedisError};

use crate::{body_limit::LimitedBody, problem::Problem, settings::RateLimitSettings};
use redis_store::RedisBudget;

/// How often (in checks) idle keys are dropped from the in-process limiters' maps.
const PRUNE_EVERY: u64 = 4096;

/// At most one Redis error log line per this many seconds (every error is counted).
const REDIS_ERROR_LOG_EVERY_SECS: u64 = 10;

/// Counter of Redis calls that failed (and fell back).
pub const REDIS_ERRORS: &str = "rate_limit_redis_errors_total";

type Digest32 = [u8; 32];

/// One budget a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Budget {
    /// The customer of an access token that verifies.
    Customer(Uuid),
    /// The `Authorization` header's value.
    ApiKey(Digest32),
    /// The client address: callers whose credentials did not verify.
    Address(IpAddr),
    /// The email or phone a one-time code is sent to.
    CodeTarget(Digest32),
}

impl Budget {
    fn redis_key(&self) -> String {
        match self {
            Self::Customer(id) => format!("customer:{id}"),
            Self::ApiKey(digest) => format!("key:{}", hex(digest)),
            Self::Address(ip) => format!("address:{ip}"),
            Self::CodeTarget(digest) => format!("code:{}", hex(digest)),
        }
    }
}

/// A refused request: how long to wait, the size of the budget that ran out, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    pub limit: NonZeroU32,
    pub code: &'static str,
}

/// An admitted login attempt, to forget if it does not fail.
enum Attempt {
    Redis {
        target: String,
        id: String,
    },
    Database(Uuid),
    /// Neither store could record it (logged); nothing to forget.
    Unrecorded,
}

/// The budgets and the guessing limit of one running app.
pub struct RateLimiter {
    settings: RateLimitSettings,
    callers: DefaultKeyedRateLimiter<Budget>,
    codes: DefaultKeyedRateLimiter<Budget>,
    redis: Option<RedisBudgets>,
    service: MessagingService,
    checks: AtomicU64,
    last_redis_error_log: AtomicU64,
}

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings, service: MessagingService) -> Self {
        let callers = Quota::per_second(settings.per_second).allow_burst(settings.burst);
        let codes = Quota::per_minute(settings.codes_per_minute).allow_burst(settings.codes_burst);
        Self {
            settings: settings.clone(),
            callers: DefaultKeyedRateLimiter::keyed(callers),
            codes: DefaultKeyedRateLimiter::keyed(codes),
            redis: settings.redis.clone(),
            service,
            checks: AtomicU64::new(0),
            last_redis_error_log: AtomicU64::new(0),
        }
    }

    /// Counts `req` against its budgets and, for a login, reserves a guess against its target;
    /// answers 429 when either is spent, else runs `inner` and forgets the guess unless it
    /// failed with 401.
    pub async fn enforce<E: Endpoint>(&self, inner: &E, req: Request) -> poem::Result<Response> {
        let budgets = self.budgets_of(&req);
        if let Err(limited) = self.spend(&budgets).await {
            return Ok(limited.into_response());
        }
        let Some(target) = guessing_target(&req) else {
            return inner.call(req).await.map(IntoResponse::into_response);
        };
        let attempt = match self.reserve(&target).await {
            Ok(attempt) => attempt,
            Err(limited) => return Ok(limited.into_response()),
        };
        let result = inner.call(req).await.map(IntoResponse::into_response);
        let failed =
            matches!(&result, Ok(response) if response.status() == StatusCode::UNAUTHORIZED);
        if !failed {
            self.forget(attempt).await;
        }
        result
    }

    /// The budgets `req` counts against (see the module documentation).
    fn budgets_of(&self, req: &Request) -> Vec<Budget> {
        let authorization = req.header(header::AUTHORIZATION);
        let address = req
            .remote_addr()
            .as_socket_addr()
            .map(|addr| Budget::Address(addr.ip()));
        let mut budgets = Vec::with_capacity(3);
        match req.header("x-auth-token") {
            Some(token) => match self.service.access_token_customer(token) {
                Some(customer) => budgets.push(Budget::Customer(customer)),
                None => {
                    budgets.extend(authorization.map(|key| Budget::ApiKey(sha256(key))));
                    budgets.extend(address);
                }
            },
            None => match authorization {
                Some(key) if is_well_formed_key(key) => budgets.push(Budget::ApiKey(sha256(key))),
                Some(key) => {
                    budgets.push(Budget::ApiKey(sha256(key)));
                    budgets.extend(address);
                }
                None => budgets.extend(address),
            },
        }
        if req.method() == Method::POST && req.uri().path() == "/v1/auth/otp" {
            let (email, phone) = identities_of(req);
            budgets.extend(
                email
                    .or(phone)
                    .map(|target| Budget::CodeTarget(sha256(&target))),
            );
        }
        budgets
    }

    /// Spends one request from every budget, in Redis when configured (falling back to this
    /// process's budgets when Redis fails).
    async fn spend(&self, budgets: &[Budget]) -> Result<(), Limited> {
        if let Some(redis) = &self.redis {
            let shared: Vec<RedisBudget> = budgets
                .iter()
                .map(|budget| {
                    let (interval, burst) = self.quota_of(budget);
                    RedisBudget {
                        key: budget.redis_key(),
                        interval,
                        burst: burst.get(),
                    }
                })
                .collect();
            match redis.check(&shared).await {
                Ok(None) => return Ok(()),
                Ok(Some((index, wait))) => {
                    let (_, burst) = self.quota_of(&budgets[index]);
                    return Err(Limited::budget(wait, burst));
                }
                Err(err) => self.redis_failed(&err, "budgets counted by this process only"),
            }
        }
        self.spend_locally(budgets)
    }

    fn spend_locally(&self, budgets: &[Budget]) -> Result<(), Limited> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.callers.retain_recent();
            self.codes.retain_recent();
        }
        for budget in budgets {
            let limiter = match budget {
                Budget::CodeTarget(_) => &self.codes,
                _ => &self.callers,
            };
            let (_, burst) = self.quota_of(budget);
            limiter.check_key(budget).map_err(|not_until| {
                Limited::budget(not_until.wait_time_from(limiter.clock().now()), burst)
            })?;
        }
        Ok(())
    }

    /// The emission interval (time to refill one request) and burst of a budget.
    fn quota_of(&self, budget: &Budget) -> (Duration, NonZeroU32) {
        let settings = &self.settings;
        match budget {
            Budget::CodeTarget(_) => (
                Duration::from_secs(60) / settings.codes_per_minute.get(),
                settings.codes_burst,
            ),
            _ => (
                Duration::from_secs(1) / settings.per_second.get(),
                settings.burst,
            ),
        }
    }

    /// Reserves one guess against `target`: in Redis when configured, else (or when Redis
    /// fails) in the database.
    async fn reserve(&self, target: &str) -> Result<Attempt, Limited> {
        let limit = self.settings.failed_logins;
        let window = self.settings.failed_login_window;
        if let Some(redis) = &self.redis {
            let key = format!("login:{}", hex(&sha256(target)));
            let id = Uuid::now_v7().to_string();
            match redis.reserve_attempt(&key, &id, limit.get(), window).await {
                Ok(None) => return Ok(Attempt::Redis { target: key, id }),
                Ok(Some(wait)) => return Err(Limited::guessing(wait, limit)),
                Err(err) => self.redis_failed(&err, "failed logins counted in the database"),
            }
        }
        match self
            .service
            .reserve_login_attempt(target, limit.get(), window)
            .await
        {
            Ok(LoginAttempt::Admitted(id)) => Ok(Attempt::Database(id)),
            Ok(LoginAttempt::Refused { retry_after }) => Err(Limited::guessing(retry_after, limit)),
            Err(err) => {
                tracing::error!(error = %err, "could not count a login attempt; it runs uncounted");
                Ok(Attempt::Unrecorded)
            }
        }
    }

    async fn forget(&self, attempt: Attempt) {
        match attempt {
            Attempt::Redis { target, id } => {
                if let Some(redis) = &self.redis
                    && let Err(err) = redis.forget_attempt(&target, &id).await
                {
                    self.redis_failed(&err, "a successful login stays counted as a failure");
                }
            }
            Attempt::Database(id) => {
                if let Err(err) = self.service.forget_login_attempt(id).await {
                    tracing::error!(error = %err, "could not forget a login attempt; it stays counted as a failure");
                }
            }
            Attempt::Unrecorded => {}
        }
    }

    /// Counts a Redis failure and logs it, at most once per [`REDIS_ERROR_LOG_EVERY_SECS`].
    fn redis_failed(&self, err: &RedisError, consequence: &'static str) {
        metrics::counter!(REDIS_ERRORS).increment(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let last = self.last_redis_error_log.load(Ordering::Relaxed);
        if now >= last + REDIS_ERROR_LOG_EVERY_SECS
            && self
                .last_redis_error_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(error = %err, source = ?std::error::Error::source(err), consequence, "Redis rate limits unavailable, falling back (see {REDIS_ERRORS})");
        }
    }
}

/// The account a login or code check guesses at: the API key and the email or phone.
fn guessing_target(req: &Request) -> Option<String> {
    let path = req.uri().path();
    if req.method() != Method::POST || !matches!(path, "/v1/auth/login" | "/v1/auth/verify-otp") {
        return None;
    }
    let (email, phone) = identities_of(req);
    let identity = email
        .map(|email| format!("email:{email}"))
        .or_else(|| phone.map(|phone| format!("phone:{phone}")))?;
    let key = req.header(header::AUTHORIZATION).unwrap_or_default();
    Some(format!("{}:{identity}", hex(&sha256(key))))
}

/// Whether an `Authorization` value is `Bearer` and an API key of the documented form.
fn is_well_formed_key(authorization: &str) -> bool {
    let mut parts = authorization.splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default().trim();
    scheme.eq_ignore_ascii_case("bearer") && ApiKeyParts::parse(key).is_some()
}

/// The `email` (trimmed, lower-cased) and `phone` (trimmed) fields of the JSON body.
fn identities_of(req: &Request) -> (Option<String>, Option<String>) {
    req.extensions()
        .get::<LimitedBody>()
        .map(|body| identities_in(&body.0))
        .unwrap_or_default()
}

fn identities_in(body: &[u8]) -> (Option<String>, Option<String>) {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Limited {
    fn budget(retry_after: Duration, limit: NonZeroU32) -> Self {
        Self {
            retry_after,
            limit,
            code: "rate_limited",
        }
    }

    fn guessing(retry_after: Duration, limit: NonZeroU32) -> Self {
        Self {
            retry_after,
            limit,
            code: "too_many_failed_logins",
        }
    }

    /// Whole seconds to wait, at least one.
    fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }

    /// 429 problem+json with `Retry-After` and the `RateLimit-*` headers.
    pub fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let detail = match self.code {
            "too_many_failed_logins" => {
                format!("Too many failed attempts for this account. Retry after {secs} seconds.")
            }
            _ => format!("Too many requests. Retry after {secs} seconds."),
        };
        let mut response =
            Problem::new(StatusCode::TOO_MANY_REQUESTS, self.code, detail).into_response();
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

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limit = NonZeroU32::new(1).unwrap();
        let limited = Limited::budget(Duration::from_millis(10), limit);
        assert_eq!(limited.retry_after_secs(), 1);
        let limited = Limited::budget(Duration::from_millis(2500), limit);
        assert_eq!(limited.retry_after_secs(), 3);
    }

    #[test]
    fn emails_and_phones_are_read_from_json_bodies() {
        assert_eq!(
            identities_in(br#"{"email":" Jane@Example.com "}"#),
            (Some("jane@example.com".to_owned()), None)
        );
        assert_eq!(
            identities_in(br#"{"phone":"+14155550123"}"#),
            (None, Some("+14155550123".to_owned()))
        );
        assert_eq!(identities_in(b"not json"), (None, None));
    }

    #[test]
    fn only_bearer_keys_of_the_documented_form_are_well_formed() {
        let random = "AbCdEf0123".repeat(4);
        assert!(is_well_formed_key(&format!(
            "Bearer tybrite_sk_test_{random}"
        )));
        assert!(is_well_formed_key(&format!(
            "bearer tybrite_pk_live_{random}"
        )));
        assert!(!is_well_formed_key("Bearer key-123"));
        assert!(!is_well_formed_key(&format!(
            "Basic tybrite_sk_test_{random}"
        )));
        assert!(!is_well_formed_key(&format!("tybrite_sk_test_{random}")));
    }
}
