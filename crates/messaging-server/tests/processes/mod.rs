//! Real `messaging-server` processes for the tests in this directory: start and stop them, read
//! what they log, and give each test a fresh database (PostgreSQL or a SQLite file) and a store
//! made with `messaging-server stores create`, as a deployer would.

#![allow(dead_code)] // Each test binary uses its own part.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use messaging_client::Client;
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_messaging-server");

/// A running server process and everything it has logged.
pub struct Server {
    child: Child,
    pub base_url: String,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Server {
    /// `messaging-server serve` without rate limits.
    pub fn start(database_url: &str) -> Self {
        Self::start_with(database_url, &["--disable-rate-limits"], &[])
    }

    /// `messaging-server serve` with extra flags and environment variables.
    pub fn start_with(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
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

    /// How many lines with this message this process logged.
    pub fn logged(&self, message: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["fields"]["message"] == message)
            .count()
    }

    /// Messages this process published, from its log.
    pub fn published(&self) -> u64 {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["fields"]["message"] == "published scheduled messages to their channels")
            .map(|e| e["fields"]["count"].as_u64().unwrap_or(0))
            .sum()
    }

    pub fn client(&self, key: &str) -> Client {
        messaging_client::with_api_key(&self.base_url, key).unwrap()
    }

    pub fn kill(mut self) {
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
pub struct DropDatabase(pub String);

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
pub async fn fresh_postgres() -> Option<String> {
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
    let name = format!("server_test_{}", Uuid::now_v7().simple());
    connection
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    Some(format!("{admin}/{name}"))
}

pub fn sqlite_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("server-test-{}", Uuid::now_v7().simple()))
}

/// `messaging-server stores create`, as a deployer runs it.
pub fn create_store(database_url: &str) -> Value {
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

/// As the store: registers customer `n` (`customer-{n}@example.com`) and starts an order thread
/// for them (`Order {n}`, with `resource_id` when given). Returns the thread.
pub async fn customer_thread(
    store: &Client,
    n: usize,
    resource_id: Option<&str>,
) -> messaging_client::types::Thread {
    let body: messaging_client::types::RegisterRequest =
        serde_json::from_value(serde_json::json!({
            "email": format!("customer-{n}@example.com"),
            "password": "correct horse battery staple",
            "name": format!("Customer {n}"),
        }))
        .unwrap();
    let customer = store
        .register()
        .body(body)
        .send()
        .await
        .unwrap()
        .into_inner()
        .customer;
    let mut conversation = serde_json::json!({
        "customer_id": customer.id,
        "subject": format!("Order {n}"),
        "message": "Where is my order?",
    });
    if let Some(resource_id) = resource_id {
        conversation["resource_id"] = resource_id.into();
    }
    store
        .create_conversation()
        .body(
            serde_json::from_value::<messaging_client::types::CreateConversationRequest>(
                conversation,
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread
}
