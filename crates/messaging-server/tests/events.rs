//! The event feed across replicas: two real `messaging-server` processes on one PostgreSQL
//! database, with concurrent writers on both. A stream on one and a long-poll reader on the
//! other each receive every event exactly once, in the same order, and in commit order on
//! every thread; an event written on one process reaches a stream on the other within a second.
//!
//! Commit order is checked with reactions: each adds one emoji to a message, and its
//! `message.updated` event carries the message's reactions as its transaction left them, so
//! in commit order the counts on one message go 1, 2, 3, … without a step back.

mod processes;

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use messaging_client::{Client, types};
use processes::{DropDatabase, Server, create_store, fresh_postgres};
use serde_json::{Value, json};

/// Writers per process, and what each does.
const WRITERS: usize = 4;
// 8 writers × 4 over two messages: 16 emoji per message, within the 20 one subscriber may add.
const REACTIONS_PER_WRITER: usize = 4;
const SENDS_PER_WRITER: usize = 6;

/// Every event of a server-sent event stream, in order, sent into `events`.
async fn read_stream(url: String, key: String, events: tokio::sync::mpsc::UnboundedSender<Value>) {
    let mut response = reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), 200);
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            if !data.is_empty() && events.send(serde_json::from_str(&data).unwrap()).is_err() {
                return;
            }
        }
    }
}

/// Events from a channel until `count` arrived (30 s at most).
async fn collect(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    count: usize,
) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < count {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => got.push(event),
            _ => panic!("only {} of {count} events arrived", got.len()),
        }
    }
    got
}

/// Long-polls `client`'s feed from `after`, sending every event into `events`.
async fn long_poll(
    client: Client,
    after: String,
    events: tokio::sync::mpsc::UnboundedSender<Value>,
) {
    let mut after = after;
    loop {
        let list = client
            .list_events()
            .after(after.as_str())
            .wait(5)
            .limit(std::num::NonZeroU32::new(50).unwrap())
            .send()
            .await
            .expect("listEvents")
            .into_inner();
        for event in list.events {
            if events.send(serde_json::to_value(event).unwrap()).is_err() {
                return;
            }
        }
        after = list.next_after;
    }
}

