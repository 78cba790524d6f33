//! Safe retries (`Idempotency-Key`) and edit history end to end, on SQLite and PostgreSQL:
//! replays change nothing and answer byte for byte, keys belong to their caller, concurrent
//! retries write once, and every edit keeps the version it replaced.

use messaging_client::types::{self, ThreadStatus};
use messaging_service::{entity::idempotency_key, idempotency};
use messaging_tests::{
    TestApp, both_backends,
    fixtures::{Shop, problem},
};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, sea_query::Expr};
use serde_json::{Value, json};
use uuid::Uuid;

const REPLAYED: &str = "idempotent-replayed";

/// The shared shop, plus this suite's own steps.
struct World(Shop);

impl std::ops::Deref for World {
    type Target = Shop;
    fn deref(&self) -> &Shop {
        &self.0
    }
}

async fn world(app: TestApp) -> World {
    World(Shop::open(app).await)
}

/// One raw answer: status, `Idempotent-Replayed`, the body's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    status: u16,
    replayed: bool,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl World {
    /// Jane starts a conversation; returns the thread id.
    async fn jane_thread(&self) -> Uuid {
        self.thread_of(&self.jane.token).await
    }

    async fn thread_of(&self, token: &str) -> Uuid {
        self.public
            .create_conversation()
            .x_auth_token(token)
            .body_map(|b| {
                b.subject("Missing item")
                    .message("The headphones were missing.")
            })
            .send()
            .await
            .expect("create conversation")
            .into_inner()
            .thread
            .id
    }

    /// A raw request as Jane, with `key` as `Idempotency-Key` and `body` sent verbatim.
    async fn as_jane(&self, method: reqwest::Method, path: &str, key: &str, body: &str) -> Raw {
        let token = self.jane.token.clone();
        self.raw(method, path, &self.publishable_key, Some(&token), key, body)
            .await
    }

    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        api_key: &str,
        token: Option<&str>,
        idempotency_key: &str,
        body: &str,
    ) -> Raw {
        let mut request = self
            .app
            .http()
            .request(method, self.app.url(path))
            .bearer_auth(api_key)
            .header("idempotency-key", idempotency_key)
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.header("x-auth-token", token);
        }
        let response = request.send().await.expect("the server answers");
        let replayed = match response.headers().get(REPLAYED) {
            None => false,
            Some(value) => {
                assert_eq!(value, "true");
                true
            }
        };
        Raw {
            status: response.status().as_u16(),
            replayed,
            body: response.bytes().await.expect("a body").to_vec(),
        }
    }

    async fn messages_of(&self, thread: Uuid) -> Vec<types::Message> {
        self.store
            .get_thread_messages()
            .id(thread.to_string())
            .send()
            .await
            .expect("messages")
            .into_inner()
            .messages
    }

    async fn key_rows(&self) -> u64 {
        idempotency_key::Entity::find()
            .count(self.app.service.database())
            .await
            .unwrap()
    }
}

fn messages_path(thread: Uuid) -> String {
    format!("/v1/messaging/threads/{thread}/messages")
}

