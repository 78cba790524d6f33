//! The messaging service: implements the generated `MessagingApi` trait on SeaORM entities.
//!
//! This crate knows storage, auth and the rules of the product; it knows nothing of HTTP framing.
//! Wire types come from `messaging-api` and are converted explicitly from entities.

mod api;
mod auth;
mod channels;
mod checkpoint;
mod config;
mod cursor;
pub mod entity;
mod error;
mod events;
mod group_commit;
pub mod idempotency;
mod known_threads;
pub mod limits;
mod login_failures;
mod messages;
mod migration;
mod missing_database;
mod reactions;
mod sqlite_memory;
mod stores;
mod subscribers;
mod thread_batches;
mod threads;
mod webhooks;
mod wire;

pub use auth::ApiKeyParts;
pub use channels::PUBLISHED_MESSAGES_METRIC;
pub use config::{
    DEFAULT_POSTGRES_MAX_CONNECTIONS, OtpChannel, OtpDelivery, OtpMessage, OtpOutbox,
    ServiceConfig, SmtpConfigError, SmtpSender, WEBHOOK_RETRY_SCHEDULE, WebhookSettings,
};
pub use error::{ServiceError, StartupError};
pub use events::EventFeedSettings;
pub use login_failures::LoginAttempt;
pub use stores::{CreatedStore, KeyInfo, RotatedKey};
pub use webhooks::metrics as webhook_metrics;

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use tokio_util::task::AbortOnDropHandle;

/// The service: a database connection pool plus the keys and settings the rules need.
/// Cheap to clone; every clone shares the same pool.
#[derive(Clone)]
pub struct MessagingService {
    inner: Arc<Inner>,
}

struct Inner {
    /// The connections, and how writes reach them (see `Database`).
    db: Database,
    keys: auth::ServerKeys,
    config: ServiceConfig,
    /// Recently verified API keys, by keyed hash (never the key itself).
    key_cache: moka::sync::Cache<String, auth::Caller>,
    /// Whether a customer is a member of a channel (`channels.rs`, `customer_in_channel`).
    channel_membership: moka::sync::Cache<(uuid::Uuid, uuid::Uuid), bool>,
    /// The threads this process sent into last (`known_threads`).
    known_threads: known_threads::KnownThreads,
    /// This process's fan-out of the event feed.
    events: Arc<events::EventHub>,
    /// Wakes this process's webhook worker when deliveries were queued here.
    webhook_wakeup: Arc<tokio::sync::Notify>,
}

/// How long a verified API key is trusted without asking the database again. Revoking or
/// rotating through this process takes effect at once; elsewhere (the CLI, other replicas)
/// within this time.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// How many (channel, customer) memberships each process keeps: a few MB.
const CHANNEL_MEMBERSHIP_CACHE: u64 = 100_000;

