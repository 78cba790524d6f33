//! Customer sessions end to end, on SQLite and PostgreSQL: register, password login, one-time
//! codes (captured from the in-memory outbox, and once through a real SMTP exchange), rotating
//! refresh tokens, and access tokens that are expired, forged or of another store.

use std::time::Duration;

use chrono::Utc;
use messaging_client::{Client, types};
use messaging_server::HttpSettings;
use messaging_service::{
    CreatedStore, OtpDelivery, SmtpSender,
    entity::{customer, otp_code, refresh_token},
};
use messaging_tests::{Backend, TestApp, both_backends, sign_test_token, spawn_app_with_config};
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use serde_json::{Value, json};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// A raw call: status and JSON body (problem or success).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.http().request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(token) = token {
        request = request.header("x-auth-token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"))
    };
    (status, body)
}

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    call(app, Method::POST, path, Some(key), None, Some(body)).await
}

/// Asserts a problem's status and code and returns its body.
#[track_caller]
fn expect_problem((status, body): (StatusCode, Value), expected: u16, code: &str) -> Value {
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (expected, Some(code)),
        "{body}"
    );
    body
}

async fn register(app: &TestApp, key: &str, email: &str, phone: Option<&str>) -> Value {
    let mut body = json!({"email": email, "password": PASSWORD, "name": "Jane Doe"});
    if let Some(phone) = phone {
        body["phone"] = json!(phone);
    }
    let (status, session) = post(app, "/v1/auth/register", key, body).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    session
}

/// listThreads as the customer of `token`: 200 proves the token is accepted.
async fn list_as(app: &TestApp, key: &str, token: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::GET,
        "/v1/messaging/threads",
        Some(key),
        Some(token),
        None,
    )
    .await
}

async fn otp_rows(app: &TestApp, customer_id: Uuid) -> Vec<otp_code::Model> {
    otp_code::Entity::find()
        .filter(otp_code::Column::CustomerId.eq(customer_id))
        .all(app.service.database())
        .await
        .unwrap()
}

fn customer_id(session: &Value) -> Uuid {
    session["customer"]["id"].as_str().unwrap().parse().unwrap()
}

