//! Messages: a thread's history in keyset pages, sending (with the thread's counters in the same
//! transaction), editing (keeping each replaced version) and soft deletion under
//! gateByMessageId, and a message's edit history.

use chrono::{DateTime, Utc};
use messaging_api::{
    DeletedMessage, Message, MessageEdit, MessageList, MessageType, Pagination, SendMessageRequest,
    SenderType, SortOrder, ThreadStatus,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TryIntoModel,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use crate::{
    MessagingService,
    auth::{Actor, Caller},
    cursor::{self, Position},
    entity::{channel, message, message_edit, thread},
    error::ServiceError,
    events::{self, EventData, EventScope},
    known_threads::{self, SendTarget},
    now,
    reactions::MessageWithReactions,
    subscribers::{self, Participant},
    threads::{NewMessage, ThreadRef, from_micros, micros, readable_thread, sender_of},
};

/// At most this many attachments per message, each URL at most `MAX_MEDIA_URL_LEN` bytes.
pub const MAX_MEDIA_URLS: usize = 10;
pub const MAX_MEDIA_URL_LEN: usize = 2048;

/// Attachments must be absolute `https` URLs with a host.
fn validate_media_urls(urls: &[String]) -> Result<(), ServiceError> {
    if urls.len() > MAX_MEDIA_URLS {
        return Err(ServiceError::bad_request(
            "invalid_media_urls",
            "At most 10 media_urls.",
        ));
    }
    for url in urls {
        let parsed = url::Url::parse(url).ok();
        let ok = url.len() <= MAX_MEDIA_URL_LEN
            && parsed.is_some_and(|u| {
                u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty())
            });
        if !ok {
            return Err(ServiceError::bad_request(
                "invalid_media_urls",
                format!("media_urls must be https URLs of at most {MAX_MEDIA_URL_LEN} characters."),
            ));
        }
    }
    Ok(())
}

/// How to page a list of messages: the cursor scope, the time column it is ordered by, the
/// direction and the page size.
pub struct MessagePage {
    pub scope: String,
    pub time: message::Column,
    pub order: SortOrder,
    pub limit: u64,
}

fn message_not_found() -> ServiceError {
    ServiceError::not_found("message_not_found", "No message with that id.")
}

impl MessagingService {
    pub(crate) async fn thread_messages(
        &self,
        caller: &Caller,
        thread_id: &ThreadRef,
        order: SortOrder,
        limit: u64,
        cursor_text: Option<&str>,
    ) -> Result<MessageList, ServiceError> {
        // A thread named by its id is gated inside the page's query, one round trip instead of
        // two. A page that comes back empty, or fails, may be a gate's refusal: the thread is
        // then loaded, so a missing or foreign thread answers 404 or 403 before anything else.
        let (id, gated) = match thread_id {
            ThreadRef::Id(id) => (*id, true),
            ThreadRef::Resource(_) => (
                self.load_thread(self.reader(), caller, thread_id).await?.id,
                false,
            ),
        };
        let mut live = message::Entity::find()
            .filter(message::Column::ThreadId.eq(id))
            .filter(message::Column::IsDeleted.eq(false));
        if gated {
            live = live.filter(Expr::exists(readable_thread(caller, id)));
        }
        let page = MessagePage {
            scope: format!("messages|{id}|{}", order.as_str()),
            time: message::Column::CreatedAt,
            order,
            limit,
        };
        let list = self.message_page(live, page, cursor_text).await;
        if gated && !matches!(&list, Ok(list) if !list.messages.is_empty()) {
            self.load_thread(self.reader(), caller, thread_id).await?;
        }
        list
    }

