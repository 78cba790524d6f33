//! Rate limits as a store runs them, on SQLite and PostgreSQL: many customers through one
//! publishable key, one customer flooding, a backend registering and logging in hundreds of
//! customers, guessing at one account's password, and replicas sharing their budgets through
//! one Redis (the Redis tests fail under `CI=true` when Redis is missing, and skip loudly
//! otherwise).

use std::num::NonZeroU32;

use futures::future::join_all;
use messaging_client::types;
use messaging_server::{HttpSettings, RateLimitSettings, RedisBudgets};
use messaging_service::entity::login_failure;
use messaging_tests::{Backend, TestApp, spawn_app_with, test_redis};
use reqwest::StatusCode;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// Runs a test body on both backends; the body starts its own app (with its own settings) and
/// returns early when PostgreSQL is unreachable outside CI.
macro_rules! both_backends_with {
    ($name:ident, |$backend:ident| $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let $backend = Backend::Sqlite;
                $body.await;
            }

            #[tokio::test]
            async fn postgres() {
                let $backend = Backend::Postgres;
                $body.await;
            }
        }
    };
}

fn limits(per_second: u32, burst: u32) -> RateLimitSettings {
    RateLimitSettings {
        per_second: NonZeroU32::new(per_second).unwrap(),
        burst: NonZeroU32::new(burst).unwrap(),
        ..RateLimitSettings::default()
    }
}

fn with_limits(limits: RateLimitSettings) -> HttpSettings {
    HttpSettings {
        rate_limits: Some(limits),
        ..HttpSettings::default()
    }
}

/// A customer of the test store: its id and access token.
struct Customer {
    id: Uuid,
    token: String,
}

async fn register(app: &TestApp, secret_key: &str, email: &str) -> Customer {
    let body: types::RegisterRequest =
        serde_json::from_value(json!({"email": email, "password": PASSWORD, "name": "Customer"}))
            .unwrap();
    let session = app
        .client(secret_key)
        .register()
        .body(body)
        .send()
        .await
        .unwrap_or_else(|err| panic!("register {email}: {err}"))
        .into_inner();
    Customer {
        id: session.customer.id,
        token: session.session.access_token,
    }
}

/// A login through `base_url`: its status and body.
async fn login(base_url: &str, secret_key: &str, email: &str, password: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base_url}/v1/auth/login"))
        .bearer_auth(secret_key)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body: Value = response.json().await.expect("a JSON body");
    if status == 429 {
        // Keep the headers a 429 must carry next to its body, for the assertions.
        for name in [
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
        ] {
            body[name] = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Value::Null, Value::from);
        }
    }
    (status, body)
}

/// listThreads as `customer` through the publishable key: the status.
async fn list_as(app: &TestApp, publishable_key: &str, customer: &Customer) -> StatusCode {
    app.http()
        .get(app.url(&format!(
            "/v1/messaging/threads?customer_id={}",
            customer.id
        )))
        .bearer_auth(publishable_key)
        .header("x-auth-token", &customer.token)
        .send()
        .await
        .expect("the server answers")
        .status()
}

both_backends_with!(
    many_customers_through_one_publishable_key_are_not_limited,
    |backend| async move {
        // The defaults: 50 per second and 100 at once per customer.
        let Some(app) = spawn_app_with(backend, HttpSettings::default()).await else {
            return;
        };
        let store = app.create_store("Acme").await;
        let mut customers = Vec::new();
        for n in 0..12 {
            customers
                .push(register(&app, &store.secret_key_test, &format!("c{n}@example.com")).await);
        }
        // 12 customers, 20 reads each, all at once: 240 requests through one publishable key.
        let calls = customers
            .iter()
            .flat_map(|customer| (0..20).map(move |_| customer))
            .map(|customer| list_as(&app, &store.publishable_key_test, customer));
        let statuses = join_all(calls).await;
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!(refused, 0, "{refused} of {} refused", statuses.len());
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }
);

