//! Rate limits shared through Redis by real `messaging-server` processes on one PostgreSQL
//! database: two processes admit one budget between them (not one each), count failed logins
//! together, and a Redis that does not answer at start stops the server. Under `CI=true` these
//! fail when PostgreSQL or Redis is missing; otherwise they skip loudly.

mod processes;

use std::process::Command;

use messaging_server::RedisBudgets;
use processes::{BIN, DropDatabase, Server, create_store, fresh_postgres};
use serde_json::{Value, json};
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether the test Redis answers; under `CI=true` it must.
async fn redis_is_up() -> bool {
    match RedisBudgets::connect(&redis_url(), "messaging-tests:ping").await {
        Ok(_) => true,
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Redis is required under CI=true ({}): {err}", redis_url())
        }
        Err(err) => {
            eprintln!("SKIPPED (no Redis at {}): {err}", redis_url());
            false
        }
    }
}

/// A call with the store's secret key: status and JSON body.
async fn call(base_url: &str, key: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let request = match body {
        Some(body) => client.post(format!("{base_url}{path}")).json(&body),
        None => client.get(format!("{base_url}{path}")),
    };
    let response = request.bearer_auth(key).send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn two_processes_with_one_redis_share_one_budget_and_count_failed_logins_together() {
    if !redis_is_up().await {
        return;
    }
    let Some(database_url) = fresh_postgres().await else {
        return;
    };
    let _cleanup = DropDatabase(database_url.clone());
    let redis = redis_url();
    let prefix = format!("messaging-tests:{}", Uuid::new_v4());
    let flags = [
        "--redis-url",
        redis.as_str(),
        "--redis-key-prefix",
        prefix.as_str(),
        "--rate-limit-per-second",
        "1",
        "--rate-limit-burst",
        "20",
    ];
    let servers = [
        Server::start_with(&database_url, &flags, &[]),
        Server::start_with(&database_url, &flags, &[]),
    ];

    // The store's backend: one budget of 20 across both processes, not 20 on each.
    let store = create_store(&database_url);
    let key = store["secret_key_test"].as_str().unwrap();
    for n in 0..20 {
        let (status, body) =
            call(&servers[n % 2].base_url, key, "/v1/messaging/threads", None).await;
        assert_eq!(status, 200, "request {n}: {body}");
    }
    for server in &servers {
        let (status, body) = call(&server.base_url, key, "/v1/messaging/threads", None).await;
        assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    }

    // Guessing one account through both processes: ten failures in all, then 429.
    let other = create_store(&database_url);
    let key = other["secret_key_test"].as_str().unwrap();
    let jane = json!({"email": "jane@example.com", "password": "correct horse battery staple", "name": "Jane"});
    assert_eq!(
        call(&servers[0].base_url, key, "/v1/auth/register", Some(jane))
            .await
            .0,
        201
    );
    let wrong = json!({"email": "jane@example.com", "password": "wrong password"});
    for n in 0..10 {
        let (status, _) = call(
            &servers[n % 2].base_url,
            key,
            "/v1/auth/login",
            Some(wrong.clone()),
        )
        .await;
        assert_eq!(status, 401, "attempt {n}");
    }
    let (status, body) = call(&servers[1].base_url, key, "/v1/auth/login", Some(wrong)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_failed_logins"))
    );
}

#[test]
fn a_redis_that_does_not_answer_at_start_stops_the_server() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .expect("run messaging-server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}
