//! The dispatcher: one more reader of the event feed. It reads the feed from its stored
//! position and queues one delivery per event and matching endpoint (same store and mode,
//! enabled, type in its filter, created before the event), moving the position in the same
//! transaction by compare-and-set. Of two replicas dispatching the same stretch, one moves the
//! position and the other's transaction changes nothing, so an event is queued once; the unique
//! `(endpoint_id, event_id)` index backs that up.
//!
//! The first run starts where the retained feed starts, and an endpoint receives only events
//! created after it: so no history from before an endpoint existed, and nothing an endpoint
//! should get is skipped, however late the first run comes. (It started at the frontier once:
//! an endpoint created and an event written before the first round, while the process was
//! starting, were behind it, and that event was never delivered.)

use std::{collections::HashSet, time::Duration};

use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use uuid::Uuid;

use crate::{
    MessagingService,
    entity::{webhook_delivery, webhook_dispatch_position, webhook_endpoint},
    error::ServiceError,
    events::{self, Position, StoredEvent},
    now,
};

/// The id of the one row of `webhook_dispatch_positions`.
const POSITION_ID: i32 = 1;

/// Events read per round.
const BATCH: u64 = 200;

/// Delivery rows inserted per statement (bounded bind parameters on both databases).
const INSERT_CHUNK: usize = 200;

/// How often the dispatcher reads the feed when nothing woke it.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest time between two rounds while events keep coming. A round is a write (it moves
/// the stored position), so one per feed wake-up would put a second write beside nearly every
/// send; coalesced, a busy store pays for ten rounds a second, and a webhook waits at most this
/// much longer.
const COALESCE: Duration = Duration::from_millis(100);

/// Metric of queued deliveries, described where the server installs its recorder.
pub const CREATED_METRIC: &str = "webhook_deliveries_created_total";

