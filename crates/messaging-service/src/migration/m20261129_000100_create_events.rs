//! Creates `events`, the durable event feed (an outbox written in the transaction of each
//! change), and `event_prune_marks`, the newest position retention has pruned.
//!
//! On PostgreSQL each event row carries the id of the transaction that wrote it (`xid`, a
//! column default, so no writer can forget it) and a statement trigger sends
//! `NOTIFY messaging_events`, which PostgreSQL delivers at commit. On SQLite `xid` is 0: the one
//! writer makes the autoincrement `seq` the commit order. See `events.rs`.

use sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        let xid = if postgres {
            big_integer(Events::Xid)
                .default(Expr::cust("(pg_current_xact_id()::text::bigint)"))
                .take()
        } else {
            big_integer(Events::Xid).default(0).take()
        };
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(big_pk_auto(Events::Seq))
                    .col(xid)
                    .col(uuid(Events::StoreId))
                    .col(string_len(Events::Mode, 8))
                    .col(uuid(Events::CustomerId))
                    .col(uuid_null(Events::ThreadId))
                    .col(boolean(Events::StoreOnly))
                    .col(string_len(Events::EventType, 40))
                    .col(text(Events::Payload))
                    .col(timestamp_with_time_zone(Events::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // The whole feed in order: each process's tail reader, webhooks, pruning.
        manager
            .create_index(
                Index::create()
                    .name("idx_events_position")
                    .table(Events::Table)
                    .col(Events::Xid)
                    .col(Events::Seq)
                    .to_owned(),
            )
            .await?;
        // A store's feed, and one customer's.
        manager
            .create_index(
                Index::create()
                    .name("idx_events_store")
                    .table(Events::Table)
                    .col(Events::StoreId)
                    .col(Events::Mode)
                    .col(Events::Xid)
                    .col(Events::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_events_customer")
                    .table(Events::Table)
                    .col(Events::StoreId)
                    .col(Events::Mode)
                    .col(Events::CustomerId)
                    .col(Events::Xid)
                    .col(Events::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EventPruneMarks::Table)
                    .col(integer(EventPruneMarks::Id).primary_key())
                    .col(big_integer(EventPruneMarks::Xid))
                    .col(big_integer(EventPruneMarks::Seq))
                    .col(timestamp_with_time_zone(EventPruneMarks::PrunedAt))
                    .to_owned(),
            )
            .await?;
        if postgres {
            create_notify_trigger(manager).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(EventPruneMarks::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Events::Table).to_owned())
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS notify_messaging_events()")
                .await?;
        }
        Ok(())
    }
}

/// The trigger that notified `messaging_events` from inside each transaction that wrote events
/// (PostgreSQL); dropped by `m20261130_000190_notify_after_commit`.
pub(super) async fn create_notify_trigger(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    db.execute_unprepared(
        "CREATE FUNCTION notify_messaging_events() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify('messaging_events', ''); RETURN NULL; END $$",
    )
    .await?;
    db.execute_unprepared(
        "CREATE TRIGGER events_notify AFTER INSERT ON events \
         FOR EACH STATEMENT EXECUTE FUNCTION notify_messaging_events()",
    )
    .await?;
    Ok(())
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    Xid,
    StoreId,
    Mode,
    CustomerId,
    ThreadId,
    StoreOnly,
    EventType,
    Payload,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EventPruneMarks {
    Table,
    Id,
    Xid,
    Seq,
    PrunedAt,
}