both_backends!(
    a_replay_is_the_first_answer_and_changes_nothing,
    |app| async move {
        let w = world(app).await;

        // createConversation through the generated client, sent twice with one key.
        let start = || {
            w.public
                .create_conversation()
                .x_auth_token(w.jane.token.as_str())
                .idempotency_key("start-8821")
                .body_map(|b| b.subject("Order 8821").message("Where is it?"))
                .send()
        };
        let first = start().await.expect("created");
        assert_eq!(first.status().as_u16(), 201);
        assert!(first.headers().get(REPLAYED).is_none());
        let again = start().await.expect("replayed");
        assert_eq!(again.status().as_u16(), 201);
        assert_eq!(again.headers().get(REPLAYED).unwrap(), "true");
        let (first, again) = (first.into_inner(), again.into_inner());
        assert_eq!(first, again);
        let threads = w
            .store
            .list_threads()
            .send()
            .await
            .expect("inbox")
            .into_inner()
            .threads;
        assert_eq!(threads.len(), 1, "one thread, not two");
        let thread = first.thread.id;

        // sendMessage, raw, to compare the bytes: the retry answers exactly what the first did.
        let body = r#"{"message":"Any news about my order?"}"#;
        let sent = w
            .as_jane(
                reqwest::Method::POST,
                &messages_path(thread),
                "send-1",
                body,
            )
            .await;
        assert_eq!((sent.status, sent.replayed), (201, false));
        let after_first = w.thread_as_store(thread).await;
        for _ in 0..2 {
            let retry = w
                .as_jane(
                    reqwest::Method::POST,
                    &messages_path(thread),
                    "send-1",
                    body,
                )
                .await;
            assert_eq!((retry.status, retry.replayed), (201, true));
            assert_eq!(retry.body, sent.body, "byte for byte");
        }
        // What is kept is sealed: the answer is not in the database in the clear.
        let row = idempotency_key::Entity::find()
            .filter(idempotency_key::Column::IdempotencyKey.eq("send-1"))
            .one(w.app.service.database())
            .await
            .unwrap()
            .expect("the key's row");
        assert_eq!(row.response_status, Some(201));
        let kept = row.response_body.expect("a stored answer");
        assert!(!kept.windows(8).any(|window| window == b"Any news"));
        let messages = w.messages_of(thread).await;
        assert_eq!(
            messages.len(),
            2,
            "the first message and one reply, not three"
        );
        assert_eq!(messages[1].id.to_string(), sent.json()["message"]["id"]);
        // Counters and last-message fields moved once, and the retries left the thread untouched.
        let thread_now = w.thread_as_store(thread).await;
        assert_eq!(thread_now.unread_count_store, Some(2));
        assert_eq!(thread_now, after_first);

        // editMessage: one edit, one version in the history, however often it is retried.
        let message = messages[1].id;
        let edit = || {
            w.public
                .edit_message()
                .x_auth_token(w.jane.token.as_str())
                .idempotency_key("edit-1")
                .id(message)
                .body_map(|b| b.message_content("Any news about order 8821?"))
                .send()
        };
        let edited = edit().await.expect("edited").into_inner();
        let replayed = edit().await.expect("replayed");
        assert_eq!(replayed.headers().get(REPLAYED).unwrap(), "true");
        assert_eq!(replayed.into_inner(), edited);
        let history = w
            .store
            .list_message_edits()
            .id(message)
            .send()
            .await
            .expect("history")
            .into_inner()
            .edits;
        assert_eq!(history.len(), 1);

        // A key without a retry is still a plain write: a new key is a new message.
        let other = w
            .as_jane(
                reqwest::Method::POST,
                &messages_path(thread),
                "send-2",
                body,
            )
            .await;
        assert_eq!((other.status, other.replayed), (201, false));
        assert_ne!(other.body, sent.body);
        assert_eq!(w.messages_of(thread).await.len(), 3);
    }
);

both_backends!(a_replay_records_no_second_event, |app| async move {
    let w = world(app).await;
    // The position comes before the thread: on PostgreSQL the feed's frontier may lag behind
    // the newest commits (any transaction open on the cluster holds it back), so a position
    // taken just after the thread was created may still come before the thread's own events.
    let start = w
        .store
        .list_events()
        .send()
        .await
        .expect("the feed's position")
        .into_inner()
        .next_after;
    let thread = w.jane_thread().await;

    // One send and two retries of it.
    let body = r#"{"message":"Sent once, retried twice"}"#;
    for _ in 0..3 {
        let answer = w
            .as_jane(
                reqwest::Method::POST,
                &messages_path(thread),
                "send-once",
                body,
            )
            .await;
        assert_eq!(answer.status, 201);
    }
    // A later change without a key marks the end of what the retries could have recorded.
    w.store
        .mark_thread_read()
        .id(thread.to_string())
        .send()
        .await
        .expect("read");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut after = start;
    let mut seen = Vec::new();
    while !seen.contains(&types::EventType::ThreadRead) {
        assert!(
            std::time::Instant::now() < deadline,
            "the feed never showed the read: {seen:?}"
        );
        let page = w
            .store
            .list_events()
            .after(after.as_str())
            .wait(2)
            .send()
            .await
            .expect("listEvents")
            .into_inner();
        seen.extend(page.events.iter().map(|event| event.type_));
        after = page.next_after;
    }
    // The thread's creation, then the send's own events (the message, and the message
    // reaching its channel), once each.
    assert_eq!(
        seen,
        [
            types::EventType::ThreadCreated,
            types::EventType::ChannelMessagePublished,
            types::EventType::MessageCreated,
            types::EventType::ChannelMessagePublished,
            types::EventType::ThreadRead
        ],
        "one send's events once, however often it was retried"
    );
});

