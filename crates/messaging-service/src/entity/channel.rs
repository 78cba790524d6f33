//! A channel: the conversation space of one set of active subscribers in a store and mode.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channels")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub store_id: Uuid,
    pub mode: String,
    /// SHA-256 (hex) of the sorted subscriber keys; unique per store and mode.
    pub subscriber_hash: String,
    pub name: String,
    pub created_at: DateTimeUtc,
    /// Moves when a message is published into the channel.
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
