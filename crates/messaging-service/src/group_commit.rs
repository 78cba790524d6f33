//! Group commit on SQLite: the write transactions of many requests share one commit.
//!
//! SQLite has one writer, and every commit appends each page the transaction changed to the
//! write-ahead log. One commit per request made the log, not the work, the bound of the write
//! path. Here a rule's write transaction is a savepoint inside a batch transaction on the one
//! writer connection:
//!
//! 1. `begin` seats a rule; it takes nothing yet. With its first statement the rule waits for
//!    its turn on the writer (a fair mutex: in order of arrival) and opens the batch
//!    transaction (`BEGIN IMMEDIATE`) if none is open.
//! 2. The rule runs. Its savepoint opens in the same call as its first statement
//!    ([`Seat::open_savepoint`]), and `WriteTxn::commit` releases it in the same call as its
//!    last writes. `Seat::committed` then gives up the turn, wakes the committer and waits for
//!    the batch's outcome.
//! 3. A rule that sent nothing before its commit (it read nothing through the writer: a send
//!    into a thread the process knows) does not take the turn at all: [`Seat::submit`] queues
//!    its writes and wakes the committer, which runs everything queued in one call, each rule's
//!    writes after the one before, so a hundred such rules cost the writer one call, not a
//!    hundred turns. Only the committer and the checkpointer (tasks of their own, which no
//!    client can cancel) run queued writes. Should that call fail (a rule's check found its
//!    thread changed, or a constraint refused a write), it is rolled back and each queued rule
//!    runs alone, in its own savepoint, and learns its own outcome.
//! 4. The committer queues for the turn behind every rule already waiting, so they join the
//!    batch; then it runs what is queued, commits the batch and tells every rule in it.
//!
//! A rule is answered only after the commit that holds its write (WAL: in the log file, so
//! killing the process loses nothing acknowledged). A rule that fails leaves its savepoint open;
//! whoever takes the turn next rolls it back first (`Batch::settle`), so the others' writes stay
//! and none of its own do. A failed batch commit fails every rule in it. Nothing asynchronous
//! is left behind a write: its events and Idempotency-Key record are in the same savepoint (or
//! the same queued writes), so in the same commit.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicBool, Ordering},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Values,
};
use tokio::sync::{Mutex, Notify, OnceCell, OwnedMutexGuard, oneshot, watch};

/// The outcome of a batch's commit, as its rules learn it.
type Outcome = Option<Result<(), String>>;

/// The rule's savepoint. One rule runs at a time, so one name does.
const SAVEPOINT: &str = "SAVEPOINT rule";
const RELEASE: &str = "RELEASE rule";
const ROLLBACK: &str = "ROLLBACK TO rule; RELEASE rule";
/// The savepoint around the queued writes run together.
const QUEUED: &str = "SAVEPOINT queued";
const QUEUED_RELEASE: &str = "RELEASE queued";
const QUEUED_ROLLBACK: &str = "ROLLBACK TO queued; RELEASE queued";

/// The writer connection's batches (SQLite only).
pub(crate) struct GroupCommit {
    group: Arc<Group>,
}

/// What the rules, the committer and the checkpointer share.
struct Group {
    writer: DatabaseConnection,
    batch: Arc<Mutex<Batch>>,
    /// Writes of rules that did not take the turn, in the order they were submitted.
    queue: std::sync::Mutex<Vec<Queued>>,
    /// Wakes the committer: a rule finished its part of the open batch, or queued its writes.
    finished: Notify,
}

/// A rule's writes, waiting for whoever takes the turn next.
struct Queued {
    statements: Vec<Statement>,
    /// Their outcome: the batch they are in, or why they were refused.
    answer: oneshot::Sender<Result<watch::Receiver<Outcome>, DbErr>>,
}

/// The open batch: the transaction the rules' savepoints are in, and where its outcome goes.
#[derive(Default)]
struct Batch {
    open: Option<(DatabaseTransaction, watch::Sender<Outcome>)>,
    /// A rule that failed left its savepoint open: it is rolled back before anything else runs.
    rollback: bool,
}

