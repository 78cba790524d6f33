//! Threads: listing with filters and keyset pages, reading, lifecycle updates, read state, and
//! starting a conversation. The ownership gates live here (gateByCustomerId, gateByThreadId).
//!
//! A thread is named by its UUID or, for the thread of a resource, by `thrd_<resource_id>`.

use chrono::{DateTime, Utc};
use messaging_api::{
    Conversation, CreateConversationRequest, MessageType, Pagination, SenderType, Thread,
    ThreadExpand, ThreadList, ThreadPriority, ThreadStatus, ThreadType, UpdateThreadRequest,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use crate::{
    MessagingService,
    auth::{Actor, Caller},
    channels::RECENT_MESSAGES,
    cursor::{self, Position},
    entity::{ByPosition, customer, message, thread},
    error::{ServiceError, is_unique_violation},
    events::{self, EventData, EventScope, WriteTxn},
    known_threads::SendTarget,
    now,
    subscribers::{self, Participant, ThreadWithSubscribers, initial_subscribers, subscribers_of},
    wire,
    wire::ThreadFields,
};

/// The caller's thread named by `id`, scoped to its store and mode: another store's or mode's
/// thread is simply not found (404, never 403).
fn thread_query(caller: &Caller, id: &ThreadRef) -> sea_orm::Select<thread::Entity> {
    let select = thread::Entity::find()
        .filter(thread::Column::StoreId.eq(caller.store_id))
        .filter(thread::Column::Mode.eq(caller.mode.as_str()));
    match id {
        ThreadRef::Id(id) => select.filter(thread::Column::Id.eq(*id)),
        ThreadRef::Resource(resource) => {
            select.filter(thread::Column::ResourceId.eq(resource.as_str()))
        }
    }
}

/// Finds thread `id` only if the caller may read it: [`thread_query`] and, for a customer,
/// gateByThreadId. A read that tests it with `EXISTS` checks the gates in its own query; when it
/// finds nothing, [`MessagingService::load_thread`] says which gate failed.
pub(crate) fn readable_thread(caller: &Caller, id: Uuid) -> sea_orm::sea_query::SelectStatement {
    let mut select = thread_query(caller, &ThreadRef::Id(id))
        .select_only()
        .column(thread::Column::Id);
    if let Some(customer) = caller.customer_id() {
        select = select.filter(thread::Column::CustomerId.eq(customer));
    }
    sea_orm::QueryTrait::into_query(select)
}

/// gateByThreadId: a customer may only touch its own threads.
fn gate_by_thread(caller: &Caller, thread: &thread::Model) -> Result<(), ServiceError> {
    match caller.customer_id() {
        Some(customer) if thread.customer_id != customer => Err(ServiceError::forbidden(
            "thread_not_owned",
            "This thread belongs to another customer.",
        )),
        _ => Ok(()),
    }
}

/// How a request names a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadRef {
    Id(Uuid),
    /// `thrd_<resource_id>`: the thread of a resource.
    Resource(String),
}

impl ThreadRef {
    pub fn parse(text: &str) -> Result<Self, ServiceError> {
        if let Some(resource) = text.strip_prefix("thrd_")
            && !resource.is_empty()
        {
            return Ok(Self::Resource(resource.to_owned()));
        }
        Uuid::parse_str(text).map(Self::Id).map_err(|_| {
            ServiceError::bad_request(
                "invalid_path_parameter",
                "id must be a UUID or thrd_<resource_id>.",
            )
        })
    }
}

/// Filters and paging of `listThreads`, already validated by the generated layer.
pub struct ThreadQuery {
    pub customer_id: Option<Uuid>,
    pub status: Option<ThreadStatus>,
    pub priority: Option<ThreadPriority>,
    pub thread_type: Option<ThreadType>,
    pub archived: Option<bool>,
    pub unread: Option<bool>,
    pub limit: u64,
    pub cursor: Option<String>,
    pub fields: Option<String>,
}

pub fn thread_not_found() -> ServiceError {
    ServiceError::not_found("thread_not_found", "No thread with that id.")
}

/// The sender type a caller writes as.
pub fn sender_of(caller: &Caller) -> (SenderType, Uuid) {
    match caller.actor {
        Actor::Customer(id) => (SenderType::Customer, id),
        Actor::Store => (SenderType::Store, caller.store_id),
    }
}