both_backends!(a_key_with_another_request_is_422, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    let other_thread = w.jane_thread().await;
    let first = w
        .as_jane(
            reqwest::Method::POST,
            &messages_path(thread),
            "k-1",
            r#"{"message":"one"}"#,
        )
        .await;
    assert_eq!(first.status, 201);
    let before = w.messages_of(thread).await;
    let elsewhere_before = w.messages_of(other_thread).await;
    // Another body, another path, another method: each is a different request.
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            messages_path(thread),
            r#"{"message":"two"}"#,
        ),
        (
            reqwest::Method::POST,
            messages_path(other_thread),
            r#"{"message":"one"}"#,
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/messaging/threads/{thread}"),
            r#"{"pinned":true}"#,
        ),
    ] {
        let reused = w.as_jane(method, &path, "k-1", body).await;
        assert_eq!(reused.status, 422, "{path}");
        assert!(!reused.replayed);
        assert_eq!(reused.json()["code"], "idempotency_key_reused");
    }
    assert_eq!(w.messages_of(thread).await, before);
    assert_eq!(w.messages_of(other_thread).await, elsewhere_before);
    assert_eq!(w.thread_as_store(thread).await.is_pinned, Some(false));
});

both_backends!(concurrent_retries_write_once, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    let path = messages_path(thread);
    let body = r#"{"message":"Sent from a flaky network"}"#;
    let answers = futures::future::join_all(
        (0..8).map(|_| w.as_jane(reqwest::Method::POST, &path, "flaky-send", body)),
    )
    .await;
    let created: Vec<&Raw> = answers.iter().filter(|a| a.status == 201).collect();
    assert!(!created.is_empty(), "{answers:?}");
    assert_eq!(
        created.iter().filter(|a| !a.replayed).count(),
        1,
        "{answers:?}"
    );
    for answer in &answers {
        match answer.status {
            201 => assert_eq!(answer.body, created[0].body),
            409 => assert_eq!(answer.json()["code"], "idempotency_key_in_use"),
            other => panic!("unexpected {other}: {answers:?}"),
        }
    }
    // Exactly one message, counted once; a later retry replays it.
    let messages = w.messages_of(thread).await;
    assert_eq!(messages.len(), 2, "the first message and exactly one reply");
    assert_eq!(w.thread_as_store(thread).await.unread_count_store, Some(2));
    let later = w
        .as_jane(reqwest::Method::POST, &path, "flaky-send", body)
        .await;
    assert_eq!((later.status, later.replayed), (201, true));
    assert_eq!(later.body, created[0].body);
});

both_backends!(
    another_callers_identical_key_is_another_key,
    |app| async move {
        let w = world(app).await;
        let jane_thread = w.jane_thread().await;
        let body = r#"{"message":"Hello"}"#;
        let jane = w
            .as_jane(
                reqwest::Method::POST,
                &messages_path(jane_thread),
                "shared",
                body,
            )
            .await;
        assert_eq!((jane.status, jane.replayed), (201, false));
        // The store, on the same thread with the same key and body: its own key, its own message.
        let store = w
            .raw(
                reqwest::Method::POST,
                &messages_path(jane_thread),
                &w.secret_key,
                None,
                "shared",
                body,
            )
            .await;
        assert_eq!((store.status, store.replayed), (201, false));
        assert_eq!(store.json()["message"]["sender_type"], "store");
        // A staff member acting for the store is yet another caller.
        w.store
            .add_subscriber()
            .id(jane_thread.to_string())
            .body(
                serde_json::from_value::<types::AddSubscriberRequest>(
                    json!({"type": "user", "id": "staff-42", "name": "Sam Staff"}),
                )
                .unwrap(),
            )
            .send()
            .await
            .expect("staff joins");
        let staff = w
            .app
            .http()
            .post(w.app.url(&messages_path(jane_thread)))
            .bearer_auth(&w.secret_key)
            .header("x-acting-user", "staff-42")
            .header("idempotency-key", "shared")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(staff.status().as_u16(), 201);
        assert!(staff.headers().get(REPLAYED).is_none());
        // Bob, another customer, in his own thread: not Jane's key (that would be 422).
        let bob_thread = w.thread_of(&w.bob.token).await;
        let bob = w
            .raw(
                reqwest::Method::POST,
                &messages_path(bob_thread),
                &w.publishable_key,
                Some(&w.bob.token),
                "shared",
                body,
            )
            .await;
        assert_eq!((bob.status, bob.replayed), (201, false));
        assert_eq!(bob.json()["message"]["sender_id"], w.bob.id.to_string());
        assert_eq!(w.messages_of(jane_thread).await.len(), 4);
        assert_eq!(w.messages_of(bob_thread).await.len(), 2);
    }
);

