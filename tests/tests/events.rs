//! The event feed (brief section 8) end to end, on SQLite and PostgreSQL: every event type with
//! the REST answer as its `data`, the gates, the long-poll, the server-sent event stream
//! (delivery, resuming after `Last-Event-ID`, keep-alive comments), expiry, and that failed
//! writes leave no event. Two server processes on one PostgreSQL database are in
//! `crates/messaging-server/tests/events.rs`.

use std::time::{Duration, Instant};

use messaging_client::{
    Client,
    types::{self, Event, EventType},
};
use messaging_server::HttpSettings;
use messaging_tests::{
    Backend,
    fixtures::{Customer, Shop, problem, register_customer},
    spawn_app_with_config,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Keep-alive comments this often in these tests (15 s in production).
const KEEP_ALIVE: Duration = Duration::from_millis(400);

/// The shop on `backend`, its streams sending keep-alive comments every [`KEEP_ALIVE`].
async fn open(backend: Backend) -> Option<Shop> {
    let app = spawn_app_with_config(backend, HttpSettings::without_rate_limits(), |config| {
        config.events.keep_alive = KEEP_ALIVE;
    })
    .await?;
    Some(Shop::open(app).await)
}

/// Runs one test body on both backends with a shop from [`open`].
macro_rules! on_both_backends {
    ($name:ident, |$shop:ident| $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let $shop = open(Backend::Sqlite).await.expect("SQLite is always there");
                $body.await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some($shop) = open(Backend::Postgres).await else {
                    return;
                };
                $body.await;
            }
        }
    };
}

/// Who reads: a client and, for a customer, its token.
#[derive(Clone, Copy)]
struct Reader<'a> {
    client: &'a Client,
    token: Option<&'a str>,
}

fn store(shop: &Shop) -> Reader<'_> {
    Reader {
        client: &shop.store,
        token: None,
    }
}

fn customer<'a>(shop: &'a Shop, who: &'a Customer) -> Reader<'a> {
    Reader {
        client: &shop.public,
        token: Some(&who.token),
    }
}

impl Reader<'_> {
    async fn list(&self, after: Option<&str>, wait: i32) -> types::EventList {
        let mut request = self.client.list_events().wait(wait);
        if let Some(token) = self.token {
            request = request.x_auth_token(token);
        }
        if let Some(after) = after {
            request = request.after(after);
        }
        request.send().await.expect("listEvents").into_inner()
    }

    /// The current position.
    async fn position(&self) -> String {
        let list = self.list(None, 0).await;
        assert!(list.events.is_empty(), "without after the answer is empty");
        list.next_after
    }

    /// Follows the feed from `after` until `count` events arrived (10 s at most), then checks
    /// that nothing more comes. Returns the events and the position after them.
    async fn follow(&self, after: &str, count: usize) -> (Vec<Event>, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = Vec::new();
        let mut after = after.to_owned();
        while events.len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} events arrived: {events:#?}",
                events.len()
            );
            let list = self.list(Some(&after), 2).await;
            events.extend(list.events);
            after = list.next_after;
        }
        let more = self.list(Some(&after), 0).await;
        assert!(
            more.events.is_empty(),
            "unexpected events: {:#?}",
            more.events
        );
        (events, more.next_after)
    }
}

fn types_of(events: &[Event]) -> Vec<EventType> {
    events.iter().map(|e| e.type_).collect()
}

async fn start_conversation(shop: &Shop, who: &Customer, subject: &str) -> types::Conversation {
    let body: types::CreateConversationRequest = serde_json::from_value(json!({
        "customer_id": who.id,
        "subject": subject,
        "message": "My package arrived but the headphones were missing.",
    }))
    .unwrap();
    shop.public
        .create_conversation()
        .x_auth_token(&who.token)
        .body(body)
        .send()
        .await
        .expect("createConversation")
        .into_inner()
}

async fn store_says(shop: &Shop, thread: Uuid, body: Value) -> types::Message {
    let body: types::SendMessageRequest = serde_json::from_value(body).unwrap();
    shop.store
        .send_message()
        .id(thread.to_string())
        .body(body)
        .send()
        .await
        .expect("sendMessage")
        .into_inner()
        .message
}

