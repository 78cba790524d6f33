//! Migrations, one per table, named by date and verb; each can be rolled back.

mod m20261121_000001_create_server_secrets;
mod m20261121_000002_create_stores;
mod m20261121_000003_create_api_keys;
mod m20261121_000004_create_customers;
mod m20261121_000005_create_refresh_tokens;
mod m20261121_000006_create_otp_codes;
mod m20261121_000007_create_threads;
mod m20261121_000008_create_messages;
mod m20261121_000009_add_thread_resources;
mod m20261121_000010_create_thread_subscribers;
mod m20261121_000011_create_channels;
mod m20261121_000012_add_message_channel_fields;
mod m20261121_000013_create_message_reactions;
mod m20261121_000014_reindex_customer_threads;
mod m20261129_000100_create_events;
mod m20261129_000120_create_idempotency_keys;
mod m20261129_000121_create_message_edits;
mod m20261129_000140_create_login_failures;
mod m20261129_000160_create_webhook_endpoints;
mod m20261129_000161_create_webhook_deliveries;
mod m20261129_000162_create_webhook_attempts;
mod m20261129_000163_create_webhook_dispatch_positions;
mod m20261130_000180_narrow_due_index;
mod m20261130_000190_notify_after_commit;
mod m20261130_000200_create_stale_reads;

use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr, sqlx};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

/// Every migration of the service, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_server_secrets::Migration),
            Box::new(m20261121_000002_create_stores::Migration),
            Box::new(m20261121_000003_create_api_keys::Migration),
            Box::new(m20261121_000004_create_customers::Migration),
            Box::new(m20261121_000005_create_refresh_tokens::Migration),
            Box::new(m20261121_000006_create_otp_codes::Migration),
            Box::new(m20261121_000007_create_threads::Migration),
            Box::new(m20261121_000008_create_messages::Migration),
            Box::new(m20261121_000009_add_thread_resources::Migration),
            Box::new(m20261121_000010_create_thread_subscribers::Migration),
            Box::new(m20261121_000011_create_channels::Migration),
            Box::new(m20261121_000012_add_message_channel_fields::Migration),
            Box::new(m20261121_000013_create_message_reactions::Migration),
            Box::new(m20261121_000014_reindex_customer_threads::Migration),
            Box::new(m20261129_000100_create_events::Migration),
            Box::new(m20261129_000120_create_idempotency_keys::Migration),
            Box::new(m20261129_000121_create_message_edits::Migration),
            Box::new(m20261129_000140_create_login_failures::Migration),
            Box::new(m20261129_000160_create_webhook_endpoints::Migration),
            Box::new(m20261129_000161_create_webhook_deliveries::Migration),
            Box::new(m20261129_000162_create_webhook_attempts::Migration),
            Box::new(m20261129_000163_create_webhook_dispatch_positions::Migration),
            Box::new(m20261130_000180_narrow_due_index::Migration),
            Box::new(m20261130_000190_notify_after_commit::Migration),
            Box::new(m20261130_000200_create_stale_reads::Migration),
        ]
    }
}

/// Key of the PostgreSQL advisory lock held while migrating.
const MIGRATION_LOCK_KEY: i64 = 0x6d65_7373_6d69_6772; // "messmigr"

/// Applies every pending migration. On PostgreSQL, processes starting together (replicas
/// after a deploy) take turns through an advisory lock: two migrators at once would both try
/// to create the same tables, and one would fail.
pub async fn run(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    // Advisory locks belong to a session: hold one connection for the lock, migrate on others.
    let mut lock = db
        .get_postgres_connection_pool()
        .acquire()
        .await
        .map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(err.into())))?;
    let exec = |err: sqlx::Error| DbErr::Exec(RuntimeErr::SqlxError(err.into()));
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *lock)
        .await
        .map_err(exec)?;
    let migrated = Migrator::up(db, None).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *lock)
        .await
        .map_err(exec);
    migrated.and(unlocked.map(|_| ()))
}
