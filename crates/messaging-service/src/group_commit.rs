//! Group commit on SQLite: the write transactions of many requests share one commit.
//!
//! SQLite has one writer, and every commit appends each page the transaction changed to the
//! write-ahead log. One commit per request made the log, not the work, the bound of the write
//! path. Here a rule's write transaction is a savepoint inside a batch transaction on the one
//! writer connection:
//!
//! 1. `begin` waits for its turn on the writer (a fair mutex: in order of arrival) and opens the
//!    batch transaction (`BEGIN IMMEDIATE`) if none is open.
//! 2. The rule runs. Its savepoint opens in the same call as its first statement
//!    ([`Seat::open_savepoint`]), and `WriteTxn::commit` releases it in the same call as its
//!    last writes, so a send is two calls on the writer (its thread read, its writes), not
//!    four. `Seat::committed` then gives up the turn, wakes the committer and waits for the
//!    batch's outcome.
//! 3. The committer queues for the turn behind every rule already waiting, so they join the
//!    batch; then it commits the batch and tells every rule in it.
//!
//! A rule is answered only after the commit that holds its write (WAL: in the log file, so
//! killing the process loses nothing acknowledged). A rule that fails leaves its savepoint open;
//! whoever takes the turn next rolls it back first (`Batch::settle`), so the others' writes stay
//! and none of its own do. A failed batch commit fails every rule in it. Nothing asynchronous
//! is left behind a write: its events and Idempotency-Key record are in the same savepoint, so
//! in the same commit.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicBool, Ordering},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, watch};

/// The outcome of a batch's commit, as its rules learn it.
type Outcome = Option<Result<(), String>>;

/// The rule's savepoint. One rule runs at a time, so one name does.
const SAVEPOINT: &str = "SAVEPOINT rule";
const RELEASE: &str = "RELEASE rule";
const ROLLBACK: &str = "ROLLBACK TO rule; RELEASE rule";

/// The writer connection's batches (SQLite only).
pub(crate) struct GroupCommit {
    writer: DatabaseConnection,
    batch: Arc<Mutex<Batch>>,
    /// Wakes the committer: a rule finished its part of the open batch.
    finished: Arc<Notify>,
}

/// The open batch: the transaction the rules' savepoints are in, and where its outcome goes.
#[derive(Default)]
struct Batch {
    open: Option<(DatabaseTransaction, watch::Sender<Outcome>)>,
    /// A rule that failed left its savepoint open: it is rolled back before anything else runs.
    rollback: bool,
}

/// A rule's place in a batch: its turn on the writer until it lets go, then its wait for the
/// batch's commit.
pub(crate) struct Seat {
    turn: Option<OwnedMutexGuard<Batch>>,
    outcome: watch::Receiver<Outcome>,
    finished: Arc<Notify>,
    /// Whether the rule's savepoint has been sent (and not released).
    savepoint: AtomicBool,
}

impl GroupCommit {
    /// Starts the committer task; it ends when the `GroupCommit` is dropped.
    pub(crate) fn start(writer: DatabaseConnection) -> Self {
        let batch = Arc::new(Mutex::new(Batch::default()));
        let finished = Arc::new(Notify::new());
        tokio::spawn(commit_batches(Arc::downgrade(&batch), finished.clone()));
        Self {
            writer,
            batch,
            finished,
        }
    }

    /// Waits for the writer and seats one rule in the open batch. Nothing is sent for the rule
    /// yet: its savepoint opens with its first statement.
    pub(crate) async fn begin(&self) -> Result<Seat, DbErr> {
        let mut turn = self.batch.clone().lock_owned().await;
        turn.settle().await;
        if turn.open.is_none() {
            let transaction = self
                .writer
                .begin_with_options(TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..TransactionOptions::default()
                })
                .await?;
            turn.open = Some((transaction, watch::channel(None).0));
        }
        let outcome = turn.open.as_ref().expect("a batch is open").1.subscribe();
        Ok(Seat {
            turn: Some(turn),
            outcome,
            finished: self.finished.clone(),
            savepoint: AtomicBool::new(false),
        })
    }

    /// A handle that can hold the writer between batches (see [`Pause`]).
    pub(crate) fn pause(&self) -> Pause {
        Pause(Arc::downgrade(&self.batch))
    }
}