/// Microseconds since the epoch, the unit cursors use.
pub fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub fn from_micros(micros: i64) -> Result<DateTime<Utc>, ServiceError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        ServiceError::bad_request(
            "invalid_cursor",
            "cursor was not issued for this list; start again without it.",
        )
    })
}

impl MessagingService {
    /// Loads a thread of the caller's store and mode, applying gateByThreadId for customers.
    /// Another store's or mode's thread is 404, never 403.
    pub(crate) async fn load_thread<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        id: &ThreadRef,
    ) -> Result<thread::Model, ServiceError> {
        let ByPosition(thread) = thread_query(caller, id)
            .into_model::<ByPosition<thread::Model>>()
            .one(conn)
            .await?
            .ok_or_else(thread_not_found)?;
        gate_by_thread(caller, &thread)?;
        Ok(thread)
    }

    /// A thread of the caller's store and mode about to be written: found (404, 403 as
    /// [`Self::load_thread`]), locked for the rest of `txn` ([`WriteTxn::lock_threads`]), and
    /// read again under the lock, so the rule sees what concurrent writers committed.
    pub(crate) async fn load_thread_for_write(
        &self,
        txn: &WriteTxn,
        caller: &Caller,
        id: &ThreadRef,
    ) -> Result<thread::Model, ServiceError> {
        // A thread named by its UUID is locked before it is read: one read, and fresh.
        if let ThreadRef::Id(uuid) = id {
            txn.lock_threads(&[*uuid]).await?;
            return self.load_thread(txn, caller, id).await;
        }
        let found = self.load_thread(txn, caller, id).await?;
        if txn.lock_threads(&[found.id]).await? {
            self.load_thread(txn, caller, &ThreadRef::Id(found.id))
                .await
        } else {
            Ok(found)
        }
    }

    /// A thread in its wire form, with its subscribers, read through `conn` (the write
    /// transaction, when the thread goes into an event).
    pub(crate) async fn wire_thread<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        thread: thread::Model,
    ) -> Result<Thread, ServiceError> {
        let subscribers = subscribers_of(conn, thread.id).await?;
        wire::thread(thread, caller, &subscribers)
    }

    pub(crate) async fn list_threads(
        &self,
        caller: &Caller,
        query: ThreadQuery,
    ) -> Result<ThreadList, ServiceError> {
        let fields = ThreadFields::parse(query.fields.as_deref())?;
        // gateByCustomerId: a customer lists its own threads; the store may list its whole inbox.
        let customer_id = match (caller.customer_id(), query.customer_id) {
            (Some(own), Some(asked)) if own != asked => {
                return Err(ServiceError::forbidden(
                    "customer_mismatch",
                    "customer_id is not the token's customer.",
                ));
            }
            (Some(own), _) => Some(own),
            (None, asked) => asked,
        };
        let unread_column = match caller.actor {
            Actor::Customer(_) => thread::Column::UnreadCountCustomer,
            Actor::Store => thread::Column::UnreadCountStore,
        };
        let scope = format!(
            "threads|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            caller.store_id,
            caller.mode.as_str(),
            caller.actor,
            customer_id,
            query.status.map(|s| s.as_str()),
            query.priority.map(|p| p.as_str()),
            query.thread_type.map(|t| t.as_str()),
            query.archived,
            query.unread,
        );
        let position = query
            .cursor
            .as_deref()
            .map(|c| cursor::decode(&self.inner.keys, &scope, c))
            .transpose()?;

        let mut select = thread::Entity::find()
            .filter(thread::Column::StoreId.eq(caller.store_id))
            .filter(thread::Column::Mode.eq(caller.mode.as_str()));
        if let Some(customer_id) = customer_id {
            select = select.filter(thread::Column::CustomerId.eq(customer_id));
        }
        if let Some(status) = query.status {
            select = select.filter(thread::Column::Status.eq(status.as_str()));
        }
        if let Some(priority) = query.priority {
            select = select.filter(thread::Column::Priority.eq(priority.as_str()));
        }
        if let Some(thread_type) = query.thread_type {
            select = select.filter(thread::Column::ThreadType.eq(thread_type.as_str()));
        }
        if let Some(archived) = query.archived {
            select = select.filter(thread::Column::IsArchived.eq(archived));
        }
        match query.unread {
            Some(true) => select = select.filter(unread_column.gt(0)),
            Some(false) => select = select.filter(unread_column.eq(0)),
            None => {}
        }
        if let Some(position) = position {
            let pinned = position.pinned.unwrap_or(false);
            let at = from_micros(position.micros)?;
            select = select.filter(
                Expr::tuple([
                    Expr::col(thread::Column::IsPinned),
                    Expr::col(thread::Column::LastMessageAt),
                    Expr::col(thread::Column::Id),
                ])
                .lt(Expr::tuple([
                    Expr::val(pinned),
                    Expr::val(at),
                    Expr::val(position.id),
                ])),
            );
        }
        let select = select
            .order_by_desc(thread::Column::IsPinned)
            .order_by_desc(thread::Column::LastMessageAt)
            .order_by_desc(thread::Column::Id)
            .limit(query.limit + 1);
        let mut rows = ThreadWithSubscribers::select(select, self.backend())
            .all(self.reader())
            .await?;
        let has_more = rows.len() as u64 > query.limit;
        rows.truncate(query.limit as usize);
        let next_cursor = match rows.last().map(|row| &row.thread) {
            Some(last) if has_more => Some(cursor::encode(
                &self.inner.keys,
                &scope,
                Position {
                    pinned: Some(last.is_pinned),
                    micros: micros(last.last_message_at),
                    id: last.id,
                },
            )),
            _ => None,
        };
        let threads = rows
            .into_iter()
            .map(|row| wire::thread(row.thread, caller, &row.subscribers).map(|t| fields.apply(t)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ThreadList {
            threads,
            pagination: Pagination {
                limit: query.limit as i32,
                next_cursor,
                has_more,
            },
        })
    }

    pub(crate) async fn get_thread(
        &self,
        caller: &Caller,
        id: &ThreadRef,
        fields: Option<&str>,
        expand: Option<ThreadExpand>,
    ) -> Result<Thread, ServiceError> {
        let fields = ThreadFields::parse(fields)?;
        // The thread and its subscribers in one row: this is the hottest read.
        let ThreadWithSubscribers {
            thread,
            subscribers,
        } = ThreadWithSubscribers::select(thread_query(caller, id), self.backend())
            .one(self.reader())
            .await?
            .ok_or_else(thread_not_found)?;
        gate_by_thread(caller, &thread)?;
        let thread_id = thread.id;
        let mut wire = fields.apply(wire::thread(thread, caller, &subscribers)?);
        if expand == Some(ThreadExpand::RecentMessages) {
            let mut recent = message::Entity::find()
                .filter(message::Column::ThreadId.eq(thread_id))
                .filter(message::Column::IsDeleted.eq(false))
                .order_by_desc(message::Column::CreatedAt)
                .order_by_desc(message::Column::Id)
                .limit(RECENT_MESSAGES + 1)
                .all(self.reader())
                .await?;
            let has_more = recent.len() as u64 > RECENT_MESSAGES;
            recent.truncate(RECENT_MESSAGES as usize);
            recent.reverse();
            wire.recent_messages = Some(self.wire_messages(recent).await?);
            wire.has_more = Some(has_more);
        }
        Ok(wire)
    }

    pub(crate) async fn update_thread(
        &self,
        caller: &Caller,
        id: &ThreadRef,
        body: UpdateThreadRequest,
    ) -> Result<Thread, ServiceError> {
        if body == UpdateThreadRequest::default() {
            return Err(ServiceError::bad_request(
                "empty_update",
                "Give at least one of status, priority, archived, muted, pinned, location_id, name.",
            ));
        }
        let store_only = body.status.is_some()
            || body.priority.is_some()
            || body.location_id.is_some()
            || body.name.is_some();
        if caller.customer_id().is_some() && store_only {
            return Err(ServiceError::forbidden(
                "store_only_field",
                "Only the store may change status, priority, location_id or name.",
            ));
        }
        let txn = self.begin_write().await?;
        let thread = self.load_thread_for_write(&txn, caller, id).await?;
        let mut row: thread::ActiveModel = thread.into();
        if let Some(status) = body.status {
            row.status = Set(status.as_str().to_owned());
        }
        if let Some(priority) = body.priority {
            row.priority = Set(priority.as_str().to_owned());
        }
        if let Some(archived) = body.archived {
            row.is_archived = Set(archived);
        }
        if let Some(muted) = body.muted {
            row.is_muted = Set(muted);
        }
        if let Some(pinned) = body.pinned {
            row.is_pinned = Set(pinned);
        }
        if let Some(location_id) = body.location_id {
            row.location_id = Set(Some(location_id));
        }
        if let Some(name) = body.name {
            row.name = Set(Some(name));
        }
        row.updated_at = Set(now());
        let updated = row.update(&txn).await?;
        let scope = EventScope::of(&updated);
        let thread = self.wire_thread(&txn, caller, updated).await?;
        events::record(&txn, &scope, EventData::ThreadUpdated(&thread)).await?;
        self.commit(txn).await?;
        Ok(thread)
    }

    /// Reader-relative: a customer clears its own count; the store (or one of its staff) clears
    /// the store's and moves its `viewed_at`.
    pub(crate) async fn mark_thread_read(
        &self,
        caller: &Caller,
        reader: &Participant,
        id: &ThreadRef,
    ) -> Result<Thread, ServiceError> {
        let txn = self.begin_write().await?;
        let thread = self.load_thread_for_write(&txn, caller, id).await?;
        subscribers::require_member(&txn, thread.id, reader).await?;
        let column = match caller.actor {
            Actor::Customer(_) => thread::Column::UnreadCountCustomer,
            Actor::Store => thread::Column::UnreadCountStore,
        };
        thread::Entity::update_many()
            .col_expr(column, Expr::value(0i64))
            .filter(thread::Column::Id.eq(thread.id))
            .exec(&txn)
            .await?;
        if reader.is_store_side() {
            subscribers::mark_read(&txn, &thread, reader).await?;
        }
        let mut thread = thread;
        match caller.actor {
            Actor::Customer(_) => thread.unread_count_customer = 0,
            Actor::Store => thread.unread_count_store = 0,
        }
        let scope = EventScope::of(&thread);
        let thread = self.wire_thread(&txn, caller, thread).await?;
        events::record(&txn, &scope, EventData::ThreadRead(&thread)).await?;
        self.commit(txn).await?;
        Ok(thread)
    }

    pub(crate) async fn create_conversation(
        &self,
        caller: &Caller,
        author: &Participant,
        body: CreateConversationRequest,
    ) -> Result<Conversation, ServiceError> {
        // gateByCustomerId on the body; the store must say whose conversation it starts.
        let customer_id = match (caller.customer_id(), body.customer_id) {
            (Some(own), Some(asked)) if own != asked => {
                return Err(ServiceError::forbidden(
                    "customer_mismatch",
                    "customer_id is not the token's customer.",
                ));
            }
            (Some(own), _) => own,
            (None, Some(asked)) => asked,
            (None, None) => {
                return Err(ServiceError::bad_request(
                    "customer_id_required",
                    "The store must give customer_id.",
                ));
            }
        };
        let subject = body.subject.trim().to_owned();
        if subject.is_empty() || body.message.trim().is_empty() {
            return Err(ServiceError::bad_request(
                "blank_text",
                "subject and message must not be blank.",
            ));
        }
        if matches!(author, Participant::User(_)) {
            return Err(ServiceError::forbidden(
                "acting_user_not_subscribed",
                "A new thread has no staff subscribers yet: start it as the store, then add users.",
            ));
        }
        let customer = customer::Entity::find_by_id(customer_id)
            .filter(customer::Column::StoreId.eq(caller.store_id))
            .filter(customer::Column::Mode.eq(caller.mode.as_str()))
            .one(self.reader())
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("customer_not_found", "No customer with that id.")
            })?;
        let (sender_type, sender_id) = sender_of(caller);
        let at = now();
        let from_customer = sender_type == SenderType::Customer;
        let thread_row = thread::ActiveModel {
            id: Set(Uuid::now_v7()),
            store_id: Set(caller.store_id),
            mode: Set(caller.mode.as_str().to_owned()),
            customer_id: Set(customer.id),
            customer_name: Set(Some(
                body.customer_name.unwrap_or_else(|| customer.name.clone()),
            )),
            customer_email: Set(Some(
                body.customer_email
                    .unwrap_or_else(|| customer.email.clone()),
            )),
            customer_phone: Set(customer.phone.clone()),
            order_id: Set(body.order_id),
            product_id: Set(body.product_id),
            subject: Set(subject.clone()),
            thread_type: Set(body
                .thread_type
                .unwrap_or(ThreadType::General)
                .as_str()
                .to_owned()),
            status: Set(ThreadStatus::Active.as_str().to_owned()),
            priority: Set(body
                .priority
                .unwrap_or(ThreadPriority::Normal)
                .as_str()
                .to_owned()),
            last_message_at: Set(at),
            last_message_by: Set(Some(sender_type.as_str().to_owned())),
            unread_count_customer: Set(i64::from(!from_customer)),
            unread_count_store: Set(i64::from(from_customer)),
            is_archived: Set(false),
            is_muted: Set(false),
            is_pinned: Set(false),
            created_at: Set(at),
            updated_at: Set(at),
            resource_id: Set(body.resource_id),
            location_id: Set(body.location_id),
            name: Set(Some(body.name.unwrap_or(subject))),
            channel_id: Set(None),
        };
        let txn = self.begin_write().await?;
        let thread = match thread_row.insert(&txn).await {
            Ok(thread) => thread,
            Err(err) if is_unique_violation(&err) => {
                return Err(ServiceError::conflict(
                    "resource_conflict",
                    "This resource already has a thread; address it as thrd_<resource_id>.",
                ));
            }
            Err(err) => return Err(err.into()),
        };
        thread_subscriber_rows(&txn, &thread, &customer, &caller.store_name, at).await?;
        let channel_id = self.assign_channel(&txn, &thread).await?;
        let thread = thread::Model {
            channel_id: Some(channel_id),
            ..thread
        };
        let first = NewMessage {
            sender_type,
            sender_id: Some(sender_id),
            author: author.clone(),
            content: body.message,
            message_type: MessageType::Text,
            event: None,
            media_urls: Vec::new(),
            publish_to_channel_at: None,
        };
        let message = first.row(&SendTarget::of(&thread), at).insert(&txn).await?;
        subscribers::count_unread(&txn, thread.id, author);
        let scope = EventScope::of(&thread);
        let conversation = Conversation {
            thread: self.wire_thread(&txn, caller, thread.clone()).await?,
            message: wire::message(message, Vec::new())?,
        };
        events::record(
            &txn,
            &scope,
            EventData::ThreadCreated {
                thread: &conversation.thread,
                message: &conversation.message,
            },
        )
        .await?;
        self.record_published(&txn, &scope, channel_id, &conversation.message)
            .await?;
        self.commit(txn).await?;
        Ok(conversation)
    }
}

