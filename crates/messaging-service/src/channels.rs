//! Channels (seed 004): one per set of active subscribers in a store and mode, made
//! automatically; every thread with that set publishes its messages into it.
//!
//! A channel is made only when a message is sent into it: a thread whose subscriber set changes
//! follows the channel of its new set if one exists, and otherwise has none until its next
//! message. So sets a thread passes through without a message (a store adding staff one at a
//! time) leave no channels and no copies of their members behind: channels grow with messages,
//! and each holds its own members once (at most
//! [`crate::limits::MAX_SUBSCRIBERS_PER_THREAD`]).
//!
//! A message is published into the channel its thread had when it was sent: at once, or, with a
//! future `publish_to_channel_at`, by the publisher once due. Publishing is one conditional
//! update of `published_at` (`WHERE published_at IS NULL`), so a message is published exactly
//! once however many publishers run, and pending work survives restarts in the database.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use messaging_api::{
    Channel, ChannelList, Message, MessageList, Pagination, SortOrder, Subscriber,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
    RelationTrait,
    sea_query::{Expr, ExprTrait},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    MessagingService,
    auth::Caller,
    cursor::{self, Position},
    entity::{channel, channel_member, message, thread, thread_subscriber},
    error::ServiceError,
    events::{self, EventData, EventScope, WriteTxn},
    messages::MessagePage,
    now,
    subscribers::kind_of,
    threads::{from_micros, micros},
};

/// Messages shown with a channel or a thread.
pub const RECENT_MESSAGES: u64 = 150;

/// The counter of scheduled messages the publisher moved into their channels (a metric the
/// server exports and registers at start).
pub const PUBLISHED_MESSAGES_METRIC: &str = "messaging_messages_published_total";

