//! The HTTP layer as a client meets it: problem+json errors with stable codes and the request
//! id, request ids echoed or generated, body limits and rate limits with their headers.

use std::num::NonZeroU32;

use messaging_server::{HttpSettings, RateLimitSettings};
use messaging_tests::{
    Backend, TestApp, both_backends, spawn_app, spawn_app_with, spawn_app_with_config,
};
use reqwest::{Method, StatusCode, header::CONTENT_TYPE};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

/// Any bearer token gets past extraction; the service judges it later.
const SOME_KEY: &str = "Bearer tybrite_sk_test_not_a_real_key";

struct ProblemResponse {
    status: StatusCode,
    request_id: String,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn problem_of(response: reqwest::Response) -> ProblemResponse {
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{status}: {content_type}"
    );
    let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.expect("problem bodies are JSON");
    for field in ["type", "title", "status", "code", "request_id"] {
        assert!(
            body.get(field).is_some(),
            "problem without `{field}`: {body}"
        );
    }
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(
        body["request_id"],
        request_id.as_str(),
        "body and header carry the same id"
    );
    assert_eq!(
        body["type"],
        format!(
            "https://docs.tybritelabs.com/errors/{}",
            body["code"].as_str().unwrap()
        )
    );
    ProblemResponse {
        status,
        request_id,
        headers,
        body,
    }
}

async fn send(app: &TestApp, method: Method, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut request = app.http().request(method, app.url(path));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await.expect("the server answers")
}

#[tokio::test]
async fn a_call_without_an_api_key_is_401_missing_api_key() {
    let app = spawn_app().await;
    let problem = problem_of(send(&app, Method::GET, "/v1/messaging/threads", None).await).await;
    assert_eq!(problem.status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem.body["code"], "missing_api_key");
    assert_eq!(problem.body["title"], "Unauthorized");
}

#[tokio::test]
async fn a_malformed_thread_id_is_400_naming_the_parameter() {
    let app = spawn_app().await;
    let response = send(
        &app,
        Method::GET,
        "/v1/messaging/threads/not-a-uuid",
        Some(SOME_KEY),
    )
    .await;
    let problem = problem_of(response).await;
    assert_eq!(problem.status, StatusCode::BAD_REQUEST);
    // Refused by the spec's pattern for thread ids, naming the parameter.
    assert_eq!(problem.body["code"], "invalid_parameter");
    assert!(
        problem.body["detail"].as_str().unwrap().contains("`id`"),
        "{}",
        problem.body
    );
}

