//! The event feed (brief section 8): every change a reader could see becomes an event, written
//! by [`record`] in the transaction of the change (an outbox: both commit or neither), and read
//! back in one order by the long-poll, the stream (`hub`) and any other reader ([`read_after`]).
//!
//! **Positions.** An event's position is `(xid, seq)`: on PostgreSQL the id of the transaction
//! that wrote it (`pg_current_xact_id()`, a column default) and a sequence number; on SQLite
//! `xid` is 0 and `seq` alone orders the feed, because its one writer commits in `seq` order.
//! A sequence alone is not enough on PostgreSQL: transactions take their numbers in one order
//! and commit in another, so a reader that has passed 11 would never see 10 commit later.
//! Readers therefore only read up to the *frontier*: events of transactions older than every
//! transaction still running (`xid < pg_snapshot_xmin(pg_current_snapshot())`). Nothing can
//! commit behind the frontier, so a reader that follows the feed from a position receives
//! every later event exactly once.
//!
//! **Order per thread.** Every write transaction that records events takes its threads'
//! locks ([`WriteTxn::lock_threads`]: a transaction-scoped advisory lock on PostgreSQL) before
//! its first write. A transaction gets its id at its first write, so of two transactions on one
//! thread the one that commits first (it held the lock first) also has the smaller id: feed
//! order is commit order on every thread. `lock_threads` refuses to run once the transaction
//! has an id, so a rule that writes before locking fails loudly instead of reordering events.
//!
//! Event ids are the position, encoded opaquely (base64url of the two numbers).

mod follow;
mod hub;
mod retention;
mod transaction;

pub use hub::EventFeedSettings;
pub(crate) use hub::{EventHub, Gate};
pub(crate) use transaction::{Txn, WriteTxn, lock_statement};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use messaging_api::{Event, EventType, Message, Subscriber, Thread};
use poem_openapi::types::{ParseFromJSON, ToJSON};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use crate::{
    entity::{event, event_prune_mark, thread},
    error::ServiceError,
    now,
};

/// A place in the feed: every event at or before it has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub xid: i64,
    pub seq: i64,
}

impl Position {
    /// Before every event.
    pub const START: Self = Self { xid: 0, seq: 0 };

