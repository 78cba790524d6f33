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
mod m20261129_000140_create_login_failures;

use sea_orm::DatabaseConnection;
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
            Box::new(m20261129_000140_create_login_failures::Migration),
        ]
    }
}

/// Applies every pending migration.
pub async fn run(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    Migrator::up(db, None).await
}
