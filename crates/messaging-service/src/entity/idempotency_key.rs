//! One caller's `Idempotency-Key`: claimed (a lock token and its lease) while the request runs,
//! then the request's first final answer, kept until `expires_at`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub store_id: Uuid,
    pub mode: String,
    /// Who within the store and mode: `store`, `customer:<uuid>` or `user:<id>`.
    pub principal: String,
    pub idempotency_key: String,
    /// SHA-256 (hex) of the method, the path and query, and the body.
    pub fingerprint: String,
    /// The claim of the request that runs now; `None` once the answer is stored.
    pub lock_token: Option<Uuid>,
    /// A claim past this time belongs to a request that died: a retry may take it over.
    pub locked_until: Option<DateTimeUtc>,
    /// The stored answer; `None` while the request runs.
    pub response_status: Option<i32>,
    pub response_content_type: Option<String>,
    /// Sealed with the server's answer key (`ServerKeys::seal_answer`), bound to `id`.
    pub response_body: Option<Vec<u8>>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