on_both_backends!(
    every_event_type_carries_the_rest_answer,
    |shop| async move {
        let shop = &shop;
        let from_store = store(shop).position().await;
        let from_jane = customer(shop, &shop.jane).position().await;
        let token = shop.jane.token.as_str();

        let conversation = start_conversation(shop, &shop.jane, "Missing Item").await;
        let thread = conversation.thread.id;
        let reply = store_says(shop, thread, json!({"message": "Looking into it."})).await;
        let resolved = shop
            .store
            .update_thread()
            .id(thread.to_string())
            .body(
                serde_json::from_value::<types::UpdateThreadRequest>(json!({"status": "resolved"}))
                    .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .into_inner()
            .thread;
        // A customer's message reopens the resolved thread: message.created and thread.updated.
        let reopening = shop
            .public
            .send_message()
            .x_auth_token(token)
            .id(thread.to_string())
            .body(
                serde_json::from_value::<types::SendMessageRequest>(
                    json!({"message": "Still missing."}),
                )
                .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .into_inner()
            .message;
        let read = shop
            .store
            .mark_thread_read()
            .id(thread.to_string())
            .send()
            .await
            .unwrap()
            .into_inner()
            .thread;
        let edited = shop
            .public
            .edit_message()
            .x_auth_token(token)
            .id(reopening.id)
            .body(
                serde_json::from_value::<types::EditMessageRequest>(
                    json!({"message_content": "Still missing!"}),
                )
                .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .into_inner()
            .message;
        let reacted = shop
            .store
            .add_reaction()
            .id(reply.id)
            .emoji("👍")
            .send()
            .await
            .unwrap()
            .into_inner()
            .message;
        // Adding the same reaction again changes nothing: no event.
        shop.store
            .add_reaction()
            .id(reply.id)
            .emoji("👍")
            .send()
            .await
            .unwrap();
        let deleted = shop
            .public
            .delete_message()
            .x_auth_token(token)
            .id(reopening.id)
            .send()
            .await
            .unwrap()
            .into_inner();
        let added = shop
            .store
            .add_subscriber()
            .id(thread.to_string())
            .body(
                serde_json::from_value::<types::AddSubscriberRequest>(
                    json!({"type": "user", "id": "staff-42", "name": "Sam Staff"}),
                )
                .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .into_inner()
            .subscriber;
        let removed = shop
            .store
            .remove_subscriber()
            .id(thread.to_string())
            .subscriber_id("staff-42")
            .send()
            .await
            .unwrap()
            .into_inner()
            .subscriber;
        // A scheduled system message: in the thread at once, in the channel when due.
        let due = chrono::Utc::now() + chrono::Duration::milliseconds(800);
        let scheduled = store_says(
        shop,
        thread,
        json!({"message": "Ready for pickup.", "type": "pickup_reminder", "publish_to_channel_at": due}),
    )
    .await;

        let (events, _) = store(shop).follow(&from_store, 16).await;
        use EventType::*;
        assert_eq!(
            types_of(&events),
            [
                ThreadCreated,
                ChannelMessagePublished,
                MessageCreated,
                ChannelMessagePublished,
                ThreadUpdated,
                MessageCreated,
                ThreadUpdated,
                ChannelMessagePublished,
                ThreadRead,
                MessageUpdated,
                MessageUpdated,
                MessageDeleted,
                SubscriberAdded,
                SubscriberRemoved,
                MessageCreated,
                ChannelMessagePublished,
            ]
        );
        let data: Vec<&types::EventData> = events.iter().map(|e| &e.data).collect();
        assert_eq!(data[0].thread.as_ref(), Some(&conversation.thread));
        assert_eq!(data[0].message.as_ref(), Some(&conversation.message));
        let channel = data[1].channel_id.expect("the channel");
        assert_eq!(data[1].message.as_ref(), Some(&conversation.message));
        assert_eq!(data[2].message.as_ref(), Some(&reply));
        assert_eq!(
            (data[3].channel_id, data[3].message.as_ref()),
            (Some(channel), Some(&reply))
        );
        assert_eq!(data[4].thread.as_ref(), Some(&resolved));
        assert_eq!(data[5].message.as_ref(), Some(&reopening));
        let reopened = data[6].thread.as_ref().unwrap();
        assert_eq!(reopened.status, Some(types::ThreadStatus::Active));
        assert_eq!(data[7].message.as_ref(), Some(&reopening));
        assert_eq!(data[8].thread.as_ref(), Some(&read));
        assert_eq!(data[9].message.as_ref(), Some(&edited));
        assert_eq!(data[10].message.as_ref(), Some(&reacted));
        assert_eq!(reacted.reactions.len(), 1);
        assert_eq!(data[11].message_id, Some(deleted.message_id));
        assert_eq!(data[11].deleted_at, Some(deleted.deleted_at));
        assert_eq!(data[12].subscriber.as_ref(), Some(&added));
        assert_eq!(data[13].subscriber.as_ref(), Some(&removed));
        assert_eq!(data[14].message.as_ref(), Some(&scheduled));
        assert_eq!(
            (data[15].channel_id, data[15].message.as_ref()),
            (Some(channel), Some(&scheduled))
        );
        // Each data object holds only what its type says.
        assert_eq!(
            data[11],
            &types::EventData {
                message_id: Some(deleted.message_id),
                deleted_at: Some(deleted.deleted_at),
                ..Default::default()
            }
        );
        for event in &events {
            assert_eq!(event.thread_id, Some(thread));
        }
        let the_channel = shop
            .store
            .get_channel()
            .id(channel)
            .send()
            .await
            .unwrap()
            .into_inner();
        assert!(the_channel.publisher_ids.contains(&thread.to_string()));

        // Jane owns the thread: she reads the same feed, event for event.
        let (hers, _) = customer(shop, &shop.jane).follow(&from_jane, 16).await;
        let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&hers), ids(&events));
    }
);

on_both_backends!(readers_see_only_what_they_may_read, |shop| async move {
    let shop = &shop;
    let other = shop.app.create_store("Other").await;
    let other_store = shop.app.client(&other.secret_key_test);
    let carol = register_customer(&other_store, "carol@example.com", "Carol").await;
    let live_store = shop.app.client(&shop.live_secret_key);
    let lena = register_customer(&live_store, "lena@example.com", "Lena").await;
    let other_public = shop.app.client(&other.publishable_key_test);

    let readers = [
        ("store", store(shop)),
        ("jane", customer(shop, &shop.jane)),
        ("bob", customer(shop, &shop.bob)),
        (
            "other store",
            Reader {
                client: &other_store,
                token: None,
            },
        ),
        (
            "live store",
            Reader {
                client: &live_store,
                token: None,
            },
        ),
    ];
    let mut from = Vec::new();
    for (_, reader) in &readers {
        from.push(reader.position().await);
    }

    let janes = start_conversation(shop, &shop.jane, "Jane's")
        .await
        .thread
        .id;
    let bobs = start_conversation(shop, &shop.bob, "Bob's").await.thread.id;
    let body = |customer: Uuid| -> types::CreateConversationRequest {
        serde_json::from_value(
            json!({"customer_id": customer, "subject": "Hello", "message": "Hi"}),
        )
        .unwrap()
    };
    let carols = other_public
        .create_conversation()
        .x_auth_token(&carol.token)
        .body(body(carol.id))
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread
        .id;
    let lenas = live_store
        .create_conversation()
        .body(body(lena.id))
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread
        .id;

    // Each reader: exactly the events of the threads it may read.
    let expected: [&[Uuid]; 5] = [&[janes, bobs], &[janes], &[bobs], &[carols], &[lenas]];
    let mut next = Vec::new();
    for (((name, reader), from), threads) in readers.iter().zip(&from).zip(expected) {
        let (events, after) = reader.follow(from, 2 * threads.len()).await;
        next.push(after);
        let seen: Vec<Uuid> = events.iter().filter_map(|e| e.thread_id).collect();
        for thread in threads {
            assert_eq!(
                seen.iter().filter(|t| *t == thread).count(),
                2,
                "{name}: {events:#?}"
            );
        }
        assert!(
            seen.iter().all(|t| threads.contains(t)),
            "{name} sees {seen:?}"
        );
    }

    // Jane leaves her thread's subscribers: the store's message still shows in her thread,
    // but its channel is one she is not in, so only the store hears it was published there.
    let (store_from, jane_from) = (&next[0], &next[1]);
    shop.store
        .remove_subscriber()
        .id(janes.to_string())
        .subscriber_id(shop.jane.id.to_string())
        .send()
        .await
        .unwrap();
    store_says(shop, janes, json!({"message": "We will call you."})).await;
    let (events, _) = store(shop).follow(store_from, 3).await;
    use EventType::*;
    assert_eq!(
        types_of(&events),
        [SubscriberRemoved, MessageCreated, ChannelMessagePublished]
    );
    let (events, _) = customer(shop, &shop.jane).follow(jane_from, 2).await;
    assert_eq!(types_of(&events), [SubscriberRemoved, MessageCreated]);
});

on_both_backends!(
    a_long_poll_wakes_on_a_change_and_ends_after_wait,
    |shop| async move {
        let shop = &shop;
        let jane = customer(shop, &shop.jane);
        let start = jane.position().await;
        let thread = start_conversation(shop, &shop.jane, "Waiting")
            .await
            .thread
            .id;
        let (_, from) = jane.follow(&start, 2).await;

        // Nothing happens: the answer is empty after `wait`, at the same or a later position.
        let started = Instant::now();
        let idle = jane.list(Some(&from), 1).await;
        let waited = started.elapsed();
        assert!(idle.events.is_empty());
        assert!(waited >= Duration::from_millis(950), "{waited:?}");
        assert!(waited < Duration::from_secs(4), "{waited:?}");

        // A change while the long-poll waits wakes it within a second of the change's answer.
        let sender = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let message = store_says(shop, thread, json!({"message": "Here it is."})).await;
            (message, Instant::now())
        };
        let ((message, answered), (list, returned)) = tokio::join!(sender, async {
            let list = jane.list(Some(&idle.next_after), 20).await;
            (list, Instant::now())
        });
        let delay = returned.saturating_duration_since(answered);
        assert!(
            delay < Duration::from_secs(1),
            "the long-poll woke {delay:?} after the change"
        );
        assert_eq!(list.events[0].data.message.as_ref(), Some(&message));

        // Bad positions and out-of-range parameters are 400 and change nothing.
        let bad = shop
            .public
            .list_events()
            .x_auth_token(&shop.jane.token)
            .after("not-an-event-id")
            .send()
            .await;
        assert_eq!(problem(bad).code, "invalid_event_id");
        for query in ["wait=31", "wait=-1", "limit=0", "limit=201"] {
            let response = shop
                .app
                .http()
                .get(shop.app.url(&format!("/v1/messaging/events?{query}")))
                .bearer_auth(&shop.secret_key)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        }
        // A publishable key needs a customer token, as on every messaging read.
        let anonymous = shop.public.list_events().send().await;
        assert_eq!(problem(anonymous).code, "customer_token_required");
    }
);

/// One server-sent event, or a comment.
#[derive(Debug, Clone, PartialEq)]
enum Sse {
    Event {
        id: String,
        event: String,
        data: Value,
    },
    Comment,
}

/// An open event stream, parsed as it arrives.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(
        shop: &Shop,
        reader: Option<&Customer>,
        last_event_id: Option<&str>,
        after: Option<&str>,
    ) -> Result<Self, (StatusCode, Value)> {
        let url = match after {
            Some(after) => shop
                .app
                .url(&format!("/v1/messaging/events/stream?after={after}")),
            None => shop.app.url("/v1/messaging/events/stream"),
        };
        let mut request = shop.app.http().get(url);
        request = match reader {
            Some(who) => request
                .bearer_auth(&shop.publishable_key)
                .header("x-auth-token", &who.token),
            None => request.bearer_auth(&shop.secret_key),
        };
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        if response.status() != StatusCode::OK {
            let status = response.status();
            return Err((status, response.json().await.unwrap()));
        }
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Ok(Self {
            response,
            buffer: String::new(),
        })
    }

    /// The next event or comment, or `None` after `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_block(&block));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?;
            let chunk = chunk.expect("the stream stays open")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `count` events of `thread`. On PostgreSQL "the current position" may still be
    /// before changes committed a moment earlier (while an older transaction of the cluster
    /// was running): events of `earlier` may come first, never after.
    async fn events_of(
        &mut self,
        thread: Uuid,
        earlier: Uuid,
        count: usize,
    ) -> Vec<(String, String, Value)> {
        let mut events = Vec::new();
        while events.len() < count {
            let (id, event, data) = self.events(1).await.remove(0);
            if data["thread_id"] == earlier.to_string() && events.is_empty() {
                continue;
            }
            assert_eq!(data["thread_id"], thread.to_string(), "{event}: {data}");
            events.push((id, event, data));
        }
        events
    }

    /// The next `count` events (comments skipped), 10 s at most.
    async fn events(&mut self, count: usize) -> Vec<(String, String, Value)> {
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while events.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Sse::Event { id, event, data }) => events.push((id, event, data)),
                Some(Sse::Comment) => {}
                None => panic!(
                    "only {} of {count} events arrived: {events:#?}",
                    events.len()
                ),
            }
        }
        events
    }
}

