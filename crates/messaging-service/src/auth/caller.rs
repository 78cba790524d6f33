//! The caller of one request, resolved from the API key and the optional customer token.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{ApiKeyParts, tokens::verify_access_token};
use crate::{
    MessagingService,
    entity::{api_key, store},
    error::ServiceError,
};

/// Test or live data. Keys of one mode never see the other's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Test,
    Live,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Live => "live",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "test" => Some(Self::Test),
            "live" => Some(Self::Live),
            _ => None,
        }
    }
}

/// Secret keys act as the store; publishable keys only act for a customer with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Secret,
    Publishable,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Publishable => "publishable",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "secret" => Some(Self::Secret),
            "publishable" => Some(Self::Publishable),
            _ => None,
        }
    }
}

/// Whom an operation acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The store itself (a secret key without a customer token).
    Store,
    /// A customer proven by its access token.
    Customer(Uuid),
}

/// The authenticated caller: its store, mode and actor.
#[derive(Debug, Clone)]
pub struct Caller {
    pub store_id: Uuid,
    pub store_name: String,
    pub store_avatar: Option<String>,
    pub mode: Mode,
    pub key_kind: KeyKind,
    pub actor: Actor,
    /// When the customer's access token expires (Unix seconds); `None` for the store.
    pub token_expires_at: Option<i64>,
}

impl Caller {
    pub fn customer_id(&self) -> Option<Uuid> {
        match self.actor {
            Actor::Customer(id) => Some(id),
            Actor::Store => None,
        }
    }
}

impl MessagingService {
    /// Resolves the store and mode of an API key. Unknown, malformed and revoked keys are 401.
    pub(crate) async fn authenticate_key(&self, api_key: &str) -> Result<Caller, ServiceError> {
        let invalid = || ServiceError::unauthorized("invalid_api_key", "The API key is not valid.");
        let parts = ApiKeyParts::parse(api_key).ok_or_else(invalid)?;
        let hash = self.inner.keys.hash_credential(api_key);
        if let Some(caller) = self.inner.key_cache.get(&hash) {
            return Ok(caller);
        }
        let (key, store) = api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(&hash))
            .filter(api_key::Column::RevokedAt.is_null())
            .find_also_related(store::Entity)
            .one(self.reader())
            .await?
            .ok_or_else(invalid)?;
        let store = store.ok_or_else(invalid)?;
        // The lookup was by hash; comparing again in constant time keeps that property explicit.
        let matches: bool = key.key_hash.as_bytes().ct_eq(hash.as_bytes()).into();
        if !matches || key.mode != parts.mode.as_str() || key.kind != parts.kind.as_str() {
            return Err(invalid());
        }
        let caller = Caller {
            store_id: store.id,
            store_name: store.name,
            store_avatar: store.avatar_url,
            mode: parts.mode,
            key_kind: parts.kind,
            actor: Actor::Store,
            token_expires_at: None,
        };
        self.inner.key_cache.insert(hash, caller.clone());
        Ok(caller)
    }

    /// The caller of a messaging operation: a customer with a token, or the store with a secret key.
    pub(crate) async fn messaging_caller(
        &self,
        api_key: &str,
        token: Option<&str>,
    ) -> Result<Caller, ServiceError> {
        let mut caller = self.authenticate_key(api_key).await?;
        match token {
            Some(token) => {
                let claims = verify_access_token(&self.inner.keys, token).ok_or_else(|| {
                    ServiceError::unauthorized(
                        "invalid_token",
                        "The customer token is invalid or expired.",
                    )
                })?;
                if claims.store != caller.store_id || claims.mode != caller.mode.as_str() {
                    return Err(ServiceError::unauthorized(
                        "invalid_token",
                        "The customer token is invalid or expired.",
                    ));
                }
                caller.actor = Actor::Customer(claims.sub);
                caller.token_expires_at = Some(claims.exp);
            }
            None if caller.key_kind == KeyKind::Publishable => {
                return Err(ServiceError::unauthorized(
                    "customer_token_required",
                    "A publishable key needs a customer token in x-auth-token.",
                ));
            }
            None => {}
        }
        Ok(caller)
    }

    /// The customer an access token names when its signature and expiry hold. Whether it
    /// belongs to the key's store and mode is checked per request; this is for rate limiting
    /// per customer, where an unverified claim would let anyone spend another's budget.
    pub fn access_token_customer(&self, token: &str) -> Option<Uuid> {
        verify_access_token(&self.inner.keys, token).map(|claims| claims.sub)
    }

    /// The caller of an auth operation: only secret keys may manage customer sessions.
    pub(crate) async fn secret_key_caller(&self, api_key: &str) -> Result<Caller, ServiceError> {
        let caller = self.authenticate_key(api_key).await?;
        if caller.key_kind != KeyKind::Secret {
            return Err(ServiceError::forbidden(
                "secret_key_required",
                "This operation needs a secret key.",
            ));
        }
        Ok(caller)
    }
}
