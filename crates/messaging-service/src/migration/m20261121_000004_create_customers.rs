//! Creates `customers`: unique by email within a store and mode.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .col(pk_uuid(Customers::Id))
                    .col(uuid(Customers::StoreId))
                    .col(string_len(Customers::Mode, 8))
                    .col(string(Customers::Email))
                    .col(string(Customers::Name))
                    .col(string_null(Customers::Phone))
                    .col(text_null(Customers::PasswordHash))
                    .col(timestamp_with_time_zone(Customers::CreatedAt))
                    .col(timestamp_with_time_zone(Customers::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Customers::Table, Customers::StoreId)
                            .to(Stores::Table, Stores::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_customers_store_mode_email")
                    .table(Customers::Table)
                    .col(Customers::StoreId)
                    .col(Customers::Mode)
                    .col(Customers::Email)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_customers_store_mode_phone")
                    .table(Customers::Table)
                    .col(Customers::StoreId)
                    .col(Customers::Mode)
                    .col(Customers::Phone)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Customers::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Stores {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    StoreId,
    Mode,
    Email,
    Name,
    Phone,
    PasswordHash,
    CreatedAt,
    UpdatedAt,
}
