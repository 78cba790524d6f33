//! Retention: events older than the retained window are deleted in the background, in small
//! batches (each its own short transaction, so writers never wait long), oldest position first.
//! The newest pruned position is kept in `event_prune_marks`: a reader asking for events after
//! an older position gets 410 `events_expired`. Every replica may prune; deleting is idempotent
//! and the mark only moves forward.

use std::time::Duration;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, OnConflict},
};

use super::Position;
use crate::{
    MessagingService,
    entity::{event, event_prune_mark},
    error::ServiceError,
    now,
};

/// The id of the one row of `event_prune_marks`.
pub(super) const MARK_ID: i32 = 1;

/// Events deleted per transaction.
const BATCH: u64 = 1_000;

impl MessagingService {
    /// Deletes every event older than `retention`, in batches. Returns how many it deleted.
    pub async fn prune_events(&self, retention: Duration) -> Result<u64, ServiceError> {
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| ServiceError::internal(std::io::Error::other(e.to_string())))?;
        let cutoff = now() - retention;
        let mut total = 0;
        loop {
            let oldest: Vec<(i64, i64)> = event::Entity::find()
                .select_only()
                .column(event::Column::Xid)
                .column(event::Column::Seq)
                .filter(event::Column::CreatedAt.lt(cutoff))
                .order_by_asc(event::Column::Xid)
                .order_by_asc(event::Column::Seq)
                .limit(BATCH)
                .into_tuple()
                .all(self.writer())
                .await?;
            let Some(&(xid, seq)) = oldest.last() else {
                return Ok(total);
            };
            let last = Position { xid, seq };
            let txn = self.begin_write().await?;
            // The mark first: from now on a reader before it hears 410 rather than missing
            // what is about to go.
            event_prune_mark::Entity::insert(event_prune_mark::ActiveModel {
                id: Set(MARK_ID),
                xid: Set(last.xid),
                seq: Set(last.seq),
                pruned_at: Set(now()),
            })
            .on_conflict(
                OnConflict::column(event_prune_mark::Column::Id)
                    .update_columns([
                        event_prune_mark::Column::Xid,
                        event_prune_mark::Column::Seq,
                        event_prune_mark::Column::PrunedAt,
                    ])
                    .action_and_where(Expr::cust(
                        "(event_prune_marks.xid, event_prune_marks.seq) < (excluded.xid, excluded.seq)",
                    ))
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
            // Served by the position index on both databases (on SQLite, a range of `seq`):
            // a walk over the whole feed here would hold the one writer connection.
            let deleted = event::Entity::delete_many()
                .filter(super::between(Position::START, last))
                .filter(event::Column::CreatedAt.lt(cutoff))
                .exec(&txn)
                .await?
                .rows_affected;
            txn.commit().await?;
            total += deleted;
            if (oldest.len() as u64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// Prunes every `prune_interval` until the task is dropped. Errors are logged and the next
    /// round tries again.
    pub async fn run_event_retention(self) {
        let settings = self.inner.config.events.clone();
        let mut ticker = tokio::time::interval(settings.prune_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.prune_events(settings.retention).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "pruned events past the retained window"),
                Err(err) => tracing::warn!(code = err.code(), "pruning events failed; retrying"),
            }
        }
    }
}
