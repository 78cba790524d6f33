//! A webhook endpoint of a store and mode. Its signing secret is not stored: it is derived from
//! the server secret and `secret_salt` (see `webhooks::signing`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_endpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub store_id: Uuid,
    /// `test` or `live`.
    pub mode: String,
    pub url: String,
    /// Event types sent here, separated by spaces; empty means all.
    pub event_types: String,
    pub description: Option<String>,
    /// Random salt (base64) that, with the server secret, derives the signing secret.
    pub secret_salt: String,
    pub enabled: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
