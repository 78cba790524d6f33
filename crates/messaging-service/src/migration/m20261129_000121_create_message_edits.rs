//! Creates `message_edits`: the version of a message each edit replaced, for its edit history.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(MessageEdits::Table)
                    .col(pk_uuid(MessageEdits::Id))
                    .col(uuid(MessageEdits::MessageId))
                    .col(text(MessageEdits::MessageContent))
                    .col(timestamp_with_time_zone(MessageEdits::EditedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(MessageEdits::Table, MessageEdits::MessageId)
                            .to(Messages::Table, Messages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // A message's history: WHERE message_id ORDER BY edited_at, id.
        manager
            .create_index(
                Index::create()
                    .name("idx_message_edits_history")
                    .table(MessageEdits::Table)
                    .col(MessageEdits::MessageId)
                    .col(MessageEdits::EditedAt)
                    .col(MessageEdits::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(MessageEdits::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum MessageEdits {
    Table,
    Id,
    MessageId,
    MessageContent,
    EditedAt,
}