/// A rule's place in a batch: its turn on the writer (from its first statement) until it lets
/// go, then its wait for the batch's commit.
pub(crate) struct Seat {
    group: Arc<Group>,
    turn: OnceCell<OwnedMutexGuard<Batch>>,
    /// Whether the rule's savepoint has been sent (and not released).
    savepoint: AtomicBool,
}

impl GroupCommit {
    /// Starts the committer task; it ends when the `GroupCommit` is dropped.
    pub(crate) fn start(writer: DatabaseConnection) -> Self {
        let group = Arc::new(Group {
            writer,
            batch: Arc::new(Mutex::new(Batch::default())),
            queue: std::sync::Mutex::new(Vec::new()),
            finished: Notify::new(),
        });
        tokio::spawn(commit_batches(Arc::downgrade(&group)));
        Self { group }
    }

    /// Seats one rule. Nothing is sent and nothing waited for yet: the rule takes its turn with
    /// its first statement ([`Seat::transaction`]), or never ([`Seat::submit`]).
    pub(crate) fn begin(&self) -> Seat {
        Seat {
            group: self.group.clone(),
            turn: OnceCell::new(),
            savepoint: AtomicBool::new(false),
        }
    }

    /// A handle that can hold the writer between batches (see [`Pause`]).
    pub(crate) fn pause(&self) -> Pause {
        Pause(Arc::downgrade(&self.group))
    }
}

/// Holds the writer between two batches, for the checkpointer (`checkpoint.rs`): while the
/// guard [`Pause::hold`] returns lives, no write transaction is open on the writer connection
/// and rules queue behind it, in their order of arrival.
pub(crate) struct Pause(Weak<Group>);

/// The writer, held between batches.
pub(crate) struct Held {
    _turn: OwnedMutexGuard<Batch>,
}

impl Pause {
    /// Waits for the writer's turn (behind the rules already waiting) and commits the batch
    /// they made, with the writes queued; `None` once the writer is gone.
    pub(crate) async fn hold(&self) -> Option<Held> {
        let group = self.0.upgrade()?;
        let mut turn = group.batch.clone().lock_owned().await;
        turn.commit(&group).await;
        Some(Held { _turn: turn })
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // The committer finds the group gone and ends.
        self.group.finished.notify_one();
    }
}

impl Batch {
    /// Rolls back the savepoint a failed rule left open. Should that fail, the batch fails
    /// whole: none of it is committed, and each of its rules learns so.
    ///
    /// The flag is cleared only once the rollback has run: a rule's future that is dropped
    /// while it waits here (its client went away) leaves it for the next holder, which
    /// finds the savepoint gone if the rollback did run.
    async fn settle(&mut self) {
        if !self.rollback {
            return;
        }
        let Some((transaction, _)) = &self.open else {
            self.rollback = false;
            return;
        };
        match transaction.execute_unprepared(ROLLBACK).await {
            Ok(_) => {}
            // The rule failed before its savepoint was opened, or after it was released.
            Err(err) if err.to_string().contains("no such savepoint") => {}
            Err(err) => self.fail(err).await,
        }
        self.rollback = false;
    }

    /// Gives the open batch up: none of it is committed, and each of its rules learns why.
    async fn fail(&mut self, err: DbErr) {
        tracing::error!(error = %err, "rolling back a failed write left the batch unusable");
        if let Some((transaction, outcome)) = self.open.take() {
            let _ = transaction.rollback().await;
            outcome.send_replace(Some(Err(err.to_string())));
        }
    }

