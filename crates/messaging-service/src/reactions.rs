//! Reactions (seed 004): each subscriber's emoji on a message, idempotent to add and remove.

use std::{collections::HashMap, sync::LazyLock};

use messaging_api::{Message, Reaction};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect, Select, SelectModel,
    Selector, sea_query::Expr,
};
use uuid::Uuid;

use crate::{
    MessagingService,
    auth::Caller,
    entity::{message, message_reaction, read_with_text, thread},
    error::ServiceError,
    events::{self, EventData, EventScope, WriteTxn},
    limits::MAX_REACTIONS_PER_SUBSCRIBER,
    now,
    subscribers::Participant,
    threads::ThreadRef,
};

/// An emoji is 1 to 64 characters with no whitespace or control characters (as the spec's
/// pattern says).
fn valid_emoji(emoji: &str) -> Result<&str, ServiceError> {
    let ok = !emoji.is_empty()
        && emoji.chars().count() <= 64
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(emoji)
    } else {
        Err(ServiceError::bad_request(
            "invalid_emoji",
            "emoji must be 1 to 64 characters without spaces or control characters.",
        ))
    }
}

/// The reactions of the given messages, in one query: per message, per emoji in first-use
/// order, with its count and reactors.
pub async fn reactions_of<C: ConnectionTrait>(
    conn: &C,
    message_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Reaction>>, ServiceError> {
    if message_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = message_reaction::Entity::find()
        .filter(message_reaction::Column::MessageId.is_in(message_ids.iter().copied()))
        .order_by_asc(message_reaction::Column::CreatedAt)
        .order_by_asc(message_reaction::Column::SubscriberId)
        .all(conn)
        .await?;
    let mut pairs: HashMap<Uuid, Vec<(String, String)>> = HashMap::new();
    for row in rows {
        pairs
            .entry(row.message_id)
            .or_default()
            .push((row.emoji, row.subscriber_id));
    }
    Ok(pairs
        .into_iter()
        .map(|(message_id, pairs)| (message_id, grouped(pairs)))
        .collect())
}

/// A message read with its reactions as one row: the database aggregates the message's
/// reactions into a JSON array column (see `reactions_json_sql`), so a page of messages is one
/// query, not a second one for the page's reactions.
pub struct MessageWithReactions {
    pub message: message::Model,
    pub reactions: Vec<Reaction>,
}

/// The alias of the aggregated column.
const REACTIONS_COLUMN: &str = "reactions_json";

impl MessageWithReactions {
    /// Reads the messages `select` finds, each with its reactions.
    pub fn select(
        select: Select<message::Entity>,
        backend: DbBackend,
    ) -> Selector<SelectModel<Self>> {
        select
            .expr_as(Expr::cust(reactions_json_sql(backend)), REACTIONS_COLUMN)
            .into_model::<Self>()
    }

    /// The message in its wire form.
    pub fn into_wire(self) -> Result<Message, ServiceError> {
        crate::wire::message(self.message, self.reactions)
    }
}

impl FromQueryResult for MessageWithReactions {
    /// Reads the row by position (`entity::ReadRow`): the message's columns, then the
    /// aggregated reactions.
    fn from_query_result(row: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        let (message, json) = read_with_text::<message::Model>(row, pre)?;
        let reactions = aggregated(&json)
            .map_err(|e| DbErr::Type(format!("reactions of message {}: {e}", message.id)))?;
        Ok(Self { message, reactions })
    }
}

/// The reactions in the aggregated column, grouped per emoji in first-use order.
fn aggregated(json: &str) -> Result<Vec<Reaction>, serde_json::Error> {
    let mut reacted: Vec<Reacted> = serde_json::from_str(json)?;
    reacted.sort_by(|a, b| (&a.at, &a.subscriber_id).cmp(&(&b.at, &b.subscriber_id)));
    Ok(grouped(
        reacted.into_iter().map(|r| (r.emoji, r.subscriber_id)),
    ))
}

/// One reaction in the aggregated column: `[emoji, subscriber_id, created_at]`, in no order.
#[derive(serde::Deserialize)]
struct Reacted {
    emoji: String,
    subscriber_id: String,
    /// The time as text that sorts as the time does: from SQLite as it stores it (RFC 3339 in
    /// UTC), from PostgreSQL with `to_char` in UTC to the microsecond.
    at: String,
}

/// Reactions `(emoji, subscriber_id)`, oldest first, grouped per emoji in first-use order.
fn grouped(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<Reaction> {
    let mut reactions: Vec<Reaction> = Vec::new();
    for (emoji, subscriber_id) in pairs {
        match reactions.iter_mut().find(|r| r.emoji == emoji) {
            Some(reaction) => {
                reaction.count += 1;
                reaction.subscriber_ids.push(subscriber_id);
            }
            None => reactions.push(Reaction {
                emoji,
                count: 1,
                subscriber_ids: vec![subscriber_id],
            }),
        }
    }
    reactions
}

/// The correlated subquery that aggregates a message's reactions into a JSON array (text), in
/// each backend's dialect. Both databases could order them in the aggregate, but an `ORDER BY`
/// there sets up a sort for every message of the page, reactions or not: on SQLite a temporary
/// b-tree (a pager and a page buffer), about 4% of a page's CPU; on PostgreSQL a sort state,
/// a page of 50 about a fifth slower to answer. So each reaction comes with its time and the
/// reader orders them (`MessageWithReactions::from_query_result`).
fn reactions_json_sql(backend: DbBackend) -> &'static str {
    const FROM: &str = r#"FROM "message_reactions" AS r WHERE r."message_id" = "messages"."id""#;
    static POSTGRES: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"(SELECT COALESCE(json_agg(json_build_array(r."emoji", r."subscriber_id", to_char(r."created_at" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'))), '[]')::text {FROM})"#
        )
    });
    static SQLITE: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"(SELECT json_group_array(json_array(r."emoji", r."subscriber_id", r."created_at")) {FROM})"#
        )
    });
    match backend {
        DbBackend::Postgres => &POSTGRES,
        _ => &SQLITE,
    }
}

