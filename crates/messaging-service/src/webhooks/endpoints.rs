//! The six endpoint operations: create (with the secret, shown once), list, get, update, delete,
//! and the paged deliveries of an endpoint. Only a secret key manages endpoints; another store's
//! or mode's endpoint is 404.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use messaging_api::{
    CreateWebhookEndpointRequest, CreatedWebhookEndpoint, EventType, Pagination,
    UpdateWebhookEndpointRequest, WebhookDeliveryList, WebhookDeliveryStatus, WebhookEndpoint,
};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};
use uuid::Uuid;

use super::{outgoing::check_url, signing::SigningSecret};
use crate::{
    MessagingService,
    auth::Caller,
    cursor::{self, Position},
    entity::{webhook_delivery, webhook_endpoint},
    error::ServiceError,
    now,
    threads::{from_micros, micros},
    wire,
};

/// Endpoints a store may have in one mode: it bounds the fan-out of every event.
pub const MAX_ENDPOINTS: u64 = 20;

fn endpoint_not_found() -> ServiceError {
    ServiceError::not_found(
        "webhook_endpoint_not_found",
        "No webhook endpoint with that id.",
    )
}

/// Event types as stored: sorted, without repeats, space-separated.
fn stored_event_types(types: &[EventType]) -> String {
    let mut names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.join(" ")
}

fn description(text: Option<String>) -> Option<String> {
    text.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty())
}

impl MessagingService {
    /// The signing secret of an endpoint, derived from the server secret and its salt.
    pub(crate) fn signing_secret(&self, endpoint: &webhook_endpoint::Model) -> SigningSecret {
        SigningSecret::new(
            self.inner
                .keys
                .webhook_secret(endpoint.id, &endpoint.secret_salt),
        )
    }

