//! Failed logins per target account, counted in the database so that every replica of one
//! PostgreSQL (or one SQLite file) agrees: the store of the server's guessing limit when no
//! Redis is configured.
//!
//! A login first reserves an attempt (one row), which is refused once the target has `limit`
//! rows younger than `window`; a login that succeeds forgets its row again, so only failures
//! stay counted. Reserving is serialised per target (a transaction-scoped advisory lock on
//! PostgreSQL, the write lock on SQLite), so concurrent guesses can never exceed the limit.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use uuid::Uuid;

use crate::{MessagingService, entity::login_failure, error::ServiceError};

/// The outcome of [`MessagingService::reserve_login_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// The attempt may run; it counts as a failure unless [`MessagingService::forget_login_attempt`]
    /// is called with this id.
    Admitted(Uuid),
    /// The target had `limit` failures within the window; the oldest leaves it after `retry_after`.
    Refused { retry_after: Duration },
}

/// One sweep of expired rows (all targets) per this many reservations.
const SWEEP_EVERY: u32 = 64;

impl MessagingService {
    /// Reserves one login attempt against `target` (any string naming the account, e.g. the API
    /// key and the email; only its keyed hash is stored), unless `target` already has `limit`
    /// attempts younger than `window`.
    pub async fn reserve_login_attempt(
        &self,
        target: &str,
        limit: u32,
        window: Duration,
    ) -> Result<LoginAttempt, ServiceError> {
        let target_hash = self.inner.keys.hash_credential(&format!("login:{target}"));
        let now = Utc::now();
        let window = chrono::Duration::from_std(window).map_err(ServiceError::internal)?;
        let cutoff = now - window;
        let txn = self.begin_write().await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // Serialises reservations of one target until commit; other targets run in parallel.
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [advisory_key(&target_hash).into()],
            ))
            .await?;
        }
        login_failure::Entity::delete_many()
            .filter(login_failure::Column::TargetHash.eq(target_hash.as_str()))
            .filter(login_failure::Column::CreatedAt.lte(cutoff))
            .exec(&txn)
            .await?;
        let recent = login_failure::Entity::find()
            .filter(login_failure::Column::TargetHash.eq(target_hash.as_str()))
            .order_by_asc(login_failure::Column::CreatedAt)
            .limit(u64::from(limit))
            .all(&txn)
            .await?;
        if recent.len() >= limit as usize {
            txn.commit().await?;
            let oldest = recent.first().map_or(now, |row| row.created_at);
            let retry_after = (oldest + window - now).to_std().unwrap_or(Duration::ZERO);
            return Ok(LoginAttempt::Refused { retry_after });
        }
        let id = Uuid::now_v7();
        login_failure::ActiveModel {
            id: Set(id),
            target_hash: Set(target_hash),
            created_at: Set(now),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        if rand::random_ratio(1, SWEEP_EVERY) {
            self.sweep_login_failures(cutoff).await;
        }
        Ok(LoginAttempt::Admitted(id))
    }

    /// Forgets an admitted attempt (the login succeeded, or failed for a reason that is not a
    /// guess), so it does not count against its target.
    pub async fn forget_login_attempt(&self, id: Uuid) -> Result<(), ServiceError> {
        login_failure::Entity::delete_by_id(id)
            .exec(self.writer())
            .await?;
        Ok(())
    }

    /// Deletes every row older than the window, whatever its target: targets nobody tries again
    /// would otherwise keep their rows. Best effort: a failure only delays the cleanup.
    async fn sweep_login_failures(&self, cutoff: chrono::DateTime<Utc>) {
        let swept = login_failure::Entity::delete_many()
            .filter(login_failure::Column::CreatedAt.lte(cutoff))
            .exec(self.writer())
            .await;
        if let Err(err) = swept {
            tracing::warn!(error = %err, "could not sweep expired login failures");
        }
    }
}

/// The advisory lock key of a target: the first 16 hex digits of its keyed hash.
fn advisory_key(target_hash: &str) -> i64 {
    let digits = target_hash.get(..16).unwrap_or(target_hash);
    u64::from_str_radix(digits, 16).map_or(0, |key| key as i64)
}
