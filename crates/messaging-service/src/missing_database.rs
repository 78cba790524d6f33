//! A PostgreSQL database that the URL names but that does not exist yet is created on first
//! start (as a SQLite file is), so `--database-url postgres://…/newcomer_demo` just works.
//!
//! Creation goes through the server's maintenance database (`postgres`, else `template1`) with
//! the URL's own credentials, so it needs a role allowed to create databases; without that
//! right the error says how to create the database by hand. Replicas starting together may race
//! to create it: the loser sees "already exists" and carries on.

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
/// PostgreSQL's `duplicate_database`: someone created it in the meantime.
const DUPLICATE_DATABASE: &str = "42P04";

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
        let _ = connection.close().await;
        return match created {
            Ok(()) => {
                tracing::warn!(database = %name, "the database did not exist: created it (empty)");
                Ok(())
            }
            Err(err) if sqlstate(&err).as_deref() == Some(DUPLICATE_DATABASE) => Ok(()),
            Err(source) => Err(StartupError::CreateDatabase { name, source }),
        };
    }
    Err(StartupError::CreateDatabase {
        name,
        source: connect_error.expect("the loop tried at least one maintenance database"),
    })
}

async fn create_on(connection: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let sql = format!("CREATE DATABASE {}", quote_identifier(name));
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(connection)
        .await
        .map(|_| ())
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