impl MessagingService {
    /// Connects to `database_url` (`sqlite://…`, `sqlite::memory:` or `postgres://…`), runs
    /// pending migrations and loads the server keys.
    pub async fn connect(database_url: &str, config: ServiceConfig) -> Result<Self, StartupError> {
        let db = Database::connect(database_url, config.postgres_max_connections).await?;
        migration::run(&db.writer)
            .await
            .map_err(StartupError::Migrate)?;
        let keys = auth::ServerKeys::load(&db.writer, config.secret.as_deref()).await?;
        // Where this process's tail reader starts: read before any request can open a stream,
        // so every stream's own starting position is at or after it (`events/hub.rs`).
        let feed_start = events::frontier(db.reader.as_ref().unwrap_or(&db.writer))
            .await
            .map_err(StartupError::EventFeed)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                keys,
                config,
                key_cache: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(KEY_CACHE_TTL)
                    .build(),
                channel_membership: moka::sync::Cache::new(CHANNEL_MEMBERSHIP_CACHE),
                known_threads: known_threads::KnownThreads::new(),
                events: Arc::new(events::EventHub::new(feed_start)),
                webhook_wakeup: Arc::new(tokio::sync::Notify::new()),
            }),
        })
    }

    /// The connection that writes, for administration and tests.
    pub fn database(&self) -> &DatabaseConnection {
        self.writer()
    }

    /// The database pools' connections: idle and in use.
    pub fn pool_status(&self) -> PoolStatus {
        let Database { writer, reader, .. } = &self.inner.db;
        std::iter::once(writer)
            .chain(reader)
            .map(|db| match db.get_database_backend() {
                sea_orm::DbBackend::Postgres => {
                    let pool = db.get_postgres_connection_pool();
                    (pool.size(), pool.num_idle())
                }
                _ => {
                    let pool = db.get_sqlite_connection_pool();
                    (pool.size(), pool.num_idle())
                }
            })
            .fold(PoolStatus { idle: 0, in_use: 0 }, |status, (size, idle)| {
                PoolStatus {
                    idle: status.idle + idle,
                    in_use: status.in_use + (size as usize).saturating_sub(idle),
                }
            })
    }

    /// Whether the database answers.
    pub async fn health(&self) -> Result<(), DbErr> {
        self.reader()
            .execute_unprepared("SELECT 1")
            .await
            .map(|_| ())
    }

    /// The connection every write goes through (transactions, single statements, background
    /// work). On SQLite it is one connection: writers wait their turn for it in order, in the
    /// pool's queue, instead of sleeping in SQLite's busy handler.
    fn writer(&self) -> &DatabaseConnection {
        &self.inner.db.writer
    }

    /// Connections for reads that write nothing. On SQLite a pool of read-only connections
    /// beside the writer (WAL: readers never wait for it); on PostgreSQL the same pool as the
    /// writer.
    fn reader(&self) -> &DatabaseConnection {
        self.inner
            .db
            .reader
            .as_ref()
            .unwrap_or(&self.inner.db.writer)
    }

    fn backend(&self) -> sea_orm::DbBackend {
        self.inner.db.writer.get_database_backend()
    }

    /// Starts a transaction that will write (and may record events), on the writer. On SQLite
    /// it is a savepoint in the open batch of writes (`group_commit`), which holds the write lock
    /// (`BEGIN IMMEDIATE`); the rule takes its turn on the writer with its first statement, and
    /// one that sends none before its commit queues its writes instead.
    async fn begin_write(&self) -> Result<events::WriteTxn, DbErr> {
        use sea_orm::TransactionTrait;
        let txn = match &self.inner.db.group_commit {
            Some(group) => events::Txn::Batch(group.begin()),
            None => events::Txn::Own(self.writer().begin().await?),
        };
        Ok(events::WriteTxn::new(txn, self.inner.events.clone()))
    }

    /// A write transaction for a send into `thread`, which this process knows
    /// (`known_threads`). On PostgreSQL it is queued with the other sends into that thread
    /// (`thread_batches`) and takes the thread's lock; on SQLite it is [`Self::begin_write`]'s.
    async fn begin_send(&self, thread: uuid::Uuid) -> Result<events::WriteTxn, DbErr> {
        match &self.inner.db.thread_batches {
            Some(batches) => Ok(events::WriteTxn::new(
                events::Txn::Queued(batches.begin(thread)),
                self.inner.events.clone(),
            )),
            None => self.begin_write().await,
        }
    }
}

/// The connections: one that writes, and on a SQLite file a pool of read-only ones beside it.
struct Database {
    writer: DatabaseConnection,
    reader: Option<DatabaseConnection>,
    /// On SQLite, the batches write transactions commit in (`group_commit`).
    group_commit: Option<group_commit::GroupCommit>,
    /// On PostgreSQL, the sends into one thread that commit together (`thread_batches`).
    thread_batches: Option<Arc<thread_batches::ThreadBatches>>,
    /// On a SQLite file, the task that checkpoints the write-ahead log (`checkpoint`).
    _checkpoints: Option<AbortOnDropHandle<()>>,
}

