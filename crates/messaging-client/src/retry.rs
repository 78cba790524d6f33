//! Safe retries for writes: one `Idempotency-Key` per logical operation, resent with every
//! retry, so a request whose answer was lost is never applied twice.
//!
//! ```no_run
//! # async fn demo(client: &messaging_client::Client, token: &str, thread: uuid::Uuid)
//! # -> Result<(), messaging_client::Error<messaging_client::types::Problem>> {
//! use messaging_client::retry::{RetryPolicy, idempotent};
//!
//! // One logical operation: "send this message". Every attempt carries the same key; the
//! // server applies it once and answers retries with the first answer.
//! let sent = idempotent(&RetryPolicy::default(), |key| {
//!     client
//!         .send_message()
//!         .x_auth_token(token)
//!         .idempotency_key(key)
//!         .id(thread.to_string())
//!         .body_map(|b| b.message("Is my order on its way?"))
//!         .send()
//! })
//! .await?;
//! println!("sent {} (replayed: {})", sent.message.id, messaging_client::retry::was_replayed(&sent));
//! # Ok(())
//! # }
//! ```

use std::{future::Future, time::Duration};

use crate::{Error, ResponseValue, types::Problem};

/// The response header that marks a stored answer to an earlier attempt.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// How often and how patiently [`idempotent`] retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait before the first retry; each later wait doubles, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, waiting about 0.2 s, 0.4 s, 0.8 s and 1.6 s between them.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): exponential, with the upper half
    /// randomised so that many clients retrying at once spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff);
        exponential / 2 + exponential.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// A new key for one logical operation (a random UUID).
pub fn new_idempotency_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether a failed attempt may be sent again with the same key: the request never got an
/// answer (connection refused or reset, timeout, a body cut off), a gateway in front of the
/// server answered 502, 503 or 504, or the server says the first attempt with this key is
/// still running (409 `idempotency_key_in_use`). Anything else is the operation's answer.
pub fn is_retryable(err: &Error<Problem>) -> bool {
    match err {
        Error::CommunicationError(_) | Error::ResponseBodyError(_) => true,
        Error::ErrorResponse(problem) => problem.code == "idempotency_key_in_use",
        Error::UnexpectedResponse(response) => matches!(response.status().as_u16(), 502..=504),
        _ => false,
    }
}

/// Whether an answer is the stored answer to an earlier attempt with the same key.
pub fn was_replayed<T>(response: &ResponseValue<T>) -> bool {
    response
        .headers()
        .get(REPLAYED_HEADER)
        .is_some_and(|value| value == "true")
}

/// Runs one logical write with a new `Idempotency-Key`: `attempt` builds and sends the request
/// with the key it is given (pass it to the builder's `.idempotency_key(key)`), and is called
/// again with the same key after each retryable failure ([`is_retryable`]), waiting
/// [`RetryPolicy::backoff`] in between. Returns the first answer that is not retryable, or the
/// last failure once `policy.max_attempts` are spent.
pub async fn idempotent<T, F, Fut>(
    policy: &RetryPolicy,
    attempt: F,
) -> Result<ResponseValue<T>, Error<Problem>>
where
    F: FnMut(&str) -> Fut,
    Fut: Future<Output = Result<ResponseValue<T>, Error<Problem>>>,
{
    idempotent_with_key(policy, &new_idempotency_key(), attempt).await
}

/// [`idempotent`] with a key of the caller's choosing, e.g. one kept with a queued operation
/// so that a retry after the app restarts is still the same operation.
pub async fn idempotent_with_key<T, F, Fut>(
    policy: &RetryPolicy,
    key: &str,
    mut attempt: F,
) -> Result<ResponseValue<T>, Error<Problem>>
where
    F: FnMut(&str) -> Fut,
    Fut: Future<Output = Result<ResponseValue<T>, Error<Problem>>>,
{
    let mut tries = 1;
    loop {
        match attempt(key).await {
            Err(err) if tries < policy.max_attempts.max(1) && is_retryable(&err) => {
                tokio::time::sleep(policy.backoff(tries)).await;
                tries += 1;
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter_in_the_upper_half() {
        let policy = RetryPolicy::default();
        for (attempt, full) in [
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1600),
            (6, 5000),
            (40, 5000),
        ] {
            let full = Duration::from_millis(full);
            let wait = policy.backoff(attempt);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
    }

    #[test]
    fn keys_are_new_each_time() {
        assert_ne!(new_idempotency_key(), new_idempotency_key());
        assert_eq!(new_idempotency_key().len(), 36);
    }
}
