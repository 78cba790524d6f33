//! Creates `webhook_dispatch_positions`: how far the webhook dispatcher has read the event feed
//! (one row, moved by compare-and-set in the transaction that queues the deliveries).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookDispatchPositions::Table)
                    .col(integer(WebhookDispatchPositions::Id).primary_key())
                    .col(big_integer(WebhookDispatchPositions::Xid))
                    .col(big_integer(WebhookDispatchPositions::Seq))
                    .col(timestamp_with_time_zone(
                        WebhookDispatchPositions::UpdatedAt,
                    ))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(WebhookDispatchPositions::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookDispatchPositions {
    Table,
    Id,
    Xid,
    Seq,
    UpdatedAt,
}