/// Holds the writer between two batches, for the checkpointer (`checkpoint.rs`): while the
/// guard [`Pause::hold`] returns lives, no write transaction is open on the writer connection
/// and rules queue behind it, in their order of arrival.
pub(crate) struct Pause(Weak<Mutex<Batch>>);

/// The writer, held between batches.
pub(crate) struct Held {
    _turn: OwnedMutexGuard<Batch>,
}

impl Pause {
    /// Waits for the writer's turn (behind the rules already waiting) and commits the batch
    /// they made; `None` once the writer is gone.
    pub(crate) async fn hold(&self) -> Option<Held> {
        let batch = self.0.upgrade()?;
        let mut turn = batch.lock_owned().await;
        turn.commit().await;
        Some(Held { _turn: turn })
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // The committer finds the batch gone and ends.
        self.finished.notify_one();
    }
}

impl Batch {
    /// Rolls back the savepoint a failed rule left open. Should that fail, the batch fails
    /// whole: none of it is committed, and each of its rules learns so.
    async fn settle(&mut self) {
        if !std::mem::take(&mut self.rollback) {
            return;
        }
        let Some((transaction, _)) = &self.open else {
            return;
        };
        let err = match transaction.execute_unprepared(ROLLBACK).await {
            Ok(_) => return,
            // The rule failed before its savepoint was opened, or after it was released.
            Err(err) if err.to_string().contains("no such savepoint") => return,
            Err(err) => err,
        };
        tracing::error!(error = %err, "rolling back a failed write left the batch unusable");
        if let Some((transaction, outcome)) = self.open.take() {
            let _ = transaction.rollback().await;
            outcome.send_replace(Some(Err(err.to_string())));
        }
    }

    /// Commits the open batch, if any, and tells its rules the outcome.
    async fn commit(&mut self) {
        self.settle().await;
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
    /// The batch's transaction, which the rule's statements go through.
    pub(crate) fn transaction(&self) -> &DatabaseTransaction {
        let turn = self.turn.as_ref().expect("the seat holds its turn");
        &turn.open.as_ref().expect("a batch is open").0
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

    /// After the rule released its savepoint: lets the next rule run and waits until the batch
    /// holding this rule's write is committed.
    pub(crate) async fn committed(mut self) -> Result<(), DbErr> {
        self.savepoint.store(false, Ordering::Relaxed);
        self.leave();
        loop {
            if let Some(outcome) = self.outcome.borrow_and_update().clone() {
                return outcome.map_err(DbErr::Custom);
            }
            if self.outcome.changed().await.is_err() {
                return Err(DbErr::Custom(
                    "the write batch ended without committing".to_owned(),
                ));
            }
        }
    }

    /// Gives up the turn; a savepoint still open is left to the next holder to roll back.
    fn leave(&mut self) {
        if let Some(mut turn) = self.turn.take() {
            if self.savepoint.load(Ordering::Relaxed) {
                turn.rollback = true;
            }
            drop(turn);
            self.finished.notify_one();
        }
    }
}

impl Drop for Seat {
    /// A rule that failed: the batch goes on without it, its savepoint rolled back first.
    fn drop(&mut self) {
        self.leave();
    }
}

/// The committer: after rules finish, commits the open batch once every rule queued before it
/// has run.
async fn commit_batches(batch: Weak<Mutex<Batch>>, finished: Arc<Notify>) {
    loop {
        finished.notified().await;
        let Some(batch) = batch.upgrade() else {
            return;
        };
        batch.lock().await.commit().await;
    }
}
