//! Replaces the customer thread index with one that leads with store and mode too, so a
//! customer's list (store, mode and customer equal; pinned, newest first) always uses it
//! instead of scanning the store's inbox index for that customer's rows.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_threads_customer")
                    .table(Threads::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_threads_customer_inbox")
                    .table(Threads::Table)
                    .col(Threads::StoreId)
                    .col(Threads::Mode)
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
            .drop_index(
                Index::drop()
                    .name("idx_threads_customer_inbox")
                    .table(Threads::Table)
                    .to_owned(),
            )
            .await?;
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
}

#[derive(DeriveIden)]
enum Threads {
    Table,
    StoreId,
    Mode,
    CustomerId,
    IsPinned,
    LastMessageAt,
    Id,
}
