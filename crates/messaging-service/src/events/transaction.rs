//! Write transactions: the only transactions rules change data in. Events recorded in one are
//! counted, and its commit wakes this process's feed at once (other processes hear of it by a
//! `NOTIFY` this process sends after the commit: `hub`).
//!
//! **Deferred writes.** A write whose outcome the rule does not read (moving a thread's counters,
//! touching a channel) can be [`WriteTxn::defer`]red: it is sent with the next statement of the
//! transaction that needs the database, or at the commit with the events. On SQLite the pending
//! statements go as one multi-statement call (their parameters in order), so each is one less
//! round trip to the one writer connection, which every write of the process queues for. On
//! PostgreSQL, writes to different tables go as one statement (a data-modifying `WITH`), so the
//! thread's lock, held from before the first write to the commit, is held for fewer round
//! trips, and the row locks they take are taken last. Whatever the rule reads afterwards in the
//! transaction sees them: every statement through the transaction sends the pending ones first.
//! Deferred writes must not depend on each other (a row one inserts that another refers to): in
//! one PostgreSQL statement each sees the database as it was before all of them.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, ExecResult, QueryResult,
    QueryTrait, Statement, Values, prelude::async_trait,
};
use uuid::Uuid;

use super::EventHub;
use crate::{
    entity::event,
    group_commit::{Seat, joined},
    thread_batches::QueuedSend,
};

/// A database transaction that may record events.
pub(crate) struct WriteTxn {
    txn: Txn,
    hub: Arc<EventHub>,
    /// Events recorded, written in one statement just before the commit.
    events: Mutex<Vec<event::ActiveModel>>,
    /// Deferred writes, in order, not sent yet.
    deferred: Mutex<Vec<Statement>>,
    /// Whether a check ([`Self::check_first`]) is among them.
    checking: AtomicBool,
}

/// Where a rule's statements go.
pub(crate) enum Txn {
    /// A transaction of its own (PostgreSQL).
    Own(DatabaseTransaction),
    /// On SQLite, its place in a batch of writes that commit together (`group_commit`): a
    /// savepoint in the batch's transaction, opened with the rule's first statement.
    Batch(Seat),
    /// On PostgreSQL, a send into a thread the process knows: queued with the other sends into
    /// that thread when it sends nothing before its commit, otherwise a transaction of its own
    /// begun with the thread's lock at its first statement (`thread_batches`).
    Queued(QueuedSend),
}

impl Txn {
    /// The transaction to send through; on SQLite the first call takes the rule's turn.
    async fn connection(&self) -> Result<&DatabaseTransaction, DbErr> {
        match self {
            Self::Own(txn) => Ok(txn),
            Self::Batch(seat) => seat.transaction().await,
            Self::Queued(send) => send.transaction().await,
        }
    }
}

impl WriteTxn {
    pub(crate) fn new(txn: Txn, hub: Arc<EventHub>) -> Self {
        Self {
            txn,
            hub,
            events: Mutex::new(Vec::new()),
            deferred: Mutex::new(Vec::new()),
            checking: AtomicBool::new(false),
        }
    }

    /// Queues a write whose outcome the rule does not read, and that does not depend on the
    /// other deferred writes (see the module): it runs before the transaction's next statement
    /// or with the commit. Its failure fails that statement or the commit, and so the rule.
    pub(crate) fn defer(&self, query: impl QueryTrait) {
        let statement = query.build(self.get_database_backend());
        self.deferred
            .lock()
            .expect("the deferred list lock is never poisoned")
            .push(statement);
    }

    /// Queues a statement that fails unless what the rule assumed without reading still holds
    /// (`known_threads`). It goes before everything else the rule sends, so when it fails
    /// nothing of the rule is written.
    pub(crate) fn check_first(&self, statement: Statement) {
        self.deferred
            .lock()
            .expect("the deferred list lock is never poisoned")
            .insert(0, statement);
        self.checking.store(true, Ordering::Relaxed);
    }

    /// Sends a pending check, with what is due before it, now: so that it fails the rule,
    /// not whoever commits the transaction later (an idempotent request's answer, which is
    /// written after the rule). Nothing is sent when no check is pending.
    pub(crate) async fn run_checks(&self) -> Result<(), DbErr> {
        if self.checking.load(Ordering::Relaxed) {
            self.send(self.due()).await?;
        }
        Ok(())
    }

    /// What must run before the rule's next statement: the opening of its savepoint, the first
    /// time (SQLite), and the deferred writes.
    fn due(&self) -> Vec<Statement> {
        let mut due = Vec::new();
        if let Txn::Batch(seat) = &self.txn {
            due.extend(seat.open_savepoint());
        }
        due.append(&mut self.take_deferred());
        due
    }

