//! The server secret and the purpose-bound keys derived from it.
//!
//! One secret, from configuration or generated once and kept in the database (so replicas
//! agree), is expanded with HMAC into separate keys: one for access tokens, one for hashing API
//! keys and refresh tokens and one-time codes, one for signing cursors, one for webhook signing
//! secrets.

use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use sha2::Sha256;

use crate::{entity::server_secret, error::StartupError};

type HmacSha256 = Hmac<Sha256>;

const SECRET_NAME: &str = "master";

/// Keys derived from the server secret, one per purpose.
#[derive(Clone)]
pub struct ServerKeys {
    pub(crate) token_signing: [u8; 32],
    hashing: [u8; 32],
    cursor_signing: [u8; 32],
    webhook_secrets: [u8; 32],
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKeys { .. }")
    }
}

impl ServerKeys {
    /// Uses `configured` when given; otherwise the secret kept in the database, made on first use.
    pub async fn load(
        db: &DatabaseConnection,
        configured: Option<&str>,
    ) -> Result<Self, StartupError> {
        let secret = match configured {
            Some(secret) => secret.as_bytes().to_vec(),
            None => stored_secret(db).await.map_err(StartupError::Secret)?,
        };
        Ok(Self::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            token_signing: derive(secret, b"access-token-signing"),
            hashing: derive(secret, b"credential-hashing"),
            cursor_signing: derive(secret, b"cursor-signing"),
            webhook_secrets: derive(secret, b"webhook-signing-secrets"),
        }
    }

    /// Keyed hash (HMAC-SHA256, hex) of a high-entropy credential: API keys, refresh tokens, codes.
    pub fn hash_credential(&self, credential: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.hashing).expect("HMAC takes any key length");
        mac.update(credential.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// HMAC-SHA256 of `payload` with the cursor key.
    pub fn sign_cursor(&self, payload: &[u8]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(&self.cursor_signing).expect("HMAC takes any key length");
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

impl ServerKeys {
    /// The 32 signing-secret bytes of a webhook endpoint: HMAC-SHA256 of its id and salt with
    /// the webhook key, so the database alone never holds a usable signing secret.
    pub fn webhook_secret(&self, endpoint_id: uuid::Uuid, salt: &str) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(&self.webhook_secrets).expect("HMAC takes any key length");
        mac.update(endpoint_id.as_bytes());
        mac.update(salt.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn derive(secret: &[u8], purpose: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the stored secret, inserting a fresh one first if there is none. Concurrent first
/// starts agree: the insert does nothing on conflict and everyone reads the winner's row.
async fn stored_secret(db: &DatabaseConnection) -> Result<Vec<u8>, sea_orm::DbErr> {
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    let row = server_secret::ActiveModel {
        name: Set(SECRET_NAME.to_owned()),
        value: Set(base64::engine::general_purpose::STANDARD.encode(fresh)),
        created_at: Set(Utc::now()),
    };
    server_secret::Entity::insert(row)
        .on_conflict_do_nothing_on([server_secret::Column::Name])
        .exec(db)
        .await?;
    let stored = server_secret::Entity::find_by_id(SECRET_NAME.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("server secret".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(stored.value)
        .map_err(|e| sea_orm::DbErr::Custom(format!("stored server secret is not base64: {e}")))
}
