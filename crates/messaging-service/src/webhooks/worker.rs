//! The delivery worker: claims due deliveries, makes each attempt, records it, and schedules
//! the next one.
//!
//! Claiming is one conditional update: it moves `next_attempt_at` of due, pending rows to the end
//! of a lease and stamps a fresh `lease_token`, `WHERE next_attempt_at <= now`. On PostgreSQL it
//! passes over rows another transaction holds (`FOR UPDATE SKIP LOCKED`): of two replicas
//! claiming the same row, the second leaves it to the first, and a claim never waits for a store
//! deleting an endpoint with its deliveries (waiting there, each could hold a row the other
//! needs). SQLite has one writer. The attempt is recorded only by the
//! holder of the lease token, and attempt numbers are unique per delivery, so every attempt is
//! made and recorded by exactly one replica. A process that dies mid-attempt leaves the lease to
//! expire, after which the delivery is due again: pending work lives in the database and
//! survives restarts.
//!
//! A slow receiver cannot hold up the others: at most `max_in_flight_per_endpoint` attempts per
//! endpoint run at once in a process, and the claim picks the oldest due deliveries of each
//! endpoint separately, so one endpoint's backlog never fills the batch.

use std::{collections::HashMap, time::Duration};

use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Statement,
    sea_query::{Expr, LockBehavior, LockType, Query},
};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::outgoing::{Outcome, Request, Sender};
use crate::{
    MessagingService,
    auth::Mode,
    entity::{webhook_attempt, webhook_delivery, webhook_endpoint},
    error::ServiceError,
    now,
};

/// How long beyond the attempt timeout a claim stays with its worker.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Metric names, described where the server installs its recorder.
pub const ATTEMPTS_METRIC: &str = "webhook_attempts_total";
pub const ATTEMPT_DURATION_METRIC: &str = "webhook_attempt_duration_seconds";
pub const COMPLETED_METRIC: &str = "webhook_deliveries_completed_total";

/// A claimed delivery with what the attempt needs.
struct Claimed {
    delivery: webhook_delivery::Model,
    endpoint: webhook_endpoint::Model,
    lease: Uuid,
}