fn parse_block(block: &str) -> Sse {
    let (mut id, mut event, mut data) = (None, None, String::new());
    let mut comment = false;
    for line in block.lines().filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            comment = true;
        } else if let Some((field, value)) = line.split_once(':') {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "data" => data.push_str(value),
                other => panic!("unexpected field {other} in {block:?}"),
            }
        }
    }
    match (id, event) {
        (Some(id), Some(event)) => Sse::Event {
            id,
            event,
            data: serde_json::from_str(&data).unwrap(),
        },
        _ if comment => Sse::Comment,
        _ => panic!("neither an event nor a comment: {block:?}"),
    }
}

on_both_backends!(
    the_stream_delivers_resumes_and_keeps_alive,
    |shop| async move {
        let shop = &shop;
        // With neither Last-Event-ID nor after, the stream starts at the current position.
        let before = start_conversation(shop, &shop.jane, "Before the stream")
            .await
            .thread
            .id;
        let mut stream = Stream::open(shop, None, None, None).await.unwrap();
        let mut janes = Stream::open(shop, Some(&shop.jane), None, None)
            .await
            .unwrap();
        let thread = start_conversation(shop, &shop.jane, "On the stream")
            .await
            .thread
            .id;
        assert_ne!(before, thread);
        let first = stream.events_of(thread, before, 2).await;
        for (id, event, data) in &first {
            assert_eq!(data["id"], id.as_str(), "the SSE id is the event's id");
            assert_eq!(
                data["type"],
                event.as_str(),
                "the SSE event is the event's type"
            );
            assert_eq!(data["thread_id"], thread.to_string());
        }
        assert_eq!(first[0].1, "thread.created");
        assert_eq!(first[1].1, "channel.message_published");
        assert_eq!(
            janes.events_of(thread, before, 2).await,
            first,
            "Jane's stream carries her thread's events"
        );

        // /metrics counts open streams and the events written and delivered.
        let metrics = shop
            .app
            .http()
            .get(shop.app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for name in [
            "messaging_event_streams_open",
            "messaging_events_written_total",
            "messaging_events_delivered_total",
        ] {
            assert!(
                metrics.contains(name),
                "{name} missing from /metrics:\n{metrics}"
            );
        }

        // Idle: comment lines keep the connection open, and no event repeats.
        let idle_until = Instant::now() + 3 * KEEP_ALIVE;
        let mut comments = 0;
        while let Some(item) = stream
            .next(idle_until.saturating_duration_since(Instant::now()))
            .await
        {
            assert_eq!(
                item,
                Sse::Comment,
                "nothing happened, yet the stream sent {item:?}"
            );
            comments += 1;
        }
        assert!(
            comments >= 2,
            "{comments} keep-alive comments in {:?}",
            3 * KEEP_ALIVE
        );

        // The client goes away; two messages are sent meanwhile; it comes back with Last-Event-ID
        // and gets exactly what it missed.
        drop(stream);
        let last_seen = first[1].0.clone();
        let one = store_says(shop, thread, json!({"message": "One"})).await;
        let two = store_says(shop, thread, json!({"message": "Two"})).await;
        let mut resumed = Stream::open(shop, None, Some(&last_seen), None)
            .await
            .unwrap();
        let missed = resumed.events(4).await;
        let kinds: Vec<&str> = missed.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message.created",
                "channel.message_published",
                "message.created",
                "channel.message_published"
            ]
        );
        assert_eq!(missed[0].2["data"]["message"]["id"], one.id.to_string());
        assert_eq!(missed[2].2["data"]["message"]["id"], two.id.to_string());
        assert!(
            matches!(resumed.next(2 * KEEP_ALIVE).await, Some(Sse::Comment)),
            "nothing more"
        );
        // `after` in the query resumes the same way (Last-Event-ID wins when both are given).
        let mut by_query = Stream::open(shop, Some(&shop.jane), None, Some(&last_seen))
            .await
            .unwrap();
        assert_eq!(by_query.events(4).await, missed);

        // Malformed positions are 400 before the stream starts.
        let (status, body) = Stream::open(shop, None, Some("garbage"), None)
            .await
            .err()
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_event_id"))
        );
    }
);