impl Database {
    /// Opens the pools. A SQLite file URL creates the file (and its directory) on first start; a
    /// PostgreSQL database that does not exist yet is created (`missing_database`).
    ///
    /// SQLite has one write lock per file. With several pooled connections that write, a writer
    /// that finds the lock taken sleeps in the busy handler and polls, so a write's latency was
    /// set by those sleeps (a p99 of hundreds of milliseconds under load), not by its work. Here
    /// every write goes through one connection: writers queue for it in the pool's fair queue
    /// and each finds the lock free. Reads run on their own read-only pool and, with WAL, never
    /// wait for the writer. PostgreSQL locks rows, not the database: one pool does both.
    async fn connect(
        database_url: &str,
        postgres_max_connections: u32,
    ) -> Result<Self, StartupError> {
        let Some(path) = sqlite_file_path(database_url) else {
            if database_url.starts_with("sqlite:") {
                // Every connection to `sqlite::memory:` would see its own empty database.
                let writer = open(database_url, Pool::Only).await?;
                return Ok(Self {
                    group_commit: Some(group_commit::GroupCommit::start(writer.clone())),
                    writer,
                    reader: None,
                    thread_batches: None,
                    _checkpoints: None,
                });
            }
            let writer = open(
                database_url,
                Pool::Postgres {
                    max_connections: postgres_max_connections,
                },
            )
            .await?;
            return Ok(Self {
                thread_batches: Some(thread_batches::ThreadBatches::new(writer.clone())),
                writer,
                reader: None,
                group_commit: None,
                _checkpoints: None,
            });
        };
        if let Some(dir) = std::path::Path::new(&path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StartupError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // The writer first: it creates the file and switches it to WAL.
        let writer = open(database_url, Pool::SqliteWriter).await?;
        let reader = open(database_url, Pool::SqliteReaders).await?;
        let checkpointer = open(database_url, Pool::SqliteCheckpointer).await?;
        let group_commit = group_commit::GroupCommit::start(writer.clone());
        Ok(Self {
            _checkpoints: Some(checkpoint::start(
                checkpointer,
                path.into(),
                group_commit.pause(),
            )),
            group_commit: Some(group_commit),
            writer,
            reader: Some(reader),
            thread_batches: None,
        })
    }
}

/// Which pool `open` makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// PostgreSQL: one pool for reads and writes.
    Postgres { max_connections: u32 },
    /// `sqlite::memory:`: one connection for everything.
    Only,
    /// The one connection that writes to a SQLite file.
    SqliteWriter,
    /// Read-only connections to a SQLite file.
    SqliteReaders,
    /// The connection that checkpoints a SQLite file's write-ahead log.
    SqliteCheckpointer,
}

/// Rows a SQLite connection's worker thread sends ahead of the task reading them: the largest
/// page (200 items and the one that tells whether there are more) and the query's result. With
/// sqlx's default of 50, the worker stopped in the middle of every page of 50 and waited for the
/// task to take rows, two more thread switches per page (getThreadMessages +5%).
const ROW_BUFFER: usize = 256;

/// The writer's page cache, in KiB (1 024 pages of 4 KiB). A commit can cost a walk over every
/// page in the writer's cache: when a transaction splits a b-tree page and renumbers the pages
/// it made, SQLite moves a page through the locking page's number (page 262 145) on the way, and
/// at the end of the transaction `pcache1Truncate` finds that number past its hash table and
/// visits every cached page. A batch of sends nearly always splits a page of some index, so with
/// the readers' 64 MiB the writer spent about a third of its time in that walk. The writer needs
/// little cache: the pages it reads but does not change come through the memory map, and what it
/// keeps are the batch's dirty pages and the log's newest pages.
const WRITER_CACHE_KIB: u32 = 4_096;

/// The size, in bytes, the write-ahead log file is cut back to when it restarts from its
/// beginning (`checkpoint.rs`): above what a steady load writes between two checkpoints (the
/// send benchmark writes up to about 100 MB), so the file is not cut and grown again each time.
const WAL_SIZE_LIMIT: u64 = 128 << 20;

