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
