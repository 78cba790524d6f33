//! Who is calling: API keys, customer sessions, and the caller every operation acts as.

mod caller;
mod otp_delivery;
mod passwords;
mod secrets;
mod sessions;
mod tokens;

pub use caller::{Actor, Caller, KeyKind, Mode};
pub use otp_delivery::{
    OtpChannel, OtpDelivery, OtpMessage, OtpOutbox, SmtpConfigError, SmtpSender,
};
pub use secrets::ServerKeys;
pub use tokens::ApiKeyParts;

pub(crate) use sessions::validate_phone;
