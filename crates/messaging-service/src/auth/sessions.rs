//! Customer sessions: register, password login, one-time codes, and rotating refresh tokens.

use chrono::{Duration, Utc};
use messaging_api::{
    AuthSession, LoginRequest, OtpAccepted, OtpRequest, RefreshRequest, RegisterRequest, Session,
    VerifyOtpRequest,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, ExprTrait},
};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{
    Caller, OtpChannel, OtpMessage, passwords,
    tokens::{random_otp_code, random_string, sign_access_token},
};
use crate::{
    MessagingService,
    entity::{customer, otp_code, refresh_token},
    error::{ServiceError, is_unique_violation},
    wire,
};

fn invalid_credentials() -> ServiceError {
    ServiceError::unauthorized("invalid_credentials", "The email or password is wrong.")
}

fn invalid_code() -> ServiceError {
    ServiceError::unauthorized("invalid_otp", "The code is wrong, expired or used up.")
}

/// Lower-cased, trimmed email with one `@`, a dot-free-or-not domain, and no spaces.
fn normalize_email(email: &str) -> Result<String, ServiceError> {
    let email = email.trim().to_lowercase();
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if valid {
        Ok(email)
    } else {
        Err(ServiceError::bad_request(
            "invalid_email",
            "email is not a valid address.",
        ))
    }
}

/// E.164: `+`, a non-zero digit, at most 15 digits in all.
pub(crate) fn validate_phone(phone: &str) -> Result<String, ServiceError> {
    let digits = phone.strip_prefix('+').unwrap_or("");
    let valid = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(phone.to_owned())
    } else {
        Err(ServiceError::bad_request(
            "invalid_phone",
            "phone must be in E.164 form, e.g. +14155550123.",
        ))
    }
}