both_backends!(malformed_keys_are_400_and_write_nothing, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    let body = r#"{"message":"hi"}"#;
    let rows = w.key_rows().await;
    for key in ["k".repeat(256), "tab\tkey".to_owned()] {
        let refused = w
            .as_jane(reqwest::Method::POST, &messages_path(thread), &key, body)
            .await;
        assert_eq!(refused.status, 400);
        assert_eq!(refused.json()["code"], "invalid_idempotency_key");
    }
    assert_eq!(w.messages_of(thread).await.len(), 1);
    assert_eq!(w.key_rows().await, rows);
    // 255 characters is the longest key.
    let longest = w
        .as_jane(
            reqwest::Method::POST,
            &messages_path(thread),
            &"k".repeat(255),
            body,
        )
        .await;
    assert_eq!(longest.status, 201);
    assert_eq!(w.key_rows().await, rows + 1);
});

both_backends!(
    a_request_refused_before_it_runs_is_not_kept,
    |app| async move {
        let w = world(app).await;
        let thread = w.jane_thread().await;
        let path = messages_path(thread);
        // A malformed body is refused by the generated layer before the operation runs.
        let malformed = w
            .as_jane(reqwest::Method::POST, &path, "fix-me", r#"{"message": 42}"#)
            .await;
        assert_eq!((malformed.status, malformed.replayed), (400, false));
        assert_eq!(malformed.json()["code"], "invalid_body");
        assert_eq!(w.key_rows().await, 0);
        // The corrected request may use the same key at once: it is a first request.
        let fixed = w
            .as_jane(
                reqwest::Method::POST,
                &path,
                "fix-me",
                r#"{"message": "42"}"#,
            )
            .await;
        assert_eq!((fixed.status, fixed.replayed), (201, false));
        // A token that does not verify: refused (401) before anything is claimed.
        let forged = w
            .raw(
                reqwest::Method::POST,
                &path,
                &w.publishable_key,
                Some("not-a-token"),
                "fix-me",
                r#"{"message": "42"}"#,
            )
            .await;
        assert_eq!((forged.status, forged.replayed), (401, false));
        assert_eq!(w.key_rows().await, 1);
        // A method the path does not serve matches no operation: 405 with `Allow`, every time.
        for _ in 0..2 {
            let unrouted = w
                .app
                .http()
                .patch(w.app.url(&path))
                .bearer_auth(&w.publishable_key)
                .header("x-auth-token", &w.jane.token)
                .header("idempotency-key", "no-such-method")
                .json(&json!({"message": "42"}))
                .send()
                .await
                .expect("the server answers");
            assert_eq!(unrouted.status().as_u16(), 405);
            assert_eq!(unrouted.headers()["allow"], "GET, HEAD, POST");
            assert!(unrouted.headers().get(REPLAYED).is_none());
        }
        assert_eq!(w.key_rows().await, 1);
    }
);

both_backends!(a_refusal_is_kept_and_replayed, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    w.store
        .update_thread()
        .id(thread.to_string())
        .body_map(|b| b.status(Some(ThreadStatus::Closed)))
        .send()
        .await
        .expect("closed");
    let body = r#"{"message":"Hello?"}"#;
    let refused = w
        .as_jane(reqwest::Method::POST, &messages_path(thread), "late", body)
        .await;
    assert_eq!((refused.status, refused.replayed), (409, false));
    assert_eq!(refused.json()["code"], "thread_closed");
    // The thread reopens, but the key's first final answer stands, byte for byte (with the
    // first request's id): a retry never turns into a second, different write.
    w.store
        .update_thread()
        .id(thread.to_string())
        .body_map(|b| b.status(Some(ThreadStatus::Active)))
        .send()
        .await
        .expect("reopened");
    let retry = w
        .as_jane(reqwest::Method::POST, &messages_path(thread), "late", body)
        .await;
    assert_eq!((retry.status, retry.replayed), (409, true));
    assert_eq!(retry.body, refused.body);
    assert!(refused.json()["request_id"].is_string());
    assert_eq!(w.messages_of(thread).await.len(), 1);
});

