//! The scheduled-message publisher with real `messaging-server` processes: exactly once with two
//! processes on one PostgreSQL database, and nothing lost when a process dies and another starts.
//!
//! Each process logs (as JSON) how many messages it published per tick; the sum over all
//! processes must equal the number of scheduled messages, and the channel must list each once.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use messaging_client::{Client, types};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_messaging-server");

/// A running server process and everything it has logged.
struct Server {
    child: Child,
    base_url: String,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Server {
    fn start(database_url: &str) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "--log-format",
                "json",
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--disable-rate-limits",
            ])
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start messaging-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "messaging-server listening" {
                    let _ = address_tx.send(
                        entry["fields"]["address"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                sink.lock().unwrap().push(entry);
            }
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs its address");
        Self {
            child,
            base_url: format!("http://{address}"),
            log,
        }
    }

    /// Messages this process published, from its log.
    fn published(&self) -> u64 {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["fields"]["message"] == "published scheduled messages to their channels")
            .map(|e| e["fields"]["count"].as_u64().unwrap_or(0))
            .sum()
    }

    fn client(&self, key: &str) -> Client {
        messaging_client::with_api_key(&self.base_url, key).unwrap()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops the test's PostgreSQL database at the end, whatever the outcome.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (admin, name) = self.0.rsplit_once('/').expect("a database URL");
        let (admin, name) = (format!("{admin}/postgres"), name.to_owned());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async move {
                    if let Ok(connection) = Database::connect(admin).await {
                        let _ = connection
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                    }
                })
        })
        .join();
    }
}

/// A fresh PostgreSQL database, or `None` (skipping) when none is reachable outside CI.
async fn fresh_postgres() -> Option<String> {
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let connection = match Database::connect(format!("{admin}/postgres")).await {
        Ok(connection) => connection,
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL is required under CI=true: {err}")
        }
        Err(err) => {
            // Straight to stderr: the test harness would capture `eprintln!` of a passing test.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED (no PostgreSQL): {err}; this PostgreSQL test passes without running \
                 (CI=true makes it fail instead)"
            );
            return None;
        }
    };
    let name = format!("publisher_{}", Uuid::now_v7().simple());
    connection
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    Some(format!("{admin}/{name}"))
}

fn sqlite_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("publisher-{}", Uuid::now_v7().simple()))
}

/// `messaging-server stores create`, as a deployer runs it.
fn create_store(database_url: &str) -> Value {
    let output = Command::new(BIN)
        .args(["stores", "create", "--name", "Acme"])
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run stores create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

/// A customer with an order thread; returns the thread's channel.
async fn order_thread(store: &Client) -> (Uuid, Uuid) {
    let body: types::RegisterRequest =
        serde_json::from_value(json!({"email": "jane@example.com", "password": "correct horse battery staple", "name": "Jane"}))
            .unwrap();
    let customer = store
        .register()
        .body(body)
        .send()
        .await
        .unwrap()
        .into_inner()
        .customer;
    let body: types::CreateConversationRequest = serde_json::from_value(
        json!({"customer_id": customer.id, "subject": "Order 1", "message": "Thanks!", "resource_id": "order-1"}),
    )
    .unwrap();
    let thread = store
        .create_conversation()
        .body(body)
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread;
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
