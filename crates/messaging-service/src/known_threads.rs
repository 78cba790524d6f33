//! Sends into threads this process already knows, without reading the thread first.
//!
//! A send read its thread before writing: on SQLite under the one writer connection's turn
//! (`group_commit`), on PostgreSQL under the thread's lock, held from before that read to the
//! commit. What a send takes from its thread ([`SendTarget`]: whose it is, its status, its
//! channel) rarely changes, so each process keeps it for the threads it sent into last
//! ([`KnownThreads`]). A send into a known thread reads nothing: its writes go behind a guard
//! ([`SendTarget::guard`]) that fails them, before anything is written, unless the thread still
//! is as kept. On SQLite they do not even take the turn: they are queued and run with the other
//! queued writes in one call (`group_commit`). On PostgreSQL the send takes the thread's lock
//! and then sends the guard and its writes as one statement (`events::transaction`), which sees
//! the thread as the writer before it left it: the lock is held for the writes and the commit,
//! not for a read besides. A send whose guard failed is rolled back and runs again the usual
//! way, reading its thread.
//!
//! What is kept is only a guess, checked by the database in the same statement as the writes it
//! decided: so it is per process without harm, and nothing has to tell this process that another
//! rule, another replica, the CLI or a rolled-back batch changed a thread. What never changes
//! (the thread's store, mode, customer and resource) is not checked; what rules change (its
//! status, its channel, and for a staff user its membership) is.

use sea_orm::{
    ColumnTrait, DbBackend, DbErr, EntityName, Statement,
    sea_query::{Alias, Expr, ExprTrait, Query},
};
use uuid::Uuid;

use crate::{
    auth::Caller,
    entity::{thread, thread_subscriber},
    error::ServiceError,
    events::EventScope,
    subscribers::Participant,
};

/// How many threads each process keeps: about 45 MB at about 450 bytes each, the cache's own
/// bookkeeping included (measured with the benchmark's 100 000 threads).
const CAPACITY: u64 = 100_000;

/// The table a failed guard inserts into: on SQLite a temporary table of the writer connection
/// ([`CREATE_GUARD_TABLE`]), on PostgreSQL a table of the schema (its migration
/// `m20261130_000200_create_stale_reads`), empty in both.
const GUARD_TABLE: &str = "stale_reads";
/// The name of its constraint, which the error of a failed guard names.
const GUARD_CONSTRAINT: &str = "stale_read";

/// The thread a message goes into, as far as the message depends on it.
#[derive(Debug, Clone)]
pub(crate) struct SendTarget {
    pub id: Uuid,
    pub store_id: Uuid,
    pub mode: String,
    pub customer_id: Uuid,
    pub resource_id: Option<String>,
    pub channel_id: Option<Uuid>,
    pub status: String,
}

impl SendTarget {
    pub fn of(thread: &thread::Model) -> Self {
        Self {
            id: thread.id,
            store_id: thread.store_id,
            mode: thread.mode.clone(),
            customer_id: thread.customer_id,
            resource_id: thread.resource_id.clone(),
            channel_id: thread.channel_id,
            status: thread.status.clone(),
        }
    }

    /// Who may read events about the thread.
    pub fn scope(&self) -> EventScope {
        EventScope {
            store_id: self.store_id,
            mode: self.mode.clone(),
            customer_id: self.customer_id,
            thread_id: self.id,
            store_only: false,
        }
    }

    /// A statement that fails ([`is_stale`]) unless the thread still has this status and
    /// channel and, when `author` is a staff user, the user is still one of its active
    /// subscribers (`subscribers::require_member`). It writes nothing.
    pub fn guard(&self, author: &Participant, backend: DbBackend) -> Statement {
        let mut fresh = Query::select();
        fresh
            .expr(Expr::val(1))
            .from(thread::Entity.table_ref())
            .and_where(thread::Column::Id.eq(self.id))
            .and_where(thread::Column::Status.eq(self.status.as_str()))
            .and_where(thread::Column::ChannelId.eq(self.channel_id));
        if let Participant::User(user) = author {
            let mut member = Query::select();
            member
                .expr(Expr::val(1))
                .from(thread_subscriber::Entity.table_ref())
                .and_where(thread_subscriber::Column::ThreadId.eq(self.id))
                .and_where(thread_subscriber::Column::SubscriberId.eq(user.as_str()))
                .and_where(thread_subscriber::Column::IsArchived.eq(false))
                .and_where(thread_subscriber::Column::Kind.eq("user"));
            fresh.and_where(Expr::exists(member));
        }
        let mut stale = Query::select();
        stale
            .expr(Expr::val(0))
            .and_where(Expr::exists(fresh).not());
        let insert = Query::insert()
            .into_table(Alias::new(GUARD_TABLE))
            .columns([Alias::new("ok")])
            .select_from(stale)
            .expect("one column, one value")
            .to_owned();
        backend.build(&insert)
    }
}

