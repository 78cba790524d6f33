//! Stores and their API keys: creation with four fresh keys, listing, rotation and revocation.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    MessagingService,
    auth::{ApiKeyParts, KeyKind, Mode},
    entity::{api_key, store},
    error::ServiceError,
};

/// A new store and its four keys, shown once: only their hashes are kept.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedStore {
    pub store_id: Uuid,
    pub secret_key_test: String,
    pub publishable_key_test: String,
    pub secret_key_live: String,
    pub publishable_key_live: String,
}

/// What the server knows of a key: never the key itself.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: Uuid,
    pub store_id: Uuid,
    pub mode: String,
    pub kind: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: chrono::DateTime<Utc>,
    pub revoked_at: Option<chrono::DateTime<Utc>>,
}

impl From<api_key::Model> for KeyInfo {
    fn from(key: api_key::Model) -> Self {
        Self {
            id: key.id,
            store_id: key.store_id,
            mode: key.mode,
            kind: key.kind,
            prefix: key.key_prefix,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// The part of a key kept in clear: type, mode and the first four random characters.
fn key_prefix(key: &str) -> String {
    let visible = key.len().min("tybrite_sk_test_".len() + 4);
    format!("{}…", &key[..visible])
}

impl MessagingService {
    /// Creates a store with a secret and a publishable key for each mode.
    pub async fn create_store(&self, name: &str) -> Result<CreatedStore, ServiceError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ServiceError::bad_request(
                "invalid_name",
                "A store name has 1 to 200 characters.",
            ));
        }
        let now = Utc::now();
        let store_id = Uuid::now_v7();
        let txn = self.db().begin().await?;
        store::ActiveModel {
            id: Set(store_id),
            name: Set(name.to_owned()),
            avatar_url: Set(None),
            created_at: Set(now),
        }
        .insert(&txn)
        .await?;
        let issue = async |kind, mode| -> Result<String, ServiceError> {
            let key = ApiKeyParts { kind, mode }.generate();
            self.key_row(store_id, kind, mode, &key)
                .insert(&txn)
                .await?;
            Ok(key)
        };
        let created = CreatedStore {
            store_id,
            secret_key_test: issue(KeyKind::Secret, Mode::Test).await?,
            publishable_key_test: issue(KeyKind::Publishable, Mode::Test).await?,
            secret_key_live: issue(KeyKind::Secret, Mode::Live).await?,
            publishable_key_live: issue(KeyKind::Publishable, Mode::Live).await?,
        };
        txn.commit().await?;
        Ok(created)
    }

    /// Every key of a store, newest first.
    pub async fn list_keys(&self, store_id: Uuid) -> Result<Vec<KeyInfo>, ServiceError> {
        let keys = api_key::Entity::find()
            .filter(api_key::Column::StoreId.eq(store_id))
            .order_by_desc(api_key::Column::CreatedAt)
            .all(self.db())
            .await?;
        Ok(keys.into_iter().map(KeyInfo::from).collect())
    }

    /// Revokes a key at once. Revoking a revoked key is a no-op; an unknown key is 404.
    pub async fn revoke_key(&self, key_id: Uuid) -> Result<KeyInfo, ServiceError> {
        let key = api_key::Entity::find_by_id(key_id)
            .one(self.db())
            .await?
            .ok_or_else(|| ServiceError::not_found("key_not_found", "No key with that id."))?;
        if key.revoked_at.is_some() {
            return Ok(key.into());
        }
        let mut row: api_key::ActiveModel = key.into();
        row.revoked_at = Set(Some(Utc::now()));
        let revoked = row.update(self.db()).await?;
        self.inner.key_cache.invalidate_all();
        Ok(revoked.into())
    }

    /// Replaces a key with a fresh one of the same kind and mode, revoking the old one in the
    /// same transaction. Returns the new key (shown once) and its record.
    pub async fn rotate_key(&self, key_id: Uuid) -> Result<(String, KeyInfo), ServiceError> {
        let txn = self.db().begin().await?;
        let old = api_key::Entity::find_by_id(key_id)
            .one(&txn)
            .await?
            .filter(|k| k.revoked_at.is_none())
            .ok_or_else(|| {
                ServiceError::not_found("key_not_found", "No active key with that id.")
            })?;
        let kind = if old.kind == KeyKind::Secret.as_str() {
            KeyKind::Secret
        } else {
            KeyKind::Publishable
        };
        let mode = Mode::parse(&old.mode).unwrap_or(Mode::Test);
        let key = ApiKeyParts { kind, mode }.generate();
        let info = self
            .key_row(old.store_id, kind, mode, &key)
            .insert(&txn)
            .await?
            .into();
        let mut revoked: api_key::ActiveModel = old.into();
        revoked.revoked_at = Set(Some(Utc::now()));
        revoked.update(&txn).await?;
        txn.commit().await?;
        self.inner.key_cache.invalidate_all();
        Ok((key, info))
    }

    fn key_row(
        &self,
        store_id: Uuid,
        kind: KeyKind,
        mode: Mode,
        key: &str,
    ) -> api_key::ActiveModel {
        api_key::ActiveModel {
            id: Set(Uuid::now_v7()),
            store_id: Set(store_id),
            mode: Set(mode.as_str().to_owned()),
            kind: Set(kind.as_str().to_owned()),
            key_hash: Set(self.inner.keys.hash_credential(key)),
            key_prefix: Set(key_prefix(key)),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
        }
    }
}