both_backends_with!(
    one_customer_flooding_is_limited_alone,
    |backend| async move {
        let Some(app) = spawn_app_with(backend, with_limits(limits(1, 10))).await else {
            return;
        };
        let store = app.create_store("Acme").await;
        let jane = register(&app, &store.secret_key_test, "jane@example.com").await;
        let bob = register(&app, &store.secret_key_test, "bob@example.com").await;
        let mut statuses = Vec::new();
        for _ in 0..15 {
            statuses.push(list_as(&app, &store.publishable_key_test, &jane).await);
        }
        assert!(
            statuses[..10].iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
        assert!(
            statuses[10..]
                .iter()
                .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
            "{statuses:?}"
        );
        // Jane's flood spent Jane's budget only: Bob, on the same publishable key, and the store's
        // backend go on.
        assert_eq!(
            list_as(&app, &store.publishable_key_test, &bob).await,
            StatusCode::OK
        );
        let inbox = app
            .client(&store.secret_key_test)
            .list_threads()
            .send()
            .await;
        assert_eq!(inbox.expect("the store's inbox").status().as_u16(), 200);
    }
);

both_backends_with!(
    a_backend_registering_and_logging_in_a_hundred_customers_is_not_limited,
    |backend| async move {
        let Some(app) = spawn_app_with(backend, HttpSettings::default()).await else {
            return;
        };
        let store = app.create_store("Acme").await;
        // One backend, one address, one secret key: 200 registrations and 200 logins.
        for n in 0..200 {
            let email = format!("customer{n}@example.com");
            register(&app, &store.secret_key_test, &email).await;
            let (status, body) =
                login(&app.base_url, &store.secret_key_test, &email, PASSWORD).await;
            assert_eq!(status, 200, "login {n}: {body}");
        }
    }
);

both_backends_with!(
    eleven_wrong_passwords_lock_that_email_only,
    |backend| async move {
        let Some(app) = spawn_app_with(backend, HttpSettings::default()).await else {
            return;
        };
        // A second replica on the same database: failed logins are counted there, not per process.
        let (replica, replica_task) =
            messaging_server::spawn(app.service.clone(), &HttpSettings::default())
                .await
                .unwrap();
        let replica = format!("http://{replica}");
        let store = app.create_store("Acme").await;
        let key = store.secret_key_test.as_str();
        register(&app, key, "jane@example.com").await;
        register(&app, key, "bob@example.com").await;
        // Successful logins are not failures: they never add up to a lock.
        for _ in 0..11 {
            assert_eq!(
                login(&app.base_url, key, "bob@example.com", PASSWORD)
                    .await
                    .0,
                200
            );
        }
        for n in 0..10 {
            let through = if n % 2 == 0 { &app.base_url } else { &replica };
            let (status, body) = login(through, key, "Jane@Example.com", "wrong password").await;
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some("invalid_credentials")),
                "{n}"
            );
        }
        let (status, body) = login(&app.base_url, key, "jane@example.com", "wrong password").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (429, Some("too_many_failed_logins")),
            "{body}"
        );
        assert_eq!(body["ratelimit-limit"], 10);
        assert_eq!(body["ratelimit-remaining"], 0);
        let retry_after = body["retry-after"].as_u64().expect("Retry-After");
        assert!((1..=900).contains(&retry_after), "{retry_after}");
        // The right password waits too, on every replica: the account is locked, not the caller.
        assert_eq!(
            login(&replica, key, "jane@example.com", PASSWORD).await.0,
            429
        );
        // Others still log in, and their failures count for themselves.
        assert_eq!(
            login(&replica, key, "bob@example.com", PASSWORD).await.0,
            200
        );
        assert_eq!(
            login(&app.base_url, key, "bob@example.com", "wrong")
                .await
                .0,
            401
        );
        replica_task.abort();
    }
);

/// Two servers (replicas) on one database sharing `redis`.
async fn two_replicas(
    backend: Backend,
    limits: RateLimitSettings,
    redis: RedisBudgets,
) -> Option<(
    TestApp,
    String,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let settings = with_limits(RateLimitSettings {
        redis: Some(redis),
        ..limits
    });
    let app = spawn_app_with(backend, settings.clone()).await?;
    let (replica, task) = messaging_server::spawn(app.service.clone(), &settings)
        .await
        .unwrap();
    Some((app, format!("http://{replica}"), task))
}

both_backends_with!(
    replicas_sharing_a_redis_share_one_budget_per_customer,
    |backend| async move {
        let Some(redis) = test_redis().await else {
            return;
        };
        let Some((app, replica, task)) = two_replicas(backend, limits(1, 6), redis).await else {
            return;
        };
        let store = app.create_store("Acme").await;
        let jane = register(&app, &store.secret_key_test, "jane@example.com").await;
        let list = |base_url: String| {
            let request = app
                .http()
                .get(format!("{base_url}/v1/messaging/threads"))
                .bearer_auth(&store.publishable_key_test)
                .header("x-auth-token", &jane.token);
            async move { request.send().await.unwrap() }
        };
        // Three requests on each replica: six, the one budget's burst.
        for n in 0..6 {
            let through = if n % 2 == 0 {
                app.base_url.clone()
            } else {
                replica.clone()
            };
            assert_eq!(list(through).await.status(), StatusCode::OK, "request {n}");
        }
        for through in [app.base_url.clone(), replica.clone()] {
            let refused = list(through).await;
            assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(refused.headers()["ratelimit-limit"], "6");
            let retry_after: u64 = refused.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry_after >= 1);
        }
        task.abort();
    }
);

