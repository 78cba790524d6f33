//! No acknowledged write is lost when the server dies: 16 connections send messages into a few
//! threads, the process is killed with SIGKILL in the middle of the load, a new process starts on
//! the same database, and every message that was answered 201 before the kill is there.

mod processes;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use messaging_client::{Client, types};
use processes::{DropDatabase, Server, create_store, customer_thread, fresh_postgres, sqlite_dir};
use serde_json::json;
use uuid::Uuid;

const THREADS: usize = 4;
const SENDERS: usize = 16;
/// Acknowledged sends before the kill: the load is well under way.
const SENT_BEFORE_KILL: usize = 300;

/// `THREADS` customers, each with an order thread started by the store.
async fn threads(store: &Client) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..THREADS {
        let thread = customer_thread(store, i, Some(&format!("order-{i}"))).await;
        ids.push(thread.id);
    }
    ids
}

/// Every message id of a thread, page by page.
async fn stored_messages(store: &Client, thread: Uuid) -> HashSet<Uuid> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = store
            .get_thread_messages()
            .id(thread.to_string())
            .limit(200);
        if let Some(cursor) = &cursor {
            request = request.cursor(cursor.clone());
        }
        let page = request.send().await.unwrap().into_inner();
        ids.extend(page.messages.iter().map(|m| m.id));
        match page.pagination.next_cursor {
            Some(next) if page.pagination.has_more => cursor = Some(next),
            _ => return ids,
        }
    }
}

async fn killed_under_load_loses_no_acknowledged_message(database_url: &str) {
    let keys = create_store(database_url);
    let key = keys["secret_key_test"].as_str().unwrap().to_owned();
    let server = Server::start(database_url);
    let store = server.client(&key);
    let threads = Arc::new(threads(&store).await);

    let acknowledged = Arc::new(Mutex::new(Vec::<(Uuid, Uuid)>::new()));
    let failed = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (store, threads, acknowledged, failed) = (
                store.clone(),
                threads.clone(),
                acknowledged.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                for n in 0.. {
                    let thread = threads[(sender + n) % THREADS];
                    let body: types::SendMessageRequest =
                        serde_json::from_value(json!({"message": format!("{sender}/{n}")}))
                            .unwrap();
                    match store
                        .send_message()
                        .id(thread.to_string())
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(answer) => acknowledged
                            .lock()
                            .unwrap()
                            .push((thread, answer.into_inner().message.id)),
                        // The process is gone: this send was never acknowledged.
                        Err(err) if err.status().is_none() => return,
                        Err(err) => {
                            eprintln!("a send was refused: {err}");
                            failed.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < SENT_BEFORE_KILL {
        assert!(Instant::now() < deadline, "the load did not get going");
        assert!(!failed.load(Ordering::Relaxed), "a send was refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(!failed.load(Ordering::Relaxed), "a send was refused");
    let acknowledged = acknowledged.lock().unwrap().clone();

    let server = Server::start(database_url);
    let store = server.client(&key);
    let mut stored = HashSet::new();
    for thread in threads.iter() {
        stored.extend(stored_messages(&store, *thread).await);
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(_, message)| !stored.contains(message))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages were lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    // Each thread also holds its first message; sends in flight at the kill may or may not
    // have committed, but nothing else is there.
    assert!(stored.len() >= acknowledged.len() + THREADS);
    assert!(stored.len() <= acknowledged.len() + THREADS + SENDERS);
}

#[tokio::test]
async fn sqlite_keeps_every_acknowledged_message_when_killed() {
    let dir = sqlite_dir();
    killed_under_load_loses_no_acknowledged_message(&format!(
        "sqlite://{}/messaging.db",
        dir.display()
    ))
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_keeps_every_acknowledged_message_when_killed() {
    let Some(database_url) = fresh_postgres().await else {
        return;
    };
    let _drop = DropDatabase(database_url.clone());
    killed_under_load_loses_no_acknowledged_message(&database_url).await;
}