    /// The opaque form: an event's `id`, `next_after`, `Last-Event-ID`.
    pub fn encode(self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.xid.to_be_bytes());
        bytes[8..].copy_from_slice(&self.seq.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses what [`Position::encode`] wrote; anything else is 400 `invalid_event_id`.
    pub fn decode(text: &str) -> Result<Self, ServiceError> {
        let invalid = || {
            ServiceError::bad_request(
                "invalid_event_id",
                "after (or Last-Event-ID) must be an event id or next_after the feed gave out.",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
        let xid = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let seq = i64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
        if xid < 0 || seq < 0 {
            return Err(invalid());
        }
        Ok(Self { xid, seq })
    }
}

/// Whose event it is: the gates readers apply.
#[derive(Debug, Clone)]
pub(crate) struct EventScope {
    pub store_id: Uuid,
    pub mode: String,
    /// The customer of the thread: the one customer who may read it.
    pub customer_id: Uuid,
    pub thread_id: Uuid,
    /// Only the store may read it.
    pub store_only: bool,
}

impl EventScope {
    /// An event about `thread`, readable by the store and the thread's customer.
    pub fn of(thread: &thread::Model) -> Self {
        Self {
            store_id: thread.store_id,
            mode: thread.mode.clone(),
            customer_id: thread.customer_id,
            thread_id: thread.id,
            store_only: false,
        }
    }

    /// An event of a thread of `store_id` in test mode, with a fresh customer and thread.
    #[cfg(test)]
    pub fn in_test_mode(store_id: Uuid) -> Self {
        Self {
            store_id,
            mode: "test".to_owned(),
            customer_id: Uuid::now_v7(),
            thread_id: Uuid::now_v7(),
            store_only: false,
        }
    }

    /// The same event, readable by the store only.
    pub fn store_only(self, store_only: bool) -> Self {
        Self { store_only, ..self }
    }
}

/// What happened, with the objects in their wire form: the REST answers' own types.
pub(crate) enum EventData<'a> {
    ThreadCreated {
        thread: &'a Thread,
        message: &'a Message,
    },
    ThreadUpdated(&'a Thread),
    ThreadRead(&'a Thread),
    MessageCreated(&'a Message),
    MessageUpdated(&'a Message),
    MessageDeleted {
        message_id: Uuid,
        deleted_at: DateTime<Utc>,
    },
    SubscriberAdded(&'a Subscriber),
    SubscriberRemoved(&'a Subscriber),
    ChannelMessagePublished {
        channel_id: Uuid,
        message: &'a Message,
    },
}

impl EventData<'_> {
    fn event_type(&self) -> EventType {
        match self {
            Self::ThreadCreated { .. } => EventType::ThreadCreated,
            Self::ThreadUpdated(_) => EventType::ThreadUpdated,
            Self::ThreadRead(_) => EventType::ThreadRead,
            Self::MessageCreated(_) => EventType::MessageCreated,
            Self::MessageUpdated(_) => EventType::MessageUpdated,
            Self::MessageDeleted { .. } => EventType::MessageDeleted,
            Self::SubscriberAdded(_) => EventType::SubscriberAdded,
            Self::SubscriberRemoved(_) => EventType::SubscriberRemoved,
            Self::ChannelMessagePublished { .. } => EventType::ChannelMessagePublished,
        }
    }

    /// The `data` object, as the wire type serialises it.
    fn wire(&self) -> messaging_api::EventData {
        let mut data = messaging_api::EventData::default();
        match self {
            Self::ThreadCreated { thread, message } => {
                data.thread = Some((*thread).clone());
                data.message = Some((*message).clone());
            }
            Self::ThreadUpdated(thread) | Self::ThreadRead(thread) => {
                data.thread = Some((*thread).clone());
            }
            Self::MessageCreated(message) | Self::MessageUpdated(message) => {
                data.message = Some((*message).clone());
            }
            Self::MessageDeleted {
                message_id,
                deleted_at,
            } => {
                data.message_id = Some(*message_id);
                data.deleted_at = Some(*deleted_at);
            }
            Self::SubscriberAdded(subscriber) | Self::SubscriberRemoved(subscriber) => {
                data.subscriber = Some((*subscriber).clone());
            }
            Self::ChannelMessagePublished {
                channel_id,
                message,
            } => {
                data.channel_id = Some(*channel_id);
                data.message = Some((*message).clone());
            }
        }
        data
    }
}

/// Records one event in the transaction of the change it describes: it is written with the
/// transaction's commit (all of a transaction's events in one statement) or not at all. The
/// only way events are written: every rule that changes what a reader could see calls it.
pub(crate) async fn record(
    txn: &WriteTxn,
    scope: &EventScope,
    data: EventData<'_>,
) -> Result<(), ServiceError> {
    let payload = data.wire().to_json_string();
    txn.push_event(event::ActiveModel {
        seq: NotSet,
        // A column default: the writing transaction's id on PostgreSQL, 0 on SQLite.
        xid: NotSet,
        store_id: Set(scope.store_id),
        mode: Set(scope.mode.clone()),
        customer_id: Set(scope.customer_id),
        thread_id: Set(Some(scope.thread_id)),
        store_only: Set(scope.store_only),
        event_type: Set(data.event_type().as_str().to_owned()),
        payload: Set(payload),
        created_at: Set(now()),
    });
    Ok(())
}

/// An event as stored, with what readers gate on.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub position: Position,
    pub store_id: Uuid,
    pub mode: String,
    pub customer_id: Uuid,
    pub thread_id: Option<Uuid>,
    pub store_only: bool,
    pub event_type: String,
    /// The `data` object as JSON text.
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

impl StoredEvent {
    fn from_row(row: event::Model) -> Self {
        Self {
            position: Position {
                xid: row.xid,
                seq: row.seq,
            },
            store_id: row.store_id,
            mode: row.mode,
            customer_id: row.customer_id,
            thread_id: row.thread_id,
            store_only: row.store_only,
            event_type: row.event_type,
            payload: row.payload,
            created_at: row.created_at,
        }
    }

    /// The event object of section 8 (`id`, `type`, `created_at`, `thread_id`, `data`).
    pub fn to_wire(&self) -> Result<Event, ServiceError> {
        let corrupt = |what: String| {
            ServiceError::internal(std::io::Error::other(format!(
                "stored event {}: {what}",
                self.position.encode()
            )))
        };
        let value: serde_json::Value =
            serde_json::from_str(&self.payload).map_err(|e| corrupt(e.to_string()))?;
        let data = messaging_api::EventData::parse_from_json(Some(value))
            .map_err(|e| corrupt(e.into_message()))?;
        let r#type = self.event_type.parse::<EventType>().map_err(corrupt)?;
        Ok(Event {
            id: self.position.encode(),
            r#type,
            created_at: self.created_at,
            thread_id: self.thread_id,
            data,
        })
    }

    /// The event object as JSON text: what webhooks POST.
    #[allow(dead_code)] // for the webhook dispatcher, which reads the feed with `read_after`
    pub fn to_json_string(&self) -> Result<String, ServiceError> {
        Ok(self.to_wire()?.to_json_string())
    }
}

/// The frontier: every event at or before it belongs to a finished transaction, and every
/// event committed from now on comes after it.
pub(crate) async fn frontier<C: ConnectionTrait>(conn: &C) -> Result<Position, DbErr> {
    match conn.get_database_backend() {
        DbBackend::Postgres => {
            let row = conn
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin",
                ))
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("the snapshot's xmin".to_owned()))?;
            let xmin: i64 = row.try_get("", "xmin")?;
            // Transaction `xmin` may still be running: the frontier is just before it.
            Ok(Position { xid: xmin, seq: 0 })
        }
        _ => {
            let newest: Option<i64> = event::Entity::find()
                .select_only()
                .column_as(event::Column::Seq.max(), "newest")
                .into_tuple()
                .one(conn)
                .await?
                .flatten();
            Ok(Position {
                xid: 0,
                seq: newest.unwrap_or(0),
            })
        }
    }
}

/// Positions after `after` (exclusive) up to `until` (inclusive), as a condition that the
/// `(xid, seq)` index serves. When both share an xid (always on SQLite, where every xid is 0) it
/// is that xid and a range of `seq`: SQLite reads only a row value's first column from an index,
/// so `(xid, seq) > (0, n)` would visit every event of the feed on each read.
fn between(after: Position, until: Position) -> Condition {
    if after.xid == until.xid {
        return Condition::all()
            .add(event::Column::Xid.eq(after.xid))
            .add(event::Column::Seq.gt(after.seq))
            .add(event::Column::Seq.lte(until.seq));
    }
    let position = || Expr::tuple([Expr::col(event::Column::Xid), Expr::col(event::Column::Seq)]);
    let at = |p: Position| Expr::tuple([Expr::val(p.xid), Expr::val(p.seq)]);
    Condition::all()
        .add(position().gt(at(after)))
        .add(position().lte(at(until)))
}

/// The events a gate admits between `after` (exclusive) and `until` (inclusive), oldest first.
async fn read_between<C: ConnectionTrait>(
    conn: &C,
    gate: Option<&Gate>,
    after: Position,
    until: Position,
    limit: u64,
) -> Result<Vec<StoredEvent>, DbErr> {
    let mut select = event::Entity::find().filter(between(after, until));
    if let Some(gate) = gate {
        select = select
            .filter(event::Column::StoreId.eq(gate.store_id))
            .filter(event::Column::Mode.eq(gate.mode.as_str()));
        if let Some(customer) = gate.customer_id {
            select = select
                .filter(event::Column::CustomerId.eq(customer))
                .filter(event::Column::StoreOnly.eq(false));
        }
    }
    let rows = select
        .order_by_asc(event::Column::Xid)
        .order_by_asc(event::Column::Seq)
        .limit(limit)
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(StoredEvent::from_row).collect())
}

/// Up to `limit` events of the whole feed (every store and mode) after `after` (from the
/// oldest retained when `None`), oldest first, never past the frontier: a reader that passes
/// each batch's last position back as `after` sees every event exactly once, in commit order
/// per thread. For readers of their own (webhook dispatch); callers apply their own gates.
#[allow(dead_code)] // the webhook dispatcher's entry point; the hub reads through `read_page`
pub(crate) async fn read_after<C: ConnectionTrait>(
    conn: &C,
    after: Option<&Position>,
    limit: u64,
) -> Result<Vec<StoredEvent>, DbErr> {
    let until = frontier(conn).await?;
    read_between(
        conn,
        None,
        after.copied().unwrap_or(Position::START),
        until,
        limit,
    )
    .await
}

/// One page of a reader's feed.
#[derive(Debug)]
pub(crate) struct Page {
    pub events: Vec<StoredEvent>,
    /// Where the next page starts: the last event's position, or the frontier when the page
    /// holds everything up to it (so readers skip over other readers' events for good).
    pub next: Position,
    /// Whether the page reached the frontier.
    pub complete: bool,
}

/// Up to `limit` events the gate admits after `after` (`None`: the whole feed).
pub(crate) async fn read_page<C: ConnectionTrait>(
    conn: &C,
    gate: Option<&Gate>,
    after: Position,
    limit: u64,
) -> Result<Page, DbErr> {
    let until = frontier(conn).await?;
    let events = read_between(conn, gate, after, until, limit).await?;
    let complete = (events.len() as u64) < limit;
    let next = match events.last() {
        Some(last) if !complete => last.position,
        _ => until.max(after),
    };
    Ok(Page {
        events,
        next,
        complete,
    })
}

/// Where the retained feed starts: the newest position retention pruned, or the very start.
pub(crate) async fn retained_from<C: ConnectionTrait>(conn: &C) -> Result<Position, DbErr> {
    let mark = event_prune_mark::Entity::find_by_id(retention::MARK_ID)
        .one(conn)
        .await?;
    Ok(mark.map_or(Position::START, |mark| Position {
        xid: mark.xid,
        seq: mark.seq,
    }))
}

/// 410 `events_expired` when retention has pruned events after `after`.
pub(crate) async fn ensure_retained<C: ConnectionTrait>(
    conn: &C,
    after: Position,
) -> Result<(), ServiceError> {
    if after < retained_from(conn).await? {
        return Err(ServiceError::gone(
            "events_expired",
            "Events after this position are past the retained window: fetch the state \
             again, then follow the feed from a new position (without after).",
        ));
    }
    Ok(())
}

/// A gate built from a caller's store, mode and customer.
pub(crate) fn gate_of(caller: &crate::auth::Caller) -> Gate {
    Gate {
        store_id: caller.store_id,
        mode: caller.mode,
        customer_id: caller.customer_id(),
    }
}

impl Gate {
    /// Whether a reader behind this gate may see `event`: its store and mode; for a customer,
    /// only its own threads' events and nothing store-only.
    pub fn admits(&self, event: &StoredEvent) -> bool {
        event.store_id == self.store_id
            && event.mode == self.mode.as_str()
            && match self.customer_id {
                Some(customer) => event.customer_id == customer && !event.store_only,
                None => true,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_order() {
        let a = Position { xid: 7, seq: 99 };
        let b = Position { xid: 8, seq: 1 };
        assert_eq!(Position::decode(&a.encode()).unwrap(), a);
        assert!(a < b);
        assert!(Position::decode("not an id").is_err());
        assert!(Position::decode("").is_err());
        assert!(Position::decode(&URL_SAFE_NO_PAD.encode([0xffu8; 16])).is_err());
    }

    /// An event is part of its transaction: rolled back (here: dropped without commit), it
    /// never reaches the feed; committed, it does.
    #[tokio::test]
    async fn a_rolled_back_transaction_leaves_no_event() {
        let service = crate::in_memory_service().await;
        let scope = EventScope::in_test_mode(Uuid::now_v7());
        let deleted = || EventData::MessageDeleted {
            message_id: Uuid::now_v7(),
            deleted_at: now(),
        };
        let txn = service.begin_write().await.unwrap();
        record(&txn, &scope, deleted()).await.unwrap();
        drop(txn);
        assert!(
            read_after(service.writer(), None, 10)
                .await
                .unwrap()
                .is_empty()
        );

        let txn = service.begin_write().await.unwrap();
        record(&txn, &scope, deleted()).await.unwrap();
        txn.commit().await.unwrap();
        let events = read_after(service.writer(), None, 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "message.deleted");
        assert_eq!(
            events[0].to_wire().unwrap().thread_id,
            Some(scope.thread_id)
        );
    }

    /// A read of the feed on SQLite is a search of the position index on `xid` and a range of
    /// `seq`, not a walk over every event with the same `xid` (all of them, on SQLite).
    #[tokio::test]
    async fn a_read_on_sqlite_searches_a_range_of_seq() {
        let service = crate::in_memory_service().await;
        let after = Position { xid: 0, seq: 10 };
        let until = Position { xid: 0, seq: 20 };
        let select = event::Entity::find()
            .filter(between(after, until))
            .order_by_asc(event::Column::Xid)
            .order_by_asc(event::Column::Seq);
        let plan = crate::sqlite_plan(&service, select).await;
        assert!(
            plan.contains("xid=? AND seq>? AND seq<?"),
            "the plan reads a range of seq: {plan}"
        );
    }
}