impl MessagingService {
    /// Runs the dispatcher until the task is dropped: a round whenever this process's feed
    /// reader sees new events (which it learns of from every replica), at most one per
    /// [`COALESCE`], and every second anyway. Errors are logged; the position did not move, so
    /// the next round reads the same events.
    pub async fn run_webhook_dispatcher(self) {
        let mut batches = self.inner.events.subscribe();
        loop {
            let started = tokio::time::Instant::now();
            match self.dispatch_webhooks().await {
                // A full batch: more is waiting.
                Ok(read) if read == BATCH => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "webhook dispatch failed; retrying"),
            }
            tokio::select! {
                received = batches.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = received {
                        // The feed is shutting down; keep dispatching on the timer.
                        batches = self.inner.events.subscribe();
                        tokio::time::sleep(IDLE_INTERVAL).await;
                    }
                    tokio::time::sleep_until(started + COALESCE).await;
                    // The next round reads everything these wake-ups announced.
                    while !matches!(
                        batches.try_recv(),
                        Err(tokio::sync::broadcast::error::TryRecvError::Empty
                            | tokio::sync::broadcast::error::TryRecvError::Closed)
                    ) {}
                }
                () = tokio::time::sleep(IDLE_INTERVAL) => {}
            }
        }
    }

    /// One round: reads up to `BATCH` events after the stored position and queues their
    /// deliveries. Returns how many events it read.
    pub(crate) async fn dispatch_webhooks(&self) -> Result<u64, ServiceError> {
        let from = self.dispatch_position().await?;
        match events::ensure_retained(self.writer(), from).await {
            Ok(()) => {}
            // Only when no replica dispatched for longer than the feed's retention.
            Err(err) if err.code() == "events_expired" => tracing::error!(
                position = from.encode(),
                "webhook dispatcher is behind the feed's retention: pruned events were never \
                 delivered"
            ),
            Err(err) => return Err(err),
        }
        let batch = events::read_after(self.writer(), Some(&from), BATCH).await?;
        let Some(last) = batch.last() else {
            return Ok(0);
        };
        let to = last.position;
        let rows = self.deliveries_for(&batch).await?;
        let queued = rows.len();
        let txn = self.begin_write().await?;
        let moved = webhook_dispatch_position::Entity::update_many()
            .col_expr(webhook_dispatch_position::Column::Xid, Expr::value(to.xid))
            .col_expr(webhook_dispatch_position::Column::Seq, Expr::value(to.seq))
            .col_expr(
                webhook_dispatch_position::Column::UpdatedAt,
                Expr::value(now()),
            )
            .filter(webhook_dispatch_position::Column::Id.eq(POSITION_ID))
            .filter(webhook_dispatch_position::Column::Xid.eq(from.xid))
            .filter(webhook_dispatch_position::Column::Seq.eq(from.seq))
            .exec(&txn)
            .await?
            .rows_affected;
        if moved == 0 {
            // Another replica dispatched this stretch first.
            return Ok(0);
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            webhook_delivery::Entity::insert_many(chunk.to_vec())
                .on_conflict_do_nothing_on([
                    webhook_delivery::Column::EndpointId,
                    webhook_delivery::Column::EventId,
                ])
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        if queued > 0 {
            metrics::counter!(CREATED_METRIC).increment(queued as u64);
            self.inner.webhook_wakeup.notify_one();
        }
        Ok(batch.len() as u64)
    }

    /// The stored position; on the very first run, where the retained feed starts.
    async fn dispatch_position(&self) -> Result<Position, ServiceError> {
        if let Some(row) = webhook_dispatch_position::Entity::find_by_id(POSITION_ID)
            .one(self.writer())
            .await?
        {
            return Ok(Position {
                xid: row.xid,
                seq: row.seq,
            });
        }
        let start = events::retained_from(self.writer()).await?;
        // Concurrent first runs agree: one insert wins, everyone reads it back.
        webhook_dispatch_position::Entity::insert(webhook_dispatch_position::ActiveModel {
            id: Set(POSITION_ID),
            xid: Set(start.xid),
            seq: Set(start.seq),
            updated_at: Set(now()),
        })
        .on_conflict_do_nothing_on([webhook_dispatch_position::Column::Id])
        .exec(self.writer())
        .await?;
        let row = webhook_dispatch_position::Entity::find_by_id(POSITION_ID)
            .one(self.writer())
            .await?
            .ok_or_else(|| {
                ServiceError::internal(std::io::Error::other("dispatch position vanished"))
            })?;
        Ok(Position {
            xid: row.xid,
            seq: row.seq,
        })
    }

    /// One delivery row per event and matching endpoint, due at once.
    async fn deliveries_for(
        &self,
        batch: &[StoredEvent],
    ) -> Result<Vec<webhook_delivery::ActiveModel>, ServiceError> {
        let stores: HashSet<Uuid> = batch.iter().map(|e| e.store_id).collect();
        let endpoints = webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::StoreId.is_in(stores))
            .filter(webhook_endpoint::Column::Enabled.eq(true))
            .all(self.writer())
            .await?;
        let at = now();
        let mut rows = Vec::new();
        for event in batch {
            let matching: Vec<&webhook_endpoint::Model> = endpoints
                .iter()
                .filter(|e| {
                    e.store_id == event.store_id
                        && e.mode == event.mode
                        && e.created_at <= event.created_at
                        && (e.event_types.is_empty()
                            || e.event_types
                                .split_whitespace()
                                .any(|t| t == event.event_type))
                })
                .collect();
            if matching.is_empty() {
                continue;
            }
            let event_id = event.position.encode();
            // The exact bytes every attempt sends: the event object of the feed.
            let payload = event.to_json_string()?;
            for endpoint in matching {
                rows.push(webhook_delivery::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    endpoint_id: Set(endpoint.id),
                    event_id: Set(event_id.clone()),
                    event_type: Set(event.event_type.clone()),
                    payload: Set(payload.clone()),
                    status: Set("pending".to_owned()),
                    attempts: Set(0),
                    last_response_status: Set(None),
                    next_attempt_at: Set(Some(at)),
                    lease_token: Set(None),
                    created_at: Set(at),
                    updated_at: Set(at),
                });
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, PaginatorTrait};
    use uuid::Uuid;

    use crate::{
        MessagingService,
        entity::{webhook_delivery, webhook_endpoint},
        events::{self, EventData, EventScope},
        in_memory_service, now,
    };

    fn endpoint(
        store_id: Uuid,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> webhook_endpoint::ActiveModel {
        webhook_endpoint::ActiveModel {
            id: Set(Uuid::now_v7()),
            store_id: Set(store_id),
            mode: Set("test".to_owned()),
            url: Set("https://backend.example/hooks".to_owned()),
            event_types: Set(String::new()),
            description: Set(None),
            secret_salt: Set("c2FsdA".to_owned()),
            enabled: Set(true),
            created_at: Set(created_at),
            updated_at: Set(created_at),
        }
    }

    /// Records one `message.deleted` event of `store_id` in test mode.
    async fn event(service: &MessagingService, store_id: Uuid) {
        let scope = EventScope::in_test_mode(store_id);
        let txn = service.begin_write().await.unwrap();
        let data = EventData::MessageDeleted {
            message_id: Uuid::now_v7(),
            deleted_at: now(),
        };
        events::record(&txn, &scope, data).await.unwrap();
        txn.commit().await.unwrap();
    }

    /// The first round may come after endpoints were created and events written (a process
    /// that is still starting while a deployer already calls it): those events are delivered;
    /// events from before an endpoint existed are not.
    #[tokio::test]
    async fn a_late_first_round_queues_what_came_after_each_endpoint() {
        let service = in_memory_service().await;
        let store = service.create_store("Acme").await.unwrap().store_id;
        event(&service, store).await; // before any endpoint
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        endpoint(store, now())
            .insert(service.writer())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        event(&service, store).await; // after it, before the first round

        service.dispatch_webhooks().await.unwrap();
        let queued = webhook_delivery::Entity::find()
            .count(service.writer())
            .await
            .unwrap();
        assert_eq!(queued, 1, "the event after the endpoint's creation, only");
    }
}
