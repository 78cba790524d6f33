//! The table a send's guard inserts into when the thread it assumed has changed (PostgreSQL;
//! `known_threads`). It stays empty: its constraint refuses every row a guard inserts, and the
//! error names the constraint. On SQLite the same table is a temporary one of the writer
//! connection (`known_threads::CREATE_GUARD_TABLE`).

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE stale_reads (ok INTEGER NOT NULL CONSTRAINT stale_read CHECK (ok <> 0))",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE stale_reads")
            .await?;
        Ok(())
    }
}