on_both_backends!(positions_past_retention_are_gone, |shop| async move {
    let shop = &shop;
    let reader = store(shop);
    let old = reader.position().await;
    start_conversation(shop, &shop.jane, "Old news").await;
    let (_, after_them) = reader.follow(&old, 2).await;
    // Everything so far is past a zero retention window.
    let pruned = shop.app.service.prune_events(Duration::ZERO).await.unwrap();
    assert!(pruned >= 2, "{pruned}");

    let expired = shop.store.list_events().after(old.as_str()).send().await;
    assert_eq!(problem(expired).status, 410);
    let expired = shop.store.list_events().after(old.as_str()).send().await;
    assert_eq!(problem(expired).code, "events_expired");
    let (status, body) = Stream::open(shop, None, Some(&old), None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::GONE, Some("events_expired"))
    );
    // From the position after the pruned events, the feed goes on.
    let thread = start_conversation(shop, &shop.jane, "New news")
        .await
        .thread
        .id;
    let (events, _) = reader.follow(&after_them, 2).await;
    assert_eq!(events[0].thread_id, Some(thread));
});

on_both_backends!(failed_writes_leave_no_event, |shop| async move {
    let shop = &shop;
    let reader = store(shop);
    let from = reader.position().await;
    let body = |resource: &str| -> types::CreateConversationRequest {
        serde_json::from_value(json!({
            "customer_id": shop.jane.id, "subject": "Order", "message": "Hi", "resource_id": resource,
        }))
        .unwrap()
    };
    let thread = shop
        .store
        .create_conversation()
        .body(body("order-1"))
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread
        .id;
    // A second thread for the same resource fails at its insert: the transaction rolls back.
    let duplicate = shop
        .store
        .create_conversation()
        .body(body("order-1"))
        .send()
        .await;
    assert_eq!(problem(duplicate).status, 409);
    shop.store
        .update_thread()
        .id(thread.to_string())
        .body(
            serde_json::from_value::<types::UpdateThreadRequest>(json!({"status": "closed"}))
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // Sending to a closed thread fails after the thread is locked: no event either.
    let closed = shop
        .store
        .send_message()
        .id(thread.to_string())
        .body(
            serde_json::from_value::<types::SendMessageRequest>(json!({"message": "Hello?"}))
                .unwrap(),
        )
        .send()
        .await;
    assert_eq!(problem(closed).status, 409);
    let (events, _) = reader.follow(&from, 3).await;
    use EventType::*;
    assert_eq!(
        types_of(&events),
        [ThreadCreated, ChannelMessagePublished, ThreadUpdated]
    );
});

/// A customer's stream lasts as long as the access token it was opened with; the client then
/// reconnects with a fresh token (and Last-Event-ID). The store's stream has no such end.
async fn a_customer_stream_ends_with_its_token(backend: Backend) {
    let Some(app) = spawn_app_with_config(backend, HttpSettings::without_rate_limits(), |config| {
        config.access_token_ttl_secs = 2;
        config.events.keep_alive = KEEP_ALIVE;
    })
    .await
    else {
        return;
    };
    let shop = Shop::open(app).await;
    let mut janes = Stream::open(&shop, Some(&shop.jane), None, None)
        .await
        .unwrap();
    let mut stores = Stream::open(&shop, None, None, None).await.unwrap();
    let opened = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match janes.response.chunk().await {
                Ok(Some(_)) => continue,
                _ => return Instant::now(),
            }
        }
    })
    .await
    .expect("Jane's stream ends when her token expires");
    assert!(ended.duration_since(opened) <= Duration::from_secs(4));
    // The store's stream is still open: keep-alive comments keep coming.
    assert_eq!(stores.next(3 * KEEP_ALIVE).await, Some(Sse::Comment));
}