/// The threads this process sent into last, as it left them (bounded; per process).
pub(crate) struct KnownThreads(moka::sync::Cache<Uuid, SendTarget>);

impl KnownThreads {
    pub fn new() -> Self {
        Self(moka::sync::Cache::new(CAPACITY))
    }

    /// Thread `id` as this process last left it, if the caller may send into it as far as that
    /// tells. Anything else (a closed thread, one without a channel yet, another store's, or
    /// another customer's) is left to the usual path, which reads the thread and answers.
    pub fn get(&self, caller: &Caller, id: Uuid) -> Option<SendTarget> {
        self.0.get(&id).filter(|known| {
            known.store_id == caller.store_id
                && known.mode == caller.mode.as_str()
                && caller
                    .customer_id()
                    .is_none_or(|own| own == known.customer_id)
                && known.channel_id.is_some()
                && known.status != messaging_api::ThreadStatus::Closed.as_str()
        })
    }

    /// Keeps `target` as a send left it.
    pub fn remember(&self, target: SendTarget) {
        self.0.insert(target.id, target);
    }

    pub fn forget(&self, id: Uuid) {
        self.0.invalidate(&id);
    }
}

/// Whether `err` is a guard's ([`SendTarget::guard`]): the thread changed since it was kept.
/// PostgreSQL names the constraint in the error's fields, SQLite in its message.
pub(crate) fn is_stale(err: &ServiceError) -> bool {
    let ServiceError::Internal(source) = err else {
        return false;
    };
    let Some(DbErr::Exec(runtime) | DbErr::Query(runtime)) = source.downcast_ref::<DbErr>() else {
        return false;
    };
    let sea_orm::RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    sqlx.as_database_error().is_some_and(|db| {
        db.constraint() == Some(GUARD_CONSTRAINT)
            || db
                .message()
                .strip_prefix("CHECK constraint failed: ")
                .is_some_and(|name| name == GUARD_CONSTRAINT)
    })
}