fn body<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// What one reader received, checked: every event once, each sent message once, and on each
/// message the reaction counts in commit order.
fn check(name: &str, events: &[Value], sent: &HashSet<String>, reactions_per_message: usize) {
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "{name}: an event came twice");
    let created: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "message.created")
        .map(|e| e["data"]["message"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(created.len(), sent.len(), "{name}: message.created events");
    assert_eq!(
        created.iter().cloned().collect::<HashSet<_>>(),
        *sent,
        "{name}"
    );
    let mut counts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for event in events.iter().filter(|e| e["type"] == "message.updated") {
        let message = &event["data"]["message"];
        counts
            .entry(message["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(message["reactions"].as_array().unwrap().len());
    }
    for (message, counts) in &counts {
        let expected: Vec<usize> = (1..=reactions_per_message).collect();
        assert_eq!(
            counts, &expected,
            "{name}: reactions on {message} out of commit order"
        );
    }
}

#[tokio::test]
async fn two_processes_deliver_every_event_once_in_commit_order_per_thread() {
    let Some(database_url) = fresh_postgres().await else {
        return;
    };
    let _cleanup = DropDatabase(database_url.clone());
    let keys = create_store(&database_url);
    let key = keys["secret_key_test"].as_str().unwrap().to_owned();
    let (a, b) = (Server::start(&database_url), Server::start(&database_url));
    let (store_a, store_b) = (a.client(&key), b.client(&key));

    let customer = store_a
        .register()
        .body(body::<types::RegisterRequest>(json!({"email": "jane@example.com", "password": "correct horse battery staple", "name": "Jane"})))
        .send()
        .await
        .unwrap()
        .into_inner()
        .customer;
    let start = store_a
        .list_events()
        .send()
        .await
        .unwrap()
        .into_inner()
        .next_after;
    // Two threads; their first messages collect the reactions.
    let mut threads = Vec::new();
    for subject in ["First", "Second"] {
        let conversation = store_a
            .create_conversation()
            .body(body::<types::CreateConversationRequest>(
                json!({"customer_id": customer.id, "subject": subject, "message": "Hello"}),
            ))
            .send()
            .await
            .unwrap()
            .into_inner();
        threads.push((conversation.thread.id, conversation.message.id));
    }

    // Readers from the start: a stream on B, a long-poll on A.
    let (stream_tx, mut streamed) = tokio::sync::mpsc::unbounded_channel();
    let stream = tokio::spawn(read_stream(
        format!("{}/v1/messaging/events/stream?after={start}", b.base_url),
        key.clone(),
        stream_tx,
    ));
    let (poll_tx, mut polled) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(long_poll(store_a.clone(), start.clone(), poll_tx));

    // Writers on both processes at once, on the same two threads.
    let mut writers = Vec::new();
    for (server, client) in [("a", &store_a), ("b", &store_b)] {
        for writer in 0..WRITERS {
            let client = client.clone();
            let threads = threads.clone();
            writers.push(tokio::spawn(async move {
                let mut sent = Vec::new();
                for i in 0..REACTIONS_PER_WRITER.max(SENDS_PER_WRITER) {
                    let (thread, first) = threads[i % 2];
                    if i < REACTIONS_PER_WRITER {
                        client
                            .add_reaction()
                            .id(first)
                            .emoji(format!("{server}{writer}-{i}"))
                            .send()
                            .await
                            .expect("addReaction");
                    }
                    if i < SENDS_PER_WRITER {
                        let message: types::SendMessageRequest =
                            body(json!({"message": format!("{server}{writer} #{i}")}));
                        let sent_message = client
                            .send_message()
                            .id(thread.to_string())
                            .body(message)
                            .send()
                            .await
                            .expect("sendMessage")
                            .into_inner()
                            .message;
                        sent.push(sent_message.id.to_string());
                    }
                }
                sent
            }));
        }
    }
    let mut sent = HashSet::new();
    for writer in writers {
        sent.extend(writer.await.unwrap());
    }
    let writers = 2 * WRITERS;
    // Two conversations (thread.created + channel.message_published each), every reaction, and
    // every sent message (message.created + channel.message_published).
    let expected = 4 + writers * REACTIONS_PER_WRITER + writers * SENDS_PER_WRITER * 2;
    let streamed = collect(&mut streamed, expected).await;
    let polled = collect(&mut polled, expected).await;
    let per_message = writers * REACTIONS_PER_WRITER / 2;
    check("stream on B", &streamed, &sent, per_message);
    check("long-poll on A", &polled, &sent, per_message);
    let order = |events: &[Value]| events.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert_eq!(
        order(&streamed),
        order(&polled),
        "both processes serve one order"
    );
    stream.abort();
    poller.abort();

    // Nothing more arrives, and a new event written on A reaches a stream on B within 1 s.
    let (live_tx, mut live) = tokio::sync::mpsc::unbounded_channel();
    let live_stream = tokio::spawn(read_stream(
        format!("{}/v1/messaging/events/stream", b.base_url),
        key.clone(),
        live_tx,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let message: types::SendMessageRequest = body(json!({"message": "Across replicas"}));
    let sent = store_a
        .send_message()
        .id(threads[0].0.to_string())
        .body(message)
        .send()
        .await
        .unwrap()
        .into_inner()
        .message;
    let answered = Instant::now();
    // A stream without a position starts at the current one, which on PostgreSQL may still be
    // before changes committed a moment earlier: skip those.
    loop {
        let event = collect(&mut live, 1).await.remove(0);
        if event["data"]["message"]["id"] == sent.id.to_string() {
            assert_eq!(event["type"], "message.created", "{event}");
            break;
        }
    }
    let delay = answered.elapsed();
    assert!(delay < Duration::from_secs(1), "A to B took {delay:?}");
    live_stream.abort();
}