    /// One keyset page of `select`, ordered by `(time, id)` in `page.order`, with the cursor
    /// to the next page. Pages never skip or repeat a message, even when many share a time.
    pub(crate) async fn message_page(
        &self,
        mut select: sea_orm::Select<message::Entity>,
        page: MessagePage,
        cursor_text: Option<&str>,
    ) -> Result<MessageList, ServiceError> {
        let MessagePage {
            scope,
            time,
            order,
            limit,
        } = page;
        if let Some(position) = cursor_text
            .map(|c| cursor::decode(&self.inner.keys, &scope, c))
            .transpose()?
        {
            let key = Expr::tuple([Expr::col(time), Expr::col(message::Column::Id)]);
            let after = Expr::tuple([
                Expr::val(from_micros(position.micros)?),
                Expr::val(position.id),
            ]);
            select = select.filter(match order {
                SortOrder::Asc => key.gt(after),
                SortOrder::Desc => key.lt(after),
            });
        }
        select = match order {
            SortOrder::Asc => select.order_by_asc(time).order_by_asc(message::Column::Id),
            SortOrder::Desc => select
                .order_by_desc(time)
                .order_by_desc(message::Column::Id),
        };
        let mut rows = MessageWithReactions::select(select.limit(limit + 1), self.backend())
            .all(self.reader())
            .await?;
        let has_more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last().map(|row| &row.message) {
            Some(last) if has_more => {
                let at = match time {
                    message::Column::PublishedAt => last.published_at.unwrap_or(last.created_at),
                    _ => last.created_at,
                };
                let position = Position {
                    pinned: None,
                    micros: micros(at),
                    id: last.id,
                };
                Some(cursor::encode(&self.inner.keys, &scope, position))
            }
            _ => None,
        };
        let messages = rows
            .into_iter()
            .map(MessageWithReactions::into_wire)
            .collect::<Result<_, _>>()?;
        Ok(MessageList {
            messages,
            pagination: Pagination {
                limit: limit as i32,
                next_cursor,
                has_more,
            },
        })
    }

    /// Writes the message and moves the thread's last-message fields, unread counts and status in
    /// one transaction, with atomic increments so concurrent senders never lose a count. The
    /// message is in its thread at once and in its channel at once or when due.
    ///
    /// Into a thread this process sent into before, the thread is not read: what the send takes
    /// from it is checked in the statement that writes (`known_threads`), and the send runs again
    /// the usual way when that check fails.
    pub(crate) async fn send_message(
        &self,
        caller: &Caller,
        author: &Participant,
        thread_ref: &ThreadRef,
        body: SendMessageRequest,
    ) -> Result<Message, ServiceError> {
        if body.message.trim().is_empty() {
            return Err(ServiceError::bad_request(
                "blank_text",
                "message must not be blank.",
            ));
        }
        let message_type = body.r#type.unwrap_or(MessageType::Text);
        if message_type != MessageType::Text && !author.is_store_side() {
            return Err(ServiceError::forbidden(
                "store_only_message_type",
                "Only the store sends meta, tracking_update and pickup_reminder messages.",
            ));
        }
        let media_urls = body.media_urls.unwrap_or_default();
        validate_media_urls(&media_urls)?;
        let (sender_type, sender_id) = match (message_type, sender_of(caller)) {
            (MessageType::Text, sender) => sender,
            // Non-text messages are system messages: they notify the customer.
            (_, (_, store)) => (SenderType::System, store),
        };
        let new = NewMessage {
            sender_type,
            sender_id: Some(sender_id),
            author: author.clone(),
            content: body.message,
            message_type,
            event: body.event,
            media_urls,
            publish_to_channel_at: body.publish_to_channel_at.map(truncate_micros),
        };
        let known_threads = &self.inner.known_threads;
        let known = match thread_ref {
            ThreadRef::Id(id) => known_threads.get(caller, *id),
            ThreadRef::Resource(_) => None,
        };
        if let Some(known) = known {
            let id = known.id;
            match self
                .send_into(caller, thread_ref, Some(known), new.clone())
                .await
            {
                Err(err) if known_threads::is_stale(&err) => known_threads.forget(id),
                sent => return sent,
            }
        }
        self.send_into(caller, thread_ref, None, new).await
    }

