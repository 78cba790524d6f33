//! Creates `messages` with the index behind a thread's history (live messages by time).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .col(pk_uuid(Messages::Id))
                    .col(uuid(Messages::ThreadId))
                    .col(uuid(Messages::StoreId))
                    .col(string_len(Messages::Mode, 8))
                    .col(string_len(Messages::SenderType, 16))
                    .col(uuid_null(Messages::SenderId))
                    .col(text(Messages::MessageContent))
                    .col(boolean(Messages::IsEdited))
                    .col(timestamp_with_time_zone_null(Messages::EditedAt))
                    .col(boolean(Messages::IsDeleted))
                    .col(timestamp_with_time_zone_null(Messages::DeletedAt))
                    .col(timestamp_with_time_zone(Messages::CreatedAt))
                    .col(timestamp_with_time_zone(Messages::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Messages::Table, Messages::ThreadId)
                            .to(Threads::Table, Threads::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // A thread's history: WHERE thread_id AND NOT is_deleted ORDER BY created_at, id (either way).
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_history")
                    .table(Messages::Table)
                    .col(Messages::ThreadId)
                    .col(Messages::IsDeleted)
                    .col(Messages::CreatedAt)
                    .col(Messages::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Messages::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Threads {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ThreadId,
    StoreId,
    Mode,
    SenderType,
    SenderId,
    MessageContent,
    IsEdited,
    EditedAt,
    IsDeleted,
    DeletedAt,
    CreatedAt,
    UpdatedAt,
}