    fn take_deferred(&self) -> Vec<Statement> {
        self.checking.store(false, Ordering::Relaxed);
        std::mem::take(
            &mut self
                .deferred
                .lock()
                .expect("the deferred list lock is never poisoned"),
        )
    }

    /// Sends `statements`.
    async fn send(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        for statement in self.combined(statements) {
            self.txn.connection().await?.execute_raw(statement).await?;
        }
        Ok(())
    }

    /// `statements` as few as they can be sent in: on SQLite one call, on PostgreSQL as few
    /// statements as `one_statement` allows.
    fn combined(&self, statements: Vec<Statement>) -> Vec<Statement> {
        if statements.len() < 2 {
            return statements;
        }
        match self.get_database_backend() {
            DbBackend::Sqlite => vec![joined(statements)],
            DbBackend::Postgres => one_statement(statements),
            _ => statements,
        }
    }

    /// A query, after what is due. On SQLite they are one call: the statements before it
    /// return no rows, so the rows are the query's.
    fn with_due(&self, query: Statement) -> (Vec<Statement>, Statement) {
        let mut due = self.due();
        if self.get_database_backend() == DbBackend::Sqlite && !due.is_empty() {
            due.push(query);
            (Vec::new(), joined(due))
        } else {
            (due, query)
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
        if self.get_database_backend() != DbBackend::Postgres || threads.is_empty() {
            return Ok(false);
        }
        let row = self
            .query_one_raw(lock_statement(threads))
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

    /// Writes the deferred writes and the recorded events (one statement) and commits; on
    /// SQLite in one call that also releases the rule's savepoint, and then waits for its
    /// batch's commit. Then counts the events and wakes this process's feed.
    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        let events = std::mem::take(
            &mut *self
                .events
                .lock()
                .expect("the event list lock is never poisoned"),
        );
        let recorded = events.len() as u64;
        let mut writes = self.take_deferred();
        if !events.is_empty() {
            writes.push(event::Entity::insert_many(events).build(self.get_database_backend()));
        }
        match &self.txn {
            // A rule that sent nothing before its commit does not take the writer's turn: its
            // writes are queued and run with the others queued (`group_commit`).
            Txn::Batch(seat) if !seat.has_turn() => {
                if !writes.is_empty() {
                    seat.submit(writes).await?;
                }
            }
            // Likewise on PostgreSQL: queued with the other sends into its thread.
            Txn::Queued(send) if !send.has_begun() => {
                if !writes.is_empty() {
                    send.submit(self.combined(writes)).await?;
                }
            }
            _ => {
                // A rule that wrote nothing and read nothing in its savepoint sends nothing.
                if let Txn::Batch(seat) = &self.txn
                    && (!writes.is_empty() || seat.has_savepoint())
                {
                    writes.splice(0..0, seat.open_savepoint());
                    writes.push(Seat::release_savepoint());
                }
                self.send(writes).await?;
                match self.txn {
                    Txn::Own(txn) => txn.commit().await?,
                    Txn::Batch(seat) => seat.committed().await?,
                    Txn::Queued(send) => send.commit().await?,
                }
            }
        }
        if recorded > 0 {
            metrics::counter!("messaging_events_written_total").increment(recorded);
            self.hub.committed();
        }
        Ok(())
    }
}

/// PostgreSQL writes to pairwise different tables as one statement: each but the last in a
/// data-modifying `WITH` (all run, in one round trip), their `$n` parameters renumbered into one
/// list. Anything else (two writes to one table, whose order one statement would not keep; a
/// statement with a literal, where a `$` could be text) stays as it was, one statement each.
fn one_statement(statements: Vec<Statement>) -> Vec<Statement> {
    let mut tables = std::collections::HashSet::new();
    let combinable = statements.iter().all(|statement| {
        !statement.sql.contains('\'')
            && target_table(&statement.sql).is_some_and(|table| tables.insert(table))
    });
    if !combinable {
        return statements;
    }
    let last = statements.len() - 1;
    let mut sql = String::new();
    let mut values: Vec<sea_orm::Value> = Vec::new();
    for (n, statement) in statements.into_iter().enumerate() {
        let renumbered = shift_parameters(&statement.sql, values.len());
        match n {
            0 if last > 0 => sql.push_str(&format!("WITH write_{n} AS ({renumbered})")),
            n if n < last => sql.push_str(&format!(", write_{n} AS ({renumbered})")),
            _ => {
                sql.push(' ');
                sql.push_str(&renumbered);
            }
        }
        values.extend(statement.values.map(|v| v.0).unwrap_or_default());
    }
    vec![Statement {
        sql,
        values: Some(Values(values)),
        db_backend: DbBackend::Postgres,
    }]
}

/// The table an `INSERT`, `UPDATE` or `DELETE` as sea-query writes it for PostgreSQL changes.
fn target_table(sql: &str) -> Option<&str> {
    let rest = ["INSERT INTO \"", "UPDATE \"", "DELETE FROM \""]
        .iter()
        .find_map(|prefix| sql.strip_prefix(prefix))?;
    rest.split_once('"').map(|(table, _)| table)
}

/// `sql` with every parameter `$n` written as `$(n + by)`.
fn shift_parameters(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

/// Takes the advisory locks of `threads` for the rest of the transaction, in one order for
/// everyone (no two transactions wait for each other in a circle). Its row tells whether the
/// transaction had written before (`fresh` false).
pub(crate) fn lock_statement(threads: &[Uuid]) -> Statement {
    let mut keys: Vec<i64> = threads.iter().map(|id| lock_key(*id)).collect();
    keys.sort_unstable();
    keys.dedup();
    // The keys are parameters: the statement's text depends only on their count, so the
    // connection prepares it once, not once per thread.
    let placeholders = (1..=keys.len())
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(",");
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "SELECT (pg_current_xact_id_if_assigned() IS NULL) AS fresh, count(*) AS locked \
             FROM (SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY[{placeholders}]::bigint[]) AS k) AS locks"
        ),
        keys.into_iter().map(sea_orm::Value::from),
    )
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
        match &self.txn {
            Txn::Own(txn) => txn.get_database_backend(),
            Txn::Batch(_) => DbBackend::Sqlite,
            Txn::Queued(_) => DbBackend::Postgres,
        }
    }

    // A statement that changes rows goes alone: its result counts its own rows.
    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.send(self.due()).await?;
        self.txn.connection().await?.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.send(self.due()).await?;
        self.txn.connection().await?.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let (due, query) = self.with_due(stmt);
        self.send(due).await?;
        self.txn.connection().await?.query_one_raw(query).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let (due, query) = self.with_due(stmt);
        self.send(due).await?;
        self.txn.connection().await?.query_all_raw(query).await
    }

    fn support_returning(&self) -> bool {
        match &self.txn {
            Txn::Own(txn) => txn.support_returning(),
            Txn::Batch(seat) => seat.support_returning(),
            Txn::Queued(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveValue::Set, DbBackend, EntityTrait, QueryOrder, Statement, Value};

    use super::one_statement;
    use crate::{MessagingService, entity::event_prune_mark, in_memory_service, now};

    fn postgres(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }

    /// Writes to different tables become one statement with one parameter list; two writes to
    /// one table, or a statement with a literal, stay apart.
    #[test]
    fn postgres_writes_to_different_tables_are_one_statement() {
        let combined = one_statement(vec![
            postgres(
                r#"INSERT INTO "a" ("x", "y") VALUES ($1, $2)"#,
                vec![1.into(), 2.into()],
            ),
            postgres(
                r#"UPDATE "b" SET "x" = $1 WHERE "id" = $2"#,
                vec![3.into(), 4.into()],
            ),
            postgres(r#"DELETE FROM "c" WHERE "id" = $1"#, vec![5.into()]),
        ]);
        assert_eq!(combined.len(), 1);
        assert_eq!(
            combined[0].sql,
            r#"WITH write_0 AS (INSERT INTO "a" ("x", "y") VALUES ($1, $2)), write_1 AS (UPDATE "b" SET "x" = $3 WHERE "id" = $4) DELETE FROM "c" WHERE "id" = $5"#
        );
        assert_eq!(
            combined[0].values.as_ref().unwrap().0,
            vec![1.into(), 2.into(), 3.into(), 4.into(), 5.into()] as Vec<Value>
        );

        let same_table = vec![
            postgres(r#"UPDATE "b" SET "x" = $1"#, vec![1.into()]),
            postgres(r#"UPDATE "b" SET "y" = $1"#, vec![2.into()]),
        ];
        assert_eq!(one_statement(same_table.clone()), same_table);
        let literal = vec![
            postgres(r#"UPDATE "a" SET "x" = 'costs $1'"#, vec![]),
            postgres(r#"UPDATE "b" SET "y" = $1"#, vec![2.into()]),
        ];
        assert_eq!(one_statement(literal.clone()), literal);
    }

    fn mark(id: i32, seq: i64) -> event_prune_mark::ActiveModel {
        event_prune_mark::ActiveModel {
            id: Set(id),
            xid: Set(0),
            seq: Set(seq),
            pruned_at: Set(now()),
        }
    }

    async fn marks(service: &MessagingService) -> Vec<(i32, i64)> {
        event_prune_mark::Entity::find()
            .order_by_asc(event_prune_mark::Column::Id)
            .all(service.writer())
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.seq))
            .collect()
    }

    /// Deferred writes on SQLite go as one call: each statement gets its own parameters, a
    /// read in the transaction sees them, and one that fails fails the commit and keeps none of
    /// the transaction's writes.
    #[tokio::test]
    async fn deferred_writes_keep_their_parameters_and_fail_the_commit() {
        let service = in_memory_service().await;

        let txn = service.begin_write().await.unwrap();
        txn.defer(event_prune_mark::Entity::insert(mark(1, 10)));
        txn.defer(event_prune_mark::Entity::insert(mark(2, 20)));
        let seen = event_prune_mark::Entity::find()
            .all(&txn)
            .await
            .unwrap()
            .len();
        assert_eq!(
            seen, 2,
            "a read in the transaction sees its deferred writes"
        );
        txn.defer(event_prune_mark::Entity::insert(mark(3, 30)));
        txn.defer(event_prune_mark::Entity::delete_by_id(1));
        txn.commit().await.unwrap();
        assert_eq!(marks(&service).await, [(2, 20), (3, 30)]);

        let txn = service.begin_write().await.unwrap();
        txn.defer(event_prune_mark::Entity::insert(mark(4, 40)));
        // Id 2 exists: the primary key refuses it.
        txn.defer(event_prune_mark::Entity::insert(mark(2, 50)));
        assert!(txn.commit().await.is_err());
        assert_eq!(marks(&service).await, [(2, 20), (3, 30)]);
    }

    /// On SQLite a rule that sends nothing before its commit queues its writes, and queued
    /// writes run together when the writer is next free; when one of them fails, each runs alone
    /// and only the failing rule fails, writing nothing.
    #[tokio::test]
    async fn queued_writes_commit_together_and_a_failing_one_fails_alone() {
        let service = in_memory_service().await;
        // A rule that read holds the writer's turn while the others queue behind it.
        let holder = service.begin_write().await.unwrap();
        event_prune_mark::Entity::find().all(&holder).await.unwrap();
        holder.defer(event_prune_mark::Entity::insert(mark(1, 10)));
        let queue = |marks: Vec<event_prune_mark::ActiveModel>| {
            let service = service.clone();
            tokio::spawn(async move {
                let txn = service.begin_write().await?;
                for mark in marks {
                    txn.defer(event_prune_mark::Entity::insert(mark));
                }
                txn.commit().await
            })
        };
        let first = queue(vec![mark(2, 20)]);
        // Id 1 is the holder's: the primary key refuses the second of these two writes.
        let failing = queue(vec![mark(3, 30), mark(1, 99)]);
        let last = queue(vec![mark(4, 40)]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !first.is_finished() && !last.is_finished(),
            "queued writes wait for the writer"
        );
        holder.commit().await.unwrap();
        first.await.unwrap().unwrap();
        assert!(failing.await.unwrap().is_err());
        last.await.unwrap().unwrap();
        assert_eq!(marks(&service).await, [(1, 10), (2, 20), (4, 40)]);
    }

    /// On SQLite a rule given up after it wrote leaves none of its writes, and the rules in
    /// its batch after it commit theirs: its savepoint, opened with its first statement, is
    /// rolled back before the next rule's first.
    #[tokio::test]
    async fn a_rule_given_up_in_a_batch_leaves_nothing_and_the_batch_goes_on() {
        let service = in_memory_service().await;
        let given_up = service.begin_write().await.unwrap();
        event_prune_mark::Entity::insert(mark(1, 10))
            .exec(&given_up)
            .await
            .unwrap();
        // The next rule queues for the writer while the first holds it: both are in one batch.
        let next = tokio::spawn({
            let service = service.clone();
            async move {
                let txn = service.begin_write().await?;
                event_prune_mark::Entity::insert(mark(2, 20))
                    .exec(&txn)
                    .await?;
                txn.defer(event_prune_mark::Entity::insert(mark(3, 30)));
                txn.commit().await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(given_up);
        next.await.unwrap().unwrap();
        assert_eq!(marks(&service).await, [(2, 20), (3, 30)]);

        // A rule that only read leaves the batch as it was.
        let reader = service.begin_write().await.unwrap();
        assert_eq!(
            event_prune_mark::Entity::find()
                .all(&reader)
                .await
                .unwrap()
                .len(),
            2
        );
        reader.commit().await.unwrap();
        assert_eq!(marks(&service).await, [(2, 20), (3, 30)]);
    }
}
