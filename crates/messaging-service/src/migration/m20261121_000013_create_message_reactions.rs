//! Creates `message_reactions`: one row per message, emoji and subscriber.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(MessageReactions::Table)
                    .col(uuid(MessageReactions::MessageId))
                    .col(string_len(MessageReactions::Emoji, 64))
                    .col(string_len(MessageReactions::SubscriberId, 100))
                    .col(timestamp_with_time_zone(MessageReactions::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(MessageReactions::MessageId)
                            .col(MessageReactions::Emoji)
                            .col(MessageReactions::SubscriberId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(MessageReactions::Table, MessageReactions::MessageId)
                            .to(Messages::Table, Messages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(MessageReactions::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum MessageReactions {
    Table,
    MessageId,
    Emoji,
    SubscriberId,
    CreatedAt,
}
