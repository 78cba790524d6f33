//! Adds seed 004's message fields and channel publishing state to `messages`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            string_len(Messages::MessageType, 32)
                .default("text")
                .to_owned(),
            string_null(Messages::Event),
            text_null(Messages::MediaUrls),
            string_len_null(Messages::SubscriberId, 100),
            string_null(Messages::ResourceId),
            uuid_null(Messages::ChannelId),
            timestamp_with_time_zone_null(Messages::PublishToChannelAt),
            timestamp_with_time_zone_null(Messages::PublishedAt),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // A channel's timeline: published messages in publishing order.
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_channel_timeline")
                    .table(Messages::Table)
                    .col(Messages::ChannelId)
                    .col(Messages::PublishedAt)
                    .col(Messages::Id)
                    .to_owned(),
            )
            .await?;
        // The publisher's work list: unpublished messages by due time.
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_due")
                    .table(Messages::Table)
                    .col(Messages::PublishedAt)
                    .col(Messages::PublishToChannelAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_messages_due")
                    .table(Messages::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_messages_channel_timeline")
                    .table(Messages::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Messages::PublishedAt,
            Messages::PublishToChannelAt,
            Messages::ChannelId,
            Messages::ResourceId,
            Messages::SubscriberId,
            Messages::MediaUrls,
            Messages::Event,
            Messages::MessageType,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    MessageType,
    Event,
    MediaUrls,
    SubscriberId,
    ResourceId,
    ChannelId,
    PublishToChannelAt,
    PublishedAt,
}