async fn open(database_url: &str, pool: Pool) -> Result<DatabaseConnection, StartupError> {
    let mut options = sea_orm::ConnectOptions::new(database_url.to_owned());
    options.sqlx_logging(false);
    if let Pool::Postgres { max_connections } = pool {
        options.max_connections(max_connections);
        // A server, a proxy or a firewall may drop a connection that sat idle; a busy one is
        // known alive (sqlx also pings each connection as it returns to the pool). Ping only
        // those idle for a while, not on every checkout.
        options.test_before_acquire_if_idle_for(std::time::Duration::from_secs(10));
        return match sea_orm::Database::connect(options.clone()).await {
            Err(err) if missing_database::is_missing_database(&err) => {
                missing_database::create(database_url).await?;
                sea_orm::Database::connect(options)
                    .await
                    .map_err(StartupError::Connect)
            }
            connected => connected.map_err(StartupError::Connect),
        };
    }
    sqlite_memory::configure();
    // WAL lets readers run beside the single writer; NORMAL sync is safe with WAL (a crash of
    // the process loses nothing: each commit is in the log file before it is answered; a power
    // cut may lose the last commits); a 64 MiB page cache per connection keeps the hot indexes
    // in memory, and memory-mapped reads share one copy of the file's pages (the operating
    // system's) between all connections instead of each reading its own into its cache. The
    // busy timeout only covers other processes (the CLI, a backup): in this one, one
    // connection writes. The writer's own cache is small (`WRITER_CACHE_KIB`).
    options.map_sqlx_sqlite_opts(move |opts| {
        let opts = opts
            .create_if_missing(pool != Pool::SqliteReaders)
            .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .pragma("cache_size", "-65536")
            .pragma("mmap_size", "1073741824")
            // A rule's savepoint inside a batch (`group_commit`) keeps the original of each page
            // it changes for its rollback: in memory, not in a temporary file on disk.
            .pragma("temp_store", "memory")
            .busy_timeout(std::time::Duration::from_secs(10))
            .row_buffer_size(ROW_BUFFER);
        match pool {
            // A write through a reader is a bug: it fails at once instead of taking the lock.
            Pool::SqliteReaders => opts.pragma("query_only", "ON"),
            // The log is checkpointed in the background (`checkpoint`), not in its commits.
            // After a burst, the log file shrinks back to `journal_size_limit` when it restarts.
            Pool::SqliteWriter => opts
                .pragma("wal_autocheckpoint", "0")
                .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
                .pragma("cache_size", format!("-{WRITER_CACHE_KIB}")),
            _ => opts,
        }
    });
    // Each SQLite connection runs on its own worker thread; a few readers per core keep reads
    // parallel without thrashing the scheduler.
    let connections = match pool {
        Pool::SqliteReaders => {
            2 * std::thread::available_parallelism().map_or(2, usize::from) as u32
        }
        _ => 1,
    };
    options.max_connections(connections).min_connections(1);
    if matches!(pool, Pool::SqliteWriter | Pool::Only) {
        // What a send into a known thread checks its guess against (`known_threads`).
        options.map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_connect(|conn, _| {
                Box::pin(async move {
                    sea_orm::sqlx::Executor::execute(conn, known_threads::CREATE_GUARD_TABLE)
                        .await
                        .map(drop)
                })
            })
        });
    }
    // An embedded database cannot drop a connection: no ping before each checkout (on SQLite
    // that ping is a round trip to the connection's worker thread).
    options.test_before_acquire(false);
    sea_orm::Database::connect(options)
        .await
        .map_err(StartupError::Connect)
}

fn sqlite_file_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    if rest.starts_with(":memory:") {
        return None;
    }
    Some(rest.split('?').next().unwrap_or(rest).to_owned())
}

/// The database pool's connections, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub idle: usize,
    pub in_use: usize,
}

/// The current time at the database's precision (microseconds), so what is written is what is
/// read back and what cursors encode.
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

/// A service on a private in-memory SQLite database, with the default settings: what the unit
/// tests of this crate run against.
#[cfg(test)]
pub(crate) async fn in_memory_service() -> MessagingService {
    MessagingService::connect("sqlite::memory:", ServiceConfig::default())
        .await
        .expect("an in-memory SQLite database opens")
}

/// SQLite's plan for `query` (`EXPLAIN QUERY PLAN`), its steps joined with `; `, for tests that
/// check which index a query reads.
#[cfg(test)]
pub(crate) async fn sqlite_plan(
    service: &MessagingService,
    query: impl sea_orm::QueryTrait,
) -> String {
    let query = query.build(sea_orm::DbBackend::Sqlite);
    service
        .reader()
        .query_all_raw(sea_orm::Statement {
            sql: format!("EXPLAIN QUERY PLAN {}", query.sql),
            ..query
        })
        .await
        .expect("SQLite explains the query")
        .into_iter()
        .map(|row| row.try_get::<String>("", "detail").expect("a plan step"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    /// `.cargo/config.toml` compiles the bundled SQLite with the query planner stability
    /// guarantee. Without it SQLite re-plans every statement with `LIMIT ?` (every page, every
    /// single-row lookup) on each run; that was a third of getThread's time.
    #[tokio::test]
    async fn bundled_sqlite_is_compiled_with_the_workspace_flags() {
        let db =
            super::Database::connect("sqlite::memory:", super::DEFAULT_POSTGRES_MAX_CONNECTIONS)
                .await
                .unwrap()
                .writer;
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT sqlite_compileoption_used('ENABLE_QPSG') AS qpsg, \
                 sqlite_compileoption_used('DEFAULT_MEMSTATUS=0') AS no_memstatus",
            ))
            .await
            .unwrap()
            .unwrap();
        let qpsg: i64 = row.try_get("", "qpsg").unwrap();
        let no_memstatus: i64 = row.try_get("", "no_memstatus").unwrap();
        assert_eq!(
            (qpsg, no_memstatus),
            (1, 1),
            "LIBSQLITE3_FLAGS in .cargo/config.toml did not reach libsqlite3-sys"
        );
    }
}