impl MessagingService {
    pub(crate) async fn register(
        &self,
        api_key: &str,
        body: RegisterRequest,
    ) -> Result<AuthSession, ServiceError> {
        let caller = self.secret_key_caller(api_key).await?;
        let email = normalize_email(&body.email)?;
        let phone = body.phone.as_deref().map(validate_phone).transpose()?;
        let name = body.name.trim().to_owned();
        if name.is_empty() {
            return Err(ServiceError::bad_request(
                "invalid_name",
                "name must not be blank.",
            ));
        }
        let password_hash = passwords::hash(body.password).await?;
        let now = Utc::now();
        let row = customer::ActiveModel {
            id: Set(Uuid::now_v7()),
            store_id: Set(caller.store_id),
            mode: Set(caller.mode.as_str().to_owned()),
            email: Set(email),
            name: Set(name),
            phone: Set(phone),
            password_hash: Set(Some(password_hash)),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let customer = match row.insert(self.writer()).await {
            Ok(customer) => customer,
            Err(err) if is_unique_violation(&err) => {
                return Err(ServiceError::conflict(
                    "email_taken",
                    "A customer with this email already exists.",
                ));
            }
            Err(err) => return Err(err.into()),
        };
        self.open_session(&caller, customer).await
    }

    pub(crate) async fn login(
        &self,
        api_key: &str,
        body: LoginRequest,
    ) -> Result<AuthSession, ServiceError> {
        let caller = self.secret_key_caller(api_key).await?;
        let email = body.email.trim().to_lowercase();
        let customer = self.find_customer_by_email(&caller, &email).await?;
        let stored = customer.as_ref().and_then(|c| c.password_hash.clone());
        if !passwords::verify(body.password, stored).await? {
            return Err(invalid_credentials());
        }
        let customer = customer.ok_or_else(invalid_credentials)?;
        self.open_session(&caller, customer).await
    }

    /// Sends a code to a registered customer. The answer is the same whether or not the
    /// customer exists, so it cannot be used to find out who is registered.
    pub(crate) async fn request_otp(
        &self,
        api_key: &str,
        body: OtpRequest,
    ) -> Result<OtpAccepted, ServiceError> {
        let caller = self.secret_key_caller(api_key).await?;
        let delivery = &self.inner.config.otp;
        let channel = match (&body.email, &body.phone) {
            (None, Some(_)) => OtpChannel::Phone,
            _ => OtpChannel::Email,
        };
        // Decided before the lookup, so it says nothing about who is registered.
        if !delivery.supports(channel) {
            return Err(ServiceError::bad_request(
                "otp_channel_unavailable",
                "This server cannot send codes by phone; ask for one by email.",
            ));
        }
        let customer = self
            .find_otp_customer(&caller, body.email.as_deref(), body.phone.as_deref())
            .await?;
        let ttl = self.inner.config.otp_ttl_secs;
        if let Some(customer) = customer {
            let code = random_otp_code();
            let now = Utc::now();
            otp_code::ActiveModel {
                id: Set(Uuid::now_v7()),
                customer_id: Set(customer.id),
                code_hash: Set(self
                    .inner
                    .keys
                    .hash_credential(&format!("{}:{code}", customer.id))),
                expires_at: Set(now + Duration::seconds(ttl)),
                attempts: Set(0),
                consumed_at: Set(None),
                created_at: Set(now),
            }
            .insert(self.writer())
            .await?;
            let to = match channel {
                OtpChannel::Email => customer.email,
                OtpChannel::Phone => customer.phone.unwrap_or_default(),
            };
            delivery.deliver(OtpMessage {
                customer_id: customer.id,
                channel,
                to,
                name: customer.name,
                code,
                expires_in: ttl,
            });
        }
        Ok(OtpAccepted { expires_in: ttl })
    }

    pub(crate) async fn verify_otp(
        &self,
        api_key: &str,
        body: VerifyOtpRequest,
    ) -> Result<AuthSession, ServiceError> {
        let caller = self.secret_key_caller(api_key).await?;
        let customer = self
            .find_otp_customer(&caller, body.email.as_deref(), body.phone.as_deref())
            .await?
            .ok_or_else(invalid_code)?;
        let now = Utc::now();
        let latest = otp_code::Entity::find()
            .filter(otp_code::Column::CustomerId.eq(customer.id))
            .filter(otp_code::Column::ConsumedAt.is_null())
            .filter(otp_code::Column::ExpiresAt.gt(now))
            .order_by_desc(otp_code::Column::CreatedAt)
            .one(self.writer())
            .await?
            .ok_or_else(invalid_code)?;
        // Count the try before checking it, with one conditional update: however many guesses
        // arrive at once, at most `otp_max_attempts` of them are ever compared.
        let counted = otp_code::Entity::update_many()
            .col_expr(
                otp_code::Column::Attempts,
                Expr::col(otp_code::Column::Attempts).add(1),
            )
            .filter(otp_code::Column::Id.eq(latest.id))
            .filter(otp_code::Column::ConsumedAt.is_null())
            .filter(otp_code::Column::Attempts.lt(self.inner.config.otp_max_attempts))
            .exec(self.writer())
            .await?
            .rows_affected;
        if counted != 1 {
            return Err(invalid_code());
        }
        let presented =
            self.inner
                .keys
                .hash_credential(&format!("{}:{}", customer.id, body.code.trim()));
        let matches: bool = presented
            .as_bytes()
            .ct_eq(latest.code_hash.as_bytes())
            .into();
        if !matches {
            return Err(invalid_code());
        }
        // Single use: only the request that sets `consumed_at` gets a session.
        let consumed = otp_code::Entity::update_many()
            .col_expr(otp_code::Column::ConsumedAt, Expr::value(now))
            .filter(otp_code::Column::Id.eq(latest.id))
            .filter(otp_code::Column::ConsumedAt.is_null())
            .exec(self.writer())
            .await?
            .rows_affected;
        if consumed != 1 {
            return Err(invalid_code());
        }
        self.open_session(&caller, customer).await
    }

    pub(crate) async fn refresh_session(
        &self,
        api_key: &str,
        body: RefreshRequest,
    ) -> Result<AuthSession, ServiceError> {
        let caller = self.secret_key_caller(api_key).await?;
        let invalid = || {
            ServiceError::unauthorized(
                "invalid_refresh_token",
                "The refresh token is invalid, expired or used.",
            )
        };
        let hash = self.inner.keys.hash_credential(&body.refresh_token);
        let now = Utc::now();
        let (token, customer) = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(hash))
            .find_also_related(customer::Entity)
            .one(self.writer())
            .await?
            .ok_or_else(invalid)?;
        let customer = customer.ok_or_else(invalid)?;
        // Another store's or mode's token is unknown here: it changes nothing.
        if customer.store_id != caller.store_id || customer.mode != caller.mode.as_str() {
            return Err(invalid());
        }
        if token.used_at.is_some() {
            // A used token presented again means two parties hold it: end every session of
            // the customer that could still be refreshed, so a stolen token dies with the
            // legitimate one.
            self.revoke_refresh_tokens(customer.id, now).await?;
            tracing::warn!(customer_id = %customer.id, "a used refresh token was presented again; the customer's refresh tokens are revoked");
            return Err(invalid());
        }
        if token.expires_at <= now {
            return Err(invalid());
        }
        // Single use: only the request that flips `used_at` gets a new session.
        let affected = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
            .filter(refresh_token::Column::Id.eq(token.id))
            .filter(refresh_token::Column::UsedAt.is_null())
            .exec(self.writer())
            .await?
            .rows_affected;
        if affected != 1 {
            return Err(invalid());
        }
        self.open_session(&caller, customer).await
    }

