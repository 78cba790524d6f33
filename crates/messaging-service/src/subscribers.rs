//! Thread subscribers (seed 004): who takes part in a thread, who acts, who has unread messages.
//!
//! A participant is the customer (a contact), the store (the organization) or a staff member
//! (a user, named by `x-acting-user` with a secret key). Adding or removing a subscriber moves
//! the thread to the channel of its new set of active subscribers.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use messaging_api::{AddSubscriberRequest, Pagination, Subscriber, SubscriberList, SubscriberType};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, PaginatorTrait,
    QueryFilter, QueryOrder, QueryResult, QuerySelect, Select, SelectModel, Selector,
    sea_query::{Expr, ExprTrait},
};
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    MessagingService,
    auth::{Actor, Caller},
    cursor,
    entity::{customer, read_with_text, thread, thread_subscriber},
    error::ServiceError,
    events::{self, EventData, EventScope, WriteTxn},
    limits::MAX_SUBSCRIBERS_PER_THREAD,
    now,
    threads::{ThreadRef, from_micros, micros},
};

/// Who acts in a request, as a thread subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Participant {
    Customer(Uuid),
    Organization(Uuid),
    User(String),
}

impl Participant {
    /// The participant of a request: the token's customer, the store, or the store's staff member
    /// named by `x-acting-user` (which needs a secret key and no customer token).
    pub fn of(caller: &Caller, acting_user: Option<&str>) -> Result<Self, ServiceError> {
        match (caller.actor, acting_user) {
            (Actor::Customer(id), None) => Ok(Self::Customer(id)),
            (Actor::Customer(_), Some(_)) => Err(ServiceError::bad_request(
                "acting_user_with_token",
                "x-acting-user is for store staff; it cannot be combined with a customer token.",
            )),
            (Actor::Store, None) => Ok(Self::Organization(caller.store_id)),
            (Actor::Store, Some(user)) => Ok(Self::User(valid_subscriber_id(user)?.to_owned())),
        }
    }

    /// The subscriber id this participant has on a thread.
    pub fn subscriber_id(&self) -> String {
        match self {
            Self::Customer(id) | Self::Organization(id) => id.to_string(),
            Self::User(id) => id.clone(),
        }
    }

    pub fn is_store_side(&self) -> bool {
        !matches!(self, Self::Customer(_))
    }
}