    /// Opens the batch transaction if none is open, and returns it with its outcome.
    async fn open(
        &mut self,
        group: &Group,
    ) -> Result<&(DatabaseTransaction, watch::Sender<Outcome>), DbErr> {
        if self.open.is_none() {
            let transaction = group
                .writer
                .begin_with_options(TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..TransactionOptions::default()
                })
                .await?;
            self.open = Some((transaction, watch::channel(None).0));
        }
        Ok(self.open.as_ref().expect("a batch is open"))
    }

    /// Runs the queued writes in the open batch (opening it if needed): all in one call, or,
    /// when that call fails, each alone in its savepoint. Each rule learns its own outcome.
    async fn run_queued(&mut self, group: &Group) {
        let queued = std::mem::take(&mut *group.queue.lock().expect("the queue is never poisoned"));
        if queued.is_empty() {
            return;
        }
        let together = {
            let (transaction, outcome) = match self.open(group).await {
                Ok(open) => open,
                Err(err) => return refuse(queued, &err),
            };
            let mut statements = vec![Statement::from_string(DbBackend::Sqlite, QUEUED)];
            for rule in &queued {
                statements.extend(rule.statements.iter().cloned());
            }
            statements.push(Statement::from_string(DbBackend::Sqlite, QUEUED_RELEASE));
            match transaction.execute_raw(joined(statements)).await {
                Ok(_) => Ok(Some(outcome.subscribe())),
                Err(_) => transaction
                    .execute_unprepared(QUEUED_ROLLBACK)
                    .await
                    .map(|_| None),
            }
        };
        match together {
            Ok(Some(outcome)) => {
                for rule in queued {
                    let _ = rule.answer.send(Ok(outcome.clone()));
                }
            }
            // One of them failed: each runs alone, and learns its own outcome.
            Ok(None) => {
                for rule in queued {
                    let answer = self.run_alone(rule.statements).await;
                    let _ = rule.answer.send(answer);
                }
            }
            Err(err) => {
                refuse(queued, &err);
                self.fail(err).await;
            }
        }
    }

    /// One queued rule's writes in its own savepoint in the open batch.
    async fn run_alone(
        &mut self,
        statements: Vec<Statement>,
    ) -> Result<watch::Receiver<Outcome>, DbErr> {
        let Some((transaction, outcome)) = &self.open else {
            return Err(DbErr::Custom(
                "the write batch failed before this write ran".to_owned(),
            ));
        };
        let mut all = vec![Statement::from_string(DbBackend::Sqlite, SAVEPOINT)];
        all.extend(statements);
        all.push(Seat::release_savepoint());
        match transaction.execute_raw(joined(all)).await {
            Ok(_) => Ok(outcome.subscribe()),
            Err(err) => {
                self.rollback = true;
                self.settle().await;
                Err(err)
            }
        }
    }

    /// Runs what is queued, then commits the open batch, if any, and tells its rules the
    /// outcome.
    async fn commit(&mut self, group: &Group) {
        self.settle().await;
        self.run_queued(group).await;
        let Some((transaction, outcome)) = self.open.take() else {
            return;
        };
        let result = transaction.commit().await.map_err(|err| {
            tracing::error!(error = %err, "committing a batch of writes failed");
            err.to_string()
        });
        outcome.send_replace(Some(result));
    }
}

impl Seat {
    /// The batch's transaction, which the rule's statements go through. The first call waits
    /// for the rule's turn on the writer and opens the batch if none is open. It leaves the
    /// queued writes to the committer: a request's future may be dropped at any await (its
    /// client went away), and other rules' writes must not be run, and their outcome lost,
    /// inside it.
    pub(crate) async fn transaction(&self) -> Result<&DatabaseTransaction, DbErr> {
        let turn = self
            .turn
            .get_or_try_init(|| async {
                let mut turn = self.group.batch.clone().lock_owned().await;
                turn.settle().await;
                turn.open(&self.group).await?;
                Ok::<_, DbErr>(turn)
            })
            .await?;
        Ok(&turn
            .open
            .as_ref()
            .expect("a batch is open while a rule holds the turn")
            .0)
    }

    /// Whether the rule has taken its turn on the writer.
    pub(crate) fn has_turn(&self) -> bool {
        self.turn.initialized()
    }

    /// Whether the writer connection supports `RETURNING`.
    pub(crate) fn support_returning(&self) -> bool {
        self.group.writer.support_returning()
    }

    /// The statement that opens the rule's savepoint, the first time it is asked for: the rule
    /// sends it in one call with its first statement.
    pub(crate) fn open_savepoint(&self) -> Option<Statement> {
        (!self.savepoint.swap(true, Ordering::Relaxed))
            .then(|| Statement::from_string(DbBackend::Sqlite, SAVEPOINT))
    }