impl MessagingService {
    /// A live message of the caller's store and mode in a thread the caller may read, with
    /// that thread.
    pub(crate) async fn readable_message<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        id: Uuid,
    ) -> Result<(message::Model, thread::Model), ServiceError> {
        let message = message::Entity::find_by_id(id)
            .filter(message::Column::StoreId.eq(caller.store_id))
            .filter(message::Column::Mode.eq(caller.mode.as_str()))
            .filter(message::Column::IsDeleted.eq(false))
            .one(conn)
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("message_not_found", "No message with that id.")
            })?;
        // gateByThreadId on the message's thread.
        let thread = self
            .load_thread(conn, caller, &ThreadRef::Id(message.thread_id))
            .await?;
        Ok((message, thread))
    }

    pub(crate) async fn react(
        &self,
        caller: &Caller,
        participant: &Participant,
        message_id: Uuid,
        emoji: &str,
        add: bool,
    ) -> Result<Message, ServiceError> {
        let emoji = valid_emoji(emoji)?;
        let txn = self.begin_write().await?;
        let found = self.readable_message(&txn, caller, message_id).await?;
        let (message, thread) = if txn.lock_threads(&[found.0.thread_id]).await? {
            self.readable_message(&txn, caller, message_id).await?
        } else {
            found
        };
        crate::subscribers::require_member(&txn, message.thread_id, participant).await?;
        let subscriber_id = participant.subscriber_id();
        let changed = if add {
            add_reaction(&txn, &message, emoji, subscriber_id).await?
        } else {
            message_reaction::Entity::delete_many()
                .filter(message_reaction::Column::MessageId.eq(message.id))
                .filter(message_reaction::Column::Emoji.eq(emoji))
                .filter(message_reaction::Column::SubscriberId.eq(subscriber_id))
                .exec(&txn)
                .await?
                .rows_affected
                > 0
        };
        let message = crate::channels::wire_messages_in(&txn, vec![message])
            .await?
            .pop()
            .ok_or_else(|| {
                ServiceError::not_found("message_not_found", "No message with that id.")
            })?;
        // Adding a reaction that is there, or removing one that is not, changes nothing.
        if changed {
            events::record(
                &txn,
                &EventScope::of(&thread),
                EventData::MessageUpdated(&message),
            )
            .await?;
        }
        self.commit(txn).await?;
        Ok(message)
    }
}

