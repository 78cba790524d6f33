//! Creates `threads` with the indexes behind the inbox orderings (pinned, newest first).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Threads::Table)
                    .col(pk_uuid(Threads::Id))
                    .col(uuid(Threads::StoreId))
                    .col(string_len(Threads::Mode, 8))
                    .col(uuid(Threads::CustomerId))
                    .col(string_null(Threads::CustomerName))
                    .col(string_null(Threads::CustomerEmail))
                    .col(string_null(Threads::CustomerPhone))
                    .col(string_null(Threads::OrderId))
                    .col(string_null(Threads::ProductId))
                    .col(string(Threads::Subject))
                    .col(string_len(Threads::ThreadType, 32))
                    .col(string_len(Threads::Status, 16))
                    .col(string_len(Threads::Priority, 16))
                    .col(timestamp_with_time_zone(Threads::LastMessageAt))
                    .col(string_len_null(Threads::LastMessageBy, 16))
                    .col(big_integer(Threads::UnreadCountCustomer))
                    .col(big_integer(Threads::UnreadCountStore))
                    .col(boolean(Threads::IsArchived))
                    .col(boolean(Threads::IsMuted))
                    .col(boolean(Threads::IsPinned))
                    .col(timestamp_with_time_zone(Threads::CreatedAt))
                    .col(timestamp_with_time_zone(Threads::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Threads::Table, Threads::CustomerId)
                            .to(Customers::Table, Customers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // The store inbox: WHERE store_id, mode ORDER BY is_pinned DESC, last_message_at DESC, id DESC.
        manager
            .create_index(
                Index::create()
                    .name("idx_threads_inbox")
                    .table(Threads::Table)
                    .col(Threads::StoreId)
                    .col(Threads::Mode)
                    .col(Threads::IsPinned)
                    .col(Threads::LastMessageAt)
                    .col(Threads::Id)
                    .to_owned(),
            )
            .await?;
        // A customer list: the same ordering within one customer.
        manager
            .create_index(
                Index::create()
                    .name("idx_threads_customer")
                    .table(Threads::Table)
                    .col(Threads::CustomerId)
                    .col(Threads::IsPinned)
                    .col(Threads::LastMessageAt)
                    .col(Threads::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Threads::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Threads {
    Table,
    Id,
    StoreId,
    Mode,
    CustomerId,
    CustomerName,
    CustomerEmail,
    CustomerPhone,
    OrderId,
    ProductId,
    Subject,
    ThreadType,
    Status,
    Priority,
    LastMessageAt,
    LastMessageBy,
    UnreadCountCustomer,
    UnreadCountStore,
    IsArchived,
    IsMuted,
    IsPinned,
    CreatedAt,
    UpdatedAt,
}
