//! PostgreSQL: the sends this process makes into one thread at the same time commit together.
//!
//! Writers to one thread queue on its advisory lock (`events`: it keeps the feed in commit order
//! per thread), held through their writes and their commit with its WAL flush, which no other
//! send into that thread can share. So sixteen concurrent sends into one busy thread took turns
//! of three round trips and a flush each, and the last waited for all the others.
//!
//! A send into a thread the process knows (`known_threads`) reaches its commit having sent
//! nothing: its guard, its writes and its events are one statement. Such a send is queued here
//! ([`QueuedSend`]) instead of taking the lock itself. One task per thread (spawned: a request
//! whose client goes away is dropped at any await, and other requests' writes must not be lost
//! with it) takes what is queued and runs it as one transaction: the thread's lock, each send's
//! statement in the order they came (each guard sees the writes before it), one commit. Every
//! send is answered after that commit, so nothing acknowledged is lost when the process dies.
//! While it runs, the next sends queue, and the task takes them next (up to
//! [`MOST_PER_BATCH`] at a time); it ends when none are left. When a statement fails (a stale
//! guard, a constraint) the transaction is rolled back and each send runs again alone, in a
//! transaction of its own, and gets its own outcome: one send's error never fails another. A
//! failed commit fails every send in it, none half.
//!
//! Per process: each replica batches its own sends and its batches queue on the thread's lock
//! like any other writer. A rule that sends a statement before its commit (an idempotent
//! request's guard, a send that reopens a resolved thread and reads it back) begins its own
//! transaction, with the lock, at that statement, and commits it alone.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex, PoisonError},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, Statement, TransactionTrait,
};
use tokio::sync::{OnceCell, oneshot};
use uuid::Uuid;

use crate::events::lock_statement;

/// The most sends one transaction takes: it holds the thread's lock, and its rows, for all of
/// their statements, one after another, while other replicas' writers to the thread wait.
const MOST_PER_BATCH: usize = 64;

/// Each thread's queued sends, while a task commits them (per process).
pub(crate) struct ThreadBatches {
    db: DatabaseConnection,
    /// A thread is here while its task runs; its list holds the sends queued since the task
    /// last took them.
    queues: Mutex<HashMap<Uuid, Vec<Queued>>>,
}

struct Queued {
    statements: Vec<Statement>,
    answer: oneshot::Sender<Result<(), DbErr>>,
}

impl ThreadBatches {
    pub(crate) fn new(db: DatabaseConnection) -> Arc<Self> {
        Arc::new(Self {
            db,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// A transaction for one send into `thread`, begun only if the rule sends a statement
    /// before its commit.
    pub(crate) fn begin(self: &Arc<Self>, thread: Uuid) -> QueuedSend {
        QueuedSend {
            batches: Arc::clone(self),
            thread,
            begun: OnceCell::new(),
        }
    }

    /// Runs `statements` with the other sends queued into `thread`, and answers once they are
    /// committed.
    async fn submit(
        self: &Arc<Self>,
        thread: Uuid,
        statements: Vec<Statement>,
    ) -> Result<(), DbErr> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued { statements, answer };
        let lead = match self.lock_queues().entry(thread) {
            Entry::Occupied(mut running) => {
                running.get_mut().push(queued);
                false
            }
            Entry::Vacant(idle) => {
                idle.insert(vec![queued]);
                true
            }
        };
        if lead {
            tokio::spawn(
                Batcher {
                    batches: Arc::clone(self),
                    thread,
                    done: false,
                }
                .run(),
            );
        }
        answered.await.map_err(|_| {
            DbErr::Custom("the thread's batch ended without committing this send".to_owned())
        })?
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Queued>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A transaction holding `thread`'s lock.
    async fn locked(&self, thread: Uuid) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.db.begin().await?;
        txn.execute_raw(lock_statement(&[thread])).await?;
        Ok(txn)
    }
}

/// The task committing one thread's queued sends. When it ends early (a panic, the runtime
/// shutting down) its thread is let go: the sends queued are answered with an error, and the
/// next send starts a new task.
struct Batcher {
    batches: Arc<ThreadBatches>,
    thread: Uuid,
    /// Whether it ended by finding nothing queued (and so let go of the thread itself).
    done: bool,
}

/// Why a batch's transaction failed.
enum Failed {
    /// Before the commit: nothing was written.
    Statement(DbErr),
    Commit(DbErr),
}

impl Batcher {
    async fn run(mut self) {
        while let Some(batch) = self.next() {
            self.commit(batch).await;
        }
    }

    /// The sends queued longest, up to [`MOST_PER_BATCH`]; `None`, letting go of the thread,
    /// when nothing is queued.
    fn next(&mut self) -> Option<Vec<Queued>> {
        let mut queues = self.batches.lock_queues();
        let queued = queues.get_mut(&self.thread)?;
        if queued.is_empty() {
            queues.remove(&self.thread);
            self.done = true;
            return None;
        }
        let taken = queued.len().min(MOST_PER_BATCH);
        Some(queued.drain(..taken).collect())
    }

    async fn commit(&self, batch: Vec<Queued>) {
        if batch.len() > 1 {
            let all = batch
                .iter()
                .flat_map(|queued| queued.statements.iter().cloned());
            match self.transaction(all).await {
                Ok(()) => {
                    for queued in batch {
                        let _ = queued.answer.send(Ok(()));
                    }
                    return;
                }
                Err(Failed::Commit(err)) => {
                    for queued in batch {
                        let _ = queued.answer.send(Err(DbErr::Custom(format!(
                            "the commit of this send's batch failed: {err}"
                        ))));
                    }
                    return;
                }
                // Rolled back: each runs alone, below, and learns its own outcome.
                Err(Failed::Statement(_)) => {}
            }
        }
        for queued in batch {
            let outcome = match self.transaction(queued.statements.into_iter()).await {
                Ok(()) => Ok(()),
                Err(Failed::Statement(err) | Failed::Commit(err)) => Err(err),
            };
            let _ = queued.answer.send(outcome);
        }
    }

    async fn transaction(&self, statements: impl Iterator<Item = Statement>) -> Result<(), Failed> {
        let txn = self
            .batches
            .locked(self.thread)
            .await
            .map_err(Failed::Statement)?;
        for statement in statements {
            txn.execute_raw(statement)
                .await
                .map_err(Failed::Statement)?;
        }
        txn.commit().await.map_err(Failed::Commit)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        if !self.done {
            // Dropping the queued answers tells their senders.
            self.batches.lock_queues().remove(&self.thread);
        }
    }
}

/// A send's transaction into a thread this process knows (`WriteTxn`'s `Txn::Queued`).
pub(crate) struct QueuedSend {
    batches: Arc<ThreadBatches>,
    thread: Uuid,
    begun: OnceCell<DatabaseTransaction>,
}

impl QueuedSend {
    /// The send's own transaction, begun with the thread's lock at its first statement.
    pub(crate) async fn transaction(&self) -> Result<&DatabaseTransaction, DbErr> {
        self.begun
            .get_or_try_init(|| self.batches.locked(self.thread))
            .await
    }

    /// Whether the rule has sent a statement, and so has a transaction of its own.
    pub(crate) fn has_begun(&self) -> bool {
        self.begun.initialized()
    }

    /// Queues the rule's writes with the other sends into its thread; answers once committed.
    pub(crate) async fn submit(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        self.batches.submit(self.thread, statements).await
    }

    /// Commits the rule's own transaction, if it began one.
    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        match self.begun.into_inner() {
            Some(txn) => txn.commit().await,
            None => Ok(()),
        }
    }
}
