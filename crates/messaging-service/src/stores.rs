//! Stores and their API keys: creation with four fresh keys, listing, rotation and revocation.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    sea_query::Expr,
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

/// A rotated key: the new key, shown once, and the id of the key it replaces (now revoked).
#[derive(Debug, Clone, Serialize)]
pub struct RotatedKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
    pub replaces: Uuid,
}

fn corrupt(column: &str, value: &str) -> ServiceError {
    ServiceError::internal(std::io::Error::other(format!(
        "api_keys.{column} holds an unknown value {value:?}"
    )))
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
        let txn = self.begin_write().await?;
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

    /// Every key of a store (revoked ones too), newest first. An unknown store is 404.
    pub async fn list_keys(&self, store_id: Uuid) -> Result<Vec<KeyInfo>, ServiceError> {
        store::Entity::find_by_id(store_id)
            .one(self.writer())
            .await?
            .ok_or_else(|| ServiceError::not_found("store_not_found", "No store with that id."))?;
        let keys = api_key::Entity::find()
            .filter(api_key::Column::StoreId.eq(store_id))
            .order_by_desc(api_key::Column::CreatedAt)
            .order_by_desc(api_key::Column::Id)
            .all(self.writer())
            .await?;
        Ok(keys.into_iter().map(KeyInfo::from).collect())
    }

    /// Revokes a key: the next request with it is 401 in this process, and in others once their
    /// cache of verified keys expires (`KEY_CACHE_TTL`). Revoking a revoked key changes nothing
    /// and returns it as it is; an unknown key is 404.
    pub async fn revoke_key(&self, key_id: Uuid) -> Result<KeyInfo, ServiceError> {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(api_key::Column::Id.eq(key_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(self.writer())
            .await?;
        let key = api_key::Entity::find_by_id(key_id)
            .one(self.writer())
            .await?
            .ok_or_else(|| ServiceError::not_found("key_not_found", "No key with that id."))?;
        self.inner.key_cache.invalidate_all();
        Ok(key.into())
    }

    /// Replaces an active key with a fresh one of the same store, kind and mode, revoking the
    /// old one in the same transaction. The new key is shown once, in the result. Of two
    /// concurrent rotations of one key only one succeeds; a revoked or unknown key is 404.
    pub async fn rotate_key(&self, key_id: Uuid) -> Result<RotatedKey, ServiceError> {
        let not_found = || ServiceError::not_found("key_not_found", "No active key with that id.");
        let txn = self.begin_write().await?;
        let old = api_key::Entity::find_by_id(key_id)
            .one(&txn)
            .await?
            .filter(|k| k.revoked_at.is_none())
            .ok_or_else(not_found)?;
        let kind = KeyKind::parse(&old.kind).ok_or_else(|| corrupt("kind", &old.kind))?;
        let mode = Mode::parse(&old.mode).ok_or_else(|| corrupt("mode", &old.mode))?;
        let revoked = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(api_key::Column::Id.eq(old.id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        if revoked != 1 {
            return Err(not_found());
        }
        let key = ApiKeyParts { kind, mode }.generate();
        let info = self
            .key_row(old.store_id, kind, mode, &key)
            .insert(&txn)
            .await?
            .into();
        txn.commit().await?;
        self.inner.key_cache.invalidate_all();
        Ok(RotatedKey {
            key,
            info,
            replaces: old.id,
        })
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
