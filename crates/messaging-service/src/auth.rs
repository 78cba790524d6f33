//! Who is calling: API keys, customer sessions, and the caller every operation acts as.

mod caller;
mod passwords;
mod secrets;
mod sessions;
mod tokens;

pub use caller::{Actor, Caller, KeyKind, Mode};
pub use secrets::ServerKeys;
pub use tokens::ApiKeyParts;

pub(crate) use sessions::validate_phone;