/// The hash that names a subscriber set: SHA-256 over the sorted `kind:id` keys.
pub fn subscriber_hash(members: &[(String, String)]) -> String {
    let mut keys: Vec<String> = members
        .iter()
        .map(|(kind, id)| format!("{kind}:{id}"))
        .collect();
    keys.sort();
    keys.dedup();
    let digest = Sha256::digest(keys.join("\n").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn channel_not_found() -> ServiceError {
    ServiceError::not_found("channel_not_found", "No channel with that id.")
}

fn member_order(kind: &str) -> u8 {
    match kind {
        "organization" => 0,
        "user" => 1,
        _ => 2,
    }
}

impl MessagingService {
    /// Moves `thread` to the channel of its active subscribers, making the channel if needed:
    /// for a message about to be sent into it.
    pub(crate) async fn assign_channel<C: ConnectionTrait>(
        &self,
        conn: &C,
        thread: &thread::Model,
    ) -> Result<Uuid, ServiceError> {
        let members = active_members(conn, thread.id).await?;
        let channel_id = match find_channel(conn, thread, &members).await? {
            Some(channel) => channel,
            None => make_channel(conn, thread, &members).await?,
        };
        set_thread_channel(conn, thread, Some(channel_id)).await?;
        Ok(channel_id)
    }

    /// Moves `thread` to the channel of its active subscribers if that channel exists, else
    /// leaves it without one (its next message makes it): after its subscriber set changed.
    pub(crate) async fn follow_channel<C: ConnectionTrait>(
        &self,
        conn: &C,
        thread: &thread::Model,
    ) -> Result<Option<Uuid>, ServiceError> {
        let members = active_members(conn, thread.id).await?;
        let channel_id = find_channel(conn, thread, &members).await?;
        set_thread_channel(conn, thread, channel_id).await?;
        Ok(channel_id)
    }

    /// A channel of the caller's store and mode that the caller may see: customers only see
    /// channels they belong to (404 otherwise: existence does not leak).
    async fn load_channel(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<channel::Model, ServiceError> {
        let mut select = channel::Entity::find_by_id(id)
            .filter(channel::Column::StoreId.eq(caller.store_id))
            .filter(channel::Column::Mode.eq(caller.mode.as_str()));
        if let Some(customer) = caller.customer_id() {
            select = select
                .join(JoinType::InnerJoin, channel_member_relation())
                .filter(channel_member::Column::SubscriberId.eq(customer.to_string()));
        }
        select
            .one(self.reader())
            .await?
            .ok_or_else(channel_not_found)
    }

    pub(crate) async fn list_channels(
        &self,
        caller: &Caller,
        limit: u64,
        cursor_text: Option<&str>,
    ) -> Result<ChannelList, ServiceError> {
        let scope = format!(
            "channels|{}|{}|{:?}",
            caller.store_id,
            caller.mode.as_str(),
            caller.actor
        );
        let position = cursor_text
            .map(|c| cursor::decode(&self.inner.keys, &scope, c))
            .transpose()?;
        let mut select = channel::Entity::find()
            .filter(channel::Column::StoreId.eq(caller.store_id))
            .filter(channel::Column::Mode.eq(caller.mode.as_str()));
        if let Some(customer) = caller.customer_id() {
            select = select
                .join(JoinType::InnerJoin, channel_member_relation())
                .filter(channel_member::Column::SubscriberId.eq(customer.to_string()));
        }
        if let Some(position) = position {
            select = select.filter(
                Expr::tuple([
                    Expr::col((channel::Entity, channel::Column::UpdatedAt)),
                    Expr::col((channel::Entity, channel::Column::Id)),
                ])
                .lt(Expr::tuple([
                    Expr::val(from_micros(position.micros)?),
                    Expr::val(position.id),
                ])),
            );
        }
        let mut rows = select
            .order_by_desc(channel::Column::UpdatedAt)
            .order_by_desc(channel::Column::Id)
            .limit(limit + 1)
            .all(self.reader())
            .await?;
        let has_more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if has_more => Some(cursor::encode(
                &self.inner.keys,
                &scope,
                Position {
                    pinned: None,
                    micros: micros(last.updated_at),
                    id: last.id,
                },
            )),
            _ => None,
        };
        let ids: Vec<Uuid> = rows.iter().map(|c| c.id).collect();
        let mut members = self.members_of(&ids).await?;
        let mut publishers = self.publishers_of(&ids).await?;
        let channels = rows
            .into_iter()
            .map(|row| {
                let members = members.remove(&row.id).unwrap_or_default();
                let publishers = publishers.remove(&row.id).unwrap_or_default();
                wire_channel(row, members, publishers)
            })
            .collect();
        Ok(ChannelList {
            channels,
            pagination: Pagination {
                limit: limit as i32,
                next_cursor,
                has_more,
            },
        })
    }

    pub(crate) async fn get_channel(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<Channel, ServiceError> {
        let row = self.load_channel(caller, id).await?;
        let members = self
            .members_of(&[row.id])
            .await?
            .remove(&row.id)
            .unwrap_or_default();
        let publishers = self
            .publishers_of(&[row.id])
            .await?
            .remove(&row.id)
            .unwrap_or_default();
        let mut recent = message::Entity::find()
            .filter(message::Column::ChannelId.eq(row.id))
            .filter(message::Column::PublishedAt.is_not_null())
            .filter(message::Column::IsDeleted.eq(false))
            .order_by_desc(message::Column::PublishedAt)
            .order_by_desc(message::Column::Id)
            .limit(RECENT_MESSAGES + 1)
            .all(self.reader())
            .await?;
        let has_more = recent.len() as u64 > RECENT_MESSAGES;
        recent.truncate(RECENT_MESSAGES as usize);
        recent.reverse();
        let store_view = caller.customer_id().is_none();
        let pending = if store_view {
            message::Entity::find()
                .filter(message::Column::ChannelId.eq(row.id))
                .filter(message::Column::PublishedAt.is_null())
                .filter(message::Column::IsDeleted.eq(false))
                .order_by_asc(message::Column::PublishToChannelAt)
                .order_by_asc(message::Column::Id)
                .all(self.reader())
                .await?
        } else {
            Vec::new()
        };
        let scheduled_publish_at = pending.iter().filter_map(|m| m.publish_to_channel_at).min();
        let recent_messages = self.wire_messages(recent).await?;
        let pending_messages = self.wire_messages(pending).await?;
        let mut channel = wire_channel(row, members, publishers);
        channel.recent_messages = Some(recent_messages);
        channel.has_more = Some(has_more);
        if store_view {
            channel.pending_messages = Some(pending_messages);
            channel.scheduled_publish_at = scheduled_publish_at;
        }
        Ok(channel)
    }

    pub(crate) async fn channel_messages(
        &self,
        caller: &Caller,
        id: Uuid,
        order: SortOrder,
        limit: u64,
        cursor_text: Option<&str>,
    ) -> Result<MessageList, ServiceError> {
        let channel = self.load_channel(caller, id).await?;
        let published = message::Entity::find()
            .filter(message::Column::ChannelId.eq(channel.id))
            .filter(message::Column::PublishedAt.is_not_null())
            .filter(message::Column::IsDeleted.eq(false));
        let page = MessagePage {
            scope: format!("channel-messages|{}|{}", channel.id, order.as_str()),
            time: message::Column::PublishedAt,
            order,
            limit,
        };
        self.message_page(published, page, cursor_text).await
    }

    /// Publishes every due message once. Returns how many this call published.
    pub async fn publish_due(&self) -> Result<u64, ServiceError> {
        let at = now();
        let due: Vec<(Uuid, Uuid)> = due_messages(at).into_tuple().all(self.reader()).await?;
        if due.is_empty() {
            return Ok(0);
        }
        // Only now take the write lock: an idle tick blocks no writer.
        let txn = self.begin_write().await?;
        let thread_ids: Vec<Uuid> = due.iter().map(|(_, thread)| *thread).collect();
        // Every publisher takes the messages' thread locks first, so what is still unpublished
        // under them stays so until this transaction ends: each message is published (and its
        // event written) exactly once however many publishers run.
        let _ = txn.lock_threads(&thread_ids).await?;
        let ids: Vec<Uuid> = due.iter().map(|(id, _)| *id).collect();
        let mut pending = message::Entity::find()
            .filter(message::Column::Id.is_in(ids.clone()))
            .filter(message::Column::PublishedAt.is_null())
            .order_by_asc(message::Column::PublishToChannelAt)
            .order_by_asc(message::Column::Id)
            .all(&txn)
            .await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let published = message::Entity::update_many()
            .col_expr(message::Column::PublishedAt, Expr::value(at))
            .filter(message::Column::Id.is_in(pending.iter().map(|m| m.id)))
            .filter(message::Column::PublishedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        for row in &mut pending {
            row.published_at = Some(at);
        }
        let mut channels: Vec<Uuid> = pending.iter().filter_map(|m| m.channel_id).collect();
        channels.sort();
        channels.dedup();
        if published > 0 && !channels.is_empty() {
            channel::Entity::update_many()
                .col_expr(channel::Column::UpdatedAt, Expr::value(at))
                .filter(channel::Column::Id.is_in(channels))
                .exec(&txn)
                .await?;
        }
        let threads: HashMap<Uuid, thread::Model> = thread::Entity::find()
            .filter(thread::Column::Id.is_in(thread_ids))
            .all(&txn)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let rows: Vec<(Uuid, Option<Uuid>)> = pending
            .iter()
            .map(|m| (m.thread_id, m.channel_id))
            .collect();
        let messages = wire_messages_in(&txn, pending).await?;
        for ((thread_id, channel_id), message) in rows.into_iter().zip(&messages) {
            if let (Some(thread), Some(channel_id)) = (threads.get(&thread_id), channel_id) {
                self.record_published(&txn, &EventScope::of(thread), channel_id, message)
                    .await?;
            }
        }
        txn.commit().await?;
        Ok(published)
    }

    /// Records `channel.message_published`: `message` of the thread of `scope` reached
    /// `channel_id`. Only the store reads it when the thread's customer is not a member of that
    /// channel (it was removed from the thread).
    pub(crate) async fn record_published(
        &self,
        txn: &WriteTxn,
        scope: &EventScope,
        channel_id: Uuid,
        message: &Message,
    ) -> Result<(), ServiceError> {
        let customer_is_member = self
            .customer_in_channel(txn, channel_id, scope.customer_id)
            .await?;
        let scope = scope.clone().store_only(!customer_is_member);
        events::record(
            txn,
            &scope,
            EventData::ChannelMessagePublished {
                channel_id,
                message,
            },
        )
        .await
    }

    /// Whether `customer` is a member of `channel_id`. A channel's members are written with the
    /// channel, in the transaction that makes it (`assign_channel`), and never change, so the
    /// answer never does: each process keeps it (`Inner::channel_membership`, bounded) and a
    /// send into a known channel reads nothing for it. A channel made in a transaction that
    /// rolled back is never named again (its id is new), so keeping its answer does no harm.
    async fn customer_in_channel<C: ConnectionTrait>(
        &self,
        conn: &C,
        channel_id: Uuid,
        customer: Uuid,
    ) -> Result<bool, ServiceError> {
        let key = (channel_id, customer);
        if let Some(known) = self.inner.channel_membership.get(&key) {
            return Ok(known);
        }
        let member = channel_member::Entity::find_by_id((channel_id, customer.to_string()))
            .one(conn)
            .await?
            .is_some();
        self.inner.channel_membership.insert(key, member);
        Ok(member)
    }

    /// Runs the publisher every `interval` until the task is dropped. Errors are logged and the
    /// next tick tries again, so a database outage delays publishing but loses nothing.
    pub async fn run_publisher(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.publish_due().await {
                Ok(0) => {}
                Ok(count) => {
                    metrics::counter!(PUBLISHED_MESSAGES_METRIC).increment(count);
                    tracing::info!(count, "published scheduled messages to their channels")
                }
                Err(err) => tracing::warn!(
                    code = err.code(),
                    "publisher tick failed; retrying next tick"
                ),
            }
        }
    }

    async fn members_of(
        &self,
        channel_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<channel_member::Model>>, ServiceError> {
        let mut grouped: HashMap<Uuid, Vec<channel_member::Model>> = HashMap::new();
        if channel_ids.is_empty() {
            return Ok(grouped);
        }
        let rows = channel_member::Entity::find()
            .filter(channel_member::Column::ChannelId.is_in(channel_ids.iter().copied()))
            .all(self.reader())
            .await?;
        for row in rows {
            grouped.entry(row.channel_id).or_default().push(row);
        }
        for members in grouped.values_mut() {
            members.sort_by(|a, b| {
                (member_order(&a.kind), &a.name).cmp(&(member_order(&b.kind), &b.name))
            });
        }
        Ok(grouped)
    }

    /// Resource ids (or thread ids) of the threads publishing into each channel.
    async fn publishers_of(
        &self,
        channel_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<String>>, ServiceError> {
        let mut grouped: HashMap<Uuid, Vec<String>> = HashMap::new();
        if channel_ids.is_empty() {
            return Ok(grouped);
        }
        let rows: Vec<(Uuid, Option<Uuid>, Option<String>)> = thread::Entity::find()
            .select_only()
            .column(thread::Column::Id)
            .column(thread::Column::ChannelId)
            .column(thread::Column::ResourceId)
            .filter(thread::Column::ChannelId.is_in(channel_ids.iter().copied()))
            .order_by_asc(thread::Column::Id)
            .into_tuple()
            .all(self.reader())
            .await?;
        for (thread_id, channel_id, resource_id) in rows {
            if let Some(channel_id) = channel_id {
                grouped
                    .entry(channel_id)
                    .or_default()
                    .push(resource_id.unwrap_or_else(|| thread_id.to_string()));
            }
        }
        Ok(grouped)
    }

    /// Messages with their reactions, in one extra query for the whole page.
    pub(crate) async fn wire_messages(
        &self,
        rows: Vec<message::Model>,
    ) -> Result<Vec<Message>, ServiceError> {
        wire_messages_in(self.reader(), rows).await
    }
}

/// Messages with their reactions read through `conn` (the write transaction, when the
/// messages go into events), in one extra query for the whole page.
pub(crate) async fn wire_messages_in<C: ConnectionTrait>(
    conn: &C,
    rows: Vec<message::Model>,
) -> Result<Vec<Message>, ServiceError> {
    let ids: Vec<Uuid> = rows.iter().map(|m| m.id).collect();
    let mut reactions = crate::reactions::reactions_of(conn, &ids).await?;
    rows.into_iter()
        .map(|row| {
            let reactions = reactions.remove(&row.id).unwrap_or_default();
            crate::wire::message(row, reactions)
        })
        .collect()
}

/// A thread's active subscribers, in channel order (organization, users, contacts; by name).
async fn active_members<C: ConnectionTrait>(
    conn: &C,
    thread_id: Uuid,
) -> Result<Vec<thread_subscriber::Model>, ServiceError> {
    let mut members = thread_subscriber::Entity::find()
        .filter(thread_subscriber::Column::ThreadId.eq(thread_id))
        .filter(thread_subscriber::Column::IsArchived.eq(false))
        .all(conn)
        .await?;
    members.sort_by(|a, b| (member_order(&a.kind), &a.name).cmp(&(member_order(&b.kind), &b.name)));
    Ok(members)
}

fn hash_of(members: &[thread_subscriber::Model]) -> String {
    let keys: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.kind.clone(), m.subscriber_id.clone()))
        .collect();
    subscriber_hash(&keys)
}

/// The channel of this subscriber set in the thread's store and mode, if it exists.
async fn find_channel<C: ConnectionTrait>(
    conn: &C,
    thread: &thread::Model,
    members: &[thread_subscriber::Model],
) -> Result<Option<Uuid>, ServiceError> {
    Ok(channel::Entity::find()
        .select_only()
        .column(channel::Column::Id)
        .filter(channel::Column::StoreId.eq(thread.store_id))
        .filter(channel::Column::Mode.eq(thread.mode.as_str()))
        .filter(channel::Column::SubscriberHash.eq(hash_of(members)))
        .into_tuple()
        .one(conn)
        .await?)
}

/// Makes the channel of this subscriber set with its members. Two threads may make the same
/// channel at once: the loser keeps the winner's.
async fn make_channel<C: ConnectionTrait>(
    conn: &C,
    thread: &thread::Model,
    members: &[thread_subscriber::Model],
) -> Result<Uuid, ServiceError> {
    let at = now();
    let id = Uuid::now_v7();
    let name = members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    channel::Entity::insert(channel::ActiveModel {
        id: Set(id),
        store_id: Set(thread.store_id),
        mode: Set(thread.mode.clone()),
        subscriber_hash: Set(hash_of(members)),
        name: Set(name),
        created_at: Set(at),
        updated_at: Set(at),
    })
    .on_conflict_do_nothing_on([
        channel::Column::StoreId,
        channel::Column::Mode,
        channel::Column::SubscriberHash,
    ])
    .exec_without_returning(conn)
    .await?;
    let channel = find_channel(conn, thread, members)
        .await?
        .ok_or_else(channel_not_found)?;
    if channel == id && !members.is_empty() {
        channel_member::Entity::insert_many(members.iter().map(|m| channel_member::ActiveModel {
            channel_id: Set(id),
            subscriber_id: Set(m.subscriber_id.clone()),
            kind: Set(m.kind.clone()),
            name: Set(m.name.clone()),
            email: Set(m.email.clone()),
            phone: Set(m.phone.clone()),
        }))
        .exec(conn)
        .await?;
    }
    Ok(channel)
}

async fn set_thread_channel<C: ConnectionTrait>(
    conn: &C,
    thread: &thread::Model,
    channel_id: Option<Uuid>,
) -> Result<(), ServiceError> {
    if thread.channel_id != channel_id {
        thread::Entity::update_many()
            .col_expr(thread::Column::ChannelId, Expr::value(channel_id))
            .filter(thread::Column::Id.eq(thread.id))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// channels → channel_members, to filter channels by member.
fn channel_member_relation() -> sea_orm::RelationDef {
    channel_member::Relation::Channel.def().rev()
}

fn wire_channel(
    row: channel::Model,
    members: Vec<channel_member::Model>,
    publishers: Vec<String>,
) -> Channel {
    let subscribers: Vec<Subscriber> = members
        .iter()
        .map(|m| Subscriber {
            id: m.subscriber_id.clone(),
            r#type: kind_of(&m.kind),
            name: m.name.clone(),
            email: m.email.clone(),
            phone: m.phone.clone(),
            is_archived: false,
            viewed_at: None,
        })
        .collect();
    Channel {
        id: row.id,
        name: row.name,
        organization_id: row.store_id,
        subscriber_ids: subscribers.iter().map(|s| s.id.clone()).collect(),
        subscribers,
        subscriber_hash: row.subscriber_hash,
        publisher_ids: publishers,
        recent_messages: None,
        has_more: None,
        pending_messages: None,
        scheduled_publish_at: None,
        updated_at: row.updated_at,
    }
}

/// The publisher's work list: ids and threads of up to 1 000 unpublished messages due by `at`,
/// soonest first, read through the partial index `idx_messages_due`.
fn due_messages(at: DateTime<Utc>) -> sea_orm::Select<message::Entity> {
    message::Entity::find()
        .select_only()
        .column(message::Column::Id)
        .column(message::Column::ThreadId)
        .filter(message::Column::PublishedAt.is_null())
        .filter(message::Column::PublishToChannelAt.lte(at))
        .order_by_asc(message::Column::PublishToChannelAt)
        .limit(1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The publisher's query reads the index of unpublished messages, in due order, and that
    /// index holds no published message.
    #[tokio::test]
    async fn the_publisher_reads_the_index_of_unpublished_messages() {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let service = crate::in_memory_service().await;
        let plan = crate::sqlite_plan(&service, due_messages(now())).await;
        assert!(
            plan.contains("USING INDEX idx_messages_due (publish_to_channel_at<?)")
                && !plan.contains("TEMP B-TREE"),
            "the plan searches the due index in order: {plan}"
        );
        let definition = service
            .reader()
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT sql FROM sqlite_master WHERE name = 'idx_messages_due'",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<String>("", "sql")
            .unwrap();
        assert!(
            definition.contains(r#"WHERE "published_at" IS NULL"#),
            "{definition}"
        );
    }

    #[test]
    fn the_hash_names_the_set_not_the_order() {
        let a = subscriber_hash(&[
            ("contact".into(), "c1".into()),
            ("organization".into(), "s1".into()),
        ]);
        let b = subscriber_hash(&[
            ("organization".into(), "s1".into()),
            ("contact".into(), "c1".into()),
        ]);
        let c = subscriber_hash(&[("organization".into(), "s1".into())]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
    }
}
