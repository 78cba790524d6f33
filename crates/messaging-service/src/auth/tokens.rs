//! Credential formats: API keys (`tybrite_sk_test_…`), signed access tokens (JWT, HS256) and
//! opaque refresh tokens and one-time codes.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{KeyKind, Mode, ServerKeys};

const KEY_PREFIX: &str = "tybrite_";
const KEY_RANDOM_LEN: usize = 40;
const TOKEN_ISSUER: &str = "tybrite-messaging";

/// The parts of a well-formed API key: `tybrite_<sk|pk>_<test|live>_<40 random characters>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyParts {
    pub kind: KeyKind,
    pub mode: Mode,
}

impl ApiKeyParts {
    /// Parses the visible structure of a key; the random part is checked against the store.
    pub fn parse(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(KEY_PREFIX)?;
        let (kind, rest) = rest.split_once('_')?;
        let (mode, random) = rest.split_once('_')?;
        let kind = match kind {
            "sk" => KeyKind::Secret,
            "pk" => KeyKind::Publishable,
            _ => return None,
        };
        let mode = Mode::parse(mode)?;
        (random.len() == KEY_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(Self { kind, mode })
    }

    /// A fresh random key of this kind and mode (about 238 bits of entropy).
    pub fn generate(self) -> String {
        let kind = match self.kind {
            KeyKind::Secret => "sk",
            KeyKind::Publishable => "pk",
        };
        format!(
            "{KEY_PREFIX}{kind}_{}_{}",
            self.mode.as_str(),
            random_string(KEY_RANDOM_LEN)
        )
    }
}

/// A random alphanumeric string from the OS-seeded thread RNG.
pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A random six-digit one-time code.
pub fn random_otp_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000))
}

/// What an access token says: the customer, its store and the mode.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub store: Uuid,
    pub mode: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

/// Signs an access token for a customer.
pub fn sign_access_token(
    keys: &ServerKeys,
    customer: Uuid,
    store: Uuid,
    mode: Mode,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> String {
    let claims = AccessClaims {
        sub: customer,
        store,
        mode: mode.as_str().to_owned(),
        iss: TOKEN_ISSUER.to_owned(),
        iat: now.timestamp(),
        exp: expires_at.timestamp(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&keys.token_signing),
    )
    .expect("HS256 signing of plain claims cannot fail")
}

/// Verifies signature, issuer and expiry (no leeway). `None` for anything else.
pub fn verify_access_token(keys: &ServerKeys, token: &str) -> Option<AccessClaims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[TOKEN_ISSUER]);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    jsonwebtoken::decode::<AccessClaims>(
        token,
        &DecodingKey::from_secret(&keys.token_signing),
        &validation,
    )
    .ok()
    .map(|data| data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        for kind in [KeyKind::Secret, KeyKind::Publishable] {
            for mode in [Mode::Test, Mode::Live] {
                let key = ApiKeyParts { kind, mode }.generate();
                assert_eq!(ApiKeyParts::parse(&key), Some(ApiKeyParts { kind, mode }));
            }
        }
        assert_eq!(ApiKeyParts::parse("tybrite_sk_test_short"), None);
        assert_eq!(
            ApiKeyParts::parse("tybrite_xx_test_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            None
        );
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_expiry() {
        let keys = ServerKeys::from_secret(b"secret");
        let now = Utc::now();
        let (customer, store) = (Uuid::now_v7(), Uuid::now_v7());
        let token = sign_access_token(
            &keys,
            customer,
            store,
            Mode::Test,
            now,
            now + chrono::Duration::minutes(5),
        );
        let claims = verify_access_token(&keys, &token).expect("valid token");
        assert_eq!(
            (claims.sub, claims.store, claims.mode.as_str()),
            (customer, store, "test")
        );

        let other = ServerKeys::from_secret(b"other secret");
        assert!(
            verify_access_token(&other, &token).is_none(),
            "another server's signature"
        );
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'x');
        assert!(
            verify_access_token(&keys, &tampered).is_none(),
            "tampered token"
        );
        let expired = sign_access_token(
            &keys,
            customer,
            store,
            Mode::Test,
            now,
            now - chrono::Duration::seconds(1),
        );
        assert!(
            verify_access_token(&keys, &expired).is_none(),
            "expired token"
        );
    }
}
