//! Creates `stores`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Stores::Table)
                    .col(pk_uuid(Stores::Id))
                    .col(string(Stores::Name))
                    .col(string_null(Stores::AvatarUrl))
                    .col(timestamp_with_time_zone(Stores::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Stores::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Stores {
    Table,
    Id,
    Name,
    AvatarUrl,
    CreatedAt,
}