both_backends!(a_claim_whose_request_died_expires, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    let path = messages_path(thread);
    let body = r#"{"message":"Sent just before a crash"}"#;
    // A request claims the key and its process dies before it answers: no write, no release.
    let scope = w
        .app
        .service
        .idempotency_scope(&w.publishable_key, Some(&w.jane.token), None)
        .await
        .expect("Jane's scope");
    let fingerprint = idempotency::fingerprint("POST", &path, body.as_bytes());
    let begun = w
        .app
        .service
        .begin_idempotent(&scope, "crash", &fingerprint)
        .await
        .unwrap();
    let idempotency::Begin::Run(claim) = begun else {
        panic!("a new key is claimed, got {begun:?}");
    };
    std::mem::forget(claim);
    // While its lease runs, retries are told to wait.
    let waiting = w.as_jane(reqwest::Method::POST, &path, "crash", body).await;
    assert_eq!(waiting.status, 409);
    assert_eq!(waiting.json()["code"], "idempotency_key_in_use");
    assert_eq!(w.messages_of(thread).await.len(), 1);
    // Once the lease is over, a retry takes the key over and runs once.
    idempotency_key::Entity::update_many()
        .col_expr(
            idempotency_key::Column::LockedUntil,
            Expr::value(Some(chrono::Utc::now() - chrono::Duration::seconds(1))),
        )
        .filter(idempotency_key::Column::IdempotencyKey.eq("crash"))
        .exec(w.app.service.database())
        .await
        .unwrap();
    let retried = w.as_jane(reqwest::Method::POST, &path, "crash", body).await;
    assert_eq!((retried.status, retried.replayed), (201, false));
    let replayed = w.as_jane(reqwest::Method::POST, &path, "crash", body).await;
    assert_eq!((replayed.status, replayed.replayed), (201, true));
    assert_eq!(replayed.body, retried.body);
    assert_eq!(w.messages_of(thread).await.len(), 2);
});

both_backends!(expired_keys_are_new_keys_and_are_pruned, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    let body = r#"{"message":"Yesterday's message"}"#;
    let path = messages_path(thread);
    let send = |key: &'static str| w.as_jane(reqwest::Method::POST, &path, key, body);
    for key in ["old", "gone", "recent"] {
        assert_eq!(send(key).await.status, 201);
    }
    // 24 hours later for two of them.
    idempotency_key::Entity::update_many()
        .col_expr(
            idempotency_key::Column::ExpiresAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .filter(idempotency_key::Column::IdempotencyKey.is_in(["old", "gone"]))
        .exec(w.app.service.database())
        .await
        .unwrap();
    // An expired key is a new key at once, pruned or not.
    let renewed = send("old").await;
    assert_eq!((renewed.status, renewed.replayed), (201, false));
    assert_eq!(w.app.service.prune_idempotency_keys().await.unwrap(), 1);
    assert_eq!(w.key_rows().await, 2);
    let replayed = send("old").await;
    assert!(replayed.replayed);
    assert_eq!(replayed.body, renewed.body);
    assert!(send("recent").await.replayed);
    let again = send("gone").await;
    assert_eq!((again.status, again.replayed), (201, false));
    assert_eq!(w.messages_of(thread).await.len(), 6);
});

