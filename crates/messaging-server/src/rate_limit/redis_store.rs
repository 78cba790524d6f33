//! Budgets and failed logins in Redis, shared by every replica that uses the same Redis and key
//! prefix. Each check is one Lua script, run atomically by Redis with Redis's own clock: a
//! request's budgets are checked and spent together (GCRA, as redis-cell does), and a login
//! attempt is reserved in a sliding log of the target's failures. The server never reads a
//! value and writes it back.

use std::time::Duration;

use redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// How long one Redis call may take before the request goes on without it.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// GCRA over every key of one request: refuses with the (1-based) index of the first exhausted
/// budget and the wait in microseconds, or spends one request from each and returns {0, 0}.
/// ARGV holds, per key, its emission interval (µs) and burst.
const CHECK_BUDGETS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local wait = tat - (burst - 1) * interval - now
  if wait > 0 then
    return {i, math.ceil(wait)}
  end
  next_tats[i] = tat + interval
end
for i, key in ipairs(KEYS) do
  local ttl_ms = math.max(1, math.ceil((next_tats[i] - now) / 1000))
  redis.call('SET', key, string.format('%d', next_tats[i]), 'PX', ttl_ms)
end
return {0, 0}
";

/// Sliding log of one target's attempts (a sorted set scored by time in µs): drops those older
/// than the window, refuses with the wait in µs when `limit` remain, else adds ARGV[3] and
/// returns 0. ARGV: limit, window (µs), attempt id.
const RESERVE_ATTEMPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
end
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return 0
";

/// A connection to the Redis that holds the shared budgets, and the prefix of every key.
#[derive(Clone)]
pub struct RedisBudgets {
    connection: ConnectionManager,
    prefix: String,
    check: Script,
    reserve: Script,
}

/// Shows the prefix only (a URL may hold a password; the connection has nothing to show).
impl std::fmt::Debug for RedisBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBudgets")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis failed")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// One budget as Redis sees it: its key (without the prefix), emission interval and burst.
pub struct RedisBudget {
    pub key: String,
    pub interval: Duration,
    pub burst: u32,
}

impl RedisBudgets {
    /// Connects to `url` (`redis://host:port/db`, `rediss://…` for TLS) and checks that it
    /// answers. Every key this server writes starts with `prefix` and `:`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| RedisError::Timeout(Duration::from_secs(5)))??;
        let budgets = Self {
            connection,
            prefix: prefix.to_owned(),
            check: Script::new(CHECK_BUDGETS),
            reserve: Script::new(RESERVE_ATTEMPT),
        };
        let mut connection = budgets.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(budgets)
    }

    /// Checks and spends every budget of one request at once: `None` when all had room (one
    /// request spent from each), else the index of the first exhausted one and how long to wait.
    pub async fn check(
        &self,
        budgets: &[RedisBudget],
    ) -> Result<Option<(usize, Duration)>, RedisError> {
        let mut invocation = self.check.prepare_invoke();
        for budget in budgets {
            invocation
                .key(format!("{}:{}", self.prefix, budget.key))
                .arg(micros(budget.interval))
                .arg(budget.burst);
        }
        let mut connection = self.connection.clone();
        let (index, wait): (usize, u64) =
            with_timeout(invocation.invoke_async(&mut connection)).await?;
        Ok(index
            .checked_sub(1)
            .map(|index| (index, Duration::from_micros(wait))))
    }

    /// Reserves attempt `id` against `target` unless it has `limit` attempts younger than
    /// `window`; then how long until the oldest leaves the window.
    pub async fn reserve_attempt(
        &self,
        target: &str,
        id: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, RedisError> {
        let mut connection = self.connection.clone();
        let wait: u64 = with_timeout(
            self.reserve
                .key(format!("{}:{target}", self.prefix))
                .arg(limit)
                .arg(micros(window))
                .arg(id)
                .invoke_async(&mut connection),
        )
        .await?;
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }

    /// Forgets attempt `id` of `target` (the login succeeded).
    pub async fn forget_attempt(&self, target: &str, id: &str) -> Result<(), RedisError> {
        let mut connection = self.connection.clone();
        with_timeout(
            redis::cmd("ZREM")
                .arg(format!("{}:{target}", self.prefix))
                .arg(id)
                .query_async::<i64>(&mut connection),
        )
        .await?;
        Ok(())
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

async fn with_timeout<T>(
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| RedisError::Timeout(CALL_TIMEOUT))?
        .map_err(RedisError::from)
}
