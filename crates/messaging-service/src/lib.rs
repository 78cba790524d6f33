//! The messaging service: implements the generated `MessagingApi` trait on SeaORM entities.
//!
//! This crate knows storage, auth and the rules of the product; it knows nothing of HTTP framing.
//! Wire types come from `messaging-api` and are converted explicitly from entities.

mod api;
mod auth;
mod channels;
mod config;
mod cursor;
pub mod entity;
mod error;
mod messages;
mod migration;
mod reactions;
mod stores;
mod subscribers;
mod threads;
mod wire;

pub use config::{OtpDelivery, ServiceConfig};
pub use error::{ServiceError, StartupError};
pub use stores::{CreatedStore, KeyInfo};

use std::sync::Arc;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr};

/// The service: a database connection pool plus the keys and settings the rules need.
/// Cheap to clone; every clone shares the same pool.
#[derive(Clone)]
pub struct MessagingService {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    keys: auth::ServerKeys,
    config: ServiceConfig,
}

impl MessagingService {
    /// Connects to `database_url` (`sqlite://…`, `sqlite::memory:` or `postgres://…`), runs
    /// pending migrations and loads the server keys.
    pub async fn connect(database_url: &str, config: ServiceConfig) -> Result<Self, StartupError> {
        let db = connect_database(database_url).await?;
        migration::run(&db).await.map_err(StartupError::Migrate)?;
        let keys = auth::ServerKeys::load(&db, config.secret.as_deref()).await?;
        Ok(Self {
            inner: Arc::new(Inner { db, keys, config }),
        })
    }

    /// The connection pool, for administration and tests.
    pub fn database(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// Whether the database answers.
    pub async fn health(&self) -> Result<(), DbErr> {
        self.inner
            .db
            .execute_unprepared("SELECT 1")
            .await
            .map(|_| ())
    }

    fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }
}

/// Opens a pool. A SQLite file URL creates the file (and its directory) on first start.
async fn connect_database(database_url: &str) -> Result<DatabaseConnection, StartupError> {
    let mut options = sea_orm::ConnectOptions::new(database_url.to_owned());
    options.sqlx_logging(false);
    if let Some(path) = sqlite_file_path(database_url) {
        if let Some(dir) = std::path::Path::new(&path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StartupError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        if !database_url.contains("mode=") {
            let sep = if database_url.contains('?') { '&' } else { '?' };
            options = sea_orm::ConnectOptions::new(format!("{database_url}{sep}mode=rwc"));
            options.sqlx_logging(false);
        }
    }
    if database_url.starts_with("sqlite::memory:") {
        // Every connection to `sqlite::memory:` would see its own empty database.
        options.max_connections(1).min_connections(1);
    }
    Database::connect(options)
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

/// The current time at the database's precision (microseconds), so what is written is what is
/// read back and what cursors encode.
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
