//! PostgreSQL test databases, crates.io style: one template database, migrated once per
//! migration set, and a cheap `CREATE DATABASE … TEMPLATE` clone per test, dropped afterwards.

use std::{path::Path, time::Duration};

use messaging_service::MessagingService;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// The server tests use unless `TEST_DATABASE_URL` names another.
const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// Key of the advisory lock that serialises template creation across test processes.
const TEMPLATE_LOCK_KEY: i64 = 0x6d65_7373_6167_696e; // "messagin"

/// The template's name once it exists, or why PostgreSQL cannot be used.
static TEMPLATE: OnceCell<Result<String, String>> = OnceCell::const_new();

/// A database of one test, dropped (with `FORCE`) when this value drops.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Clones the template into a fresh database. `None` when PostgreSQL is unreachable outside
    /// CI (the first such test of the binary prints a `SKIPPED` line); under `CI=true` that
    /// panics.
    pub async fn create() -> Option<Self> {
        let template = match TEMPLATE.get_or_init(prepare_template).await {
            Ok(template) => template,
            Err(reason) => return skip_or_fail(reason),
        };
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect_admin()
            .await
            .expect("PostgreSQL answered a moment ago");
        admin
            .execute_unprepared(&format!(
                r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#
            ))
            .await
            .unwrap_or_else(|err| panic!("could not clone the template database: {err}"));
        let _ = admin.close().await;
        Some(Self {
            url: database_url(&server_url(), &name),
            name,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which must not be blocked on; use another one.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(drop_database(&name))
                .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "warning: test database {} was not dropped: {dropped:?}",
                self.name
            );
        }
    }
}

async fn drop_database(name: &str) -> Result<(), DbErr> {
    let admin = connect_admin().await?;
    admin
        .execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
        .await?;
    admin.close().await
}

fn skip_or_fail<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("CI=true and PostgreSQL is unusable: {reason}");
    }
    announce_skip(reason);
    None
}

/// Says once per test binary, in `cargo test`'s own output, that its PostgreSQL tests pass
/// without running. Written to the process's stderr, not with `eprintln!`: the test harness
/// captures that and shows it only for failing tests, and a skipped test passes.
fn announce_skip(reason: &str) {
    use std::io::Write as _;
    static ANNOUNCED: std::sync::Once = std::sync::Once::new();
    ANNOUNCED.call_once(|| {
        // `target/debug/deps/auth-<16 hex digits>` is the `auth` suite.
        let path = std::env::args().next().unwrap_or_default();
        let stem = Path::new(&path)
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let binary = match stem.rsplit_once('-') {
            Some((name, hash))
                if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                name.to_owned()
            }
            _ => stem,
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED (no PostgreSQL): {reason}; every PostgreSQL test in {binary} passes without \
             running (CI=true makes them fail instead)"
        );
    });
}

/// The PostgreSQL server, without a database name.
fn server_url() -> String {
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned());
    database_url(&url, "").trim_end_matches('/').to_owned()
}

/// `server` with its database (path) replaced by `name`, keeping any query string.
fn database_url(server: &str, name: &str) -> String {
    let (base, query) = server
        .split_once('?')
        .map_or((server, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut url = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// One connection to the `postgres` database: advisory locks are per session.
async fn connect_admin() -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(database_url(&server_url(), "postgres"));
    options
        .max_connections(1)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Makes sure the template for the current migrations exists; returns its name.
async fn prepare_template() -> Result<String, String> {
    let admin = connect_admin()
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", server_url()))?;
    let name = template_name();
    let result = with_advisory_lock(&admin, create_template_if_missing(&admin, &name)).await;
    let _ = admin.close().await;
    result
        .map(|()| name)
        .map_err(|err| format!("cannot prepare the template database: {err}"))
}

async fn with_advisory_lock<T>(
    admin: &DatabaseConnection,
    work: impl Future<Output = Result<T, DbErr>>,
) -> Result<T, DbErr> {
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK_KEY})"))
        .await?;
    let result = work.await;
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK_KEY})"))
        .await?;
    result
}

/// Builds the template under a temporary name and renames it when complete, so a crash never
/// leaves a half-migrated template behind.
async fn create_template_if_missing(admin: &DatabaseConnection, name: &str) -> Result<(), DbErr> {
    if database_exists(admin, name).await? {
        return Ok(());
    }
    let building = format!("{name}_building");
    admin
        .execute_unprepared(&format!(
            r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#
        ))
        .await?;
    admin
        .execute_unprepared(&format!(r#"CREATE DATABASE "{building}""#))
        .await?;
    migrate(&database_url(&server_url(), &building)).await?;
    admin
        .execute_unprepared(&format!(
            r#"ALTER DATABASE "{building}" RENAME TO "{name}""#
        ))
        .await?;
    Ok(())
}

async fn migrate(url: &str) -> Result<(), DbErr> {
    let service = MessagingService::connect(url, crate::test_service_config())
        .await
        .map_err(|err| DbErr::Custom(format!("migrating the template failed: {err}")))?;
    service.database().close_by_ref().await
}

async fn database_exists(admin: &DatabaseConnection, name: &str) -> Result<bool, DbErr> {
    let query = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT 1 FROM pg_database WHERE datname = $1",
        [name.into()],
    );
    Ok(admin.query_one_raw(query).await?.is_some())
}

/// `messaging_template_<hash>`, the hash covering the service's migration sources, so a new or
/// changed migration gets a new template.
fn template_name() -> String {
    let service_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/messaging-service/src");
    let mut files = Vec::new();
    collect_migration_files(&service_src, false, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for file in &files {
        let relative = file.strip_prefix(&service_src).unwrap_or(file);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(file).unwrap_or_default());
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("messaging_template_{hex}")
}

/// Every file whose path mentions `migration`, below `dir`.
fn collect_migration_files(
    dir: &Path,
    inside_migrations: bool,
    files: &mut Vec<std::path::PathBuf>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_migration =
            inside_migrations || entry.file_name().to_string_lossy().contains("migration");
        if path.is_dir() {
            collect_migration_files(&path, is_migration, files);
        } else if is_migration {
            files.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_replace_only_the_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h:1/old?sslmode=disable", "new"),
            "postgres://u:p@h:1/new?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h/", ""), "postgres://h/");
    }

    #[test]
    fn template_names_are_valid_identifiers() {
        let name = template_name();
        assert!(name.starts_with("messaging_template_"));
        assert!(name.len() <= 63);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
