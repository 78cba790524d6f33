//! Test harness, zero-to-production style: `spawn_app` starts the real server in-process on
//! `127.0.0.1:0` with a fresh database (SQLite in memory, or a PostgreSQL clone of a migrated
//! template) and returns a [`TestApp`] with typed helpers. Also the OpenAPI normaliser and the
//! JSON differ used by the contract tests, the per-test log capture, and a webhook receiver.

pub mod fixtures;
pub mod json_diff;
mod log_capture;
pub mod openapi_normal_form;
mod postgres;
pub mod webhook_receiver;

use std::net::SocketAddr;

use messaging_server::{HttpSettings, RedisBudgets};
use messaging_service::{CreatedStore, MessagingService, OtpDelivery, OtpOutbox, ServiceConfig};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use tokio::task::JoinHandle;

pub use log_capture::{LogCapture, capture_logs};
pub use postgres::TestDatabase;

/// Secret the test servers sign tokens with.
pub const TEST_SECRET: &str = "messaging-tests-secret-not-for-production-0123456789";

/// Where a test's database lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite::memory:`: private to the test, gone with it.
    Sqlite,
    /// A database cloned from the migrated template on the PostgreSQL server at
    /// `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432`), dropped with the test.
    Postgres,
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub address: SocketAddr,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base_url: String,
    /// The service behind the server, sharing its database.
    pub service: MessagingService,
    pub backend: Backend,
    /// One-time codes the server "sent": tests read them here instead of from the log.
    pub otp: OtpOutbox,
    http: reqwest::Client,
    server: JoinHandle<std::io::Result<()>>,
    /// Declared last: the server stops before its database is dropped.
    database: Option<TestDatabase>,
}

/// The real app on SQLite, without rate limits.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(Backend::Sqlite)
        .await
        .expect("SQLite is always available")
}

/// The real app on `backend`, without rate limits. `None` when PostgreSQL is unreachable and
/// this is not CI (the reason is printed as `SKIPPED`); under `CI=true` that panics instead.
pub async fn spawn_app_on(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, HttpSettings::without_rate_limits()).await
}

/// The real app on `backend` with explicit HTTP settings (body limit, rate limits).
pub async fn spawn_app_with(backend: Backend, settings: HttpSettings) -> Option<TestApp> {
    spawn_app_with_config(backend, settings, |_| {}).await
}

/// The real app on `backend` with explicit HTTP settings and service settings: `configure`
/// changes the test defaults (the test secret, codes kept in [`TestApp::otp`]), e.g. to shorten
/// token lifetimes.
pub async fn spawn_app_with_config(
    backend: Backend,
    settings: HttpSettings,
    configure: impl FnOnce(&mut ServiceConfig),
) -> Option<TestApp> {
    let mut config = test_service_config();
    configure(&mut config);
    let otp = match &config.otp {
        OtpDelivery::Memory(outbox) => outbox.clone(),
        _ => OtpOutbox::new(),
    };
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDatabase::create().await?),
    };
    let url = database
        .as_ref()
        .map_or("sqlite::memory:", TestDatabase::url);
    let service = MessagingService::connect(url, config)
        .await
        .unwrap_or_else(|err| panic!("the messaging service did not start on {backend:?}: {err}"));
    let (address, server) = messaging_server::spawn(service.clone(), &settings)
        .await
        .expect("the test server could bind 127.0.0.1:0");
    Some(TestApp {
        address,
        base_url: format!("http://{address}"),
        service,
        backend,
        otp,
        http: reqwest::Client::new(),
        server,
        database,
    })
}

/// The Redis of the shared-budget tests: `TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn test_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test uses, so parallel tests never share a budget.
pub fn test_redis_prefix() -> String {
    format!("messaging-tests:{}", uuid::Uuid::new_v4())
}

/// Budgets in the test Redis under a fresh prefix. `None` when Redis is unreachable and this is
/// not CI (printed as `SKIPPED`); under `CI=true` that panics instead.
pub async fn test_redis() -> Option<RedisBudgets> {
    let url = test_redis_url();
    match RedisBudgets::connect(&url, &test_redis_prefix()).await {
        Ok(budgets) => Some(budgets),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Redis is required under CI=true ({url}): {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED (no Redis at {url}): {err}");
            None
        }
    }
}

pub(crate) fn test_service_config() -> ServiceConfig {
    ServiceConfig {
        secret: Some(TEST_SECRET.to_owned()),
        otp: OtpDelivery::Memory(OtpOutbox::new()),
        ..ServiceConfig::default()
    }
}

/// An access token signed as the test servers sign them (HS256 with the key derived from
/// [`TEST_SECRET`]), with any claims: for expired, foreign or otherwise crafted tokens. Tests
/// that use it also check that a well-formed one is accepted, so a drift between this and the
/// service shows as a failure, not as a false pass.
pub fn sign_test_token(claims: &serde_json::Value) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(TEST_SECRET.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"access-token-signing");
    let key = mac.finalize().into_bytes();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&key),
    )
    .expect("HS256 signing of JSON claims cannot fail")
}

impl TestApp {
    /// A new store with its four API keys.
    pub async fn create_store(&self, name: &str) -> CreatedStore {
        self.service
            .create_store(name)
            .await
            .expect("the store is created")
    }

    /// The generated client, sending `Authorization: Bearer <api_key>` on every call.
    pub fn client(&self, api_key: &str) -> messaging_client::Client {
        self.client_with_headers(bearer_headers(api_key))
    }

    /// The generated client acting as a customer: the API key plus `x-auth-token`.
    pub fn customer_client(&self, api_key: &str, access_token: &str) -> messaging_client::Client {
        let mut headers = bearer_headers(api_key);
        headers.insert("x-auth-token", header_value(access_token));
        self.client_with_headers(headers)
    }

    fn client_with_headers(&self, headers: HeaderMap) -> messaging_client::Client {
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("a reqwest client with default headers builds");
        messaging_client::Client::new_with_client(&self.base_url, http)
    }

    /// A plain HTTP client for contract and negative tests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The URL of this test's database.
    pub fn database_url(&self) -> &str {
        self.database
            .as_ref()
            .map_or("sqlite::memory:", TestDatabase::url)
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn bearer_headers(api_key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, header_value(&format!("Bearer {api_key}")));
    headers
}

fn header_value(value: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(value).expect("credentials are valid header values");
    value.set_sensitive(true);
    value
}

/// Runs one test body on both backends:
///
/// ```ignore
/// both_backends!(creates_a_store, |app| async move {
///     let store = app.create_store("Acme").await;
///     assert!(store.secret_key_test.starts_with("tybrite_sk_test_"));
/// });
/// ```
///
/// expands to `mod creates_a_store { #[tokio::test] async fn sqlite() … async fn postgres() … }`.
/// The PostgreSQL variant skips (loudly) when no server is reachable, unless `CI=true`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let $app = $crate::spawn_app_on($crate::Backend::Sqlite)
                    .await
                    .expect("SQLite is always available");
                $body.await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some($app) = $crate::spawn_app_on($crate::Backend::Postgres).await else {
                    return;
                };
                $body.await;
            }
        }
    };
}
