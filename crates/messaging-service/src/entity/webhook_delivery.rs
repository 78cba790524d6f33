//! One event to be sent to one endpoint: the exact body, its state and when to try next.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The event's id: `webhook-id` on every attempt.
    pub event_id: String,
    pub event_type: String,
    /// The request body, identical on every attempt.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_response_status: Option<i32>,
    /// When a pending delivery is due; while an attempt runs, when its lease ends.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// Set by the worker that claimed the delivery; only that worker records the attempt.
    pub lease_token: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::webhook_endpoint::Entity",
        from = "Column::EndpointId",
        to = "super::webhook_endpoint::Column::Id"
    )]
    Endpoint,
}

impl Related<super::webhook_endpoint::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Endpoint.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