both_backends!(edits_keep_the_versions_they_replace, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    let message = w
        .public
        .send_message()
        .x_auth_token(w.jane.token.as_str())
        .id(thread.to_string())
        .body_map(|b| b.message("Version one"))
        .send()
        .await
        .expect("sent")
        .into_inner()
        .message;
    let history = |token: Option<&str>| {
        let call = w.public.list_message_edits().id(message.id);
        match token {
            Some(token) => call.x_auth_token(token.to_owned()),
            None => call,
        }
        .send()
    };
    assert!(
        history(Some(&w.jane.token))
            .await
            .unwrap()
            .into_inner()
            .edits
            .is_empty()
    );
    let mut last = None;
    for text in ["Version two", "Version three", "Version four"] {
        last = Some(
            w.public
                .edit_message()
                .x_auth_token(w.jane.token.as_str())
                .id(message.id)
                .body_map(|b| b.message_content(text))
                .send()
                .await
                .expect("edited")
                .into_inner()
                .message,
        );
    }
    let last = last.unwrap();
    assert_eq!(last.message_content, "Version four");
    let edits = history(Some(&w.jane.token))
        .await
        .unwrap()
        .into_inner()
        .edits;
    let texts: Vec<&str> = edits.iter().map(|e| e.message_content.as_str()).collect();
    assert_eq!(texts, ["Version one", "Version two", "Version three"]);
    assert!(
        edits
            .windows(2)
            .all(|pair| pair[0].edited_at <= pair[1].edited_at)
    );
    assert_eq!(Some(edits[2].edited_at), last.edited_at);
    // The store reads it too (whoever may read the thread), the same history.
    let by_store = w
        .store
        .list_message_edits()
        .id(message.id)
        .send()
        .await
        .unwrap()
        .into_inner()
        .edits;
    assert_eq!(by_store, edits);
});

both_backends!(edit_history_is_gated_like_its_thread, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    let message = w.messages_of(thread).await[0].id;
    w.public
        .edit_message()
        .x_auth_token(w.jane.token.as_str())
        .id(message)
        .body_map(|b| b.message_content("Edited"))
        .send()
        .await
        .expect("edited");
    // Another customer of the store: 403, as for reading the thread.
    let bob = problem(
        w.public
            .list_message_edits()
            .x_auth_token(w.bob.token.as_str())
            .id(message)
            .send()
            .await,
    );
    assert_eq!((bob.status, bob.code.as_str()), (403, "thread_not_owned"));
    // Another store, and the other mode of this one: 404, its existence does not leak.
    let other = w.app.create_store("Other").await;
    for key in [other.secret_key_test.as_str(), w.live_secret_key.as_str()] {
        let foreign = problem(
            w.app
                .client(key)
                .list_message_edits()
                .id(message)
                .send()
                .await,
        );
        assert_eq!(
            (foreign.status, foreign.code.as_str()),
            (404, "message_not_found")
        );
    }
    // A deleted message has no history to read.
    w.public
        .delete_message()
        .x_auth_token(w.jane.token.as_str())
        .id(message)
        .send()
        .await
        .expect("deleted");
    let deleted = problem(w.store.list_message_edits().id(message).send().await);
    assert_eq!(
        (deleted.status, deleted.code.as_str()),
        (404, "message_not_found")
    );
});

both_backends!(reads_and_other_methods_ignore_the_key, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread().await;
    // A GET with a key is an ordinary read, and keeps no record.
    let read = w
        .app
        .http()
        .get(w.app.url(&messages_path(thread)))
        .bearer_auth(&w.secret_key)
        .header("idempotency-key", "read")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    assert!(read.headers().get(REPLAYED).is_none());
    assert_eq!(w.key_rows().await, 0);
    // Without a key, writes are not deduplicated.
    let body = json!({"message": "twice"});
    for _ in 0..2 {
        w.public
            .send_message()
            .x_auth_token(w.jane.token.as_str())
            .id(thread.to_string())
            .body(serde_json::from_value::<types::SendMessageRequest>(body.clone()).unwrap())
            .send()
            .await
            .expect("sent");
    }
    assert_eq!(w.messages_of(thread).await.len(), 3);
    assert_eq!(w.key_rows().await, 0);
});