    /// An endpoint of the caller's store and mode; anything else is 404.
    async fn load_endpoint<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        id: Uuid,
    ) -> Result<webhook_endpoint::Model, ServiceError> {
        webhook_endpoint::Entity::find_by_id(id)
            .filter(webhook_endpoint::Column::StoreId.eq(caller.store_id))
            .filter(webhook_endpoint::Column::Mode.eq(caller.mode.as_str()))
            .one(conn)
            .await?
            .ok_or_else(endpoint_not_found)
    }

    pub(crate) async fn create_webhook_endpoint(
        &self,
        caller: &Caller,
        body: CreateWebhookEndpointRequest,
    ) -> Result<CreatedWebhookEndpoint, ServiceError> {
        let url = check_url(&body.url, caller.mode)?;
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let at = now();
        let txn = self.begin_write().await?;
        let existing = webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::StoreId.eq(caller.store_id))
            .filter(webhook_endpoint::Column::Mode.eq(caller.mode.as_str()))
            .count(&txn)
            .await?;
        if existing >= MAX_ENDPOINTS {
            return Err(ServiceError::conflict(
                "webhook_endpoint_limit",
                format!("A store has at most {MAX_ENDPOINTS} webhook endpoints per mode."),
            ));
        }
        let row = webhook_endpoint::ActiveModel {
            id: Set(Uuid::now_v7()),
            store_id: Set(caller.store_id),
            mode: Set(caller.mode.as_str().to_owned()),
            url: Set(url.to_string()),
            event_types: Set(stored_event_types(&body.event_types.unwrap_or_default())),
            description: Set(description(body.description)),
            secret_salt: Set(URL_SAFE_NO_PAD.encode(salt)),
            enabled: Set(true),
            created_at: Set(at),
            updated_at: Set(at),
        }
        .insert(&txn)
        .await?;
        self.commit(txn).await?;
        let secret = self.signing_secret(&row).to_whsec();
        let endpoint = wire::webhook_endpoint(row)?;
        Ok(CreatedWebhookEndpoint {
            id: endpoint.id,
            url: endpoint.url,
            event_types: endpoint.event_types,
            description: endpoint.description,
            enabled: endpoint.enabled,
            created_at: endpoint.created_at,
            secret,
        })
    }

    pub(crate) async fn list_webhook_endpoints(
        &self,
        caller: &Caller,
    ) -> Result<Vec<WebhookEndpoint>, ServiceError> {
        webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::StoreId.eq(caller.store_id))
            .filter(webhook_endpoint::Column::Mode.eq(caller.mode.as_str()))
            .order_by_asc(webhook_endpoint::Column::CreatedAt)
            .order_by_asc(webhook_endpoint::Column::Id)
            .all(self.reader())
            .await?
            .into_iter()
            .map(wire::webhook_endpoint)
            .collect()
    }

    pub(crate) async fn get_webhook_endpoint(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<WebhookEndpoint, ServiceError> {
        wire::webhook_endpoint(self.load_endpoint(self.reader(), caller, id).await?)
    }

    pub(crate) async fn update_webhook_endpoint(
        &self,
        caller: &Caller,
        id: Uuid,
        body: UpdateWebhookEndpointRequest,
    ) -> Result<WebhookEndpoint, ServiceError> {
        if body == UpdateWebhookEndpointRequest::default() {
            return Err(ServiceError::bad_request(
                "empty_update",
                "Give at least one of url, event_types, enabled, description.",
            ));
        }
        let url = body
            .url
            .as_deref()
            .map(|url| check_url(url, caller.mode))
            .transpose()?;
        // In a write transaction committed through `commit`, so an `Idempotency-Key`'s answer
        // is stored with the change.
        let txn = self.begin_write().await?;
        let row = self.load_endpoint(&txn, caller, id).await?;
        let mut update: webhook_endpoint::ActiveModel = row.into();
        if let Some(url) = url {
            update.url = Set(url.to_string());
        }
        if let Some(types) = body.event_types {
            update.event_types = Set(stored_event_types(&types));
        }
        if let Some(enabled) = body.enabled {
            update.enabled = Set(enabled);
        }
        if body.description.is_some() {
            update.description = Set(description(body.description));
        }
        update.updated_at = Set(now());
        let row = update.update(&txn).await.map_err(|err| match err {
            // Deleted between the read and the write.
            sea_orm::DbErr::RecordNotUpdated => endpoint_not_found(),
            other => ServiceError::internal(other),
        })?;
        let endpoint = wire::webhook_endpoint(row)?;
        self.commit(txn).await?;
        Ok(endpoint)
    }

    /// Deletes the endpoint; its deliveries and attempts go with it (foreign keys cascade).
    pub(crate) async fn delete_webhook_endpoint(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<(), ServiceError> {
        let deleted = webhook_endpoint::Entity::delete_many()
            .filter(webhook_endpoint::Column::Id.eq(id))
            .filter(webhook_endpoint::Column::StoreId.eq(caller.store_id))
            .filter(webhook_endpoint::Column::Mode.eq(caller.mode.as_str()))
            .exec(self.writer())
            .await?
            .rows_affected;
        if deleted == 0 {
            return Err(endpoint_not_found());
        }
        Ok(())
    }

    /// An endpoint's deliveries, newest first (UUIDv7 ids order with `created_at`).
    pub(crate) async fn list_webhook_deliveries(
        &self,
        caller: &Caller,
        id: Uuid,
        status: Option<WebhookDeliveryStatus>,
        limit: u64,
        cursor_text: Option<&str>,
    ) -> Result<WebhookDeliveryList, ServiceError> {
        let endpoint = self.load_endpoint(self.reader(), caller, id).await?;
        let scope = format!(
            "webhook-deliveries|{}|{}",
            endpoint.id,
            status.map_or("", |s| s.as_str())
        );
        let mut select = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::EndpointId.eq(endpoint.id));
        if let Some(status) = status {
            select = select.filter(webhook_delivery::Column::Status.eq(status.as_str()));
        }
        if let Some(position) = cursor_text
            .map(|c| cursor::decode(&self.inner.keys, &scope, c))
            .transpose()?
        {
            let key = Expr::tuple([
                Expr::col(webhook_delivery::Column::CreatedAt),
                Expr::col(webhook_delivery::Column::Id),
            ]);
            let after = Expr::tuple([
                Expr::val(from_micros(position.micros)?),
                Expr::val(position.id),
            ]);
            select = select.filter(sea_orm::sea_query::ExprTrait::lt(key, after));
        }
        let mut rows = select
            .order_by_desc(webhook_delivery::Column::CreatedAt)
            .order_by_desc(webhook_delivery::Column::Id)
            .limit(limit + 1)
            .all(self.reader())
            .await?;
        let has_more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = rows.last().filter(|_| has_more).map(|last| {
            let position = Position {
                pinned: None,
                micros: micros(last.created_at),
                id: last.id,
            };
            cursor::encode(&self.inner.keys, &scope, position)
        });
        Ok(WebhookDeliveryList {
            deliveries: rows
                .into_iter()
                .map(wire::webhook_delivery)
                .collect::<Result<_, _>>()?,
            pagination: Pagination {
                limit: limit as i32,
                next_cursor,
                has_more,
            },
        })
    }
}
