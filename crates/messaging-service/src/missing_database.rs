//! A PostgreSQL database that the URL names but that does not exist yet is created on first
//! start (as a SQLite file is), so `--database-url postgres://…/newcomer_demo` just works.
//!
//! Creation goes through the server's maintenance database (`postgres`, else `template1`) with
//! the URL's own credentials, so it needs a role allowed to create databases; without that
//! right the error says how to create the database by hand. Replicas starting together agree
//! through a PostgreSQL advisory lock: one creates it, the others find it there.

use std::sync::Arc;

use sea_orm::{
    DbErr, RuntimeErr,
    sqlx::{
        self, AssertSqlSafe, ConnectOptions as _, Connection as _,
        postgres::{PgConnectOptions, PgConnection},
    },
};

use crate::error::StartupError;

/// PostgreSQL's `invalid_catalog_name`: the database in the URL does not exist.
const INVALID_CATALOG_NAME: &str = "3D000";
/// Key of the advisory lock that serialises the check and the creation across processes.
const CREATE_LOCK_KEY: i64 = 0x6d65_7373_6372_6462; // "messcrdb"

/// Whether connecting failed because the URL's database does not exist.
pub(crate) fn is_missing_database(err: &DbErr) -> bool {
    let DbErr::Conn(RuntimeErr::SqlxError(err)) = err else {
        return false;
    };
    sqlstate(err).as_deref() == Some(INVALID_CATALOG_NAME)
}

/// Creates the database `database_url` names (empty; migrations then fill it) and says so in
/// the log.
pub(crate) async fn create(database_url: &str) -> Result<(), StartupError> {
    let options: PgConnectOptions = database_url
        .parse()
        .map_err(|err| StartupError::Connect(DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err)))))?;
    // Without a database in the URL, PostgreSQL uses the user's name.
    let name = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_owned();
    let mut connect_error = None;
    for maintenance in ["postgres", "template1"] {
        let mut connection = match options.clone().database(maintenance).connect().await {
            Ok(connection) => connection,
            Err(err) => {
                connect_error = Some(err);
                continue;
            }
        };
        let created = create_on(&mut connection, &name).await;
        // Closing the session also releases its advisory lock.
        let _ = connection.close().await;
        return match created {
            Ok(true) => {
                tracing::warn!(database = %name, "the database did not exist: created it (empty)");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(source) => Err(StartupError::CreateDatabase { name, source }),
        };
    }
    Err(StartupError::CreateDatabase {
        name,
        source: connect_error.expect("the loop tried at least one maintenance database"),
    })
}

/// Creates `name` unless another process did first; `true` when this one created it. Two
/// `CREATE DATABASE` at once would fail in one of them, hence the lock around check and create.
async fn create_on(connection: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(CREATE_LOCK_KEY)
        .execute(&mut *connection)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *connection)
            .await?;
    if exists {
        return Ok(false);
    }
    let sql = format!("CREATE DATABASE {}", quote_identifier(name));
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut *connection)
        .await?;
    Ok(true)
}

/// `name` as a quoted PostgreSQL identifier: whatever it holds, it stays one name.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whole() {
        assert_eq!(quote_identifier("newcomer_demo"), r#""newcomer_demo""#);
        assert_eq!(quote_identifier("demo-1"), r#""demo-1""#);
        assert_eq!(
            quote_identifier(r#"x"; DROP DATABASE y; --"#),
            r#""x""; DROP DATABASE y; --""#
        );
    }
}