async fn thread_subscriber_rows<C: ConnectionTrait>(
    conn: &C,
    thread: &thread::Model,
    customer: &customer::Model,
    store_name: &str,
    at: DateTime<Utc>,
) -> Result<(), ServiceError> {
    let rows = initial_subscribers(thread, customer, store_name, at);
    crate::entity::thread_subscriber::Entity::insert_many(rows)
        .exec(conn)
        .await?;
    Ok(())
}

/// A message about to be written, with everything seed 004 adds.
#[derive(Clone)]
pub struct NewMessage {
    pub sender_type: SenderType,
    pub sender_id: Option<Uuid>,
    pub author: Participant,
    pub content: String,
    pub message_type: MessageType,
    pub event: Option<String>,
    pub media_urls: Vec<String>,
    /// A future time defers publishing to the channel; otherwise it is published at once.
    pub publish_to_channel_at: Option<DateTime<Utc>>,
}

impl NewMessage {
    /// The row in `thread`, published into the thread's channel at once unless scheduled.
    pub fn row(self, thread: &SendTarget, at: DateTime<Utc>) -> message::ActiveModel {
        let scheduled = self.publish_to_channel_at.filter(|due| *due > at);
        message::ActiveModel {
            id: Set(Uuid::now_v7()),
            thread_id: Set(thread.id),
            store_id: Set(thread.store_id),
            mode: Set(thread.mode.clone()),
            sender_type: Set(self.sender_type.as_str().to_owned()),
            sender_id: Set(self.sender_id),
            message_content: Set(self.content),
            is_edited: Set(false),
            edited_at: Set(None),
            is_deleted: Set(false),
            deleted_at: Set(None),
            created_at: Set(at),
            updated_at: Set(at),
            message_type: Set(self.message_type.as_str().to_owned()),
            event: Set(self.event),
            media_urls: Set((!self.media_urls.is_empty())
                .then(|| serde_json::to_string(&self.media_urls).expect("strings serialize"))),
            subscriber_id: Set(Some(self.author.subscriber_id())),
            resource_id: Set(thread.resource_id.clone()),
            channel_id: Set(thread.channel_id),
            publish_to_channel_at: Set(scheduled),
            published_at: Set(if scheduled.is_some() { None } else { Some(at) }),
        }
    }
}