/// Subscriber ids are 1 to 100 characters of `A-Z a-z 0-9 . _ : -`.
pub fn valid_subscriber_id(id: &str) -> Result<&str, ServiceError> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(id)
    } else {
        Err(ServiceError::bad_request(
            "invalid_subscriber_id",
            "A subscriber id has 1 to 100 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

pub fn kind_of(kind: &str) -> SubscriberType {
    match kind {
        "user" => SubscriberType::User,
        "organization" => SubscriberType::Organization,
        _ => SubscriberType::Contact,
    }
}

/// The wire form of a subscriber row.
pub fn wire_subscriber(row: &thread_subscriber::Model) -> Subscriber {
    Subscriber {
        id: row.subscriber_id.clone(),
        r#type: kind_of(&row.kind),
        name: row.name.clone(),
        email: row.email.clone(),
        phone: row.phone.clone(),
        is_archived: row.is_archived,
        viewed_at: row.viewed_at,
    }
}

/// The first subscribers of a new thread: its customer and its store.
pub fn initial_subscribers(
    thread: &thread::Model,
    customer: &customer::Model,
    store_name: &str,
    at: DateTime<Utc>,
) -> [thread_subscriber::ActiveModel; 2] {
    let row =
        |id: String, kind: &str, name: String, email: Option<String>, phone: Option<String>| {
            thread_subscriber::ActiveModel {
                thread_id: Set(thread.id),
                subscriber_id: Set(id),
                kind: Set(kind.to_owned()),
                name: Set(name),
                email: Set(email),
                phone: Set(phone),
                is_archived: Set(false),
                viewed_at: Set(None),
                unread_count: Set(0),
                created_at: Set(at),
                updated_at: Set(at),
            }
        };
    [
        row(
            customer.id.to_string(),
            "contact",
            customer.name.clone(),
            Some(customer.email.clone()),
            customer.phone.clone(),
        ),
        row(
            thread.store_id.to_string(),
            "organization",
            store_name.to_owned(),
            None,
            None,
        ),
    ]
}

/// Every subscriber of a thread (archived ones included), ordered by when they joined, then by
/// id. Pages of threads read theirs within each thread's row: [`ThreadWithSubscribers`].
pub async fn subscribers_of<C: ConnectionTrait>(
    conn: &C,
    thread_id: Uuid,
) -> Result<Vec<thread_subscriber::Model>, ServiceError> {
    Ok(thread_subscriber::Entity::find()
        .filter(thread_subscriber::Column::ThreadId.eq(thread_id))
        .order_by_asc(thread_subscriber::Column::CreatedAt)
        .order_by_asc(thread_subscriber::Column::SubscriberId)
        .all(conn)
        .await?)
}

/// A thread with all its subscribers (archived ones included), read as one row: the database
/// aggregates the subscribers into a JSON array column, so getThread and every page of
/// listThreads is one query and one row per thread, not a join that repeats the thread per
/// subscriber or a second query.
pub struct ThreadWithSubscribers {
    pub thread: thread::Model,
    /// Ordered by when they joined, then by id.
    pub subscribers: Vec<thread_subscriber::Model>,
}

/// The alias of the aggregated column.
const SUBSCRIBERS_COLUMN: &str = "subscribers_json";

impl ThreadWithSubscribers {
    /// Reads the threads `select` finds, each with its subscribers.
    pub fn select(
        select: Select<thread::Entity>,
        backend: DbBackend,
    ) -> Selector<SelectModel<Self>> {
        select
            .expr_as(
                Expr::cust(subscribers_json_sql(backend)),
                SUBSCRIBERS_COLUMN,
            )
            .into_model::<Self>()
    }
}

impl FromQueryResult for ThreadWithSubscribers {
    fn from_query_result(row: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        // By position (`entity::ReadRow`): the thread's columns, then the subscribers.
        let (thread, json) = read_with_text::<thread::Model>(row, pre)?;
        let mut subscribers = serde_json::from_str::<Vec<SubscriberJson>>(&json)
            .map_err(|e| DbErr::Type(format!("subscribers of thread {}: {e}", thread.id)))?
            .into_iter()
            .map(|s| s.into_model(thread.id))
            .collect::<Vec<_>>();
        subscribers.sort_by(|a, b| {
            (a.created_at, &a.subscriber_id).cmp(&(b.created_at, &b.subscriber_id))
        });
        Ok(Self {
            thread,
            subscribers,
        })
    }
}

/// One element of the aggregated array: a `thread_subscribers` row without its thread id.
#[derive(Deserialize)]
struct SubscriberJson {
    subscriber_id: String,
    kind: String,
    name: String,
    email: Option<String>,
    phone: Option<String>,
    is_archived: bool,
    viewed_at: Option<DateTime<Utc>>,
    unread_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl SubscriberJson {
    fn into_model(self, thread_id: Uuid) -> thread_subscriber::Model {
        thread_subscriber::Model {
            thread_id,
            subscriber_id: self.subscriber_id,
            kind: self.kind,
            name: self.name,
            email: self.email,
            phone: self.phone,
            is_archived: self.is_archived,
            viewed_at: self.viewed_at,
            unread_count: self.unread_count,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The correlated subquery that aggregates a thread's subscribers into a JSON array (text), in
/// each backend's dialect. Its keys are the columns of `thread_subscribers`, so they are the
/// fields of [`SubscriberJson`] (which leaves out the thread id: a blob on SQLite, which JSON
/// cannot hold).
fn subscribers_json_sql(backend: DbBackend) -> &'static str {
    use sea_orm::{IdenStatic, Iterable};
    use thread_subscriber::Column;

    const FROM: &str = r#"FROM "thread_subscribers" AS s WHERE s."thread_id" = "threads"."id""#;
    // PostgreSQL turns whole rows into JSON objects (its fastest way): every column, keyed by
    // its name; the thread id comes along as a string and is ignored.
    static POSTGRES: LazyLock<String> =
        LazyLock::new(|| format!("(SELECT COALESCE(json_agg(s), '[]')::text {FROM})"));
    // SQLite names each column, and keeps booleans as 0 and 1 (`json('true')` is a JSON true).
    static SQLITE: LazyLock<String> = LazyLock::new(|| {
        let pairs = Column::iter()
            .filter(|column| !matches!(column, Column::ThreadId))
            .map(|column| {
                let name = column.as_str();
                match column {
                    Column::IsArchived => format!("'{name}', json(iif(s.{name}, 'true', 'false'))"),
                    _ => format!("'{name}', s.{name}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("(SELECT json_group_array(json_object({pairs})) {FROM})")
    });
    match backend {
        DbBackend::Postgres => &POSTGRES,
        _ => &SQLITE,
    }
}

/// A user acting on a thread must be one of its active subscribers.
pub async fn require_member<C: ConnectionTrait>(
    conn: &C,
    thread_id: Uuid,
    participant: &Participant,
) -> Result<(), ServiceError> {
    let Participant::User(user) = participant else {
        return Ok(());
    };
    let member = thread_subscriber::Entity::find_by_id((thread_id, user.clone()))
        .filter(thread_subscriber::Column::IsArchived.eq(false))
        .filter(thread_subscriber::Column::Kind.eq("user"))
        .one(conn)
        .await?;
    match member {
        Some(_) => Ok(()),
        None => Err(ServiceError::forbidden(
            "not_a_subscriber",
            "The acting user is not a subscriber of this thread.",
        )),
    }
}

/// One more unread message for every active user and organization of the thread but the sender,
/// deferred to the commit (nothing reads the counts in the meantime).
pub(crate) fn count_unread(txn: &WriteTxn, thread_id: Uuid, sender: &Participant) {
    let mut update = thread_subscriber::Entity::update_many()
        .col_expr(
            thread_subscriber::Column::UnreadCount,
            Expr::col(thread_subscriber::Column::UnreadCount).add(1),
        )
        .filter(thread_subscriber::Column::ThreadId.eq(thread_id))
        .filter(thread_subscriber::Column::IsArchived.eq(false))
        .filter(thread_subscriber::Column::SubscriberId.ne(sender.subscriber_id()));
    // The store's own messages are not news to the store; staff still see each other's.
    update = if sender.is_store_side() {
        update.filter(thread_subscriber::Column::Kind.eq("user"))
    } else {
        update.filter(thread_subscriber::Column::Kind.is_in(["user", "organization"]))
    };
    txn.defer(update);
}

/// A store-side read: the organization's count (and the acting user's) go to zero and their
/// `viewed_at` moves. Contacts never get a `viewed_at`.
pub async fn mark_read<C: ConnectionTrait>(
    conn: &C,
    thread: &thread::Model,
    reader: &Participant,
) -> Result<(), ServiceError> {
    let at = now();
    let mut readers = vec![thread.store_id.to_string()];
    if let Participant::User(user) = reader {
        readers.push(user.clone());
    }
    let update = thread_subscriber::Entity::update_many()
        .col_expr(thread_subscriber::Column::UnreadCount, Expr::value(0i64))
        .filter(thread_subscriber::Column::ThreadId.eq(thread.id))
        .filter(thread_subscriber::Column::SubscriberId.is_in(readers.clone()));
    update.exec(conn).await?;
    // Only the one who looked has viewed it.
    let viewer = match reader {
        Participant::User(user) => user.clone(),
        _ => thread.store_id.to_string(),
    };
    thread_subscriber::Entity::update_many()
        .col_expr(thread_subscriber::Column::ViewedAt, Expr::value(at))
        .filter(thread_subscriber::Column::ThreadId.eq(thread.id))
        .filter(thread_subscriber::Column::SubscriberId.eq(viewer))
        .exec(conn)
        .await?;
    Ok(())
}

fn store_only() -> ServiceError {
    ServiceError::forbidden(
        "store_only_operation",
        "Only the store manages subscribers.",
    )
}

impl MessagingService {
    /// A page of a thread's subscribers, in the order they joined (then by id).
    pub(crate) async fn list_subscribers(
        &self,
        caller: &Caller,
        thread_ref: &ThreadRef,
        limit: u64,
        cursor_text: Option<&str>,
    ) -> Result<SubscriberList, ServiceError> {
        let thread = self.load_thread(self.reader(), caller, thread_ref).await?;
        let scope = format!("subscribers|{}", thread.id);
        let position = cursor_text
            .map(|c| cursor::decode_key(&self.inner.keys, &scope, c))
            .transpose()?;
        let mut select = thread_subscriber::Entity::find()
            .filter(thread_subscriber::Column::ThreadId.eq(thread.id));
        if let Some(position) = position {
            select = select.filter(
                Expr::tuple([
                    Expr::col(thread_subscriber::Column::CreatedAt),
                    Expr::col(thread_subscriber::Column::SubscriberId),
                ])
                .gt(Expr::tuple([
                    Expr::val(from_micros(position.micros)?),
                    Expr::val(position.key),
                ])),
            );
        }
        let mut rows = select
            .order_by_asc(thread_subscriber::Column::CreatedAt)
            .order_by_asc(thread_subscriber::Column::SubscriberId)
            .limit(limit + 1)
            .all(self.reader())
            .await?;
        let has_more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if has_more => Some(cursor::encode_key(
                &self.inner.keys,
                &scope,
                cursor::KeyPosition {
                    micros: micros(last.created_at),
                    key: last.subscriber_id.clone(),
                },
            )),
            _ => None,
        };
        Ok(SubscriberList {
            subscribers: rows.iter().map(wire_subscriber).collect(),
            pagination: Some(Pagination {
                limit: limit as i32,
                next_cursor,
                has_more,
            }),
        })
    }

    pub(crate) async fn add_subscriber(
        &self,
        caller: &Caller,
        thread_ref: &ThreadRef,
        body: AddSubscriberRequest,
    ) -> Result<Subscriber, ServiceError> {
        if caller.customer_id().is_some() {
            return Err(store_only());
        }
        let id = valid_subscriber_id(body.id.trim())?.to_owned();
        let txn = self.begin_write().await?;
        let thread = self.load_thread_for_write(&txn, caller, thread_ref).await?;
        let (name, email, phone) = match body.r#type {
            SubscriberType::Contact => {
                let customer = Uuid::parse_str(&id).ok().ok_or_else(|| {
                    ServiceError::bad_request(
                        "invalid_subscriber_id",
                        "A contact's id is its customer id.",
                    )
                })?;
                let customer = customer::Entity::find_by_id(customer)
                    .filter(customer::Column::StoreId.eq(caller.store_id))
                    .filter(customer::Column::Mode.eq(caller.mode.as_str()))
                    .one(&txn)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::not_found("customer_not_found", "No customer with that id.")
                    })?;
                (
                    body.name.unwrap_or(customer.name),
                    body.email.or(Some(customer.email)),
                    body.phone.or(customer.phone),
                )
            }
            SubscriberType::Organization => {
                if id != caller.store_id.to_string() {
                    return Err(ServiceError::bad_request(
                        "invalid_subscriber_id",
                        "The only organization on a thread is its store.",
                    ));
                }
                (
                    body.name.unwrap_or_else(|| caller.store_name.clone()),
                    body.email,
                    body.phone,
                )
            }
            SubscriberType::User => {
                let name = body.name.ok_or_else(|| {
                    ServiceError::bad_request("name_required", "A user subscriber needs a name.")
                })?;
                (name, body.email, body.phone)
            }
        };
        if let Some(phone) = &phone {
            crate::auth::validate_phone(phone)?;
        }
        let kind = match body.r#type {
            SubscriberType::User => "user",
            SubscriberType::Organization => "organization",
            SubscriberType::Contact => "contact",
        };
        let at = now();
        let existing = thread_subscriber::Entity::find_by_id((thread.id, id.clone()))
            .one(&txn)
            .await?;
        let row = match existing {
            Some(existing) if existing.kind != kind => {
                return Err(ServiceError::conflict(
                    "subscriber_conflict",
                    "That id is already a subscriber of another type.",
                ));
            }
            Some(existing) => {
                let mut row: thread_subscriber::ActiveModel = existing.into();
                row.is_archived = Set(false);
                row.name = Set(name);
                row.email = Set(email);
                row.phone = Set(phone);
                row.updated_at = Set(at);
                row.update(&txn).await?
            }
            None => {
                // Concurrent adds to one thread wait for the thread's lock, taken by
                // `load_thread_for_write`, so the count below cannot go stale before commit.
                let rows = thread_subscriber::Entity::find()
                    .filter(thread_subscriber::Column::ThreadId.eq(thread.id))
                    .count(&txn)
                    .await?;
                if rows >= MAX_SUBSCRIBERS_PER_THREAD {
                    return Err(ServiceError::conflict(
                        "too_many_subscribers",
                        format!(
                            "A thread has at most {MAX_SUBSCRIBERS_PER_THREAD} subscribers, removed ones included."
                        ),
                    ));
                }
                thread_subscriber::ActiveModel {
                    thread_id: Set(thread.id),
                    subscriber_id: Set(id),
                    kind: Set(kind.to_owned()),
                    name: Set(name),
                    email: Set(email),
                    phone: Set(phone),
                    is_archived: Set(false),
                    viewed_at: Set(None),
                    unread_count: Set(0),
                    created_at: Set(at),
                    updated_at: Set(at),
                }
                .insert(&txn)
                .await?
            }
        };
        self.follow_channel(&txn, &thread).await?;
        let subscriber = wire_subscriber(&row);
        events::record(
            &txn,
            &EventScope::of(&thread),
            EventData::SubscriberAdded(&subscriber),
        )
        .await?;
        self.commit(txn).await?;
        Ok(subscriber)
    }

    pub(crate) async fn remove_subscriber(
        &self,
        caller: &Caller,
        thread_ref: &ThreadRef,
        subscriber_id: &str,
    ) -> Result<Subscriber, ServiceError> {
        if caller.customer_id().is_some() {
            return Err(store_only());
        }
        let txn = self.begin_write().await?;
        let thread = self.load_thread_for_write(&txn, caller, thread_ref).await?;
        let existing = thread_subscriber::Entity::find_by_id((thread.id, subscriber_id.to_owned()))
            .filter(thread_subscriber::Column::IsArchived.eq(false))
            .one(&txn)
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "subscriber_not_found",
                    "No active subscriber with that id on this thread.",
                )
            })?;
        let mut row: thread_subscriber::ActiveModel = existing.into();
        row.is_archived = Set(true);
        row.unread_count = Set(0);
        row.updated_at = Set(now());
        let row = row.update(&txn).await?;
        self.follow_channel(&txn, &thread).await?;
        let subscriber = wire_subscriber(&row);
        events::record(
            &txn,
            &EventScope::of(&thread),
            EventData::SubscriberRemoved(&subscriber),
        )
        .await?;
        self.commit(txn).await?;
        Ok(subscriber)
    }
}