    /// Marks every unused refresh token of a customer as used.
    async fn revoke_refresh_tokens(
        &self,
        customer_id: Uuid,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
            .filter(refresh_token::Column::CustomerId.eq(customer_id))
            .filter(refresh_token::Column::UsedAt.is_null())
            .exec(self.writer())
            .await?;
        Ok(())
    }

    async fn find_customer_by_email(
        &self,
        caller: &Caller,
        email: &str,
    ) -> Result<Option<customer::Model>, ServiceError> {
        Ok(customer::Entity::find()
            .filter(customer::Column::StoreId.eq(caller.store_id))
            .filter(customer::Column::Mode.eq(caller.mode.as_str()))
            .filter(customer::Column::Email.eq(email))
            .one(self.writer())
            .await?)
    }

    async fn find_otp_customer(
        &self,
        caller: &Caller,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Option<customer::Model>, ServiceError> {
        match (email, phone) {
            (Some(email), None) => {
                self.find_customer_by_email(caller, &email.trim().to_lowercase())
                    .await
            }
            (None, Some(phone)) => Ok(customer::Entity::find()
                .filter(customer::Column::StoreId.eq(caller.store_id))
                .filter(customer::Column::Mode.eq(caller.mode.as_str()))
                .filter(customer::Column::Phone.eq(validate_phone(phone)?))
                .one(self.writer())
                .await?),
            _ => Err(ServiceError::bad_request(
                "invalid_otp_target",
                "Give exactly one of email and phone.",
            )),
        }
    }

    /// Issues an access token and a fresh refresh token for a customer.
    async fn open_session(
        &self,
        caller: &Caller,
        customer: customer::Model,
    ) -> Result<AuthSession, ServiceError> {
        let config = &self.inner.config;
        let now = Utc::now();
        let expires_at = now + Duration::seconds(config.access_token_ttl_secs);
        let access_token = sign_access_token(
            &self.inner.keys,
            customer.id,
            caller.store_id,
            caller.mode,
            now,
            expires_at,
        );
        let refresh = random_string(48);
        refresh_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            customer_id: Set(customer.id),
            token_hash: Set(self.inner.keys.hash_credential(&refresh)),
            expires_at: Set(now + Duration::seconds(config.refresh_token_ttl_secs)),
            used_at: Set(None),
            created_at: Set(now),
        }
        .insert(self.writer())
        .await?;
        Ok(AuthSession {
            customer: wire::customer(customer),
            session: Session {
                access_token,
                refresh_token: refresh,
                token_type: "bearer".to_owned(),
                expires_in: config.access_token_ttl_secs,
                expires_at,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_phones() {
        assert_eq!(
            normalize_email(" Jane@Example.COM ").unwrap(),
            "jane@example.com"
        );
        assert!(normalize_email("no-at-sign").is_err());
        assert!(normalize_email("a b@c.d").is_err());
        assert!(validate_phone("+14155550123").is_ok());
        assert!(validate_phone("14155550123").is_err());
        assert!(validate_phone("+0123").is_err());
        assert!(validate_phone("+1234567890123456").is_err());
    }
}
