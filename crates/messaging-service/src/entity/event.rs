//! One event of the feed: a change a reader could see, written in the change's transaction.
//!
//! `xid` and `seq` are its position (`events.rs`); `payload` is the event's `data` as JSON,
//! serialised from the same wire types the REST answers use.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// The writing transaction's id on PostgreSQL (a column default); 0 on SQLite.
    pub xid: i64,
    pub store_id: Uuid,
    pub mode: String,
    /// The customer of the event's thread.
    pub customer_id: Uuid,
    pub thread_id: Option<Uuid>,
    /// Only the store may read it.
    pub store_only: bool,
    pub event_type: String,
    pub payload: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