    /// [`Self::send_message`] once: into `known` when given (the thread as this process last
    /// left it, checked in the call that writes), otherwise into the thread read under the
    /// write's turn or lock.
    async fn send_into(
        &self,
        caller: &Caller,
        thread_ref: &ThreadRef,
        known: Option<SendTarget>,
        new: NewMessage,
    ) -> Result<Message, ServiceError> {
        let author = new.author.clone();
        let sender_type = new.sender_type;
        let txn = match &known {
            // PostgreSQL: queued with the other sends into the thread, under its lock; the
            // guard goes with the writes, so it sees the thread as the last writer left it.
            Some(known) => self.begin_send(known.id).await?,
            None => self.begin_write().await?,
        };
        // Whether the thread is as this process kept it (checked with the writes).
        let kept = known.is_some();
        let thread = match known {
            Some(known) => {
                txn.check_first(known.guard(&author, txn.get_database_backend()));
                known
            }
            None => {
                let thread = self.load_thread_for_write(&txn, caller, thread_ref).await?;
                subscribers::require_member(&txn, thread.id, &author).await?;
                if thread.status == ThreadStatus::Closed.as_str() {
                    return Err(ServiceError::conflict(
                        "thread_closed",
                        "The thread is closed; start a new conversation.",
                    ));
                }
                let channel_id = match thread.channel_id {
                    Some(channel_id) => channel_id,
                    None => self.assign_channel(&txn, &thread).await?,
                };
                SendTarget {
                    channel_id: Some(channel_id),
                    ..SendTarget::of(&thread)
                }
            }
        };
        let at = now();
        // Every column is set here, so the row is known without reading it back, and the
        // insert goes with the other writes at the commit.
        let row = new.row(&thread, at);
        let message = row.clone().try_into_model()?;
        txn.defer(message::Entity::insert(row));
        let mut update = thread::Entity::update_many()
            .col_expr(thread::Column::LastMessageAt, Expr::value(at))
            .col_expr(
                thread::Column::LastMessageBy,
                Expr::value(sender_type.as_str()),
            )
            .col_expr(thread::Column::UpdatedAt, Expr::value(at))
            .filter(thread::Column::Id.eq(thread.id));
        update = match sender_type {
            SenderType::Customer => update.col_expr(
                thread::Column::UnreadCountStore,
                Expr::col(thread::Column::UnreadCountStore).add(1),
            ),
            SenderType::Store | SenderType::System => update.col_expr(
                thread::Column::UnreadCountCustomer,
                Expr::col(thread::Column::UnreadCountCustomer).add(1),
            ),
        };
        let reopens =
            sender_type == SenderType::Customer && thread.status == ThreadStatus::Resolved.as_str();
        if reopens {
            update = update.col_expr(
                thread::Column::Status,
                Expr::value(ThreadStatus::Active.as_str()),
            );
        }
        txn.defer(update);
        subscribers::count_unread(&txn, thread.id, &author);
        let published_to = message
            .channel_id
            .filter(|_| message.published_at.is_some());
        if let Some(channel_id) = published_to {
            txn.defer(
                channel::Entity::update_many()
                    .col_expr(channel::Column::UpdatedAt, Expr::value(at))
                    .filter(channel::Column::Id.eq(channel_id)),
            );
        }
        let scope = thread.scope();
        let wire = crate::wire::message(message, Vec::new())?;
        events::record(&txn, &scope, EventData::MessageCreated(&wire)).await?;
        if reopens {
            let reopened = self
                .load_thread(&txn, caller, &ThreadRef::Id(thread.id))
                .await?;
            let reopened = self.wire_thread(&txn, caller, reopened).await?;
            events::record(&txn, &scope, EventData::ThreadUpdated(&reopened)).await?;
        }
        if let Some(channel_id) = published_to {
            self.record_published(&txn, &scope, channel_id, &wire)
                .await?;
        }
        self.commit(txn).await?;
        if !kept || reopens {
            self.inner.known_threads.remember(SendTarget {
                status: if reopens {
                    ThreadStatus::Active.as_str().to_owned()
                } else {
                    thread.status
                },
                ..thread
            });
        }
        Ok(wire)
    }

