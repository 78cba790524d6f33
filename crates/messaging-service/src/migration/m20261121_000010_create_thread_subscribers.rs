//! Creates `thread_subscribers` and gives every existing thread its customer and store.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ThreadSubscribers::Table)
                    .col(uuid(ThreadSubscribers::ThreadId))
                    .col(string_len(ThreadSubscribers::SubscriberId, 100))
                    .col(string_len(ThreadSubscribers::Kind, 16))
                    .col(string(ThreadSubscribers::Name))
                    .col(string_null(ThreadSubscribers::Email))
                    .col(string_null(ThreadSubscribers::Phone))
                    .col(boolean(ThreadSubscribers::IsArchived))
                    .col(timestamp_with_time_zone_null(ThreadSubscribers::ViewedAt))
                    .col(big_integer(ThreadSubscribers::UnreadCount))
                    .col(timestamp_with_time_zone(ThreadSubscribers::CreatedAt))
                    .col(timestamp_with_time_zone(ThreadSubscribers::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(ThreadSubscribers::ThreadId)
                            .col(ThreadSubscribers::SubscriberId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ThreadSubscribers::Table, ThreadSubscribers::ThreadId)
                            .to(Threads::Table, Threads::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        backfill(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ThreadSubscribers::Table).to_owned())
            .await
    }
}

/// Threads created before subscribers existed get their contact and organization.
async fn backfill(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    use sea_orm::ConnectionTrait;
    let db = manager.get_connection();
    let select = Query::select()
        .columns([
            (Threads::Table, Threads::Id),
            (Threads::Table, Threads::StoreId),
            (Threads::Table, Threads::CustomerId),
            (Threads::Table, Threads::CustomerName),
            (Threads::Table, Threads::CustomerEmail),
            (Threads::Table, Threads::CustomerPhone),
            (Threads::Table, Threads::CreatedAt),
        ])
        .column((Stores::Table, Stores::Name))
        .from(Threads::Table)
        .inner_join(
            Stores::Table,
            Expr::col((Stores::Table, Stores::Id)).equals((Threads::Table, Threads::StoreId)),
        )
        .to_owned();
    let rows = db.query_all(&select).await?;
    for row in rows {
        let thread: sea_orm::prelude::Uuid = row.try_get_by_index(0)?;
        let store: sea_orm::prelude::Uuid = row.try_get_by_index(1)?;
        let customer: sea_orm::prelude::Uuid = row.try_get_by_index(2)?;
        let customer_name: Option<String> = row.try_get_by_index(3)?;
        let customer_email: Option<String> = row.try_get_by_index(4)?;
        let customer_phone: Option<String> = row.try_get_by_index(5)?;
        let at: sea_orm::prelude::DateTimeUtc = row.try_get_by_index(6)?;
        let store_name: String = row.try_get_by_index(7)?;
        let insert = Query::insert()
            .into_table(ThreadSubscribers::Table)
            .columns([
                ThreadSubscribers::ThreadId,
                ThreadSubscribers::SubscriberId,
                ThreadSubscribers::Kind,
                ThreadSubscribers::Name,
                ThreadSubscribers::Email,
                ThreadSubscribers::Phone,
                ThreadSubscribers::IsArchived,
                ThreadSubscribers::UnreadCount,
                ThreadSubscribers::CreatedAt,
                ThreadSubscribers::UpdatedAt,
            ])
            .values_panic([
                thread.into(),
                customer.to_string().into(),
                "contact".into(),
                customer_name.unwrap_or_default().into(),
                customer_email.into(),
                customer_phone.into(),
                false.into(),
                0i64.into(),
                at.into(),
                at.into(),
            ])
            .values_panic([
                thread.into(),
                store.to_string().into(),
                "organization".into(),
                store_name.into(),
                Option::<String>::None.into(),
                Option::<String>::None.into(),
                false.into(),
                0i64.into(),
                at.into(),
                at.into(),
            ])
            .to_owned();
        db.execute(&insert).await?;
    }
    Ok(())
}

#[derive(DeriveIden)]
enum Stores {
    Table,
    Id,
    Name,
}

#[derive(DeriveIden)]
enum Threads {
    Table,
    Id,
    StoreId,
    CustomerId,
    CustomerName,
    CustomerEmail,
    CustomerPhone,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ThreadSubscribers {
    Table,
    ThreadId,
    SubscriberId,
    Kind,
    Name,
    Email,
    Phone,
    IsArchived,
    ViewedAt,
    UnreadCount,
    CreatedAt,
    UpdatedAt,
}
