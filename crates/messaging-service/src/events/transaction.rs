//! Write transactions: the only transactions rules change data in. Events recorded in one are
//! counted, and its commit wakes this process's feed at once (other processes hear of it by
//! `NOTIFY`, sent by a trigger on `events` and delivered by PostgreSQL at commit).

use std::sync::{Arc, Mutex};

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, ExecResult, QueryResult,
    Statement, prelude::async_trait,
};
use uuid::Uuid;

use super::EventHub;
use crate::{entity::event, group_commit::Seat};

/// A database transaction that may record events.
pub(crate) struct WriteTxn {
    /// Dropped first: a transaction given up rolls back before its seat lets the next rule in.
    txn: DatabaseTransaction,
    /// On SQLite, the rule's place in a batch of writes that commit together (`group_commit`);
    /// `txn` is then a savepoint in the batch's transaction.
    seat: Option<Seat>,
    hub: Arc<EventHub>,
    /// Events recorded, written in one statement just before the commit.
    events: Mutex<Vec<event::ActiveModel>>,
}

impl WriteTxn {
    pub(crate) fn new(txn: DatabaseTransaction, seat: Option<Seat>, hub: Arc<EventHub>) -> Self {
        Self {
            txn,
            seat,
            hub,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Adds an event to the transaction: it is inserted with the commit, or never.
    pub(super) fn push_event(&self, row: event::ActiveModel) {
        self.events
            .lock()
            .expect("the event list lock is never poisoned")
            .push(row);
    }

    /// Takes the locks of `threads` for the rest of the transaction, before its first write
    /// (see the module `events`): transactions on one thread then commit in the order of their
    /// ids, which is the order of the feed. On SQLite the transaction already holds the one
    /// write lock. Fails (500) when the transaction has written before: that rule would break
    /// the feed's order.
    ///
    /// Returns whether concurrent writers may have changed the threads since the transaction
    /// read them (PostgreSQL): the rule then reads again what it acts on.
    pub(crate) async fn lock_threads(&self, threads: &[Uuid]) -> Result<bool, DbErr> {
        if self.txn.get_database_backend() != DbBackend::Postgres || threads.is_empty() {
            return Ok(false);
        }
        let mut keys: Vec<i64> = threads.iter().map(|id| lock_key(*id)).collect();
        // One order for everyone: no two transactions wait for each other in a circle.
        keys.sort_unstable();
        keys.dedup();
        // Integers only: safe to write into the statement.
        let keys = keys
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let row = self
            .txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT (pg_current_xact_id_if_assigned() IS NULL) AS fresh, count(*) AS locked \
                     FROM (SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY[{keys}]::bigint[]) AS k) AS locks"
                ),
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("thread locks".to_owned()))?;
        let fresh: bool = row.try_get("", "fresh")?;
        if fresh {
            Ok(true)
        } else {
            Err(DbErr::Custom(
                "a rule wrote before taking its thread locks: its events could be out of order"
                    .to_owned(),
            ))
        }
    }

    /// Writes the recorded events (one statement) and commits (on SQLite: releases the savepoint
    /// and waits for its batch's commit); then counts them and wakes this process's feed.
    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        let events = std::mem::take(
            &mut *self
                .events
                .lock()
                .expect("the event list lock is never poisoned"),
        );
        let recorded = events.len() as u64;
        if !events.is_empty() {
            event::Entity::insert_many(events)
                .exec_without_returning(&self.txn)
                .await?;
        }
        self.txn.commit().await?;
        if let Some(seat) = self.seat {
            seat.committed().await?;
        }
        if recorded > 0 {
            metrics::counter!("messaging_events_written_total").increment(recorded);
            self.hub.wake();
        }
        Ok(())
    }
}

/// The advisory lock key of a thread: its UUID folded to 64 bits. Two threads sharing a key
/// only wait for each other.
fn lock_key(id: Uuid) -> i64 {
    let (high, low) = id.as_u64_pair();
    (high ^ low) as i64
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTxn {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }
}