#[tokio::test]
async fn a_customer_stream_ends_with_its_token_sqlite() {
    a_customer_stream_ends_with_its_token(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_customer_stream_ends_with_its_token_postgres() {
    a_customer_stream_ends_with_its_token(Backend::Postgres).await;
}

/// On PostgreSQL a process tells the other replicas of its commits of events with `NOTIFY`,
/// sent after them and naming the process, never from inside the write transaction: no trigger
/// on `events` (a `NOTIFY` in the transaction would make every replica's writes commit one at
/// a time, `events/hub.rs`). Delivery from one process to another is
/// `crates/messaging-server/tests/events.rs`.
#[tokio::test]
async fn commits_are_announced_after_them_on_postgres() {
    use sea_orm::sqlx::{self, postgres::PgListener};

    /// The process the next notification names.
    async fn announced(listener: &mut PgListener) -> String {
        tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a commit of events is announced within 5 s")
            .unwrap()
            .payload()
            .to_owned()
    }

    let Some(shop) = open(Backend::Postgres).await else {
        return;
    };
    let pool = sqlx::PgPool::connect(shop.app.database_url())
        .await
        .unwrap();
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, 0, "no trigger notifies from inside a write");
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("messaging_events").await.unwrap();
    let conversation = start_conversation(&shop, &shop.jane, "Where is my order?").await;
    let process = announced(&mut listener).await;
    assert!(!process.is_empty(), "the notification names its process");
    // Drain what the conversation's commit announced, then one more commit, one more notice.
    while tokio::time::timeout(Duration::from_millis(300), listener.recv())
        .await
        .is_ok()
    {}
    store_says(
        &shop,
        conversation.thread.id,
        json!({"message": "On its way"}),
    )
    .await;
    assert_eq!(announced(&mut listener).await, process);
}

/// Under steady writes a process announces its commits at most once per
/// `EventFeedSettings::coalesce`: one notification covers the commits since the one before it
/// (`events/hub.rs`). Sent back to back, nearly every send was a `NOTIFY` of its own besides.
#[tokio::test]
async fn commits_in_a_burst_are_announced_together_on_postgres() {
    use sea_orm::sqlx::{self, postgres::PgListener};

    const COALESCE: Duration = Duration::from_millis(300);
    const SENDS: usize = 24;
    let Some(app) = spawn_app_with_config(
        Backend::Postgres,
        HttpSettings::without_rate_limits(),
        |config| config.events.coalesce = COALESCE,
    )
    .await
    else {
        return;
    };
    let shop = Shop::open(app).await;
    let conversation = start_conversation(&shop, &shop.jane, "Where is my order?").await;
    let pool = sqlx::PgPool::connect(shop.app.database_url())
        .await
        .unwrap();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("messaging_events").await.unwrap();
    // What the conversation's commit announced is over before the burst.
    tokio::time::sleep(COALESCE * 2).await;
    while tokio::time::timeout(Duration::from_millis(50), listener.recv())
        .await
        .is_ok()
    {}

    let started = Instant::now();
    let sends = (0..SENDS).map(|n| {
        store_says(
            &shop,
            conversation.thread.id,
            json!({ "message": format!("Update {n}") }),
        )
    });
    futures::future::join_all(sends).await;
    let burst = started.elapsed();
    let mut notifications = 0;
    while tokio::time::timeout(COALESCE * 3, listener.recv())
        .await
        .is_ok()
    {
        notifications += 1;
    }
    // One for each stretch of `COALESCE` the burst lasted, and one for its end.
    let most = 2 + (burst.as_millis() / COALESCE.as_millis()) as usize;
    assert!(
        (1..=most).contains(&notifications),
        "{SENDS} commits in {burst:?} were announced {notifications} times, at most {most} expected"
    );
    assert!(most < SENDS, "the burst took too long to tell: {burst:?}");
}
