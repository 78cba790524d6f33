//! Opaque, signed keyset cursors.
//!
//! A cursor is `base64url(payload ‖ HMAC-SHA256(payload)[..16])`, where the payload names the
//! list it belongs to (a scope: the query's filters and order) and the sort key of the last item
//! returned (timestamp in microseconds and id), so pages never skip or repeat an item even when
//! many rows share a timestamp. A cursor that was not issued for this query is rejected.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{auth::ServerKeys, error::ServiceError};

const TAG_LEN: usize = 16;

/// The position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Pinned flag of the last item, for orderings that put pinned items first.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    /// Timestamp of the last item, in microseconds since the epoch.
    #[serde(rename = "t")]
    pub micros: i64,
    #[serde(rename = "i")]
    pub id: Uuid,
}

/// The position after an item whose id is a string (a subscriber id): its timestamp and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPosition {
    #[serde(rename = "t")]
    pub micros: i64,
    #[serde(rename = "k")]
    pub key: String,
}

#[derive(Serialize, Deserialize)]
struct Payload<P> {
    /// Short hash of the scope the cursor was issued for.
    s: String,
    #[serde(flatten)]
    position: P,
}

fn scope_hash(keys: &ServerKeys, scope: &str) -> String {
    let tag = keys.sign_cursor(scope.as_bytes());
    URL_SAFE_NO_PAD.encode(&tag[..8])
}

/// Encodes a cursor for `scope`.
pub fn encode(keys: &ServerKeys, scope: &str, position: Position) -> String {
    encode_any(keys, scope, position)
}

/// Decodes a cursor issued for `scope`; anything else is a 400 `invalid_cursor`.
pub fn decode(keys: &ServerKeys, scope: &str, cursor: &str) -> Result<Position, ServiceError> {
    decode_any(keys, scope, cursor)
}

/// Encodes a cursor for `scope` after an item with a string id.
pub fn encode_key(keys: &ServerKeys, scope: &str, position: KeyPosition) -> String {
    encode_any(keys, scope, position)
}

/// Decodes a cursor of [`encode_key`] issued for `scope`; anything else is 400 `invalid_cursor`.
pub fn decode_key(
    keys: &ServerKeys,
    scope: &str,
    cursor: &str,
) -> Result<KeyPosition, ServiceError> {
    decode_any(keys, scope, cursor)
}

fn encode_any<P: Serialize>(keys: &ServerKeys, scope: &str, position: P) -> String {
    let payload = serde_json::to_vec(&Payload {
        s: scope_hash(keys, scope),
        position,
    })
    .expect("cursor payload serializes");
    let tag = keys.sign_cursor(&payload);
    let mut bytes = payload;
    bytes.extend_from_slice(&tag[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_any<P: serde::de::DeserializeOwned>(
    keys: &ServerKeys,
    scope: &str,
    cursor: &str,
) -> Result<P, ServiceError> {
    let invalid = || {
        ServiceError::bad_request(
            "invalid_cursor",
            "cursor was not issued for this list; start again without it.",
        )
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor.trim_end_matches('='))
        .map_err(|_| invalid())?;
    if bytes.len() <= TAG_LEN {
        return Err(invalid());
    }
    let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let expected = keys.sign_cursor(payload);
    if !bool::from(expected[..TAG_LEN].ct_eq(tag)) {
        return Err(invalid());
    }
    let payload: Payload<P> = serde_json::from_slice(payload).map_err(|_| invalid())?;
    if payload.s != scope_hash(keys, scope) {
        return Err(invalid());
    }
    Ok(payload.position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let keys = ServerKeys::from_secret(b"k");
        let position = Position {
            pinned: Some(true),
            micros: 1_700_000_000_000_000,
            id: Uuid::now_v7(),
        };
        let cursor = encode(&keys, "threads:a", position.clone());
        assert_eq!(decode(&keys, "threads:a", &cursor).unwrap(), position);
        assert_eq!(
            decode(&keys, "threads:b", &cursor).unwrap_err().code(),
            "invalid_cursor"
        );
        assert_eq!(
            decode(&ServerKeys::from_secret(b"x"), "threads:a", &cursor)
                .unwrap_err()
                .code(),
            "invalid_cursor"
        );
        assert_eq!(
            decode(&keys, "threads:a", "bm90IGEgY3Vyc29y")
                .unwrap_err()
                .code(),
            "invalid_cursor"
        );
        assert_eq!(
            decode(&keys, "threads:a", "%%%").unwrap_err().code(),
            "invalid_cursor"
        );
    }
}
