//! The security matrix, on SQLite and PostgreSQL: every operation of `openapi/messaging.yaml`
//! against every kind of wrong caller, with the exact status and code, and proof that nothing
//! changed in the database.
//!
//! The operations are read from the spec, not listed here. What the matrix needs to know about
//! an operation is in [`cases`]: a valid request (query, body) and what each kind of caller gets.
//! An operation of the spec without a case fails the matrix, so no operation can be added
//! without deciding who may call it. Path parameters are filled by [`path_value`] from a fresh
//! [`Target`] (a thread and a message of the customer Jane) per case.
//!
//! The rows ([`rows`]): no key, a malformed key, a revoked key, the other mode's secret key,
//! another store's secret key, a publishable key where a secret one is needed or without a
//! token, an expired, tampered, foreign-store or foreign-mode token, the customer's token with
//! the other mode's or another store's key, another customer's token, the store itself, and
//! last the owner (Jane, or the store's secret key for auth operations).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use chrono::Utc;
use messaging_server::{HttpSettings, RateLimitSettings};
use messaging_service::{
    CreatedStore, KeyInfo, OtpDelivery,
    entity::{api_key, thread, webhook_endpoint},
};
use messaging_tests::{
    Backend, TestApp, both_backends, capture_logs, sign_test_token, spawn_app, spawn_app_with,
    spawn_app_with_config,
};
use reqwest::{Method, StatusCode, header::CONTENT_TYPE};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult, JsonValue,
    Statement,
};
use serde_json::{Value, json};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------------------------
// The spec's operations.

/// An operation as the spec declares it.
#[derive(Debug, Clone)]
struct Operation {
    id: String,
    method: Method,
    /// The path template, e.g. `/v1/messaging/threads/{id}`.
    path: String,
    /// The 2xx status the spec declares.
    success: u16,
    /// Every status the spec declares.
    declared: BTreeSet<u16>,
    /// Whether it takes `x-auth-token`, i.e. a customer may act (messaging); auth operations
    /// do not and need a secret key.
    customer_may_act: bool,
}

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/messaging.yaml");
    let text = std::fs::read_to_string(path).expect("the spec is readable");
    serde_yaml::from_str(&text).expect("the spec is valid YAML")
}

fn operations() -> Vec<Operation> {
    let spec = spec();
    let resolve = |parameter: &Value| -> Value {
        match parameter["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/parameters/"))
        {
            Some(name) => spec["components"]["parameters"][name].clone(),
            None => parameter.clone(),
        }
    };
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !matches!(
                method,
                Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            ) {
                continue;
            }
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
                .to_owned();
            let declared: BTreeSet<u16> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .filter_map(|status| status.parse().ok())
                .collect();
            let success = *declared
                .iter()
                .find(|s| (200..300).contains(*s))
                .unwrap_or_else(|| panic!("{id} declares no 2xx response"));
            let customer_may_act = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(resolve)
                .any(|p| p["in"] == "header" && p["name"] == "x-auth-token");
            operations.push(Operation {
                id,
                method,
                path: path.clone(),
                success,
                declared,
                customer_may_act,
            });
        }
    }
    operations
}

// ---------------------------------------------------------------------------------------------
// The world the matrix runs in.

/// A customer with a session.
#[derive(Debug, Clone)]
struct Session {
    id: Uuid,
    email: String,
    access_token: String,
}

/// Store Acme (test and live), store Other, their customers, and the credentials the rows use.
struct Fixture {
    app: TestApp,
    acme: CreatedStore,
    other: CreatedStore,
    /// Keys of Acme (test mode) revoked by rotation: `acme` holds their replacements.
    revoked_secret_key: String,
    revoked_publishable_key: String,
    /// Acme, test mode: the owner and another customer.
    jane: Session,
    bob: Session,
    /// Acme, live mode.
    lena: Session,
    /// Other, test mode.
    carol: Session,
    /// Jane's token, re-signed with valid signature but expired.
    expired_token: String,
    /// Jane's token claiming to be Bob, with Jane's signature.
    tampered_token: String,
    /// A position of the event feed taken after the decoys were made: reading the feed after it
    /// shows each case's target to whoever may see it.
    feed_start: String,
}

/// What a case acts on, made fresh for each case so owner calls cannot disturb other cases.
struct Target {
    /// A thread of Jane's (Acme, test mode) with her first message.
    thread: Uuid,
    /// Jane's message in that thread.
    message: Uuid,
    /// The channel of Jane and the store, which that thread publishes to.
    channel: Uuid,
    /// A one-time code just sent to Jane.
    otp_code: String,
    /// An unused refresh token of Jane's.
    refresh_token: String,
    /// A webhook endpoint of Acme (test mode), the only one: a store has at most 20.
    endpoint: Uuid,
}

impl Fixture {
    async fn new(app: TestApp) -> Self {
        let mut acme = app.create_store("Acme").await;
        let other = app.create_store("Other").await;

        // Rotate Acme's test keys: the old ones are the revoked keys of the matrix, and
        // rotation is shown to hand out working keys.
        let keys = app.service.list_keys(acme.store_id).await.unwrap();
        let id_of = |mode: &str, kind: &str| -> Uuid {
            keys.iter()
                .find(|k: &&KeyInfo| k.mode == mode && k.kind == kind)
                .map(|k| k.id)
                .unwrap()
        };
        let secret = app
            .service
            .rotate_key(id_of("test", "secret"))
            .await
            .unwrap();
        let publishable = app
            .service
            .rotate_key(id_of("test", "publishable"))
            .await
            .unwrap();
        let revoked_secret_key = std::mem::replace(&mut acme.secret_key_test, secret.key);
        let revoked_publishable_key =
            std::mem::replace(&mut acme.publishable_key_test, publishable.key);

        let jane = register(&app, &acme.secret_key_test, "jane@example.com").await;
        let bob = register(&app, &acme.secret_key_test, "bob@example.com").await;
        let lena = register(&app, &acme.secret_key_live, "lena@example.com").await;
        let carol = register(&app, &other.secret_key_test, "carol@example.com").await;

        let mut claims = jwt_claims(&jane.access_token);
        claims["exp"] = json!(Utc::now().timestamp() - 1);
        let expired_token = sign_test_token(&claims);
        let parts: Vec<&str> = jane.access_token.split('.').collect();
        let mut as_bob = jwt_claims(&jane.access_token);
        as_bob["sub"] = json!(bob.id);
        let tampered_token = format!(
            "{}.{}.{}",
            parts[0],
            base64url(as_bob.to_string().as_bytes()),
            parts[2]
        );

        let fixture = Self {
            app,
            acme,
            other,
            revoked_secret_key,
            revoked_publishable_key,
            jane,
            bob,
            lena,
            carol,
            expired_token,
            tampered_token,
            feed_start: String::new(),
        };
        // Decoys: threads in every other scope, so lists have something to leak.
        fixture
            .start_conversation(&fixture.acme.publishable_key_test, &fixture.bob)
            .await;
        fixture
            .start_conversation(&fixture.acme.publishable_key_live, &fixture.lena)
            .await;
        fixture
            .start_conversation(&fixture.other.publishable_key_test, &fixture.carol)
            .await;
        fixture.check_credentials().await;
        let mut fixture = fixture;
        let response = fixture
            .app
            .http()
            .get(fixture.app.url("/v1/messaging/events"))
            .bearer_auth(&fixture.acme.secret_key_test)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        fixture.feed_start = body["next_after"].as_str().unwrap().to_owned();
        fixture
    }

