//! A message in a thread, and in its channel once published. Deletes are soft: the row stays
//! for audit, lists skip it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub thread_id: Uuid,
    pub store_id: Uuid,
    pub mode: String,
    pub sender_type: String,
    pub sender_id: Option<Uuid>,
    pub message_content: String,
    pub is_edited: bool,
    pub edited_at: Option<DateTimeUtc>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// `text`, `meta`, `tracking_update` or `pickup_reminder`.
    pub message_type: String,
    pub event: Option<String>,
    /// JSON array of HTTPS URLs.
    pub media_urls: Option<String>,
    /// The subscriber who wrote it: a customer, user or store id.
    pub subscriber_id: Option<String>,
    pub resource_id: Option<String>,
    /// The channel it publishes into (the thread's channel when it was sent).
    pub channel_id: Option<Uuid>,
    pub publish_to_channel_at: Option<DateTimeUtc>,
    /// When it reached its channel; `None` while pending.
    pub published_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

crate::entity::read_by_position!(Model {
    id,
    thread_id,
    store_id,
    mode,
    sender_type,
    sender_id,
    message_content,
    is_edited,
    edited_at,
    is_deleted,
    deleted_at,
    created_at,
    updated_at,
    message_type,
    event,
    media_urls,
    subscriber_id,
    resource_id,
    channel_id,
    publish_to_channel_at,
    published_at,
});

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    /// Every column holds a value no other column of its type holds, so reading one column for
    /// another shows; and a row with every optional column NULL.
    #[tokio::test]
    async fn reads_by_position_as_sea_orm() {
        let at = |second: i64| Utc.timestamp_opt(1_800_000_000 + second, 123_000).unwrap();
        let full = Model {
            id: Uuid::from_u128(1),
            thread_id: Uuid::from_u128(2),
            store_id: Uuid::from_u128(3),
            mode: "test".to_owned(),
            sender_type: "customer".to_owned(),
            sender_id: Some(Uuid::from_u128(4)),
            message_content: "hello".to_owned(),
            is_edited: true,
            edited_at: Some(at(1)),
            is_deleted: false,
            deleted_at: Some(at(2)),
            created_at: at(3),
            updated_at: at(4),
            message_type: "text".to_owned(),
            event: Some("event".to_owned()),
            media_urls: Some("[]".to_owned()),
            subscriber_id: Some("subscriber".to_owned()),
            resource_id: Some("resource".to_owned()),
            channel_id: Some(Uuid::from_u128(5)),
            publish_to_channel_at: Some(at(5)),
            published_at: Some(at(6)),
        };
        let empty = Model {
            id: Uuid::from_u128(6),
            sender_id: None,
            is_edited: false,
            edited_at: None,
            is_deleted: true,
            deleted_at: None,
            event: None,
            media_urls: None,
            subscriber_id: None,
            resource_id: None,
            channel_id: None,
            publish_to_channel_at: None,
            published_at: None,
            ..full.clone()
        };
        crate::entity::assert_reads_by_position::<Entity>(&[full, empty]).await;
    }
}
