//! Creates `channels` (one per subscriber set) and `channel_members`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Channels::Table)
                    .col(pk_uuid(Channels::Id))
                    .col(uuid(Channels::StoreId))
                    .col(string_len(Channels::Mode, 8))
                    .col(string_len(Channels::SubscriberHash, 64))
                    .col(string(Channels::Name))
                    .col(timestamp_with_time_zone(Channels::CreatedAt))
                    .col(timestamp_with_time_zone(Channels::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Channels::Table, Channels::StoreId)
                            .to(Stores::Table, Stores::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_channels_subscriber_hash")
                    .table(Channels::Table)
                    .col(Channels::StoreId)
                    .col(Channels::Mode)
                    .col(Channels::SubscriberHash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The store's channel list: newest activity first.
        manager
            .create_index(
                Index::create()
                    .name("idx_channels_activity")
                    .table(Channels::Table)
                    .col(Channels::StoreId)
                    .col(Channels::Mode)
                    .col(Channels::UpdatedAt)
                    .col(Channels::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ChannelMembers::Table)
                    .col(uuid(ChannelMembers::ChannelId))
                    .col(string_len(ChannelMembers::SubscriberId, 100))
                    .col(string_len(ChannelMembers::Kind, 16))
                    .col(string(ChannelMembers::Name))
                    .col(string_null(ChannelMembers::Email))
                    .col(string_null(ChannelMembers::Phone))
                    .primary_key(
                        Index::create()
                            .col(ChannelMembers::ChannelId)
                            .col(ChannelMembers::SubscriberId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChannelMembers::Table, ChannelMembers::ChannelId)
                            .to(Channels::Table, Channels::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // A customer's channels.
        manager
            .create_index(
                Index::create()
                    .name("idx_channel_members_subscriber")
                    .table(ChannelMembers::Table)
                    .col(ChannelMembers::SubscriberId)
                    .col(ChannelMembers::ChannelId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChannelMembers::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Channels::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Stores {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Channels {
    Table,
    Id,
    StoreId,
    Mode,
    SubscriberHash,
    Name,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ChannelMembers {
    Table,
    ChannelId,
    SubscriberId,
    Kind,
    Name,
    Email,
    Phone,
}