/// Creates the table guards insert into, on each new writer connection (`open` in `lib.rs`). A
/// temporary table: it is the connection's own, never in the database file, and it stays empty
/// (a guard inserts only a row its constraint refuses). Its names are [`GUARD_TABLE`] and
/// [`GUARD_CONSTRAINT`]; the tests below fail if they differ.
pub(crate) const CREATE_GUARD_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS stale_reads \
     (ok INTEGER NOT NULL CONSTRAINT stale_read CHECK (ok))";

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use messaging_api::{CreateConversationRequest, SendMessageRequest, ThreadStatus};
    use poem_openapi::types::ParseFromJSON;
    use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    use serde_json::json;
    use uuid::Uuid;

    use crate::{
        MessagingService,
        auth::{Actor, Caller, KeyKind, Mode},
        entity::{customer, message, thread, thread_subscriber},
        error::{Kind, ServiceError},
        subscribers::Participant,
        threads::ThreadRef,
    };

    struct Shop {
        service: MessagingService,
        store: Caller,
        thread: Uuid,
    }

    impl Shop {
        /// A store, a customer, and the customer's thread with its first message, on SQLite.
        async fn open() -> Self {
            let service = crate::in_memory_service().await;
            let created = service.create_store("Acme").await.unwrap();
            let at = Utc::now();
            let customer = Uuid::now_v7();
            customer::Entity::insert(customer::ActiveModel {
                id: Set(customer),
                store_id: Set(created.store_id),
                mode: Set("test".into()),
                email: Set("jane@example.com".into()),
                name: Set("Jane".into()),
                phone: Set(None),
                password_hash: Set(None),
                created_at: Set(at),
                updated_at: Set(at),
            })
            .exec(service.database())
            .await
            .unwrap();
            let store = Caller {
                store_id: created.store_id,
                store_name: "Acme".into(),
                store_avatar: None,
                mode: Mode::Test,
                key_kind: KeyKind::Secret,
                actor: Actor::Store,
                token_expires_at: None,
            };
            let body = CreateConversationRequest::parse_from_json(Some(json!({
                "customer_id": customer,
                "subject": "Missing item",
                "message": "Where is my order?",
            })))
            .unwrap();
            let thread = service
                .create_conversation(&store, &Participant::Organization(created.store_id), body)
                .await
                .unwrap()
                .thread
                .id;
            Self {
                service,
                store,
                thread,
            }
        }

        fn organization(&self) -> Participant {
            Participant::Organization(self.store.store_id)
        }

        async fn send(&self, author: &Participant) -> Result<messaging_api::Message, ServiceError> {
            let body =
                SendMessageRequest::parse_from_json(Some(json!({"message": "Hello"}))).unwrap();
            self.service
                .send_message(&self.store, author, &ThreadRef::Id(self.thread), body)
                .await
        }

        /// The channel `sent` was written into.
        async fn channel_of(&self, sent: messaging_api::Message) -> Option<Uuid> {
            message::Entity::find_by_id(sent.id)
                .one(self.service.database())
                .await
                .unwrap()
                .unwrap()
                .channel_id
        }

        fn known(&self) -> bool {
            self.service
                .inner
                .known_threads
                .get(&self.store, self.thread)
                .is_some()
        }

        /// Changes the thread's row behind the service's back, as another process would.
        async fn set(&self, column: thread::Column, value: impl Into<sea_orm::Value>) {
            thread::Entity::update_many()
                .col_expr(column, Expr::value(value.into()))
                .filter(thread::Column::Id.eq(self.thread))
                .exec(self.service.database())
                .await
                .unwrap();
        }
    }

    fn expected(err: ServiceError) -> (Kind, &'static str) {
        match err {
            ServiceError::Expected { kind, code, .. } => (kind, code),
            other => panic!("an expected failure, not {other}"),
        }
    }

    #[tokio::test]
    async fn a_send_into_a_known_thread_sees_its_status_changed_elsewhere() {
        let shop = Shop::open().await;
        let store = shop.organization();
        shop.send(&store).await.unwrap();
        assert!(shop.known(), "a send leaves its thread known");

        // Closed by someone else: the kept status is stale, the guard fails, the send runs
        // again, reads the thread and refuses. Without the guard it would be written (201).
        shop.set(thread::Column::Status, ThreadStatus::Closed.as_str())
            .await;
        let err = shop.send(&store).await.unwrap_err();
        assert_eq!(expected(err), (Kind::Conflict, "thread_closed"));
        assert!(!shop.known(), "a failed guard forgets the thread");
        let messages = message::Entity::find()
            .filter(message::Column::ThreadId.eq(shop.thread))
            .all(shop.service.database())
            .await
            .unwrap();
        assert_eq!(messages.len(), 2, "nothing of the refused send was written");

        // Active again: known again after the next send, and sent into without reading it.
        shop.set(thread::Column::Status, ThreadStatus::Active.as_str())
            .await;
        shop.send(&store).await.unwrap();
        assert!(shop.known());
        shop.send(&store).await.unwrap();
        assert!(
            shop.known(),
            "a send whose guard held keeps the thread known"
        );
    }

    #[tokio::test]
    async fn a_send_into_a_known_thread_goes_to_its_current_channel() {
        let shop = Shop::open().await;
        let store = shop.organization();
        let first = shop.channel_of(shop.send(&store).await.unwrap()).await;
        assert!(first.is_some() && shop.known());
        // The thread moved to another channel (its subscribers changed).
        let moved = Uuid::now_v7();
        shop.set(thread::Column::ChannelId, moved).await;
        let sent = shop.channel_of(shop.send(&store).await.unwrap()).await;
        assert_eq!(sent, Some(moved), "the message follows the thread");
        assert!(shop.known(), "known again, with its new channel");
        let again = shop.channel_of(shop.send(&store).await.unwrap()).await;
        assert_eq!(again, Some(moved));
    }

    #[tokio::test]
    async fn a_staff_user_removed_from_a_known_thread_may_not_send() {
        let shop = Shop::open().await;
        let at = Utc::now();
        thread_subscriber::Entity::insert(thread_subscriber::ActiveModel {
            thread_id: Set(shop.thread),
            subscriber_id: Set("sam".into()),
            kind: Set("user".into()),
            name: Set("Sam".into()),
            email: Set(None),
            phone: Set(None),
            is_archived: Set(false),
            viewed_at: Set(None),
            unread_count: Set(0),
            created_at: Set(at),
            updated_at: Set(at),
        })
        .exec(shop.service.database())
        .await
        .unwrap();
        let sam = Participant::User("sam".into());
        shop.send(&sam).await.unwrap();
        assert!(shop.known());
        thread_subscriber::Entity::update_many()
            .col_expr(thread_subscriber::Column::IsArchived, Expr::value(true))
            .filter(thread_subscriber::Column::SubscriberId.eq("sam"))
            .exec(shop.service.database())
            .await
            .unwrap();
        let err = shop.send(&sam).await.unwrap_err();
        assert_eq!(expected(err), (Kind::Forbidden, "not_a_subscriber"));
        // The store itself is no user: its send into the same thread goes on.
        shop.send(&shop.organization()).await.unwrap();
    }
}