#[tokio::test]
async fn a_malformed_query_parameter_is_400_naming_it() {
    let app = spawn_app().await;
    for query in ["limit=abc", "limit=500", "status=sleeping"] {
        let path = format!("/v1/messaging/threads?{query}");
        let problem = problem_of(send(&app, Method::GET, &path, Some(SOME_KEY)).await).await;
        assert_eq!(problem.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(problem.body["code"], "invalid_parameter", "{query}");
        let name = query.split('=').next().unwrap();
        assert!(
            problem.body["detail"].as_str().unwrap().contains(name),
            "{query}: {}",
            problem.body
        );
    }
}

#[tokio::test]
async fn malformed_json_is_400_invalid_body() {
    let app = spawn_app().await;
    for body in ["{", r#"{"message": 5}"#, "[]"] {
        let response = app
            .http()
            .post(app.url("/v1/messaging/threads"))
            .header("authorization", SOME_KEY)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem = problem_of(response).await;
        assert_eq!(problem.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(problem.body["code"], "invalid_body", "{body}");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let response = app
        .http()
        .post(app.url("/v1/messaging/threads"))
        .header("authorization", SOME_KEY)
        .header(CONTENT_TYPE, "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let problem = problem_of(response).await;
    assert_eq!(problem.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(problem.body["code"], "unsupported_media_type");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app().await;
    let message = "x".repeat(70 * 1024);
    let response = app
        .http()
        .post(app.url("/v1/messaging/threads"))
        .header("authorization", SOME_KEY)
        .json(&json!({"subject": "big", "message": message}))
        .send()
        .await
        .unwrap();
    let problem = problem_of(response).await;
    assert_eq!(problem.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem.body["code"], "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    let problem = problem_of(send(&app, Method::GET, "/v1/nowhere", Some(SOME_KEY)).await).await;
    assert_eq!(problem.status, StatusCode::NOT_FOUND);
    assert_eq!(problem.body["code"], "not_found");

    let problem =
        problem_of(send(&app, Method::PUT, "/v1/messaging/threads", Some(SOME_KEY)).await).await;
    assert_eq!(problem.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(problem.body["code"], "method_not_allowed");
    assert_eq!(problem.headers["allow"], "GET, HEAD, POST");
}

#[tokio::test]
async fn every_405_says_which_methods_are_allowed() {
    let app = spawn_app().await;
    let thread = format!("/v1/messaging/threads/{}", uuid::Uuid::now_v7());
    for (method, path, allow) in [
        (Method::POST, thread.clone(), "GET, HEAD, PATCH"),
        (Method::GET, format!("{thread}/read"), "POST"),
        (
            Method::PATCH,
            format!("{thread}/subscribers/staff-1"),
            "DELETE",
        ),
        (Method::GET, "/v1/auth/login".to_owned(), "POST"),
        (
            Method::PATCH,
            "/v1/messaging/messages/x/reactions/y".to_owned(),
            "PUT, DELETE",
        ),
        (Method::POST, "/healthz".to_owned(), "GET, HEAD"),
        (Method::DELETE, "/openapi.yaml".to_owned(), "GET, HEAD"),
    ] {
        let problem = problem_of(send(&app, method.clone(), &path, Some(SOME_KEY)).await).await;
        assert_eq!(
            problem.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(problem.headers["allow"], allow, "{method} {path}");
    }
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_beside_http1() {
    let app = spawn_app().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let response = h2.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
    }
    let problem = problem_of(
        h2.get(app.url("/v1/messaging/threads"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(problem.body["code"], "missing_api_key");
    let h1 = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_connection_that_sends_one_ambiguous_byte_is_ended() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    // `P` could begin HTTP/2's preface or `POST`; the client then goes quiet and closes.
    let mut socket = tokio::net::TcpStream::connect(app.address).await.unwrap();
    socket.write_all(b"P").await.unwrap();
    socket.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        socket.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the server never ended the connection");
}

#[tokio::test]
async fn a_valid_request_id_is_echoed_and_an_invalid_one_replaced() {
    let app = spawn_app().await;
    let echoed = app
        .http()
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc-123");

    let too_long = "a".repeat(129);
    let replaced = app
        .http()
        .get(app.url("/healthz"))
        .header("x-request-id", &too_long)
        .send()
        .await
        .unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(id)
            .expect("a generated id is a UUID")
            .get_version_num(),
        7
    );

    let problem = problem_of(
        app.http()
            .get(app.url("/v1/nowhere"))
            .header("x-request-id", "trace-404")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(problem.request_id, "trace-404");
}

fn tight_limits(burst: u32) -> HttpSettings {
    let burst = NonZeroU32::new(burst).unwrap();
    let slow = NonZeroU32::new(1).unwrap();
    HttpSettings {
        rate_limits: Some(RateLimitSettings {
            per_second: slow,
            burst,
            ..RateLimitSettings::default()
        }),
        ..HttpSettings::default()
    }
}

fn assert_rate_limited(problem: &ProblemResponse, limit: u32) {
    assert_eq!(problem.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem.body["code"], "rate_limited");
    let header = |name: &str| {
        problem.headers[name]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(header("retry-after") >= 1);
    assert_eq!(header("ratelimit-limit"), u64::from(limit));
    assert_eq!(header("ratelimit-remaining"), 0);
    assert!(header("ratelimit-reset") >= 1);
}

/// A well-formed API key that no store has: it counts against its own budget only.
fn unknown_key(n: u32) -> String {
    format!("Bearer tybrite_sk_test_{n:040}")
}

#[tokio::test]
async fn an_api_key_over_its_rate_is_429_with_rate_limit_headers() {
    let app = spawn_app_with(Backend::Sqlite, tight_limits(2))
        .await
        .unwrap();
    for _ in 0..2 {
        let response = send(
            &app,
            Method::GET,
            "/v1/messaging/threads",
            Some(&unknown_key(1)),
        )
        .await;
        assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let problem = problem_of(
        send(
            &app,
            Method::GET,
            "/v1/messaging/threads",
            Some(&unknown_key(1)),
        )
        .await,
    )
    .await;
    assert_rate_limited(&problem, 2);

    let other_key = send(
        &app,
        Method::GET,
        "/v1/messaging/threads",
        Some(&unknown_key(2)),
    )
    .await;
    assert_ne!(
        other_key.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "each key has its own bucket"
    );
}

/// A request from the loopback address `127.0.0.<host>` (all of 127/8 is local).
async fn get_from(app: &TestApp, host: u8, authorization: &str) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, host]))
        .build()
        .unwrap();
    client
        .get(app.url("/v1/messaging/threads"))
        .header("authorization", authorization)
        .send()
        .await
        .expect("the server answers")
}

#[tokio::test]
async fn malformed_keys_count_against_the_client_address() {
    let app = spawn_app_with(Backend::Sqlite, tight_limits(3))
        .await
        .unwrap();
    // A new made-up key each time cannot mint a new budget: the address runs out.
    for n in 0..3 {
        let response = get_from(&app, 6, &format!("Bearer made-up-{n}")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let problem = problem_of(get_from(&app, 6, "Bearer made-up-4").await).await;
    assert_rate_limited(&problem, 3);
    // Another address, and a well-formed key from the same one, still get through.
    assert_eq!(
        get_from(&app, 7, "Bearer made-up-5").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_from(&app, 6, &unknown_key(3)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

both_backends!(a_new_store_has_an_empty_inbox, |app| async move {
    let store = app.create_store("Acme").await;
    assert!(store.secret_key_test.starts_with("tybrite_sk_test_"));
    let page = app
        .client(&store.secret_key_test)
        .list_threads()
        .send()
        .await
        .expect("200")
        .into_inner();
    assert!(page.threads.is_empty());
    assert!(!page.pagination.has_more);

    let health = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
});

/// The value of one series in a Prometheus text scrape (0 when absent).
fn series_value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

async fn scrape(app: &TestApp) -> String {
    let response = app.http().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

both_backends!(
    metrics_count_requests_by_operation_and_status,
    |app| async move {
        const GET_THREAD_400: &str =
            r#"http_requests_total{method="GET",operation="getThread",status="400"}"#;
        const LIST_200: &str =
            r#"http_requests_total{method="GET",operation="listThreads",status="200"}"#;
        const LIST_400: &str =
            r#"http_requests_total{method="GET",operation="listThreads",status="400"}"#;
        const UNMATCHED_404: &str =
            r#"http_requests_total{method="GET",operation="unmatched",status="404"}"#;
        // The recorder is shared by every app in this test process: compare before and after.
        let before = scrape(&app).await;

        let store = app.create_store("Acme").await;
        let client = app.client(&store.secret_key_test);
        for _ in 0..3 {
            client.list_threads().send().await.expect("200");
        }
        // Refused by the service (a thread id that is neither a UUID nor an alias).
        let malformed = send(
            &app,
            Method::GET,
            "/v1/messaging/threads/not-a-uuid",
            Some(SOME_KEY),
        );
        assert_eq!(malformed.await.status(), StatusCode::BAD_REQUEST);
        // Refused by the generated glue's parameter checks, before the service runs.
        let out_of_range = send(
            &app,
            Method::GET,
            "/v1/messaging/threads?limit=0",
            Some(SOME_KEY),
        );
        assert_eq!(out_of_range.await.status(), StatusCode::BAD_REQUEST);
        let unknown = send(&app, Method::GET, "/v1/secret-path-4242", Some(SOME_KEY)).await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        // The server's other routes are labelled by their route, never by the requested path.
        for (path, status) in [
            ("/healthz", StatusCode::OK),
            ("/docs/swagger-initializer.js", StatusCode::OK),
            ("/healthz/extra", StatusCode::NOT_FOUND),
            ("/docsX", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(
                send(&app, Method::GET, path, None).await.status(),
                status,
                "{path}"
            );
        }

        let after = scrape(&app).await;
        let grew = |series: &str| series_value(&after, series) - series_value(&before, series);
        assert!(grew(LIST_200) >= 3.0, "{after}");
        assert!(grew(GET_THREAD_400) >= 1.0, "{after}");
        assert!(grew(LIST_400) >= 1.0, "{after}");
        assert!(grew(UNMATCHED_404) >= 3.0, "{after}");
        let route_200 = |route: &str| {
            format!(r#"http_requests_total{{method="GET",operation="{route}",status="200"}}"#)
        };
        assert!(grew(&route_200("/healthz")) >= 1.0, "{after}");
        assert!(grew(&route_200("/docs")) >= 1.0, "{after}");
        assert!(grew(&route_200("/metrics")) >= 1.0, "{after}");
        assert!(
            series_value(
                &after,
                r#"http_request_duration_seconds_count{method="GET",operation="listThreads"}"#
            ) >= 3.0,
            "{after}"
        );
        assert!(after.contains(r#"http_request_duration_seconds_bucket{method="GET",operation="listThreads",le="0.005"}"#));
        assert!(after.contains("# TYPE http_requests_total counter"));
        // Raw paths never become labels.
        assert!(!after.contains("secret-path-4242"));
        assert!(!after.contains("not-a-uuid"));
        assert!(!after.contains("swagger-initializer"));
        assert!(!after.contains("/healthz/extra"));
        assert!(!after.contains("docsX"));
        // The pool, read at scrape time (its values depend on the publisher's ticks).
        assert!(
            after.contains(r#"db_pool_connections{state="idle"}"#),
            "{after}"
        );
        assert!(
            after.contains(r#"db_pool_connections{state="in_use"}"#),
            "{after}"
        );
    }
);

/// `--database-max-connections` bounds what one replica opens on PostgreSQL, counted by
/// PostgreSQL itself, and requests beyond it wait for a connection instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_opens_at_most_its_configured_postgres_connections() {
    const LIMIT: u32 = 3;
    let Some(app) = spawn_app_with_config(
        Backend::Postgres,
        HttpSettings::without_rate_limits(),
        |config| config.postgres_max_connections = LIMIT,
    )
    .await
    else {
        return;
    };
    // Each `/healthz` holds a connection for its `SELECT 1`; 40 at once need more than 3.
    let answers = futures::future::join_all((0..40).map(|_| {
        let request = app.http().get(app.url("/healthz"));
        async move { request.send().await.unwrap().status() }
    }))
    .await;
    assert!(
        answers.iter().all(|status| *status == StatusCode::OK),
        "{answers:?}"
    );
    // Counted by PostgreSQL (this query's connection is one of the pool's).
    let db = app.service.database();
    let opened: i64 = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS opened FROM pg_stat_activity WHERE datname = current_database()",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "opened")
        .unwrap();
    assert!(
        (1..=i64::from(LIMIT)).contains(&opened),
        "{opened} connections"
    );
}
