//! Adds seed 004's resource fields and the channel link to `threads`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for column in [
            string_null(Threads::ResourceId),
            string_null(Threads::LocationId),
            string_null(Threads::Name),
            uuid_null(Threads::ChannelId),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Threads::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // One thread per resource within a store and mode (NULLs do not collide).
        manager
            .create_index(
                Index::create()
                    .name("uq_threads_resource")
                    .table(Threads::Table)
                    .col(Threads::StoreId)
                    .col(Threads::Mode)
                    .col(Threads::ResourceId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_threads_channel")
                    .table(Threads::Table)
                    .col(Threads::ChannelId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_threads_channel")
                    .table(Threads::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("uq_threads_resource")
                    .table(Threads::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Threads::ChannelId,
            Threads::Name,
            Threads::LocationId,
            Threads::ResourceId,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Threads::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Threads {
    Table,
    StoreId,
    Mode,
    ResourceId,
    LocationId,
    Name,
    ChannelId,
}