    /// Whether the rule's savepoint is open.
    pub(crate) fn has_savepoint(&self) -> bool {
        self.savepoint.load(Ordering::Relaxed)
    }

    /// The statement that releases the rule's savepoint, for the end of its last call.
    pub(crate) fn release_savepoint() -> Statement {
        Statement::from_string(DbBackend::Sqlite, RELEASE)
    }

    /// For a rule that never took its turn: queues all its writes, to run after those queued
    /// before them when someone next takes the turn, and waits until the batch holding them is
    /// committed. Fails, writing nothing of the rule, when one of them fails.
    pub(crate) async fn submit(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        debug_assert!(
            !self.has_turn(),
            "a rule that holds the turn sends its writes"
        );
        let (answer, answered) = oneshot::channel();
        self.group
            .queue
            .lock()
            .expect("the queue is never poisoned")
            .push(Queued { statements, answer });
        self.group.finished.notify_one();
        let outcome = answered.await.map_err(|_| {
            DbErr::Custom("the writer stopped before running this write".to_owned())
        })??;
        wait_for(outcome).await
    }

    /// After the rule released its savepoint: lets the next rule run and waits until the batch
    /// holding this rule's write is committed. A rule that never took its turn wrote nothing
    /// and waits for nothing.
    pub(crate) async fn committed(mut self) -> Result<(), DbErr> {
        self.savepoint.store(false, Ordering::Relaxed);
        // While the rule holds the turn, its batch is the open one.
        let outcome = self
            .turn
            .get()
            .and_then(|turn| turn.open.as_ref())
            .map(|(_, outcome)| outcome.subscribe());
        self.leave();
        match outcome {
            Some(outcome) => wait_for(outcome).await,
            None => Ok(()),
        }
    }

    /// Gives up the turn; a savepoint still open is left to the next holder to roll back.
    fn leave(&mut self) {
        if let Some(mut turn) = self.turn.take() {
            if self.savepoint.load(Ordering::Relaxed) {
                turn.rollback = true;
            }
            drop(turn);
            self.group.finished.notify_one();
        }
    }
}

/// Tells every queued rule that its writes did not run, and why.
fn refuse(queued: Vec<Queued>, err: &DbErr) {
    for rule in queued {
        let _ = rule.answer.send(Err(DbErr::Custom(err.to_string())));
    }
}

/// Waits for the outcome of a batch's commit.
async fn wait_for(mut outcome: watch::Receiver<Outcome>) -> Result<(), DbErr> {
    loop {
        if let Some(outcome) = outcome.borrow_and_update().clone() {
            return outcome.map_err(DbErr::Custom);
        }
        if outcome.changed().await.is_err() {
            return Err(DbErr::Custom(
                "the write batch ended without committing".to_owned(),
            ));
        }
    }
}

impl Drop for Seat {
    /// A rule that failed: the batch goes on without it, its savepoint rolled back first.
    fn drop(&mut self) {
        self.leave();
    }
}

/// The committer: after rules finish or queue their writes, runs what is queued and commits
/// the open batch once every rule queued before it has run.
async fn commit_batches(group: Weak<Group>) {
    loop {
        let Some(waiting) = group.upgrade() else {
            return;
        };
        waiting.finished.notified().await;
        // Dropping the `GroupCommit` wakes this task, which then finds the group gone.
        drop(waiting);
        let Some(group) = group.upgrade() else {
            return;
        };
        let mut turn = group.batch.clone().lock_owned().await;
        turn.commit(&group).await;
    }
}

/// SQLite statements as one: their text in order, and their parameters in the same order (the
/// driver binds each statement's `?`s from where the previous one's ended).
pub(crate) fn joined(statements: Vec<Statement>) -> Statement {
    let mut sql = String::new();
    let mut values = Vec::new();
    for statement in statements {
        sql.push_str(&statement.sql);
        sql.push_str(";\n");
        values.extend(statement.values.map(|v| v.0).unwrap_or_default());
    }
    Statement {
        sql,
        values: Some(Values(values)),
        db_backend: DbBackend::Sqlite,
    }
}
