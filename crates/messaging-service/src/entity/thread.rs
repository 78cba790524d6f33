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

crate::entity::read_by_position!(Model {
    id,
    store_id,
    mode,
    customer_id,
    customer_name,
    customer_email,
    customer_phone,
    order_id,
    product_id,
    subject,
    thread_type,
    status,
    priority,
    last_message_at,
    last_message_by,
    unread_count_customer,
    unread_count_store,
    is_archived,
    is_muted,
    is_pinned,
    created_at,
    updated_at,
    resource_id,
    location_id,
    name,
    channel_id,
});

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
            store_id: Uuid::from_u128(2),
            mode: "test".to_owned(),
            customer_id: Uuid::from_u128(3),
            customer_name: Some("name".to_owned()),
            customer_email: Some("email".to_owned()),
            customer_phone: Some("phone".to_owned()),
            order_id: Some("order".to_owned()),
            product_id: Some("product".to_owned()),
            subject: "subject".to_owned(),
            thread_type: "type".to_owned(),
            status: "status".to_owned(),
            priority: "priority".to_owned(),
            last_message_at: at(1),
            last_message_by: Some("by".to_owned()),
            unread_count_customer: 7,
            unread_count_store: 8,
            is_archived: true,
            is_muted: false,
            is_pinned: false,
            created_at: at(2),
            updated_at: at(3),
            resource_id: Some("resource".to_owned()),
            location_id: Some("location".to_owned()),
            name: Some("thread name".to_owned()),
            channel_id: Some(Uuid::from_u128(4)),
        };
        let empty = Model {
            id: Uuid::from_u128(5),
            customer_name: None,
            customer_email: None,
            customer_phone: None,
            order_id: None,
            product_id: None,
            last_message_by: None,
            is_archived: false,
            is_muted: true,
            resource_id: None,
            location_id: None,
            name: None,
            channel_id: None,
            ..full.clone()
        };
        let pinned = Model {
            id: Uuid::from_u128(6),
            is_archived: false,
            is_pinned: true,
            ..full.clone()
        };
        crate::entity::assert_reads_by_position::<Entity>(&[full, empty, pinned]).await;
    }
}
