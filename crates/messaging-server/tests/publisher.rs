//! The scheduled-message publisher with real `messaging-server` processes: exactly once with two
//! processes on one PostgreSQL database, and nothing lost when a process dies and another starts.
//!
//! Each process logs (as JSON) how many messages it published per tick; the sum over all
//! processes must equal the number of scheduled messages, and the channel must list each once.

mod processes;

use std::time::{Duration, Instant};

use chrono::Utc;
use messaging_client::{Client, types};
use processes::{DropDatabase, Server, create_store, customer_thread, fresh_postgres, sqlite_dir};
use serde_json::json;
use uuid::Uuid;

/// A customer with an order thread; returns the thread's channel.
async fn order_thread(store: &Client) -> (Uuid, Uuid) {
    let thread = customer_thread(store, 1, Some("order-1")).await;
    let channels = store
        .list_channels()
        .send()
        .await
        .unwrap()
        .into_inner()
        .channels;
    (thread.id, channels[0].id)
}

async fn schedule(store: &Client, count: usize, due: chrono::DateTime<Utc>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..count {
        let body: types::SendMessageRequest = serde_json::from_value(
            json!({"message": format!("reminder {i}"), "type": "pickup_reminder", "publish_to_channel_at": due}),
        )
        .unwrap();
        ids.push(
            store
                .send_message()
                .id("thrd_order-1")
                .body(body)
                .send()
                .await
                .unwrap()
                .into_inner()
                .message
                .id,
        );
    }
    ids
}

/// Waits until the channel has no pending messages, then returns its published message ids.
async fn published_ids(store: &Client, channel: Uuid) -> Vec<Uuid> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = store
            .get_channel()
            .id(channel)
            .send()
            .await
            .unwrap()
            .into_inner();
        if view.pending_messages.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scheduled messages were not published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = store
            .get_channel_messages()
            .id(channel)
            .limit(std::num::NonZeroU32::new(200).unwrap());
        if let Some(c) = &cursor {
            request = request.cursor(c.as_str());
        }
        let page = request.send().await.unwrap().into_inner();
        ids.extend(page.messages.iter().map(|m| m.id));
        match page.pagination.next_cursor {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn two_processes_on_one_postgres_publish_each_message_once() {
    let Some(database_url) = fresh_postgres().await else {
        return;
    };
    let _cleanup = DropDatabase(database_url.clone());
    let keys = create_store(&database_url);
    let key = keys["secret_key_test"].as_str().unwrap();
    let (a, b) = (Server::start(&database_url), Server::start(&database_url));
    let (store_a, store_b) = (a.client(key), b.client(key));
    let (_, channel) = order_thread(&store_a).await;

    // Far enough ahead that all 60 are still scheduled (not due) when sent, even on a busy
    // machine; a message sent after its time is published at once, by no publisher.
    let due = Utc::now() + chrono::Duration::seconds(6);
    let mut scheduled = schedule(&store_a, 30, due).await;
    scheduled.extend(schedule(&store_b, 30, due).await);
    assert!(
        Utc::now() < due,
        "scheduling 60 messages took longer than 6 s"
    );
    let published = published_ids(&store_b, channel).await;

    for id in &scheduled {
        assert_eq!(
            published.iter().filter(|p| *p == id).count(),
            1,
            "message {id} published once"
        );
    }
    // Each process logs what it published; on a busy machine its line may reach the test's log
    // reader a little after the channel shows the messages: wait for the 60 to be counted.
    let counted = Instant::now() + Duration::from_secs(15);
    while a.published() + b.published() < 60 && Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let both publishers tick a few more times: nothing is published again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        a.published() + b.published(),
        60,
        "a: {}, b: {}",
        a.published(),
        b.published()
    );
}

async fn survives_a_restart(database_url: String) {
    let keys = create_store(&database_url);
    let key = keys["secret_key_test"].as_str().unwrap();
    let first = Server::start(&database_url);
    let (_, channel) = order_thread(&first.client(key)).await;
    let due = Utc::now() + chrono::Duration::seconds(3);
    let scheduled = schedule(&first.client(key), 10, due).await;
    // The process dies before anything is due.
    assert_eq!(first.published(), 0);
    first.kill();
    tokio::time::sleep(Duration::from_millis(3_200)).await;

    let second = Server::start(&database_url);
    let published = published_ids(&second.client(key), channel).await;
    for id in &scheduled {
        assert_eq!(
            published.iter().filter(|p| *p == id).count(),
            1,
            "message {id} published once"
        );
    }
    let counted = Instant::now() + Duration::from_secs(15);
    while second.published() < 10 && Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(second.published(), 10);
}

#[tokio::test]
async fn scheduled_messages_survive_a_restart_on_postgres() {
    let Some(database_url) = fresh_postgres().await else {
        return;
    };
    let _cleanup = DropDatabase(database_url.clone());
    survives_a_restart(database_url).await;
}

#[tokio::test]
async fn scheduled_messages_survive_a_restart_on_sqlite() {
    let dir = sqlite_dir();
    survives_a_restart(format!("sqlite://{}/messaging.db", dir.display())).await;
    let _ = std::fs::remove_dir_all(dir);
}
