//! Password hashing with Argon2id, run off the async executor.

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};

use crate::error::ServiceError;

/// Hashes a password into a PHC string.
pub async fn hash(password: String) -> Result<String, ServiceError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ServiceError::internal(std::io::Error::other(e.to_string())))
    })
    .await
    .map_err(ServiceError::internal)?
}

/// Checks a password against a PHC string. With no stored hash (unknown email, OTP-only
/// customer) it still spends the same work on a dummy hash, so timing does not tell them apart.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, ServiceError> {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| ServiceError::internal(std::io::Error::other(e.to_string())))?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(known && ok)
    })
    .await
    .map_err(ServiceError::internal)?
}

/// Argon2id hash (default parameters) of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3bS2YlHcR0dKxR3b2dC7nJ5QbqYvWv8rO9m3yE0pK1o";
