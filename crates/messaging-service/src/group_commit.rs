//! Group commit on SQLite: the write transactions of many requests share one commit.
//!
//! SQLite has one writer, and every commit appends each page the transaction changed to the
//! write-ahead log. One commit per request made the log, not the work, the bound of the write
//! path. Here a rule's write transaction is a savepoint inside a batch transaction on the one
//! writer connection:
//!
//! 1. `begin` waits for its turn on the writer (a fair mutex: in order of arrival), opens the
//!    batch transaction (`BEGIN IMMEDIATE`) if none is open, and starts the rule's savepoint.
//! 2. The rule runs; `WriteTxn::commit` releases its savepoint and `Seat::committed` gives up
//!    the turn, wakes the committer and waits for the batch's outcome.
//! 3. The committer queues for the turn behind every rule already waiting, so they join the
//!    batch; then it commits the batch and tells every rule in it.
//!
//! A rule is answered only after the commit that holds its write (WAL: in the log file, so
//! killing the process loses nothing acknowledged). A rule that fails rolls back to its
//! savepoint and leaves the others' writes alone; a failed batch commit fails every rule in it.
//! Nothing asynchronous is left behind a write: its events and Idempotency-Key record are in
//! the same savepoint, so in the same commit.

use std::sync::{Arc, Weak};

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, watch};

/// The outcome of a batch's commit, as its rules learn it.
type Outcome = Option<Result<(), String>>;

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
}

/// A rule's place in a batch: its turn on the writer until it lets go, then its wait for the
/// batch's commit.
pub(crate) struct Seat {
    turn: Option<OwnedMutexGuard<Batch>>,
    outcome: watch::Receiver<Outcome>,
    finished: Arc<Notify>,
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

    /// Waits for the writer and starts a savepoint for one rule in the open batch.
    pub(crate) async fn begin(&self) -> Result<(DatabaseTransaction, Seat), DbErr> {
        let mut turn = self.batch.clone().lock_owned().await;
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
        let seat = Seat {
            turn: Some(turn),
            outcome,
            finished: self.finished.clone(),
        };
        // Should the savepoint fail, dropping the seat still wakes the committer.
        let savepoint = seat.batch_transaction().begin().await?;
        Ok((savepoint, seat))
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // The committer finds the batch gone and ends.
        self.finished.notify_one();
    }
}

impl Seat {
    fn batch_transaction(&self) -> &DatabaseTransaction {
        let turn = self.turn.as_ref().expect("the seat holds its turn");
        &turn.open.as_ref().expect("a batch is open").0
    }

    /// After the rule released its savepoint: lets the next rule run and waits until the batch
    /// holding this rule's write is committed.
    pub(crate) async fn committed(mut self) -> Result<(), DbErr> {
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

    fn leave(&mut self) {
        if self.turn.take().is_some() {
            self.finished.notify_one();
        }
    }
}

impl Drop for Seat {
    /// A rule that failed: its savepoint was rolled back (the transaction is dropped first);
    /// the batch goes on without it.
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
        let mut turn = batch.lock().await;
        let Some((transaction, outcome)) = turn.open.take() else {
            continue;
        };
        let result = transaction.commit().await.map_err(|err| {
            tracing::error!(error = %err, "committing a batch of writes failed");
            err.to_string()
        });
        outcome.send_replace(Some(result));
    }
}
