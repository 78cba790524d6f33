//! Drops the trigger that sent `NOTIFY messaging_events` from inside every transaction that
//! wrote an event (PostgreSQL). A transaction that notifies takes one lock, shared by the whole
//! database cluster, from just before its commit until its commit record is on disk, so every
//! write that recorded an event committed one at a time, each waiting for its own log flush:
//! no two could share one. Each process now announces its commits itself, after them, one
//! notification for as many commits as happened meanwhile (`events::hub`).

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
        let db = manager.get_connection();
        db.execute_unprepared("DROP TRIGGER IF EXISTS events_notify ON events")
            .await?;
        db.execute_unprepared("DROP FUNCTION IF EXISTS notify_messaging_events()")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        super::m20261129_000100_create_events::create_notify_trigger(manager).await
    }
}