both_backends!(
    register_creates_a_customer_with_a_hashed_password,
    |app| async move {
        let store = app.create_store("Acme").await;
        let sk = store.secret_key_test.as_str();
        let session = register(&app, sk, " Jane@Example.COM ", Some("+14155550123")).await;
        assert_eq!(session["customer"]["email"], "jane@example.com");
        assert_eq!(session["customer"]["name"], "Jane Doe");
        assert_eq!(session["customer"]["phone"], "+14155550123");
        let s = &session["session"];
        assert_eq!(s["token_type"], "bearer");
        assert_eq!(s["expires_in"], 900);
        let expires_at: chrono::DateTime<Utc> = s["expires_at"].as_str().unwrap().parse().unwrap();
        let in_secs = (expires_at - Utc::now()).num_seconds();
        assert!((890..=900).contains(&in_secs), "{in_secs}");
        let refresh = s["refresh_token"].as_str().unwrap();
        assert!(refresh.len() >= 32);

        // The row: Argon2id, never the password; the refresh token only as a keyed hash.
        let id = customer_id(&session);
        let row = customer::Entity::find_by_id(id)
            .one(app.service.database())
            .await
            .unwrap()
            .unwrap();
        let hash = row.password_hash.expect("a password hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(PASSWORD));
        assert_eq!((row.store_id, row.mode.as_str()), (store.store_id, "test"));
        let tokens = refresh_token::Entity::find()
            .filter(refresh_token::Column::CustomerId.eq(id))
            .all(app.service.database())
            .await
            .unwrap();
        assert_eq!(tokens.len(), 1);
        assert_ne!(tokens[0].token_hash, refresh);
        assert!(!tokens[0].token_hash.contains(refresh));

        // The email is unique per store and mode, whatever its case.
        let duplicate = json!({"email": "JANE@example.com", "password": PASSWORD, "name": "J"});
        expect_problem(
            post(&app, "/v1/auth/register", sk, duplicate.clone()).await,
            409,
            "email_taken",
        );
        // Another mode or store is another namespace.
        for key in [store.secret_key_live.as_str()] {
            let (status, _) = post(&app, "/v1/auth/register", key, duplicate.clone()).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let other = app.create_store("Other").await;
        let (status, _) = post(&app, "/v1/auth/register", &other.secret_key_test, duplicate).await;
        assert_eq!(status, StatusCode::CREATED);

        // Bad input: 400 and no row. The spec's patterns (email, E.164 phone, non-blank name)
        // refuse these in the generated layer, as `invalid_body`.
        for (body, code) in [
            (
                json!({"email": "no-at-sign", "password": PASSWORD, "name": "X"}),
                "invalid_body",
            ),
            (
                json!({"email": "a b@example.com", "password": PASSWORD, "name": "X"}),
                "invalid_body",
            ),
            (
                json!({"email": "x@example.com", "password": PASSWORD, "name": "X", "phone": "4155550123"}),
                "invalid_body",
            ),
            (
                json!({"email": "x@example.com", "password": PASSWORD, "name": "X", "phone": "+0123"}),
                "invalid_body",
            ),
            (
                json!({"email": "x@example.com", "password": PASSWORD, "name": "   "}),
                "invalid_body",
            ),
            (
                json!({"email": "x@example.com", "password": "short", "name": "X"}),
                "invalid_body",
            ),
            (
                json!({"email": "x@example.com", "name": "X"}),
                "invalid_body",
            ),
        ] {
            expect_problem(
                post(&app, "/v1/auth/register", sk, body.clone()).await,
                400,
                code,
            );
        }
        let stray = customer::Entity::find()
            .filter(customer::Column::Email.eq("x@example.com"))
            .all(app.service.database())
            .await
            .unwrap();
        assert!(stray.is_empty(), "bad input changed nothing");
    }
);

both_backends!(
    login_answers_the_same_for_a_wrong_password_and_an_unknown_email,
    |app| async move {
        let store = app.create_store("Acme").await;
        let sk = store.secret_key_test.as_str();
        let registered = register(&app, sk, "jane@example.com", None).await;

        let (status, session) = post(
            &app,
            "/v1/auth/login",
            sk,
            json!({"email": "Jane@Example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{session}");
        assert_eq!(session["customer"]["id"], registered["customer"]["id"]);
        let token = session["session"]["access_token"].as_str().unwrap();
        assert_eq!(
            list_as(&app, &store.publishable_key_test, token).await.0,
            StatusCode::OK
        );

        let wrong_password = expect_problem(
            post(
                &app,
                "/v1/auth/login",
                sk,
                json!({"email": "jane@example.com", "password": "not it at all"}),
            )
            .await,
            401,
            "invalid_credentials",
        );
        let unknown_email = expect_problem(
            post(
                &app,
                "/v1/auth/login",
                sk,
                json!({"email": "nobody@example.com", "password": PASSWORD}),
            )
            .await,
            401,
            "invalid_credentials",
        );
        let without_id = |mut body: Value| {
            body.as_object_mut().unwrap().remove("request_id");
            body
        };
        assert_eq!(without_id(wrong_password), without_id(unknown_email));

        // A customer of the test mode does not exist for a live key, nor for another store.
        let other = app.create_store("Other").await;
        for key in [
            store.secret_key_live.as_str(),
            other.secret_key_test.as_str(),
        ] {
            expect_problem(
                post(
                    &app,
                    "/v1/auth/login",
                    key,
                    json!({"email": "jane@example.com", "password": PASSWORD}),
                )
                .await,
                401,
                "invalid_credentials",
            );
        }
        // Only secret keys manage sessions.
        expect_problem(
            post(
                &app,
                "/v1/auth/login",
                &store.publishable_key_test,
                json!({"email": "jane@example.com", "password": PASSWORD}),
            )
            .await,
            403,
            "secret_key_required",
        );
    }
);

both_backends!(
    one_time_codes_are_single_use_short_lived_and_attempt_limited,
    |app| async move {
        let store = app.create_store("Acme").await;
        let sk = store.secret_key_test.as_str();
        let jane = register(&app, sk, "jane@example.com", Some("+14155550123")).await;
        let jane_id = customer_id(&jane);

        // Known and unknown addresses get the same 202; only the known one gets a code.
        let known = post(
            &app,
            "/v1/auth/otp",
            sk,
            json!({"email": "jane@example.com"}),
        )
        .await;
        let unknown = post(
            &app,
            "/v1/auth/otp",
            sk,
            json!({"email": "nobody@example.com"}),
        )
        .await;
        assert_eq!(known.0, StatusCode::ACCEPTED);
        assert_eq!(unknown.0, StatusCode::ACCEPTED);
        assert_eq!(known.1, unknown.1);
        assert_eq!(known.1["expires_in"], 300);
        assert_eq!(
            app.otp.messages().len(),
            1,
            "no code for an unknown address"
        );
        let code = app
            .otp
            .last_code_for("jane@example.com")
            .expect("a code for Jane");
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let rows = otp_rows(&app, jane_id).await;
        assert_eq!(rows.len(), 1);
        assert!(
            !rows[0].code_hash.contains(&code),
            "codes are stored hashed"
        );

        // Right code: a session; the same code again: 401.
        let verify = |code: String| json!({"email": "jane@example.com", "code": code});
        let (status, session) = post(&app, "/v1/auth/verify-otp", sk, verify(code.clone())).await;
        assert_eq!(status, StatusCode::OK, "{session}");
        assert_eq!(customer_id(&session), jane_id);
        let token = session["session"]["access_token"].as_str().unwrap();
        assert_eq!(
            list_as(&app, &store.publishable_key_test, token).await.0,
            StatusCode::OK
        );
        expect_problem(
            post(&app, "/v1/auth/verify-otp", sk, verify(code)).await,
            401,
            "invalid_otp",
        );

        // Five wrong guesses use a code up: the right one no longer works.
        post(
            &app,
            "/v1/auth/otp",
            sk,
            json!({"email": "jane@example.com"}),
        )
        .await;
        let code = app.otp.last_code_for("jane@example.com").unwrap();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..5 {
            expect_problem(
                post(&app, "/v1/auth/verify-otp", sk, verify(wrong.into())).await,
                401,
                "invalid_otp",
            );
        }
        expect_problem(
            post(&app, "/v1/auth/verify-otp", sk, verify(code)).await,
            401,
            "invalid_otp",
        );
        let newest = otp_rows(&app, jane_id)
            .await
            .into_iter()
            .max_by_key(|r| r.created_at)
            .unwrap();
        assert_eq!((newest.attempts, newest.consumed_at), (5, None));

        // Four wrong guesses, then the right code: still accepted.
        post(
            &app,
            "/v1/auth/otp",
            sk,
            json!({"email": "jane@example.com"}),
        )
        .await;
        let code = app.otp.last_code_for("jane@example.com").unwrap();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..4 {
            expect_problem(
                post(&app, "/v1/auth/verify-otp", sk, verify(wrong.into())).await,
                401,
                "invalid_otp",
            );
        }
        assert_eq!(
            post(&app, "/v1/auth/verify-otp", sk, verify(code)).await.0,
            StatusCode::OK
        );

        // An expired code is refused.
        post(
            &app,
            "/v1/auth/otp",
            sk,
            json!({"email": "jane@example.com"}),
        )
        .await;
        let code = app.otp.last_code_for("jane@example.com").unwrap();
        otp_code::Entity::update_many()
            .col_expr(
                otp_code::Column::ExpiresAt,
                Expr::value(Utc::now() - chrono::Duration::seconds(1)),
            )
            .filter(otp_code::Column::CustomerId.eq(jane_id))
            .exec(app.service.database())
            .await
            .unwrap();
        expect_problem(
            post(&app, "/v1/auth/verify-otp", sk, verify(code)).await,
            401,
            "invalid_otp",
        );

        // By phone (log and memory delivery support it).
        let (status, _) = post(&app, "/v1/auth/otp", sk, json!({"phone": "+14155550123"})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let code = app
            .otp
            .last_code_for("+14155550123")
            .expect("a code for Jane's phone");
        let (status, session) = post(
            &app,
            "/v1/auth/verify-otp",
            sk,
            json!({"phone": "+14155550123", "code": code}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{session}");
        assert_eq!(customer_id(&session), jane_id);

        // Exactly one of email and phone.
        expect_problem(
            post(
                &app,
                "/v1/auth/otp",
                sk,
                json!({"email": "jane@example.com", "phone": "+14155550123"}),
            )
            .await,
            400,
            "invalid_otp_target",
        );
        expect_problem(
            post(&app, "/v1/auth/otp", sk, json!({})).await,
            400,
            "invalid_otp_target",
        );

        // A code of the test mode is nothing to a live key.
        post(
            &app,
            "/v1/auth/otp",
            sk,
            json!({"email": "jane@example.com"}),
        )
        .await;
        let code = app.otp.last_code_for("jane@example.com").unwrap();
        expect_problem(
            post(
                &app,
                "/v1/auth/verify-otp",
                &store.secret_key_live,
                verify(code.clone()),
            )
            .await,
            401,
            "invalid_otp",
        );
        assert_eq!(
            post(&app, "/v1/auth/verify-otp", sk, verify(code)).await.0,
            StatusCode::OK
        );
    }
);

both_backends!(
    refresh_tokens_rotate_and_a_reused_one_ends_the_sessions,
    |app| async move {
        let store = app.create_store("Acme").await;
        let sk = store.secret_key_test.as_str();
        let session = register(&app, sk, "jane@example.com", None).await;
        let first = session["session"]["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let refresh = |token: &str| json!({"refresh_token": token});

        // Another store's or mode's key cannot use it, and trying does not spend it.
        let other = app.create_store("Other").await;
        for key in [
            other.secret_key_test.as_str(),
            store.secret_key_live.as_str(),
        ] {
            expect_problem(
                post(&app, "/v1/auth/refresh", key, refresh(&first)).await,
                401,
                "invalid_refresh_token",
            );
        }
        expect_problem(
            post(
                &app,
                "/v1/auth/refresh",
                &store.publishable_key_test,
                refresh(&first),
            )
            .await,
            403,
            "secret_key_required",
        );

        let (status, rotated) = post(&app, "/v1/auth/refresh", sk, refresh(&first)).await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        assert_eq!(rotated["customer"]["id"], session["customer"]["id"]);
        let second = rotated["session"]["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(second, first);
        let token = rotated["session"]["access_token"].as_str().unwrap();
        assert_eq!(
            list_as(&app, &store.publishable_key_test, token).await.0,
            StatusCode::OK
        );

        // The new one works once more; the old one is used up.
        let (status, third) = post(&app, "/v1/auth/refresh", sk, refresh(&second)).await;
        assert_eq!(status, StatusCode::OK);
        let third = third["session"]["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        expect_problem(
            post(&app, "/v1/auth/refresh", sk, refresh(&first)).await,
            401,
            "invalid_refresh_token",
        );
        // That reuse revoked every refresh token of the customer: the newest one is dead too.
        expect_problem(
            post(&app, "/v1/auth/refresh", sk, refresh(&third)).await,
            401,
            "invalid_refresh_token",
        );
        expect_problem(
            post(&app, "/v1/auth/refresh", sk, refresh("made-up")).await,
            401,
            "invalid_refresh_token",
        );
        // Logging in again starts a new chain.
        let (status, login) = post(
            &app,
            "/v1/auth/login",
            sk,
            json!({"email": "jane@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let fresh = login["session"]["refresh_token"].as_str().unwrap();
        assert_eq!(
            post(&app, "/v1/auth/refresh", sk, refresh(fresh)).await.0,
            StatusCode::OK
        );
    }
);

both_backends!(
    access_tokens_of_another_store_or_mode_or_forged_are_401,
    |app| async move {
        let acme = app.create_store("Acme").await;
        let other = app.create_store("Other").await;
        let jane = register(&app, &acme.secret_key_test, "jane@example.com", None).await;
        let carol = register(&app, &other.secret_key_test, "carol@example.com", None).await;
        let jane_token = jane["session"]["access_token"].as_str().unwrap();
        let carol_token = carol["session"]["access_token"].as_str().unwrap();
        let pk = acme.publishable_key_test.as_str();
        assert_eq!(list_as(&app, pk, jane_token).await.0, StatusCode::OK);

        // Another store's token, the other mode's key, and tokens that do not verify: Jane's token
        // claiming to be another customer, or with a changed signature.
        let parts: Vec<&str> = jane_token.split('.').collect();
        let mut as_carol = jwt_claims(jane_token);
        as_carol["sub"] = carol["customer"]["id"].clone();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            base64url(as_carol.to_string().as_bytes()),
            parts[2]
        );
        let mut bad_signature = jane_token.to_owned();
        let last = bad_signature.pop().unwrap();
        bad_signature.push(if last == 'A' { 'Q' } else { 'A' });
        let mut claims = jwt_claims(jane_token);
        let now = Utc::now().timestamp();
        let well_formed = sign_test_token(&claims);
        claims["exp"] = json!(now - 1);
        let expired = sign_test_token(&claims);
        assert_eq!(
            list_as(&app, pk, &well_formed).await.0,
            StatusCode::OK,
            "the harness signs as the server does"
        );
        for (key, token) in [
            (pk, carol_token),
            (acme.publishable_key_live.as_str(), jane_token),
            (acme.secret_key_live.as_str(), jane_token),
            (pk, tampered.as_str()),
            (pk, bad_signature.as_str()),
            (pk, expired.as_str()),
            (pk, "not-a-token"),
            (pk, ""),
        ] {
            let body = expect_problem(list_as(&app, key, token).await, 401, "invalid_token");
            if !token.is_empty() {
                assert!(!body.to_string().contains(token), "the token is not echoed");
            }
        }
        // Unsigned or differently signed tokens.
        let header_none = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = base64url(claims_with_future_exp(jane_token).to_string().as_bytes());
        let unsigned = format!("{header_none}.{payload}.");
        expect_problem(list_as(&app, pk, &unsigned).await, 401, "invalid_token");
    }
);

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn claims_with_future_exp(token: &str) -> Value {
    let mut claims = jwt_claims(token);
    claims["exp"] = json!(Utc::now().timestamp() + 600);
    claims
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An app on `backend` whose access tokens live one second.
async fn short_lived_tokens(backend: Backend) -> Option<TestApp> {
    spawn_app_with_config(backend, HttpSettings::without_rate_limits(), |config| {
        config.access_token_ttl_secs = 1;
    })
    .await
}

async fn access_tokens_expire(app: TestApp) {
    let store = app.create_store("Acme").await;
    let session = register(&app, &store.secret_key_test, "jane@example.com", None).await;
    assert_eq!(session["session"]["expires_in"], 1);
    let token = session["session"]["access_token"].as_str().unwrap();
    let pk = store.publishable_key_test.as_str();
    assert_eq!(list_as(&app, pk, token).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    expect_problem(list_as(&app, pk, token).await, 401, "invalid_token");
    // The refresh token still gives a new one.
    let (status, refreshed) = post(
        &app,
        "/v1/auth/refresh",
        &store.secret_key_test,
        json!({"refresh_token": session["session"]["refresh_token"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token = refreshed["session"]["access_token"].as_str().unwrap();
    assert_eq!(list_as(&app, pk, token).await.0, StatusCode::OK);
}

mod expired_access_tokens {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        access_tokens_expire(short_lived_tokens(Backend::Sqlite).await.unwrap()).await;
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(app) = short_lived_tokens(Backend::Postgres).await {
            access_tokens_expire(app).await;
        }
    }
}

// The flow the README documents, through the generated client as other teams use it.
both_backends!(readme_flow_end_to_end, |app| async move {
    // `messaging-server stores create --name Acme` does exactly this.
    let CreatedStore {
        secret_key_test: sk,
        publishable_key_test: pk,
        ..
    } = app.create_store("Acme").await;
    let store: Client = app.client(&sk);

    let registered = store
        .register()
        .body(
            serde_json::from_value::<types::RegisterRequest>(json!({
                "email": "jane@example.com", "password": PASSWORD, "name": "Jane Doe"
            }))
            .unwrap(),
        )
        .send()
        .await
        .expect("register: 201");
    assert_eq!(registered.status().as_u16(), 201);
    let customer = registered.into_inner().customer.id;

    let login = store
        .login()
        .body(
            serde_json::from_value::<types::LoginRequest>(
                json!({"email": "jane@example.com", "password": PASSWORD}),
            )
            .unwrap(),
        )
        .send()
        .await
        .expect("login: 200")
        .into_inner();
    assert_eq!(login.customer.id, customer);
    assert_eq!(login.session.token_type, "bearer");

    // Or with a one-time code.
    let accepted = store
        .request_otp()
        .body(
            serde_json::from_value::<types::OtpRequest>(json!({"email": "jane@example.com"}))
                .unwrap(),
        )
        .send()
        .await
        .expect("requestOtp: 202");
    assert_eq!(accepted.status().as_u16(), 202);
    let code = app.otp.last_code_for("jane@example.com").unwrap();
    let verified = store
        .verify_otp()
        .body(
            serde_json::from_value::<types::VerifyOtpRequest>(
                json!({"email": "jane@example.com", "code": code}),
            )
            .unwrap(),
        )
        .send()
        .await
        .expect("verifyOtp: 200")
        .into_inner();
    assert_eq!(verified.customer.id, customer);

    // Messaging with both headers: the publishable key and the customer's token.
    let public = app.client(&pk);
    let created = public
        .create_conversation()
        .x_auth_token(verified.session.access_token.as_str())
        .body(
            serde_json::from_value::<types::CreateConversationRequest>(json!({
                "customer_id": customer,
                "subject": "Missing Item - Order #8821",
                "message": "My package arrived but the headphones were missing."
            }))
            .unwrap(),
        )
        .send()
        .await
        .expect("createConversation: 201")
        .into_inner();
    assert_eq!(created.thread.customer_id, Some(customer));

    // Refresh rotates the session; the new access token works.
    let refreshed = store
        .refresh_session()
        .body(
            serde_json::from_value::<types::RefreshRequest>(
                json!({"refresh_token": verified.session.refresh_token}),
            )
            .unwrap(),
        )
        .send()
        .await
        .expect("refreshSession: 200")
        .into_inner();
    let threads = public
        .list_threads()
        .x_auth_token(refreshed.session.access_token.as_str())
        .customer_id(customer)
        .send()
        .await
        .expect("listThreads: 200")
        .into_inner()
        .threads;
    assert_eq!(threads.len(), 1);
    assert_eq!(threads[0].id, created.thread.id);
    // A publishable key alone is not enough for messaging.
    let anonymous = public.list_threads().send().await.unwrap_err();
    assert_eq!(anonymous.status().map(|s| s.as_u16()), Some(401));
});

/// A one-connection-at-a-time SMTP server that accepts every message and hands over its text.
async fn fake_smtp_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sent, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut envelope = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" | "HELO" => b"250 fake\r\n",
                    "MAIL" | "RCPT" | "RSET" | "NOOP" => {
                        envelope.push_str(&line);
                        envelope.push('\n');
                        b"250 OK\r\n"
                    }
                    "DATA" => {
                        write.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut message = envelope.clone();
                        while let Ok(Some(data)) = lines.next_line().await {
                            if data == "." {
                                break;
                            }
                            message.push_str(&data);
                            message.push('\n');
                        }
                        let _ = sent.send(message);
                        b"250 queued\r\n"
                    }
                    "QUIT" => {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        break;
                    }
                    _ => b"502 not implemented\r\n",
                };
                write.write_all(reply).await.unwrap();
            }
        }
    });
    (port, received)
}

fn six_digits_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let code: String = text[at..].chars().take(6).collect();
    (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

#[tokio::test]
async fn codes_are_emailed_through_smtp() {
    let (port, mut mailbox) = fake_smtp_server().await;
    let sender = SmtpSender::new(
        &format!("smtp://127.0.0.1:{port}"),
        "Acme <no-reply@acme.example>",
    )
    .expect("valid SMTP settings");
    let app = spawn_app_with_config(Backend::Sqlite, HttpSettings::without_rate_limits(), |c| {
        c.otp = OtpDelivery::Smtp(sender);
    })
    .await
    .unwrap();
    let store = app.create_store("Acme").await;
    let sk = store.secret_key_test.as_str();
    register(&app, sk, "jane@example.com", Some("+14155550123")).await;

    let (status, _) = post(
        &app,
        "/v1/auth/otp",
        sk,
        json!({"email": "jane@example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mail = tokio::time::timeout(Duration::from_secs(10), mailbox.recv())
        .await
        .expect("the email arrives")
        .unwrap();
    assert!(mail.contains("RCPT TO:<jane@example.com>"), "{mail}");
    assert!(mail.contains("MAIL FROM:<no-reply@acme.example>"), "{mail}");
    assert!(mail.contains("Subject: Your sign-in code"), "{mail}");
    let code = six_digits_after(&mail, "Your sign-in code is ").expect("the code is in the email");
    let (status, session) = post(
        &app,
        "/v1/auth/verify-otp",
        sk,
        json!({"email": "jane@example.com", "code": code}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{session}");

    // No SMS sender: a code by phone is refused, known phone or not, and nothing is stored.
    for phone in ["+14155550123", "+14155559999"] {
        expect_problem(
            post(&app, "/v1/auth/otp", sk, json!({"phone": phone})).await,
            400,
            "otp_channel_unavailable",
        );
    }
    let codes = otp_code::Entity::find()
        .all(app.service.database())
        .await
        .unwrap();
    assert_eq!(codes.len(), 1);
    assert!(
        app.otp.messages().is_empty(),
        "SMTP delivery does not use the outbox"
    );
}

#[tokio::test]
async fn an_unreachable_smtp_relay_does_not_fail_or_slow_the_request() {
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sender =
        SmtpSender::new(&format!("smtp://127.0.0.1:{port}"), "no-reply@acme.example").unwrap();
    let app = spawn_app_with_config(Backend::Sqlite, HttpSettings::without_rate_limits(), |c| {
        c.otp = OtpDelivery::Smtp(sender);
    })
    .await
    .unwrap();
    let store = app.create_store("Acme").await;
    register(&app, &store.secret_key_test, "jane@example.com", None).await;
    let (status, _) = post(
        &app,
        "/v1/auth/otp",
        &store.secret_key_test,
        json!({"email": "jane@example.com"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "delivery runs in the background"
    );
}