both_backends_with!(
    replicas_sharing_a_redis_count_failed_logins_there,
    |backend| async move {
        let Some(redis) = test_redis().await else {
            return;
        };
        let Some((app, replica, task)) =
            two_replicas(backend, RateLimitSettings::default(), redis).await
        else {
            return;
        };
        let store = app.create_store("Acme").await;
        let key = store.secret_key_test.as_str();
        register(&app, key, "jane@example.com").await;
        for n in 0..10 {
            let through = if n % 2 == 0 { &app.base_url } else { &replica };
            assert_eq!(
                login(through, key, "jane@example.com", "wrong").await.0,
                401,
                "{n}"
            );
        }
        let (status, body) = login(&replica, key, "jane@example.com", "wrong").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (429, Some("too_many_failed_logins"))
        );
        // Counted in Redis, not in the database.
        let rows = login_failure::Entity::find()
            .count(app.service.database())
            .await
            .unwrap();
        assert_eq!(rows, 0);
        task.abort();
    }
);

#[tokio::test]
async fn without_redis_failed_logins_are_rows_that_successes_remove() {
    let app = spawn_app_with(Backend::Sqlite, HttpSettings::default())
        .await
        .unwrap();
    let store = app.create_store("Acme").await;
    let key = store.secret_key_test.as_str();
    register(&app, key, "jane@example.com").await;
    for _ in 0..3 {
        assert_eq!(
            login(&app.base_url, key, "jane@example.com", "wrong")
                .await
                .0,
            401
        );
    }
    assert_eq!(
        login(&app.base_url, key, "jane@example.com", PASSWORD)
            .await
            .0,
        200
    );
    let rows = login_failure::Entity::find()
        .count(app.service.database())
        .await
        .unwrap();
    assert_eq!(rows, 3, "three failures kept, the success forgotten");
}

/// A private `redis-server` on a free port, stopped when dropped.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    /// `None` (printed as SKIPPED) when `redis-server` is not installed and this is not CI.
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let started = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        match started {
            Ok(child) => Some(Self {
                child,
                url: format!("redis://127.0.0.1:{port}"),
            }),
            Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("redis-server is required under CI=true: {err}")
            }
            Err(err) => {
                eprintln!("SKIPPED (cannot run redis-server): {err}");
                None
            }
        }
    }

    async fn budgets(&self) -> RedisBudgets {
        for _ in 0..100 {
            if let Ok(budgets) = RedisBudgets::connect(&self.url, "messaging-tests").await {
                return budgets;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the private redis-server at {} did not answer", self.url)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn counter_value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

#[tokio::test]
async fn when_redis_stops_answering_budgets_fall_back_to_the_process() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let settings = with_limits(RateLimitSettings {
        redis: Some(redis.budgets().await),
        ..limits(1, 5)
    });
    let app = spawn_app_with(Backend::Sqlite, settings).await.unwrap();
    let store = app.create_store("Acme").await;
    let jane = register(&app, &store.secret_key_test, "jane@example.com").await;
    for _ in 0..3 {
        assert_eq!(
            list_as(&app, &store.publishable_key_test, &jane).await,
            StatusCode::OK
        );
    }
    redis.stop();
    // Never a 500: the process counts on its own (a fresh budget of 5), and says so.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(list_as(&app, &store.publishable_key_test, &jane).await);
    }
    assert_eq!(statuses[..5], [StatusCode::OK; 5], "{statuses:?}");
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    // Logins go on too, their failures counted in the database.
    assert_eq!(
        login(
            &app.base_url,
            &store.secret_key_test,
            "jane@example.com",
            "wrong"
        )
        .await
        .0,
        401
    );
    let rows = login_failure::Entity::find()
        .count(app.service.database())
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let scrape = app
        .http()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        counter_value(&scrape, "rate_limit_redis_errors_total") >= 7.0,
        "{scrape}"
    );
}