    /// The crafted credentials are what they claim to be: a token signed like the expired one
    /// but current is accepted, and the rotated keys work while the revoked ones do not.
    async fn check_credentials(&self) {
        let mut claims = jwt_claims(&self.jane.access_token);
        claims["exp"] = json!(Utc::now().timestamp() + 600);
        let current = sign_test_token(&claims);
        let list = |key: &str, token: Option<&str>| {
            let mut request = self
                .app
                .http()
                .get(self.app.url("/v1/messaging/threads"))
                .bearer_auth(key);
            if let Some(token) = token {
                request = request.header("x-auth-token", token);
            }
            async move { request.send().await.unwrap().status() }
        };
        let pk = self.acme.publishable_key_test.as_str();
        assert_eq!(list(pk, Some(&current)).await, StatusCode::OK);
        assert_eq!(
            list(pk, Some(&self.jane.access_token)).await,
            StatusCode::OK
        );
        assert_eq!(list(&self.acme.secret_key_test, None).await, StatusCode::OK);
        let revoked = list(&self.revoked_publishable_key, Some(&self.jane.access_token)).await;
        assert_eq!(revoked, StatusCode::UNAUTHORIZED);
    }

    async fn start_conversation(&self, key: &str, customer: &Session) -> (Uuid, Uuid) {
        let response = self
            .app
            .http()
            .post(self.app.url("/v1/messaging/threads"))
            .bearer_auth(key)
            .header("x-auth-token", &customer.access_token)
            .json(&json!({
                "customer_id": customer.id,
                "subject": "Missing Item - Order #8821",
                "message": "My package arrived but the headphones were missing.",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        (
            body["thread"]["id"].as_str().unwrap().parse().unwrap(),
            body["message"]["id"].as_str().unwrap().parse().unwrap(),
        )
    }

    /// A thread and message of Jane's, a one-time code and a refresh token, all unused.
    async fn new_target(&self) -> Target {
        let (thread, message) = self
            .start_conversation(&self.acme.publishable_key_test, &self.jane)
            .await;
        let sk = &self.acme.secret_key_test;
        let (status, login) = post(
            &self.app,
            "/v1/auth/login",
            sk,
            json!({"email": self.jane.email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{login}");
        let (status, _) = post(
            &self.app,
            "/v1/auth/otp",
            sk,
            json!({"email": self.jane.email}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        Target {
            endpoint: self.new_endpoint().await,
            thread,
            message,
            channel: self.jane_channel().await,
            otp_code: self.app.otp.last_code_for(&self.jane.email).unwrap(),
            refresh_token: login["session"]["refresh_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        }
    }

    /// A fresh webhook endpoint of Acme's test mode, replacing the previous case's. Its URL is a
    /// closed loopback port: deliveries to it fail in the background without reaching anything.
    async fn new_endpoint(&self) -> Uuid {
        webhook_endpoint::Entity::delete_many()
            .exec(self.app.service.database())
            .await
            .unwrap();
        let (status, body) = post(
            &self.app,
            "/v1/webhooks/endpoints",
            &self.acme.secret_key_test,
            json!({"url": "http://127.0.0.1:9/hooks", "description": "Order system"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// The channel whose subscribers are exactly Jane and Acme.
    async fn jane_channel(&self) -> Uuid {
        let response = self
            .app
            .http()
            .get(self.app.url("/v1/messaging/channels?limit=200"))
            .bearer_auth(&self.acme.publishable_key_test)
            .header("x-auth-token", &self.jane.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let wanted: BTreeSet<String> =
            [self.jane.id.to_string(), self.acme.store_id.to_string()].into();
        body["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|channel| {
                let ids: BTreeSet<String> = channel["subscriber_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_str().unwrap().to_owned())
                    .collect();
                ids == wanted
            })
            .and_then(|channel| channel["id"].as_str()?.parse().ok())
            .expect("Jane and Acme have a channel")
    }

    /// Everything secret the fixture knows: never to appear in an error or a foreign answer.
    /// The target's one-time code is checked apart ([`shows_code`]).
    fn secrets(&self, target: &Target) -> Vec<String> {
        let mut secrets = vec![
            self.revoked_secret_key.clone(),
            self.revoked_publishable_key.clone(),
            self.expired_token.clone(),
            self.tampered_token.clone(),
            target.refresh_token.clone(),
            PASSWORD.to_owned(),
        ];
        for store in [&self.acme, &self.other] {
            secrets.extend([
                store.secret_key_test.clone(),
                store.publishable_key_test.clone(),
                store.secret_key_live.clone(),
                store.publishable_key_live.clone(),
            ]);
        }
        for customer in [&self.jane, &self.bob, &self.lena, &self.carol] {
            secrets.push(customer.access_token.clone());
        }
        secrets
    }
}

async fn register(app: &TestApp, key: &str, email: &str) -> Session {
    let (status, body) = post(
        app,
        "/v1/auth/register",
        key,
        json!({"email": email, "password": PASSWORD, "name": email.split('@').next()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Session {
        id: body["customer"]["id"].as_str().unwrap().parse().unwrap(),
        email: email.to_owned(),
        access_token: body["session"]["access_token"].as_str().unwrap().to_owned(),
    }
}

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .http()
        .post(app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// What each operation is given and what each caller gets.

/// The outcome a row expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exactly this problem; the database is unchanged.
    Problem(u16, &'static str),
    /// This success status, with nothing of the target's scope in the body, and the database
    /// unchanged: a read of one's own (empty) scope, or a code request for nobody there.
    SeesNothing(u16),
    /// This success status; every existing row is unchanged and new rows mention nothing of
    /// the target: registering in one's own store and mode.
    WritesOwnScope(u16),
    /// The operation's success status from the spec; it may write.
    Succeeds,
}

const fn problem(status: u16, code: &'static str) -> Option<Expect> {
    Some(Expect::Problem(status, code))
}

type QueryFn = fn(&Fixture, &Target) -> String;
type BodyFn = fn(&Fixture, &Target) -> Value;

/// One way to call an operation: a valid request and what each kind of caller gets.
struct Case {
    op: &'static str,
    /// What this variant of the request is, when an operation has several.
    variant: &'static str,
    /// Query string without `?`.
    query: Option<QueryFn>,
    body: Option<BodyFn>,
    /// The secret key of the other mode or of another store: the target is not in its scope.
    foreign_store: Option<Expect>,
    /// Messaging: Bob's token (same store and mode, not the owner).
    other_customer: Option<Expect>,
    /// Messaging: the store itself (secret key, no token).
    store: Option<Expect>,
    /// Jane with her token (messaging), or the store's secret key (auth).
    owner: Expect,
}

impl Case {
    const fn new(op: &'static str) -> Self {
        Self {
            op,
            variant: "",
            query: None,
            body: None,
            foreign_store: None,
            other_customer: None,
            store: None,
            owner: Expect::Succeeds,
        }
    }
}

/// Every operation of the spec needs at least one case here: a new operation fails the matrix
/// until its author decides what each caller gets.
fn cases() -> Vec<Case> {
    const THREAD_404: Option<Expect> = problem(404, "thread_not_found");
    const THREAD_403: Option<Expect> = problem(403, "thread_not_owned");
    const MESSAGE_404: Option<Expect> = problem(404, "message_not_found");
    const MESSAGE_403: Option<Expect> = problem(403, "message_not_owned");
    const CHANNEL_404: Option<Expect> = problem(404, "channel_not_found");
    const ENDPOINT_404: Option<Expect> = problem(404, "webhook_endpoint_not_found");
    const SUCCEEDS: Option<Expect> = Some(Expect::Succeeds);
    vec![
        // Messaging: collections.
        Case {
            variant: "own threads",
            foreign_store: Some(Expect::SeesNothing(200)),
            other_customer: Some(Expect::SeesNothing(200)),
            store: SUCCEEDS,
            ..Case::new("listThreads")
        },
        Case {
            variant: "customer_id of the owner",
            query: Some(|f, _| format!("customer_id={}", f.jane.id)),
            foreign_store: Some(Expect::SeesNothing(200)),
            other_customer: problem(403, "customer_mismatch"),
            store: SUCCEEDS,
            ..Case::new("listThreads")
        },
        Case {
            body: Some(|f, _| {
                json!({
                    "customer_id": f.jane.id,
                    "subject": "Where is my order?",
                    "message": "It has not arrived.",
                })
            }),
            foreign_store: problem(404, "customer_not_found"),
            other_customer: problem(403, "customer_mismatch"),
            store: SUCCEEDS,
            ..Case::new("createConversation")
        },
        // Messaging: a thread.
        Case {
            foreign_store: THREAD_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("getThread")
        },
        Case {
            variant: "archive, mute, pin",
            body: Some(|_, _| json!({"archived": true, "muted": true, "pinned": true})),
            foreign_store: THREAD_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("updateThread")
        },
        Case {
            variant: "status (the store's)",
            body: Some(|_, _| json!({"status": "closed"})),
            foreign_store: THREAD_404,
            other_customer: problem(403, "store_only_field"),
            store: SUCCEEDS,
            owner: Expect::Problem(403, "store_only_field"),
            ..Case::new("updateThread")
        },
        Case {
            variant: "priority (the store's)",
            body: Some(|_, _| json!({"priority": "urgent", "muted": true})),
            foreign_store: THREAD_404,
            other_customer: problem(403, "store_only_field"),
            store: SUCCEEDS,
            owner: Expect::Problem(403, "store_only_field"),
            ..Case::new("updateThread")
        },
        Case {
            foreign_store: THREAD_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("markThreadRead")
        },
        Case {
            query: Some(|_, _| "order=desc&limit=10".to_owned()),
            foreign_store: THREAD_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("getThreadMessages")
        },
        Case {
            body: Some(|_, _| json!({"message": "Any news?"})),
            foreign_store: THREAD_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("sendMessage")
        },
        // Messaging: a message (Jane's). The store changes only the store's messages.
        Case {
            body: Some(|_, _| json!({"message_content": "Correction: two headphones."})),
            foreign_store: MESSAGE_404,
            other_customer: MESSAGE_403,
            store: MESSAGE_403,
            ..Case::new("editMessage")
        },
        Case {
            foreign_store: MESSAGE_404,
            other_customer: MESSAGE_403,
            store: MESSAGE_403,
            ..Case::new("deleteMessage")
        },
        // Edit history: whoever may read the thread.
        Case {
            foreign_store: MESSAGE_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("listMessageEdits")
        },
        // Seed 004: subscribers. Customers may list a thread's subscribers, not change them.
        Case {
            foreign_store: THREAD_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("listSubscribers")
        },
        Case {
            body: Some(|_, _| json!({"type": "user", "id": "staff-42", "name": "Sam Staff"})),
            foreign_store: THREAD_404,
            other_customer: problem(403, "store_only_operation"),
            store: SUCCEEDS,
            owner: Expect::Problem(403, "store_only_operation"),
            ..Case::new("addSubscriber")
        },
        Case {
            foreign_store: THREAD_404,
            other_customer: problem(403, "store_only_operation"),
            store: SUCCEEDS,
            owner: Expect::Problem(403, "store_only_operation"),
            ..Case::new("removeSubscriber")
        },
        // Reactions: anyone who may read the thread.
        Case {
            foreign_store: MESSAGE_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("addReaction")
        },
        Case {
            foreign_store: MESSAGE_404,
            other_customer: THREAD_403,
            store: SUCCEEDS,
            ..Case::new("removeReaction")
        },
        // Channels: a customer sees only its own; another customer's is 404, like another
        // store's (its existence does not leak).
        Case {
            foreign_store: Some(Expect::SeesNothing(200)),
            other_customer: Some(Expect::SeesNothing(200)),
            store: SUCCEEDS,
            ..Case::new("listChannels")
        },
        Case {
            foreign_store: CHANNEL_404,
            other_customer: CHANNEL_404,
            store: SUCCEEDS,
            ..Case::new("getChannel")
        },
        Case {
            query: Some(|_, _| "order=desc&limit=10".to_owned()),
            foreign_store: CHANNEL_404,
            other_customer: CHANNEL_404,
            store: SUCCEEDS,
            ..Case::new("getChannelMessages")
        },
        // The event feed: everyone reads their own; the target's events reach only Jane and
        // the store.
        Case {
            query: Some(|f, _| format!("after={}", f.feed_start)),
            foreign_store: Some(Expect::SeesNothing(200)),
            other_customer: Some(Expect::SeesNothing(200)),
            store: SUCCEEDS,
            ..Case::new("listEvents")
        },
        Case {
            query: Some(|f, _| format!("after={}", f.feed_start)),
            foreign_store: Some(Expect::SeesNothing(200)),
            other_customer: Some(Expect::SeesNothing(200)),
            store: SUCCEEDS,
            ..Case::new("streamEvents")
        },
        // Webhooks: the store's secret key only; a foreign key sees its own (empty) scope.
        Case {
            foreign_store: Some(Expect::SeesNothing(200)),
            ..Case::new("listWebhookEndpoints")
        },
        Case {
            body: Some(|_, _| json!({"url": "https://hooks.acme.example/in"})),
            foreign_store: Some(Expect::WritesOwnScope(201)),
            ..Case::new("createWebhookEndpoint")
        },
        Case {
            foreign_store: ENDPOINT_404,
            ..Case::new("getWebhookEndpoint")
        },
        Case {
            body: Some(|_, _| json!({"enabled": false, "description": "Paused"})),
            foreign_store: ENDPOINT_404,
            ..Case::new("updateWebhookEndpoint")
        },
        Case {
            foreign_store: ENDPOINT_404,
            ..Case::new("deleteWebhookEndpoint")
        },
        Case {
            query: Some(|_, _| "limit=10".to_owned()),
            foreign_store: ENDPOINT_404,
            ..Case::new("listWebhookDeliveries")
        },
        // Auth: a foreign key works on its own store and mode, where Jane does not exist.
        Case {
            body: Some(|_, _| {
                json!({
                    "email": format!("new-{}@example.com", Uuid::new_v4().simple()),
                    "password": PASSWORD,
                    "name": "New Customer",
                })
            }),
            foreign_store: Some(Expect::WritesOwnScope(201)),
            ..Case::new("register")
        },
        Case {
            body: Some(|f, _| json!({"email": f.jane.email, "password": PASSWORD})),
            foreign_store: problem(401, "invalid_credentials"),
            ..Case::new("login")
        },
        Case {
            body: Some(|f, _| json!({"email": f.jane.email})),
            foreign_store: Some(Expect::SeesNothing(202)),
            ..Case::new("requestOtp")
        },
        Case {
            body: Some(|f, t| json!({"email": f.jane.email, "code": t.otp_code})),
            foreign_store: problem(401, "invalid_otp"),
            ..Case::new("verifyOtp")
        },
        Case {
            body: Some(|_, t| json!({"refresh_token": t.refresh_token})),
            foreign_store: problem(401, "invalid_refresh_token"),
            ..Case::new("refreshSession")
        },
    ]
}

/// The value of path parameter `name`, which follows the segment `collection` in the path.
fn path_value(f: &Fixture, target: &Target, collection: &str, name: &str, path: &str) -> String {
    match (collection, name) {
        ("threads", "id") => target.thread.to_string(),
        ("messages", "id") => target.message.to_string(),
        ("channels", "id") => target.channel.to_string(),
        // Jane herself, the contact subscriber of her thread.
        ("subscribers", "subscriber_id") => f.jane.id.to_string(),
        ("reactions", "emoji") => "👍".to_owned(),
        ("endpoints", "id") => target.endpoint.to_string(),
        _ => panic!(
            "no value for path parameter `{name}` of {path}: add one to `path_value` (and to \
             `Target`) in tests/tests/security.rs"
        ),
    }
}

fn concrete_path(f: &Fixture, operation: &Operation, target: &Target) -> String {
    let mut path = String::new();
    let mut previous = "";
    for segment in operation.path.split('/').filter(|s| !s.is_empty()) {
        path.push('/');
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => path.push_str(&percent_encode(&path_value(
                f,
                target,
                previous,
                name,
                &operation.path,
            ))),
            None => path.push_str(segment),
        }
        previous = segment;
    }
    path
}

/// Percent-encodes everything but unreserved characters (emoji path segments, for example).
fn percent_encode(segment: &str) -> String {
    segment.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

// ---------------------------------------------------------------------------------------------
// The rows.

/// Who calls.
struct Row {
    name: &'static str,
    key: Option<String>,
    token: Option<String>,
    /// `x-acting-user`: a store staff member acting with the secret key.
    acting_user: Option<&'static str>,
    expect: Expect,
}

/// The rows of one case, in order; the owner's row is last because it may change the target.
fn rows(f: &Fixture, operation: &Operation, case: &Case) -> Vec<Row> {
    let need = |expect: Option<Expect>, what: &str| {
        expect.unwrap_or_else(|| {
            panic!(
                "the case of {} {} does not say what {what} gets",
                case.op, case.variant
            )
        })
    };
    let row = |name, key: Option<&str>, token: Option<&str>, expect| Row {
        name,
        key: key.map(str::to_owned),
        token: token.map(str::to_owned),
        acting_user: None,
        expect,
    };
    let invalid_key = Expect::Problem(401, "invalid_api_key");
    let invalid_token = Expect::Problem(401, "invalid_token");
    let jane = Some(f.jane.access_token.as_str());
    let acme = &f.acme;
    let foreign = need(case.foreign_store, "a foreign store");
    if operation.customer_may_act {
        let pk = Some(acme.publishable_key_test.as_str());
        vec![
            row(
                "no API key",
                None,
                jane,
                Expect::Problem(401, "missing_api_key"),
            ),
            row(
                "a malformed API key",
                Some("tybrite_pk_test_short"),
                jane,
                invalid_key,
            ),
            row(
                "a revoked API key",
                Some(&f.revoked_publishable_key),
                jane,
                invalid_key,
            ),
            row(
                "a revoked secret key",
                Some(&f.revoked_secret_key),
                None,
                invalid_key,
            ),
            row(
                "a made-up key of the right form",
                Some("tybrite_sk_test_0000000000000000000000000000000000000000"),
                None,
                invalid_key,
            ),
            row(
                "the live secret key",
                Some(&acme.secret_key_live),
                None,
                foreign,
            ),
            row(
                "another store's secret key",
                Some(&f.other.secret_key_test),
                None,
                foreign,
            ),
            row(
                "a publishable key without a token",
                pk,
                None,
                Expect::Problem(401, "customer_token_required"),
            ),
            row(
                "an expired token",
                pk,
                Some(&f.expired_token),
                invalid_token,
            ),
            row(
                "a tampered token",
                pk,
                Some(&f.tampered_token),
                invalid_token,
            ),
            row(
                "another store's token",
                pk,
                Some(&f.carol.access_token),
                invalid_token,
            ),
            row(
                "a live-mode token",
                pk,
                Some(&f.lena.access_token),
                invalid_token,
            ),
            row(
                "the live publishable key",
                Some(&acme.publishable_key_live),
                jane,
                invalid_token,
            ),
            row(
                "the live secret key with a token",
                Some(&acme.secret_key_live),
                jane,
                invalid_token,
            ),
            row(
                "another store's key",
                Some(&f.other.publishable_key_test),
                jane,
                invalid_token,
            ),
            row(
                "another customer's token",
                pk,
                Some(&f.bob.access_token),
                need(case.other_customer, "another customer"),
            ),
            row(
                "the store",
                Some(&acme.secret_key_test),
                None,
                need(case.store, "the store"),
            ),
            Row {
                acting_user: Some("staff-1"),
                ..row(
                    "a customer token with x-acting-user",
                    pk,
                    jane,
                    Expect::Problem(400, "acting_user_with_token"),
                )
            },
            Row {
                acting_user: Some("not a valid id!"),
                ..row(
                    "a malformed x-acting-user",
                    Some(&acme.secret_key_test),
                    None,
                    Expect::Problem(400, "invalid_parameter"),
                )
            },
            row("the owner", pk, jane, case.owner),
        ]
    } else {
        assert!(
            case.other_customer.is_none() && case.store.is_none(),
            "{}: auth operations take no customer token",
            case.op
        );
        vec![
            row(
                "no API key",
                None,
                None,
                Expect::Problem(401, "missing_api_key"),
            ),
            row("a malformed API key", Some("not-a-key"), None, invalid_key),
            row(
                "a revoked secret key",
                Some(&f.revoked_secret_key),
                None,
                invalid_key,
            ),
            row(
                "the live secret key",
                Some(&acme.secret_key_live),
                None,
                foreign,
            ),
            row(
                "another store's secret key",
                Some(&f.other.secret_key_test),
                None,
                foreign,
            ),
            row(
                "a publishable key",
                Some(&acme.publishable_key_test),
                None,
                Expect::Problem(403, "secret_key_required"),
            ),
            row(
                "a publishable key with a token",
                Some(&acme.publishable_key_test),
                jane,
                Expect::Problem(403, "secret_key_required"),
            ),
            row("the store", Some(&acme.secret_key_test), None, case.owner),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// The database, before and after.

/// Every row of every table, as JSON text, by table.
type Snapshot = BTreeMap<String, BTreeSet<String>>;

/// Tables the webhook dispatcher and worker write on their own schedule (queuing and attempting
/// deliveries of earlier cases' events), whatever the request under test did. Whether a request
/// queued something shows in `events`, which only the request's own transaction writes.
const BACKGROUND_TABLES: [&str; 3] = [
    "webhook_deliveries",
    "webhook_attempts",
    "webhook_dispatch_positions",
];

async fn snapshot(db: &DatabaseConnection) -> Snapshot {
    let backend = db.get_database_backend();
    let tables_sql = match backend {
        DbBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
        DbBackend::Postgres => {
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        }
        other => panic!("no snapshot for {other:?}"),
    };
    let tables = db
        .query_all_raw(Statement::from_string(backend, tables_sql))
        .await
        .unwrap();
    let mut snapshot = Snapshot::new();
    for table in tables {
        let name: String = table.try_get("", "name").unwrap();
        if BACKGROUND_TABLES.contains(&name.as_str()) {
            continue;
        }
        let rows = db
            .query_all_raw(Statement::from_string(
                backend,
                format!(r#"SELECT * FROM "{name}""#),
            ))
            .await
            .unwrap();
        let rows = rows
            .iter()
            .map(|row| JsonValue::from_query_result(row, "").unwrap().to_string())
            .collect();
        snapshot.insert(name, rows);
    }
    snapshot
}

/// Rows that disappeared or changed, and rows that are new.
fn changes(before: &Snapshot, after: &Snapshot) -> (Vec<String>, Vec<String>) {
    let mut gone = Vec::new();
    let mut new = Vec::new();
    for (table, rows) in before {
        let now = after.get(table).cloned().unwrap_or_default();
        gone.extend(rows.difference(&now).map(|r| format!("{table}: {r}")));
        new.extend(now.difference(rows).map(|r| format!("{table}: {r}")));
    }
    for (table, rows) in after {
        if !before.contains_key(table) {
            new.extend(rows.iter().map(|r| format!("{table}: {r}")));
        }
    }
    (gone, new)
}

// ---------------------------------------------------------------------------------------------
// Running it.

async fn send(
    f: &Fixture,
    operation: &Operation,
    path_and_query: &str,
    row: &Row,
    body: Option<&Value>,
) -> (StatusCode, String, Value) {
    let mut request = f
        .app
        .http()
        .request(operation.method.clone(), f.app.url(path_and_query));
    if let Some(key) = &row.key {
        request = request.bearer_auth(key);
    }
    if let Some(token) = &row.token {
        request = request.header("x-auth-token", token);
    }
    if let Some(acting_user) = row.acting_user {
        request = request.header("x-acting-user", acting_user);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{path_and_query}: no x-request-id"))
        .to_owned();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = if content_type.starts_with("text/event-stream") {
        read_stream_for(response, std::time::Duration::from_millis(500)).await
    } else {
        response.text().await.unwrap()
    };
    let body: Value = if text.is_empty() || content_type.starts_with("text/event-stream") {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    if !status.is_success() {
        assert!(
            content_type.starts_with("application/problem+json"),
            "{status} as {content_type}"
        );
        assert_eq!(body["status"], status.as_u16());
        assert_eq!(body["request_id"], request_id.as_str());
    }
    (status, text, body)
}

/// What an event stream sends within `time` (it never ends by itself).
async fn read_stream_for(mut response: reqwest::Response, time: std::time::Duration) -> String {
    let mut text = Vec::new();
    let _ = tokio::time::timeout(time, async {
        while let Ok(Some(chunk)) = response.chunk().await {
            text.extend_from_slice(&chunk);
        }
    })
    .await;
    String::from_utf8(text).expect("event streams are UTF-8")
}

/// Whether `text` shows the six digits of `code` as a value of their own. The same digits
/// occur by chance inside other values: a timestamp's microseconds (after a `.`), a UUID or a
/// longer number (beside letters or digits).
fn shows_code(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + code.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

#[test]
fn a_code_is_told_from_the_same_digits_inside_other_values() {
    let code = "123456";
    assert!(shows_code(r#"{"code":"123456"}"#, code));
    assert!(shows_code("the code 123456 is wrong", code));
    assert!(!shows_code(
        r#"{"created_at":"2026-11-30T16:43:21.123456Z"}"#,
        code
    ));
    assert!(!shows_code("0193a1b2-c3d4-7e5f-8a9b-c123456d7e8f", code));
    assert!(!shows_code(r#"{"xid":71234567}"#, code));
}

async fn run_case(f: &Fixture, operation: &Operation, case: &Case, report: &mut Vec<String>) {
    let target = f.new_target().await;
    let path = concrete_path(f, operation, &target);
    let path_and_query = match case.query {
        Some(query) => format!("{path}?{}", query(f, &target)),
        None => path,
    };
    let secrets = f.secrets(&target);
    let target_ids = [
        target.endpoint.to_string(),
        target.thread.to_string(),
        target.message.to_string(),
        target.channel.to_string(),
        f.jane.id.to_string(),
    ];
    for row in rows(f, operation, case) {
        let what = match case.variant {
            "" => format!("{} as {}", operation.id, row.name),
            variant => format!("{} ({variant}) as {}", operation.id, row.name),
        };
        let body = case.body.map(|body| body(f, &target));
        let before = snapshot(f.app.service.database()).await;
        let (status, text, response) =
            send(f, operation, &path_and_query, &row, body.as_ref()).await;
        let after = snapshot(f.app.service.database()).await;
        let (gone, new) = changes(&before, &after);
        let mut failures = Vec::new();
        if !operation.declared.contains(&status.as_u16()) {
            failures.push(format!("{status} is not declared in the spec"));
        }
        let expected_status = match row.expect {
            Expect::Problem(status, _)
            | Expect::SeesNothing(status)
            | Expect::WritesOwnScope(status) => status,
            Expect::Succeeds => operation.success,
        };
        if status.as_u16() != expected_status {
            failures.push(format!("expected {expected_status}, got {status}: {text}"));
        }
        if let Expect::Problem(_, code) = row.expect
            && response["code"] != code
        {
            failures.push(format!("expected code {code}, got {}", response["code"]));
        }
        if row.expect != Expect::Succeeds
            && (secrets.iter().any(|secret| text.contains(secret.as_str()))
                || shows_code(&text, &target.otp_code))
        {
            failures.push(format!("the answer echoes a secret: {text}"));
        }
        if matches!(
            row.expect,
            Expect::SeesNothing(_) | Expect::WritesOwnScope(_)
        ) {
            for id in &target_ids {
                if text.contains(id.as_str()) {
                    failures.push(format!("the answer shows {id} of another scope: {text}"));
                }
            }
        }
        match row.expect {
            Expect::Problem(..) | Expect::SeesNothing(_) => {
                if !gone.is_empty() || !new.is_empty() {
                    failures.push(format!(
                        "the database changed: gone or changed {gone:#?}, new {new:#?}"
                    ));
                }
            }
            Expect::WritesOwnScope(_) => {
                if !gone.is_empty() {
                    failures.push(format!("existing rows changed: {gone:#?}"));
                }
                for row in &new {
                    if target_ids.iter().any(|id| row.contains(id.as_str())) {
                        failures.push(format!("a new row touches the target's scope: {row}"));
                    }
                }
            }
            Expect::Succeeds => {}
        }
        let line = match failures.is_empty() {
            true => format!("ok    {what}: {status}"),
            false => format!("FAIL  {what}: {}", failures.join("; ")),
        };
        report.push(line);
    }
}

async fn security_matrix(app: TestApp) {
    let operations = operations();
    let cases = cases();
    // Every operation has a case, and every case an operation.
    let missing: Vec<&str> = operations
        .iter()
        .filter(|op| !cases.iter().any(|c| c.op == op.id))
        .map(|op| op.id.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "operations of the spec without a case in tests/tests/security.rs `cases()`: {missing:?}"
    );
    let stale: Vec<&str> = cases
        .iter()
        .filter(|c| !operations.iter().any(|op| op.id == c.op))
        .map(|c| c.op)
        .collect();
    assert!(
        stale.is_empty(),
        "cases for operations the spec does not have: {stale:?}"
    );

    let f = Fixture::new(app).await;
    check_that_snapshots_see_changes(&f).await;
    let mut report = Vec::new();
    for case in &cases {
        let operation = operations.iter().find(|op| op.id == case.op).unwrap();
        run_case(&f, operation, case, &mut report).await;
    }
    // The failed rows first: a CI log cut in the middle still shows them.
    let failed: Vec<&String> = report.iter().filter(|l| l.starts_with("FAIL")).collect();
    for line in &failed {
        println!("{line}");
    }
    // Shown with `--nocapture`, and with the failure.
    println!("{}", report.join("\n"));
    assert!(
        failed.is_empty(),
        "{} of {} rows failed (all of them start the output above), the first ones:\n{}",
        failed.len(),
        report.len(),
        failed
            .iter()
            .take(5)
            .map(|line| line.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    // Every operation and its variants, each with every row.
    assert!(report.len() >= operations.len() * 8, "{}", report.len());
}

/// The snapshot notices a changed flag, so "unchanged" means something on this backend.
async fn check_that_snapshots_see_changes(f: &Fixture) {
    let db = f.app.service.database();
    let before = snapshot(db).await;
    assert!(
        before
            .get("threads")
            .is_some_and(|rows| rows.iter().any(|r| r.contains(&f.bob.id.to_string()))),
        "the snapshot holds the threads' values"
    );
    let some_thread = thread::Entity::find().one(db).await.unwrap().unwrap();
    let mut row: thread::ActiveModel = some_thread.into();
    row.is_muted = sea_orm::ActiveValue::Set(true);
    sea_orm::ActiveModelTrait::update(row, db).await.unwrap();
    let (gone, new) = changes(&before, &snapshot(db).await);
    assert_eq!((gone.len(), new.len()), (1, 1), "{gone:?} {new:?}");
}

both_backends!(
    every_operation_against_every_wrong_caller,
    |app| async move {
        security_matrix(app).await;
    }
);

// ---------------------------------------------------------------------------------------------
// Keys: rotation and revocation.

both_backends!(revoked_and_rotated_keys, |app| async move {
    let store = app.create_store("Acme").await;
    let keys = app.service.list_keys(store.store_id).await.unwrap();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| k.revoked_at.is_none()));
    let rows = api_key::Entity::find()
        .all(app.service.database())
        .await
        .unwrap();
    for key in [&store.secret_key_test, &store.publishable_key_live] {
        assert!(
            rows.iter()
                .all(|r| !r.key_hash.contains(key.as_str()) && r.key_hash != **key),
            "keys are stored only as hashes"
        );
        assert!(
            rows.iter()
                .any(|r| key.starts_with(r.key_prefix.trim_end_matches('…')))
        );
    }
    let status = |key: String| {
        let request = app
            .http()
            .get(app.url("/v1/messaging/threads"))
            .bearer_auth(key);
        async move { request.send().await.unwrap().status() }
    };
    let sk_test = keys
        .iter()
        .find(|k| k.mode == "test" && k.kind == "secret")
        .unwrap()
        .id;
    let rotated = app.service.rotate_key(sk_test).await.unwrap();
    assert_eq!(rotated.replaces, sk_test);
    assert_eq!(
        (rotated.info.mode.as_str(), rotated.info.kind.as_str()),
        ("test", "secret")
    );
    assert!(rotated.key.starts_with("tybrite_sk_test_"));
    assert_eq!(status(rotated.key.clone()).await, StatusCode::OK);
    assert_eq!(
        status(store.secret_key_test.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    // A revoked key cannot be rotated again; an unknown one is 404.
    for id in [sk_test, Uuid::now_v7()] {
        let err = app.service.rotate_key(id).await.unwrap_err();
        assert_eq!(err.code(), "key_not_found");
    }
    let revoked = app.service.revoke_key(rotated.info.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(status(rotated.key.clone()).await, StatusCode::UNAUTHORIZED);
    // Revoking twice keeps the first time.
    let again = app.service.revoke_key(rotated.info.id).await.unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    assert_eq!(
        app.service
            .revoke_key(Uuid::now_v7())
            .await
            .unwrap_err()
            .code(),
        "key_not_found"
    );
    // The other keys are untouched.
    assert_eq!(status(store.secret_key_live.clone()).await, StatusCode::OK);
    let listed = app.service.list_keys(store.store_id).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed.iter().filter(|k| k.revoked_at.is_none()).count(), 3);
    assert_eq!(listed[0].id, rotated.info.id, "newest first");
    assert_eq!(
        app.service
            .list_keys(Uuid::now_v7())
            .await
            .unwrap_err()
            .code(),
        "store_not_found"
    );
    // Concurrent rotations of one key: exactly one wins.
    let pk_live = listed
        .iter()
        .find(|k| k.mode == "live" && k.kind == "publishable")
        .unwrap()
        .id;
    let (a, b) = tokio::join!(
        app.service.rotate_key(pk_live),
        app.service.rotate_key(pk_live)
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
});

// ---------------------------------------------------------------------------------------------
// The HTTP layer: heads that are too large, values that are not echoed.

#[tokio::test]
async fn oversized_heads_are_clean_problems() {
    let app = spawn_app().await;
    let big = "a".repeat(100 * 1024);
    for (name, value) in [("x-auth-token", &big), ("x-something-else", &big)] {
        let response = app
            .http()
            .get(app.url("/v1/messaging/threads"))
            .bearer_auth("tybrite_sk_test_x")
            .header(name, value.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{name}"
        );
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "headers_too_large");
        assert!(body["request_id"].is_string());
    }
    let response = app
        .http()
        .get(app.url(&format!(
            "/v1/messaging/threads?fields={}",
            "a".repeat(9 * 1024)
        )))
        .bearer_auth("tybrite_sk_test_x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "uri_too_long");

    // Past what the HTTP parser buffers, hyper answers 431 itself; never a 500.
    let huge = "a".repeat(600 * 1024);
    let outcome = app
        .http()
        .get(app.url("/healthz"))
        .header("x-huge", huge)
        .send()
        .await;
    if let Ok(response) = outcome {
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
    // The server is still fine.
    let health = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn credentials_in_the_wrong_shape_are_not_echoed() {
    let app = spawn_app().await;
    let store = app.create_store("Acme").await;
    let sk = store.secret_key_test.as_str();
    for (path, body) in [
        (
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": ["hunter2-secret"]}),
        ),
        (
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": 123456789}),
        ),
        (
            "/v1/auth/refresh",
            json!({"refresh_token": {"token": "hunter2-secret"}}),
        ),
        (
            "/v1/auth/verify-otp",
            json!({"email": "a@example.com", "code": 123456789}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "a@example.com", "name": "A", "password": ["hunter2-secret"]}),
        ),
    ] {
        let (status, problem) = post(&app, path, sk, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert_eq!(problem["code"], "invalid_body");
        let text = problem.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("123456789"),
            "{path}: {text}"
        );
    }
    // Keys and tokens that fail are not repeated either.
    let response = app
        .http()
        .get(app.url("/v1/messaging/threads"))
        .bearer_auth("tybrite_sk_test_hunter2")
        .header("x-auth-token", "hunter2.token.value")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!response.text().await.unwrap().contains("hunter2"));
}

// ---------------------------------------------------------------------------------------------
// Rate limits: per customer across sessions and keys, per phone on auth.

fn tight_limits(burst: u32) -> HttpSettings {
    let burst = std::num::NonZeroU32::new(burst).unwrap();
    let slow = std::num::NonZeroU32::new(1).unwrap();
    HttpSettings {
        rate_limits: Some(RateLimitSettings {
            per_second: slow,
            burst,
            codes_per_minute: slow,
            codes_burst: burst,
            ..RateLimitSettings::default()
        }),
        ..HttpSettings::default()
    }
}

#[tokio::test]
async fn a_customer_is_limited_across_sessions_and_keys() {
    let app = spawn_app_with(Backend::Sqlite, tight_limits(3))
        .await
        .unwrap();
    let store = app.create_store("Acme").await;
    // Sessions made directly through the service, so the auth limiter is not involved.
    let jane = register(&app, &store.secret_key_test, "jane@example.com").await;
    let bob = register(&app, &store.secret_key_live, "bob@example.com").await;
    let list = |key: &str, token: &str| {
        let request = app
            .http()
            .get(app.url("/v1/messaging/threads"))
            .bearer_auth(key)
            .header("x-auth-token", token);
        async move { request.send().await.unwrap() }
    };
    // Two keys, so neither key's bucket runs out first; one customer.
    assert_eq!(
        list(&store.publishable_key_test, &jane.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(
        list(&store.secret_key_test, &jane.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(
        list(&store.publishable_key_test, &jane.access_token)
            .await
            .status(),
        200
    );
    let limited = list(&store.secret_key_test, &jane.access_token).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    for header in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(limited.headers().contains_key(header), "{header}");
    }
    assert_eq!(limited.headers()["ratelimit-limit"], "3");
    // Another customer has their own budget.
    assert_eq!(
        list(&store.publishable_key_live, &bob.access_token)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn codes_sent_to_one_phone_are_limited() {
    let app = spawn_app_with(Backend::Sqlite, tight_limits(2))
        .await
        .unwrap();
    let otp_from = |host: u8| {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, host]))
            .build()
            .unwrap();
        let url = app.url("/v1/auth/otp");
        async move {
            client
                .post(url)
                .bearer_auth(format!("key-{}", Uuid::new_v4()))
                .json(&json!({"phone": "+14155550123"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_ne!(otp_from(11).await, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(otp_from(12).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(otp_from(13).await, StatusCode::TOO_MANY_REQUESTS);
}

// ---------------------------------------------------------------------------------------------
// Logs: no secret is ever written, every request's lines carry its id. Each test captures its
// own app's lines (`capture_logs`), since the other tests' servers run in this process too.

/// One request of the log audit, with its own request id.
async fn audited(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    token: Option<&str>,
    body: Option<Value>,
    request_id: &str,
) -> Value {
    let mut request = app
        .http()
        .request(method, app.url(path))
        .bearer_auth(key)
        .header("x-request-id", request_id);
    if let Some(token) = token {
        request = request.header("x-auth-token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn no_secret_reaches_the_log_and_every_request_line_has_its_id() {
    let logs = capture_logs();
    let app = spawn_app().await;
    let store = app.create_store("Acme").await;
    let sk = store.secret_key_test.as_str();
    let pk = store.publishable_key_test.as_str();
    let run = Uuid::new_v4().simple().to_string();
    let id = |n: u32| format!("log-audit-{run}-{n}");
    let email = format!("jane-{run}@example.com");
    let registered = audited(
        &app,
        Method::POST,
        "/v1/auth/register",
        sk,
        None,
        Some(json!({"email": email, "password": PASSWORD, "name": "Jane"})),
        &id(1),
    )
    .await;
    let access = registered["session"]["access_token"].as_str().unwrap();
    let refresh = registered["session"]["refresh_token"].as_str().unwrap();
    let auth_calls = [
        (
            "/v1/auth/login",
            json!({"email": email, "password": "wrong password"}),
        ),
        ("/v1/auth/otp", json!({"email": email})),
        (
            "/v1/auth/verify-otp",
            json!({"email": email, "code": "000000"}),
        ),
    ];
    for (n, (path, body)) in (2..).zip(auth_calls) {
        audited(&app, Method::POST, path, sk, None, Some(body), &id(n)).await;
    }
    let code = app.otp.last_code_for(&email).unwrap();
    let verified = audited(
        &app,
        Method::POST,
        "/v1/auth/verify-otp",
        sk,
        None,
        Some(json!({"email": email, "code": code})),
        &id(5),
    )
    .await;
    // The second use of the refresh token is logged as a warning (reuse ends the sessions).
    for n in [6, 7] {
        let body = json!({"refresh_token": refresh});
        audited(
            &app,
            Method::POST,
            "/v1/auth/refresh",
            sk,
            None,
            Some(body),
            &id(n),
        )
        .await;
    }
    let wrong_key = "tybrite_sk_test_wrongwrongwrongwrongwrongwrongwrongwrong";
    let reads = [
        (pk, Some(access)),
        (pk, Some("forged.token.here")),
        (wrong_key, None),
        (sk, None),
    ];
    for (n, (key, token)) in (8..).zip(reads) {
        let path = "/v1/messaging/threads?limit=5";
        audited(&app, Method::GET, path, key, token, None, &id(n)).await;
    }
    // A body that is not JSON.
    app.http()
        .post(app.url("/v1/auth/login"))
        .bearer_auth(sk)
        .header("x-request-id", id(12))
        .header(CONTENT_TYPE, "application/json")
        .body("{")
        .send()
        .await
        .unwrap();

    let text = logs.all_text();
    let mut secrets = vec![
        sk.to_owned(),
        pk.to_owned(),
        store.secret_key_live.clone(),
        access.to_owned(),
        refresh.to_owned(),
        PASSWORD.to_owned(),
        "wrong password".to_owned(),
        // Six digits also occur in timestamps: look for the code as a JSON string.
        format!("\"{code}\""),
        "forged.token.here".to_owned(),
        wrong_key.to_owned(),
        email.clone(),
    ];
    for field in ["access_token", "refresh_token"] {
        secrets.push(verified["session"][field].as_str().unwrap().to_owned());
    }
    for secret in &secrets {
        let leaks: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(
            leaks.is_empty(),
            "the log holds a secret ({secret}):\n{}",
            leaks.join("\n")
        );
    }
    // Every request's access line, and what is logged while handling it, carry its id. Only
    // this test's own lines: other tests' servers run concurrently in this process.
    let events = logs.own_events();
    let of_request = |n: u32| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["span"]["request_id"] == id(n).as_str())
            .collect()
    };
    for n in 1..=12 {
        assert!(
            of_request(n)
                .iter()
                .any(|e| e["fields"]["message"] == "request finished"),
            "no access line for request {n}"
        );
    }
    assert!(
        of_request(7)
            .iter()
            .any(|e| e["level"] == "WARN" && e["target"] == "messaging_service::auth::sessions"),
        "the refresh reuse warning is logged within its request"
    );
    for event in events
        .iter()
        .filter(|e| e["fields"]["message"] == "request finished")
    {
        assert!(event["span"]["request_id"].is_string(), "{event}");
    }
}

#[tokio::test]
async fn the_development_delivery_writes_codes_to_the_log() {
    let logs = capture_logs();
    let app = spawn_app_with_config(Backend::Sqlite, HttpSettings::without_rate_limits(), |c| {
        c.otp = OtpDelivery::Log;
    })
    .await
    .unwrap();
    let store = app.create_store("Acme").await;
    let jane = register(&app, &store.secret_key_test, "jane@example.com").await;
    post(
        &app,
        "/v1/auth/otp",
        &store.secret_key_test,
        json!({"email": "jane@example.com"}),
    )
    .await;
    let jane_id = jane.id.to_string();
    let event: Value = logs
        .own_events()
        .into_iter()
        .find(|e| e["target"] == "otp" && e["fields"]["customer_id"] == jane_id.as_str())
        .expect("a line of target `otp` for Jane");
    let code = event["fields"]["code"].as_str().expect("the code");
    let (status, _) = post(
        &app,
        "/v1/auth/verify-otp",
        &store.secret_key_test,
        json!({"email": "jane@example.com", "code": code}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(event["span"]["request_id"].is_string());
}