    /// Loads a live message of the caller's store and mode and applies gateByMessageId.
    async fn load_own_message<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        id: Uuid,
    ) -> Result<message::Model, ServiceError> {
        let message = message::Entity::find_by_id(id)
            .filter(message::Column::StoreId.eq(caller.store_id))
            .filter(message::Column::Mode.eq(caller.mode.as_str()))
            .filter(message::Column::IsDeleted.eq(false))
            .one(conn)
            .await?
            .ok_or_else(message_not_found)?;
        let allowed = match caller.actor {
            Actor::Customer(customer) => {
                message.sender_type == SenderType::Customer.as_str()
                    && message.sender_id == Some(customer)
            }
            Actor::Store => message.sender_type == SenderType::Store.as_str(),
        };
        if !allowed {
            return Err(ServiceError::forbidden(
                "message_not_owned",
                "Only the message's author may change it.",
            ));
        }
        Ok(message)
    }

    /// [`Self::load_own_message`] in a write transaction: found, its thread locked, read again
    /// under the lock; with the thread, for the event.
    async fn load_own_message_for_write(
        &self,
        txn: &events::WriteTxn,
        caller: &Caller,
        id: Uuid,
    ) -> Result<(message::Model, thread::Model), ServiceError> {
        let found = self.load_own_message(txn, caller, id).await?;
        let message = if txn.lock_threads(&[found.thread_id]).await? {
            self.load_own_message(txn, caller, id).await?
        } else {
            found
        };
        let thread = thread::Entity::find_by_id(message.thread_id)
            .one(txn)
            .await?
            .ok_or_else(message_not_found)?;
        Ok((message, thread))
    }

    pub(crate) async fn edit_message(
        &self,
        caller: &Caller,
        id: Uuid,
        content: String,
    ) -> Result<Message, ServiceError> {
        if content.trim().is_empty() {
            return Err(ServiceError::bad_request(
                "blank_text",
                "message_content must not be blank.",
            ));
        }
        let txn = self.begin_write().await?;
        let (message, thread) = self.load_own_message_for_write(&txn, caller, id).await?;
        let at = now();
        // The version this edit replaces, kept in the same transaction as the edit.
        message_edit::ActiveModel {
            id: Set(Uuid::now_v7()),
            message_id: Set(message.id),
            message_content: Set(message.message_content.clone()),
            edited_at: Set(at),
        }
        .insert(&txn)
        .await?;
        let mut row: message::ActiveModel = message.into();
        row.message_content = Set(content);
        row.is_edited = Set(true);
        row.edited_at = Set(Some(at));
        row.updated_at = Set(at);
        let updated = row.update(&txn).await?;
        let message = crate::channels::wire_messages_in(&txn, vec![updated])
            .await?
            .pop()
            .ok_or_else(message_not_found)?;
        events::record(
            &txn,
            &EventScope::of(&thread),
            EventData::MessageUpdated(&message),
        )
        .await?;
        self.commit(txn).await?;
        Ok(message)
    }

    /// The versions of a message that its edits replaced, oldest first, for whoever may read
    /// its thread.
    pub(crate) async fn message_edits(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<Vec<MessageEdit>, ServiceError> {
        let (message, _) = self.readable_message(self.reader(), caller, id).await?;
        let edits = message_edit::Entity::find()
            .filter(message_edit::Column::MessageId.eq(message.id))
            .order_by_asc(message_edit::Column::EditedAt)
            .order_by_asc(message_edit::Column::Id)
            .all(self.reader())
            .await?;
        Ok(edits
            .into_iter()
            .map(|edit| MessageEdit {
                message_content: edit.message_content,
                edited_at: edit.edited_at,
            })
            .collect())
    }

    /// Soft delete: the row stays for audit. Only the request that flips `is_deleted` succeeds,
    /// so a second delete is 404 even when two race.
    pub(crate) async fn delete_message(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<DeletedMessage, ServiceError> {
        let txn = self.begin_write().await?;
        let (message, thread) = self.load_own_message_for_write(&txn, caller, id).await?;
        let at = now();
        let affected = message::Entity::update_many()
            .col_expr(message::Column::IsDeleted, Expr::value(true))
            .col_expr(message::Column::DeletedAt, Expr::value(at))
            .col_expr(message::Column::UpdatedAt, Expr::value(at))
            .filter(message::Column::Id.eq(message.id))
            .filter(message::Column::IsDeleted.eq(false))
            .exec(&txn)
            .await?
            .rows_affected;
        if affected != 1 {
            return Err(message_not_found());
        }
        events::record(
            &txn,
            &EventScope::of(&thread),
            EventData::MessageDeleted {
                message_id: message.id,
                deleted_at: at,
            },
        )
        .await?;
        self.commit(txn).await?;
        Ok(DeletedMessage {
            success: true,
            message_id: message.id,
            deleted_at: at,
        })
    }
}

/// Times are kept to the microsecond, as the databases store them.
fn truncate_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    chrono::SubsecRound::trunc_subsecs(at, 6)
}
