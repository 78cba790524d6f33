//! Creates `otp_codes`: keyed hashes of one-time login codes.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OtpCodes::Table)
                    .col(pk_uuid(OtpCodes::Id))
                    .col(uuid(OtpCodes::CustomerId))
                    .col(string(OtpCodes::CodeHash))
                    .col(timestamp_with_time_zone(OtpCodes::ExpiresAt))
                    .col(integer(OtpCodes::Attempts))
                    .col(timestamp_with_time_zone_null(OtpCodes::ConsumedAt))
                    .col(timestamp_with_time_zone(OtpCodes::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(OtpCodes::Table, OtpCodes::CustomerId)
                            .to(Customers::Table, Customers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_otp_codes_customer_created")
                    .table(OtpCodes::Table)
                    .col(OtpCodes::CustomerId)
                    .col(OtpCodes::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OtpCodes::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum OtpCodes {
    Table,
    Id,
    CustomerId,
    CodeHash,
    ExpiresAt,
    Attempts,
    ConsumedAt,
    CreatedAt,
}
