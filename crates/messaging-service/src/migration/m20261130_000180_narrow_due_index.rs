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
        recreate(
            manager,
            Index::create()
                .col(Messages::PublishToChannelAt)
                .and_where(Expr::col(Messages::PublishedAt).is_null()),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        recreate(
            manager,
            Index::create()
                .col(Messages::PublishedAt)
                .col(Messages::PublishToChannelAt),
        )
        .await
    }
}

/// Drops `idx_messages_due` and makes it again with the columns (and condition) of `index`.
async fn recreate(
    manager: &SchemaManager<'_>,
    index: &mut IndexCreateStatement,
) -> Result<(), DbErr> {
    manager
        .drop_index(Index::drop().name(NAME).table(Messages::Table).to_owned())
        .await?;
    manager
        .create_index(index.name(NAME).table(Messages::Table).to_owned())
        .await
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    PublishToChannelAt,
    PublishedAt,
}
