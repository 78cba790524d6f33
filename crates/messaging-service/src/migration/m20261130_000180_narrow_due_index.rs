//! Replaces the publisher's index of every message with one of the unpublished messages only.
//! The publisher asks for `published_at IS NULL` and a due time; a message sent into a thread
//! with its channel is published at once, so nearly every message had an entry that query never
//! reads, and every send paid for writing it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "idx_messages_due";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_due(manager).await?;
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Messages::Table)
                    .col(Messages::PublishToChannelAt)
                    .and_where(Expr::col(Messages::PublishedAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_due(manager).await?;
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Messages::Table)
                    .col(Messages::PublishedAt)
                    .col(Messages::PublishToChannelAt)
                    .to_owned(),
            )
            .await
    }
}

async fn drop_due(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .drop_index(Index::drop().name(NAME).table(Messages::Table).to_owned())
        .await
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    PublishToChannelAt,
    PublishedAt,
}
