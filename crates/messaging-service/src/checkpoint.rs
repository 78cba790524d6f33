//! Copies a SQLite file's write-ahead log back into the database file, and keeps the log from
//! growing without end.
//!
//! SQLite's automatic checkpoint runs inside the commit that fills the log past 1 000 pages: the
//! writer, and every request in its batch, waited while pages were copied and the file was
//! synced. So the writer's automatic checkpoints are off (`wal_autocheckpoint=0`, `lib.rs`) and
//! this task checkpoints on a connection of its own, every `INTERVAL`:
//!
//! 1. Passive checkpoints while the writer goes on, each followed by writing what it copied to
//!    disk: they copy every frame no reader still needs, without the write lock. This is nearly
//!    all the work; each pass leaves only what was committed while it ran.
//! 2. A last one between two batches ([`Pause::hold`]): it copies the few frames left. The log
//!    is then copied whole while no write transaction is open, so the next batch writes it again
//!    from its beginning.
//!
//! The last pass is why the log stays small. It restarts only when a write transaction begins
//! after its last frame was copied, and under steady writes a batch begins as soon as the one
//! before commits: a checkpoint running only beside them never caught up, and the log grew by
//! every page every batch wrote (7.8 GB in a 40-second send benchmark; each append had the file
//! system allocate blocks). Writing the copied pages to disk beside the writer matters too:
//! SQLite syncs the database file only when a checkpoint copied the log whole, so without it
//! the last pass, holding every writer, waited for all the passes' pages to reach the disk
//! (about 50 ms, where it now takes a few).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};
use tokio_util::task::AbortOnDropHandle;

use crate::group_commit::Pause;

/// How often the write-ahead log is copied back into the database file.
const INTERVAL: Duration = Duration::from_millis(500);

/// Passes beside the writer at most, before the last one between batches.
const PASSES_BESIDE: usize = 4;

/// A pass beside the writer this quick leaves little for the last one: no more passes beside.
const QUICK_PASS: Duration = Duration::from_millis(3);

/// Starts the checkpointer of the database file at `path` on `connection`; it stops when the
/// handle is dropped.
pub(crate) fn start(
    connection: DatabaseConnection,
    path: PathBuf,
    writer: Pause,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let checkpointer = Checkpointer {
            connection,
            path,
            writer,
        };
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Log::default();
        loop {
            ticker.tick().await;
            match checkpointer.run(last).await {
                Ok(Some(log)) => last = log,
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "checkpointing the write-ahead log failed");
                }
            }
        }
    }))
}

struct Checkpointer {
    connection: DatabaseConnection,
    /// The database file; its log is beside it, with `-wal` added.
    path: PathBuf,
    writer: Pause,
}

/// What a checkpoint reports of the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Log {
    /// Frames in the log.
    frames: i64,
    /// Frames copied into the database file.
    copied: i64,
}

impl Checkpointer {
    /// One checkpoint: passes beside the writer, then the last one between batches. `last` is
    /// the log as the previous checkpoint left it: if nothing was written since, there is
    /// nothing to do. `None` once the writer is gone.
    async fn run(&self, last: Log) -> Result<Option<Log>, CheckpointError> {
        let started = Instant::now();
        let mut log = self.passive().await?;
        if log.frames == 0 || log == last {
            return Ok(Some(log));
        }
        // Each pass copies what was committed while the one before it (and its sync) ran, so
        // they get shorter; the last pass, holding the writer, copies what the final one left.
        for _ in 1..PASSES_BESIDE {
            self.sync().await?;
            let pass = Instant::now();
            log = self.passive().await?;
            if pass.elapsed() < QUICK_PASS {
                break;
            }
        }
        let beside = started.elapsed();
        let Some(_held) = self.writer.hold().await else {
            return Ok(None);
        };
        let held = Instant::now();
        let beside_frames = log.frames;
        let log = self.passive().await?;
        tracing::debug!(
            frames = log.frames,
            left = log.frames - beside_frames,
            beside_ms = beside.as_secs_f64() * 1e3,
            between_ms = held.elapsed().as_secs_f64() * 1e3,
            "checkpointed the write-ahead log"
        );
        Ok(Some(log))
    }

    /// One passive checkpoint: it copies what no reader needs and waits for nothing.
    async fn passive(&self) -> Result<Log, DbErr> {
        let row = self
            .connection
            .query_one_raw(Statement::from_string(
                self.connection.get_database_backend(),
                "PRAGMA wal_checkpoint(PASSIVE)",
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("wal_checkpoint returned no row".to_owned()))?;
        Ok(Log {
            frames: row.try_get_by_index(1)?,
            copied: row.try_get_by_index(2)?,
        })
    }

    /// Writes the pages the passes copied, and the log's newest frames, to disk, so the last
    /// pass's syncs have little left to wait for. (A sync is of the file, whichever descriptor
    /// asks for it.)
    async fn sync(&self) -> Result<(), CheckpointError> {
        let database = self.path.clone();
        let mut log = self.path.clone().into_os_string();
        log.push("-wal");
        tokio::task::spawn_blocking(move || {
            for file in [database, PathBuf::from(log)] {
                std::fs::File::open(&file)?.sync_data()?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|join| CheckpointError::Sync(std::io::Error::other(join)))?
        .map_err(CheckpointError::Sync)
    }
}

#[derive(Debug, thiserror::Error)]
enum CheckpointError {
    #[error(transparent)]
    Database(#[from] DbErr),
    #[error("syncing the database file: {0}")]
    Sync(std::io::Error),
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use crate::{MessagingService, ServiceConfig};

    /// How many times the log has restarted from its beginning: the checkpoint sequence number in
    /// its header (bytes 12 to 15, big-endian), which each restart increments.
    fn restarts(log: &std::path::Path) -> u32 {
        let header = std::fs::read(log).expect("the log exists");
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// Writers that never pause: a batch begins as soon as the one before commits. The log
    /// still restarts (so it stays the size of what is written between checkpoints), and no
    /// write fails or waits for long.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_restarts_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messaging.db");
        let url = format!("sqlite://{}", path.display());
        let service = MessagingService::connect(&url, ServiceConfig::default())
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (service, stop) = (service.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut slowest = std::time::Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        let started = std::time::Instant::now();
                        service.create_store("steady").await.unwrap();
                        slowest = slowest.max(started.elapsed());
                    }
                    slowest
                })
            })
            .collect();
        let log = dir.path().join("messaging.db-wal");
        tokio::time::sleep(super::INTERVAL / 2).await;
        let before = restarts(&log);
        tokio::time::sleep(super::INTERVAL * 6).await;
        let after = restarts(&log);
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            let slowest = writer.await.unwrap();
            assert!(
                slowest < std::time::Duration::from_secs(2),
                "a write waited {slowest:?}"
            );
        }
        assert!(
            after >= before + 2,
            "the log restarted {} times in {:?} of steady writes",
            after - before,
            super::INTERVAL * 6
        );
    }
}
