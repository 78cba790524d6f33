//! Creates `webhook_endpoints`: where a store's backend receives its events, per store and mode.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookEndpoints::Table)
                    .col(pk_uuid(WebhookEndpoints::Id))
                    .col(uuid(WebhookEndpoints::StoreId))
                    .col(string_len(WebhookEndpoints::Mode, 8))
                    .col(string_len(WebhookEndpoints::Url, 2048))
                    .col(string_len(WebhookEndpoints::EventTypes, 1024))
                    .col(string_len_null(WebhookEndpoints::Description, 500))
                    .col(string_len(WebhookEndpoints::SecretSalt, 64))
                    .col(boolean(WebhookEndpoints::Enabled))
                    .col(timestamp_with_time_zone(WebhookEndpoints::CreatedAt))
                    .col(timestamp_with_time_zone(WebhookEndpoints::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookEndpoints::Table, WebhookEndpoints::StoreId)
                            .to(Stores::Table, Stores::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // A store's endpoints in one mode, oldest first; the dispatcher's lookup per event.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_endpoints_store")
                    .table(WebhookEndpoints::Table)
                    .col(WebhookEndpoints::StoreId)
                    .col(WebhookEndpoints::Mode)
                    .col(WebhookEndpoints::CreatedAt)
                    .col(WebhookEndpoints::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookEndpoints::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Stores {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    Id,
    StoreId,
    Mode,
    Url,
    EventTypes,
    Description,
    SecretSalt,
    Enabled,
    CreatedAt,
    UpdatedAt,
}