both_backends!(the_client_helper_retries_with_one_key, |app| async move {
    use messaging_client::retry::{self, RetryPolicy};
    use std::sync::atomic::{AtomicU32, Ordering};

    let w = world(app).await;
    let thread = w.jane_thread().await;
    let quick = RetryPolicy {
        max_attempts: 3,
        initial_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
    };
    let send = |key: &str| {
        w.public
            .send_message()
            .x_auth_token(w.jane.token.as_str())
            .idempotency_key(key)
            .id(thread.to_string())
            .body_map(|b| b.message("Sent with the helper"))
            .send()
    };

    // A plain run: one attempt, one message, and a retry of the same operation replays it.
    let sent = retry::idempotent_with_key(&quick, "helper-1", send)
        .await
        .expect("sent");
    assert!(!retry::was_replayed(&sent));
    let again = retry::idempotent_with_key(&quick, "helper-1", send)
        .await
        .expect("replayed");
    assert!(retry::was_replayed(&again));
    assert_eq!(again.into_inner(), sent.into_inner());

    // Another attempt with the key still runs (its process died holding it): the helper waits
    // and retries with the same key until the lease is over, then the write happens once.
    let body = serde_json::to_vec(&json!({"message": "Sent with the helper"})).unwrap();
    let path = messages_path(thread);
    let scope = w
        .app
        .service
        .idempotency_scope(&w.publishable_key, Some(&w.jane.token), None)
        .await
        .unwrap();
    for key in ["held", "held-for-good"] {
        let begun = w
            .app
            .service
            .begin_idempotent(&scope, key, &idempotency::fingerprint("POST", &path, &body))
            .await
            .unwrap();
        let idempotency::Begin::Run(claim) = begun else {
            panic!("a new key is claimed, got {begun:?}");
        };
        std::mem::forget(claim);
    }
    let attempts = AtomicU32::new(0);
    let db = w.app.service.database();
    let sent = retry::idempotent_with_key(&quick, "held", |key| {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let send = send(key);
        async move {
            if attempt == 2 {
                idempotency_key::Entity::update_many()
                    .col_expr(
                        idempotency_key::Column::LockedUntil,
                        Expr::value(Some(chrono::Utc::now() - chrono::Duration::seconds(1))),
                    )
                    .filter(idempotency_key::Column::IdempotencyKey.eq("held"))
                    .exec(db)
                    .await
                    .unwrap();
            }
            send.await
        }
    })
    .await
    .expect("sent once the lease is over");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert!(!retry::was_replayed(&sent));
    let messages = w.messages_of(thread).await;
    assert_eq!(messages.len(), 3, "the first message and two sends");
    assert_eq!(messages[2].id, sent.into_inner().message.id);

    // A key that stays busy: the helper gives up after its attempts with the 409.
    let attempts = AtomicU32::new(0);
    let busy = retry::idempotent_with_key(&quick, "held-for-good", |key| {
        attempts.fetch_add(1, Ordering::SeqCst);
        send(key)
    })
    .await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let busy = problem(busy);
    assert_eq!(
        (busy.status, busy.code.as_str()),
        (409, "idempotency_key_in_use")
    );

    // No server at all: connection errors are retried, with one key, then reported.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let offline = messaging_client::with_api_key(&nowhere, &w.publishable_key).unwrap();
    let attempts = AtomicU32::new(0);
    let keys = std::sync::Mutex::new(std::collections::HashSet::new());
    let refused = retry::idempotent(&quick, |key| {
        attempts.fetch_add(1, Ordering::SeqCst);
        keys.lock().unwrap().insert(key.to_owned());
        offline
            .mark_thread_read()
            .x_auth_token(w.jane.token.as_str())
            .idempotency_key(key)
            .id(thread.to_string())
            .send()
    })
    .await;
    assert!(matches!(
        refused,
        Err(messaging_client::Error::CommunicationError(_))
    ));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(keys.lock().unwrap().len(), 1, "one key for every attempt");
});

