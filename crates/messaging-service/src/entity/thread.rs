//! A conversation between one customer and the store, with its read state and lifecycle.
//!
//! `last_message_at`, `last_message_by` and the unread counts change only in the transaction
//! that writes the message that moves them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "threads")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub store_id: Uuid,
    pub mode: String,
    pub customer_id: Uuid,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub customer_phone: Option<String>,
    pub order_id: Option<String>,
    pub product_id: Option<String>,
    pub subject: String,
    pub thread_type: String,
    pub status: String,
    pub priority: String,
    pub last_message_at: DateTimeUtc,
    pub last_message_by: Option<String>,
    pub unread_count_customer: i64,
    pub unread_count_store: i64,
    pub is_archived: bool,
    pub is_muted: bool,
    pub is_pinned: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The resource (order, product) of seed 004; unique per store and mode.
    pub resource_id: Option<String>,
    pub location_id: Option<String>,
    pub name: Option<String>,
    /// The channel of the thread's current set of active subscribers.
    pub channel_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::thread_subscriber::Entity")]
    Subscribers,
}

impl Related<super::thread_subscriber::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscribers.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
