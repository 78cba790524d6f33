//! The server secret and the purpose-bound keys derived from it.
//!
//! One secret, from configuration or generated once and kept in the database (so replicas
//! agree), is expanded with HMAC into separate keys: one for access tokens, one for hashing API
//! keys and refresh tokens and one-time codes, one for signing cursors, one for webhook signing
//! secrets, one for sealing stored idempotent answers.

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
    answer_sealing: [u8; 32],
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
            answer_sealing: derive(secret, b"idempotent-answer-sealing"),
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

    /// Encrypts and authenticates a stored answer (ChaCha20-Poly1305, a random nonce first),
    /// bound to `context` (its row): answers may carry what must not sit in the database in
    /// the clear, such as a new webhook endpoint's secret.
    pub fn seal_answer(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        use ring::aead::{Aad, NONCE_LEN, Nonce};
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = plaintext.to_vec();
        self.answer_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut sealed,
            )
            .expect("ChaCha20-Poly1305 seals any answer a request can produce");
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        out
    }

    /// The answer [`ServerKeys::seal_answer`] sealed for `context`; `None` when it was sealed
    /// for another context, with another server secret, or altered.
    pub fn open_answer(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        use ring::aead::{Aad, NONCE_LEN, Nonce};
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = ciphertext.to_vec();
        let plaintext = self
            .answer_key()
            .open_in_place(nonce, Aad::from(context), &mut opened)
            .ok()?;
        Some(plaintext.to_vec())
    }

    fn answer_key(&self) -> ring::aead::LessSafeKey {
        ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &self.answer_sealing)
                .expect("a 32-byte key is a valid ChaCha20-Poly1305 key"),
        )
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

#[cfg(test)]
mod tests {
    use super::ServerKeys;

    #[test]
    fn sealed_answers_open_only_in_their_context_with_their_secret() {
        let keys = ServerKeys::from_secret(b"one secret");
        let sealed = keys.seal_answer(b"row-1", br#"{"secret":"whsec_abc"}"#);
        assert!(!sealed.windows(9).any(|w| w == b"whsec_abc"));
        assert_eq!(
            keys.open_answer(b"row-1", &sealed).as_deref(),
            Some(br#"{"secret":"whsec_abc"}"#.as_slice())
        );
        assert_eq!(keys.open_answer(b"row-2", &sealed), None);
        assert_eq!(
            ServerKeys::from_secret(b"another").open_answer(b"row-1", &sealed),
            None
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(keys.open_answer(b"row-1", &altered), None);
        assert_eq!(keys.open_answer(b"row-1", b"short"), None);
        // A fresh nonce each time: the same answer never seals to the same bytes.
        assert_ne!(
            keys.seal_answer(b"row-1", b"x"),
            keys.seal_answer(b"row-1", b"x")
        );
    }
}