/// Drives an operation inside a claim the way the server's middleware does, through the
/// service's own `MessagingApi`: the write waits for the claim's answer and shares its fate.
mod write_and_answer_commit_together {
    use super::*;
    use messaging_api::{MessagingApi, SendMessageParams, SendMessageRequest, SendMessageResponse};

    fn params(w: &World, thread: Uuid) -> SendMessageParams {
        SendMessageParams {
            x_auth_token: Some(w.jane.token.clone()),
            x_acting_user: None,
            idempotency_key: None,
            id: thread.to_string(),
        }
    }

    fn body(text: &str) -> SendMessageRequest {
        SendMessageRequest {
            message: text.to_owned(),
            r#type: None,
            event: None,
            media_urls: None,
            publish_to_channel_at: None,
        }
    }

    async fn claim(w: &World, key: &str) -> idempotency::Claim {
        let service = &w.app.service;
        let scope = service
            .idempotency_scope(&w.publishable_key, Some(&w.jane.token), None)
            .await
            .unwrap();
        match service
            .begin_idempotent(&scope, key, "fingerprint")
            .await
            .unwrap()
        {
            idempotency::Begin::Run(claim) => claim,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    async fn begin(w: &World, key: &str) -> idempotency::Begin {
        let service = &w.app.service;
        let scope = service
            .idempotency_scope(&w.publishable_key, Some(&w.jane.token), None)
            .await
            .unwrap();
        service
            .begin_idempotent(&scope, key, "fingerprint")
            .await
            .unwrap()
    }

    fn answer(status: u16, body: &[u8]) -> idempotency::Answer {
        idempotency::Answer {
            status,
            content_type: Some("application/json; charset=utf-8".to_owned()),
            body: body.to_vec(),
        }
    }

    both_backends!(a_kept_answer_commits_the_write, |app| async move {
        let w = world(app).await;
        let thread = w.jane_thread().await;
        let claim = claim(&w, "kept").await;
        let sent = claim
            .run(w.app.service.send_message(
                w.publishable_key.clone(),
                params(&w, thread),
                body("kept"),
            ))
            .await;
        assert!(matches!(sent, SendMessageResponse::Created(_)), "{sent:?}");
        claim
            .finish(&answer(201, b"{\"stored\":true}"))
            .await
            .unwrap();
        assert_eq!(w.messages_of(thread).await.len(), 2);
        match begin(&w, "kept").await {
            idempotency::Begin::Replay(stored) => {
                assert_eq!(stored, answer(201, b"{\"stored\":true}"));
            }
            other => panic!("expected the stored answer, got {other:?}"),
        }
    });

    both_backends!(
        a_5xx_rolls_the_write_back_and_frees_the_key,
        |app| async move {
            let w = world(app).await;
            let thread = w.jane_thread().await;
            let claim = claim(&w, "failed").await;
            let sent = claim
                .run(w.app.service.send_message(
                    w.publishable_key.clone(),
                    params(&w, thread),
                    body("lost"),
                ))
                .await;
            assert!(matches!(sent, SendMessageResponse::Created(_)), "{sent:?}");
            claim
                .finish(&answer(500, b"{\"code\":\"internal_error\"}"))
                .await
                .unwrap();
            assert_eq!(
                w.messages_of(thread).await.len(),
                1,
                "the write was rolled back"
            );
            assert!(matches!(
                begin(&w, "failed").await,
                idempotency::Begin::Run(_)
            ));
        }
    );

    both_backends!(
        a_request_dropped_before_its_answer_writes_nothing,
        |app| async move {
            let w = world(app).await;
            let thread = w.jane_thread().await;
            let claim = claim(&w, "gone").await;
            let sent = claim
                .run(w.app.service.send_message(
                    w.publishable_key.clone(),
                    params(&w, thread),
                    body("gone"),
                ))
                .await;
            assert!(matches!(sent, SendMessageResponse::Created(_)), "{sent:?}");
            // The client went away (or the handler panicked) before the answer was stored.
            drop(claim);
            assert_eq!(
                w.messages_of(thread).await.len(),
                1,
                "the write was rolled back"
            );
            // The key is released in the background.
            let mut released = false;
            for _ in 0..50 {
                if w.key_rows().await == 0 {
                    released = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(released, "the claim was released");
        }
    );
}