impl MessagingService {
    /// Runs the delivery worker until the task is dropped (which also drops running attempts;
    /// their leases expire and another worker retries them). Errors are logged and the next
    /// round tries again.
    pub async fn run_webhook_worker(self) {
        let settings = self.inner.config.webhooks.clone();
        let sender = match Sender::new(settings.timeout) {
            Ok(sender) => sender,
            Err(err) => {
                tracing::error!(error = %err, "webhook worker cannot start");
                return;
            }
        };
        let mut running = Running::default();
        let wakeup = self.inner.webhook_wakeup.clone();
        loop {
            running.reap();
            let free = settings.max_in_flight.saturating_sub(running.len());
            let mut filled = false;
            if free > 0 {
                match self.claim_due(free, &running.per_endpoint).await {
                    Ok((batch, more_due)) => {
                        filled = more_due;
                        for claimed in batch {
                            let service = self.clone();
                            let sender = sender.clone();
                            running.spawn(claimed.endpoint.id, async move {
                                service.attempt(&sender, claimed).await;
                            });
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "webhook claim failed; retrying"),
                }
            }
            tokio::select! {
                Some(done) = running.tasks.join_next_with_id(), if running.len() > 0 => {
                    running.finished(done);
                    // A slot freed: look again at once when the last claim left due work
                    // behind; otherwise wait for the tick or a wake-up.
                    if !filled {
                        tokio::select! {
                            () = tokio::time::sleep(settings.poll_interval) => {}
                            () = wakeup.notified() => {}
                        }
                    }
                }
                () = tokio::time::sleep(settings.poll_interval) => {}
                () = wakeup.notified() => {}
            }
        }
    }

    /// Claims up to `slots` due deliveries of enabled endpoints, at most
    /// `max_in_flight_per_endpoint` per endpoint counting those already running here.
    async fn claim_due(
        &self,
        slots: usize,
        running: &HashMap<Uuid, usize>,
    ) -> Result<(Vec<Claimed>, bool), ServiceError> {
        let settings = &self.inner.config.webhooks;
        let per_endpoint = settings.max_in_flight_per_endpoint;
        let at = now();
        // One candidate more per endpoint than could be taken, so a backlog shows as a
        // candidate left behind.
        let candidates = self
            .due_candidates(at, per_endpoint + 1, slots * 4 + 16)
            .await?;
        let mut taken: HashMap<Uuid, usize> = HashMap::new();
        let mut ids = Vec::new();
        let found = candidates.len();
        for (id, endpoint) in candidates {
            let busy = running.get(&endpoint).copied().unwrap_or(0);
            let count = taken.entry(endpoint).or_default();
            if busy + *count < per_endpoint && ids.len() < slots {
                *count += 1;
                ids.push(id);
            }
        }
        // Due work was left for later (slots or per-endpoint limits): claim again when a
        // running attempt finishes.
        let more_due = found > ids.len();
        if ids.is_empty() {
            return Ok((Vec::new(), more_due));
        }
        let lease = Uuid::now_v7();
        let lease_end = at + settings.timeout + LEASE_MARGIN;
        let due = Condition::all()
            .add(webhook_delivery::Column::Id.is_in(ids))
            .add(webhook_delivery::Column::Status.eq("pending"))
            .add(webhook_delivery::Column::NextAttemptAt.lte(at));
        let claimable = match self.backend() {
            // Rows another transaction holds (a replica's claim, an endpoint being deleted with
            // its deliveries) are passed over, not waited for.
            DbBackend::Postgres => webhook_delivery::Column::Id.in_subquery(
                Query::select()
                    .column(webhook_delivery::Column::Id)
                    .from(webhook_delivery::Entity)
                    .cond_where(due)
                    .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                    .to_owned(),
            ),
            _ => due.into(),
        };
        let txn = self.begin_write().await?;
        webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::NextAttemptAt,
                Expr::value(lease_end),
            )
            .col_expr(webhook_delivery::Column::LeaseToken, Expr::value(lease))
            .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(at))
            .filter(claimable)
            .exec(&txn)
            .await?;
        let claimed = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::LeaseToken.eq(lease))
            .find_also_related(webhook_endpoint::Entity)
            .all(&txn)
            .await?;
        txn.commit().await?;
        let claimed = claimed
            .into_iter()
            .filter_map(|(delivery, endpoint)| {
                Some(Claimed {
                    delivery,
                    endpoint: endpoint?,
                    lease,
                })
            })
            .collect();
        Ok((claimed, more_due))
    }

    /// Due deliveries of enabled endpoints, oldest first, at most `per_endpoint` per endpoint.
    async fn due_candidates(
        &self,
        at: chrono::DateTime<chrono::Utc>,
        per_endpoint: usize,
        limit: usize,
    ) -> Result<Vec<(Uuid, Uuid)>, ServiceError> {
        let backend = self.backend();
        let p = |n: usize| match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        };
        let sql = format!(
            "SELECT id, endpoint_id FROM ( \
               SELECT d.id, d.endpoint_id, d.next_attempt_at, \
                 ROW_NUMBER() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS place \
               FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
               WHERE d.status = 'pending' AND d.next_attempt_at <= {} AND e.enabled = {} \
             ) due WHERE place <= {} ORDER BY next_attempt_at, id LIMIT {}",
            p(1),
            p(2),
            p(3),
            p(4)
        );
        let rows = self
            .writer()
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [
                    at.into(),
                    true.into(),
                    (per_endpoint as i64).into(),
                    (limit as i64).into(),
                ],
            ))
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "endpoint_id")?)))
            .collect::<Result<_, sea_orm::DbErr>>()
            .map_err(ServiceError::internal)
    }

    /// Makes one attempt and records it. Failures to record are logged: the lease then expires
    /// and the delivery is attempted again.
    async fn attempt(&self, sender: &Sender, claimed: Claimed) {
        let Claimed {
            delivery,
            endpoint,
            lease,
        } = claimed;
        let Some(mode) = Mode::parse(&endpoint.mode) else {
            tracing::error!(endpoint = %endpoint.id, mode = endpoint.mode, "endpoint with an unknown mode");
            return;
        };
        let started_at = now();
        let timestamp = started_at.timestamp();
        let signature = self.signing_secret(&endpoint).sign(
            &delivery.event_id,
            timestamp,
            delivery.payload.as_bytes(),
        );
        let (outcome, elapsed) = sender
            .send(Request {
                url: &endpoint.url,
                mode,
                id: &delivery.event_id,
                timestamp,
                signature: &signature,
                body: &delivery.payload,
            })
            .await;
        metrics::counter!(ATTEMPTS_METRIC, "outcome" => outcome.label()).increment(1);
        metrics::histogram!(ATTEMPT_DURATION_METRIC).record(elapsed.as_secs_f64());
        let attempt = Attempt {
            number: delivery.attempts + 1,
            started_at,
            elapsed,
            outcome,
        };
        match self.record(&delivery, &endpoint, lease, &attempt).await {
            Ok(Some(status)) => {
                tracing::info!(
                    delivery = %delivery.id,
                    endpoint = %endpoint.id,
                    event_id = delivery.event_id,
                    attempt = attempt.number,
                    outcome = attempt.outcome.label(),
                    response_status = attempt.outcome.response_status(),
                    status,
                    "webhook attempt"
                );
                if status != "pending" {
                    metrics::counter!(COMPLETED_METRIC, "status" => status).increment(1);
                }
            }
            Ok(None) => tracing::info!(
                delivery = %delivery.id,
                "webhook attempt not recorded: the lease was lost or the endpoint deleted"
            ),
            Err(err) => tracing::warn!(
                delivery = %delivery.id,
                error = %err,
                "webhook attempt not recorded; it will be retried"
            ),
        }
    }

    /// Records an attempt and the delivery's next state, if this worker still holds the lease.
    /// Returns the new status, or `None` when the lease was lost.
    async fn record(
        &self,
        delivery: &webhook_delivery::Model,
        endpoint: &webhook_endpoint::Model,
        lease: Uuid,
        attempt: &Attempt,
    ) -> Result<Option<&'static str>, ServiceError> {
        let schedule = &self.inner.config.webhooks.retry_schedule;
        let at = now();
        let gone = attempt.outcome == Outcome::HttpError(410);
        let (status, next_attempt_at) = match &attempt.outcome {
            Outcome::Succeeded(_) => ("succeeded", None),
            _ if gone => ("failed", None),
            _ => match schedule.get(attempt.number as usize - 1) {
                Some(delay) => ("pending", Some(at + *delay)),
                None => ("failed", None),
            },
        };
        let response_status = attempt.outcome.response_status().map(i32::from);
        let txn = self.begin_write().await?;
        let updated = webhook_delivery::Entity::update_many()
            .col_expr(webhook_delivery::Column::Status, Expr::value(status))
            .col_expr(
                webhook_delivery::Column::Attempts,
                Expr::value(attempt.number),
            )
            .col_expr(
                webhook_delivery::Column::LastResponseStatus,
                Expr::value(response_status),
            )
            .col_expr(
                webhook_delivery::Column::NextAttemptAt,
                Expr::value(next_attempt_at),
            )
            .col_expr(
                webhook_delivery::Column::LeaseToken,
                Expr::value(None::<Uuid>),
            )
            .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(at))
            .filter(webhook_delivery::Column::Id.eq(delivery.id))
            .filter(webhook_delivery::Column::LeaseToken.eq(lease))
            .exec(&txn)
            .await?
            .rows_affected;
        if updated == 0 {
            return Ok(None);
        }
        webhook_attempt::ActiveModel {
            id: Set(Uuid::now_v7()),
            delivery_id: Set(delivery.id),
            attempt: Set(attempt.number),
            started_at: Set(attempt.started_at),
            duration_ms: Set(attempt.elapsed.as_millis().min(i32::MAX as u128) as i32),
            outcome: Set(attempt.outcome.label().to_owned()),
            response_status: Set(response_status),
            error: Set(attempt.outcome.error().map(str::to_owned)),
        }
        .insert(&txn)
        .await?;
        if gone {
            webhook_endpoint::Entity::update_many()
                .col_expr(webhook_endpoint::Column::Enabled, Expr::value(false))
                .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(at))
                .filter(webhook_endpoint::Column::Id.eq(endpoint.id))
                .exec(&txn)
                .await?;
            tracing::warn!(endpoint = %endpoint.id, "receiver answered 410 Gone: endpoint disabled");
        }
        txn.commit().await?;
        Ok(Some(status))
    }

    /// Pending deliveries of every store, for `/metrics`.
    pub async fn webhook_backlog(&self) -> Result<u64, ServiceError> {
        use sea_orm::PaginatorTrait;
        Ok(webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::Status.eq("pending"))
            .count(self.writer())
            .await?)
    }
}

/// One attempt, made.
struct Attempt {
    number: i32,
    started_at: chrono::DateTime<chrono::Utc>,
    elapsed: Duration,
    outcome: Outcome,
}

/// Attempts running in this process: the tasks, and how many per endpoint.
#[derive(Default)]
struct Running {
    tasks: JoinSet<()>,
    endpoint_of: HashMap<tokio::task::Id, Uuid>,
    per_endpoint: HashMap<Uuid, usize>,
}

impl Running {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn spawn(&mut self, endpoint: Uuid, attempt: impl Future<Output = ()> + Send + 'static) {
        let task = self.tasks.spawn(attempt);
        self.endpoint_of.insert(task.id(), endpoint);
        *self.per_endpoint.entry(endpoint).or_default() += 1;
    }

    /// Forgets a finished task, whether it completed or panicked.
    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(err) => {
                tracing::error!(error = %err, "webhook attempt task failed");
                err.id()
            }
        };
        if let Some(endpoint) = self.endpoint_of.remove(&id)
            && let Some(count) = self.per_endpoint.get_mut(&endpoint)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_endpoint.remove(&endpoint);
            }
        }
    }

    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.finished(done);
        }
    }
}