/// Adds one reaction (again is a no-op: `false`), unless the subscriber already has
/// [`MAX_REACTIONS_PER_SUBSCRIBER`] other emoji on the message. The caller holds the thread's
/// lock (`WriteTxn::lock_threads`), so the count cannot go stale before the insert commits.
async fn add_reaction(
    txn: &WriteTxn,
    message: &message::Model,
    emoji: &str,
    subscriber_id: String,
) -> Result<bool, ServiceError> {
    let mine = message_reaction::Entity::find()
        .filter(message_reaction::Column::MessageId.eq(message.id))
        .filter(message_reaction::Column::SubscriberId.eq(subscriber_id.as_str()));
    let already = mine
        .clone()
        .filter(message_reaction::Column::Emoji.eq(emoji))
        .count(txn)
        .await?
        > 0;
    if already {
        return Ok(false);
    }
    if mine.count(txn).await? >= MAX_REACTIONS_PER_SUBSCRIBER {
        return Err(ServiceError::conflict(
            "too_many_reactions",
            format!(
                "One subscriber has at most {MAX_REACTIONS_PER_SUBSCRIBER} different reactions on a message."
            ),
        ));
    }
    let inserted = message_reaction::Entity::insert(message_reaction::ActiveModel {
        message_id: Set(message.id),
        emoji: Set(emoji.to_owned()),
        subscriber_id: Set(subscriber_id),
        created_at: Set(now()),
    })
    .on_conflict_do_nothing_on([
        message_reaction::Column::MessageId,
        message_reaction::Column::Emoji,
        message_reaction::Column::SubscriberId,
    ])
    .exec_without_returning(txn)
    .await?;
    Ok(matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_reactions_are_grouped_in_first_use_order() {
        let group = |r: &Reaction| (r.emoji.clone(), r.subscriber_ids.clone());
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // SQLite's rows come in no order, each with its time; a whole second sorts before its
        // fractions, and two reactions at one time go by subscriber.
        let sqlite = r#"[
            ["tada", "b", "2026-11-29T10:00:01.5+00:00"],
            ["👍", "c", "2026-11-29T10:00:01+00:00"],
            ["tada", "a", "2026-11-29T10:00:01.5+00:00"],
            ["👍", "d", "2026-11-29T10:00:02.000001+00:00"]
        ]"#;
        let reactions = aggregated(sqlite).unwrap();
        assert_eq!(
            reactions.iter().map(group).collect::<Vec<_>>(),
            [
                ("👍".to_owned(), s(&["c", "d"])),
                ("tada".to_owned(), s(&["a", "b"]))
            ]
        );
        assert_eq!(reactions[0].count, 2);
        // PostgreSQL's times are always six fractional digits, without an offset.
        let postgres = r#"[
            ["tada", "z", "2026-11-29T10:00:01.000000"],
            ["👍", "a", "2026-11-29T10:00:00.999999"],
            ["tada", "b", "2026-11-29T10:00:02.000000"]
        ]"#;
        assert_eq!(
            aggregated(postgres)
                .unwrap()
                .iter()
                .map(group)
                .collect::<Vec<_>>(),
            [
                ("👍".to_owned(), s(&["a"])),
                ("tada".to_owned(), s(&["z", "b"]))
            ]
        );
        assert!(aggregated("[]").unwrap().is_empty());
    }

    #[test]
    fn emoji_rules() {
        assert!(valid_emoji("👍").is_ok());
        assert!(valid_emoji("+1").is_ok());
        assert!(valid_emoji("").is_err());
        assert!(valid_emoji("a b").is_err());
        assert!(valid_emoji(&"x".repeat(65)).is_err());
    }
}
