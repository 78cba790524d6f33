//! The administrative commands as an operator runs them: the real binary on a SQLite file,
//! JSON on stdout and nothing else there, errors on stderr with a failing exit status; and the
//! keys they print (or revoke) are what the server then accepts (or refuses).

use std::{path::PathBuf, process::Command};

use messaging_server::{HttpSettings, spawn};
use messaging_service::{MessagingService, ServiceConfig};
use serde_json::Value;

/// A fresh database file, removed with its directory at the end.
struct TempDatabase {
    dir: PathBuf,
}

impl TempDatabase {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("messaging-cli-{}", uuid::Uuid::new_v4()));
        Self { dir }
    }

    fn url(&self) -> String {
        format!("sqlite://{}/messaging.db", self.dir.display())
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

fn run(database: &TempDatabase, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_messaging-server"))
        .args(args)
        .env("DATABASE_URL", database.url())
        .env_remove("MESSAGING_SECRET")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");
    Output {
        success: output.status.success(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs a command that must succeed and print exactly one JSON value (one line) on stdout.
fn json(database: &TempDatabase, args: &[&str]) -> Value {
    let output = run(database, args);
    assert!(output.success, "{args:?} failed: {}", output.stderr);
    assert_eq!(output.stdout.lines().count(), 1, "{}", output.stdout);
    serde_json::from_str(&output.stdout).expect("stdout is JSON")
}

async fn status_with(url: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{url}/v1/messaging/threads"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn stores_and_keys_are_administered_from_the_command_line() {
    let database = TempDatabase::new();
    let store = json(&database, &["stores", "create", "--name", "Acme"]);
    let store_id = store["store_id"].as_str().unwrap().to_owned();
    let secret_key = store["secret_key_test"].as_str().unwrap().to_owned();
    for field in [
        "secret_key_test",
        "publishable_key_test",
        "secret_key_live",
        "publishable_key_live",
    ] {
        assert!(
            store[field].as_str().unwrap().starts_with("tybrite_"),
            "{field}"
        );
    }

    let keys = json(
        &database,
        &["stores", "keys", "list", "--store-id", &store_id],
    );
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 4);
    for key in keys {
        assert_eq!(key["store_id"], store_id.as_str());
        assert!(key["revoked_at"].is_null());
        assert!(key.get("key").is_none() && key.get("key_hash").is_none());
        // A short prefix to recognise the key by, not the key.
        let prefix = key["prefix"].as_str().unwrap().trim_end_matches('…');
        assert!(prefix.len() <= "tybrite_sk_test_".len() + 4, "{prefix}");
        let field = format!(
            "{}_key_{}",
            key["kind"].as_str().unwrap(),
            key["mode"].as_str().unwrap()
        );
        assert!(
            store[field.as_str()].as_str().unwrap().starts_with(prefix),
            "{field}"
        );
    }
    let listed = serde_json::to_string(keys).unwrap();
    assert!(!listed.contains(&secret_key), "keys are never listed");
    let secret_test = keys
        .iter()
        .find(|k| k["mode"] == "test" && k["kind"] == "secret")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let rotated = json(
        &database,
        &["stores", "keys", "rotate", "--key-id", &secret_test],
    );
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("tybrite_sk_test_"));
    assert_eq!(rotated["replaces"], secret_test.as_str());
    assert_eq!(
        (rotated["mode"].as_str(), rotated["kind"].as_str()),
        (Some("test"), Some("secret"))
    );
    let new_id = rotated["id"].as_str().unwrap().to_owned();

    // Rotating a revoked key fails: nothing on stdout, the reason on stderr.
    let again = run(
        &database,
        &["stores", "keys", "rotate", "--key-id", &secret_test],
    );
    assert!(!again.success);
    assert!(again.stdout.is_empty(), "{}", again.stdout);
    assert!(again.stderr.contains("key_not_found"), "{}", again.stderr);

    // The server (same database, same stored secret) accepts the new key only.
    let service = MessagingService::connect(&database.url(), ServiceConfig::default())
        .await
        .unwrap();
    let (address, server) = spawn(service, &HttpSettings::without_rate_limits())
        .await
        .unwrap();
    let url = format!("http://{address}");
    assert_eq!(status_with(&url, &new_key).await, 200);
    assert_eq!(status_with(&url, &secret_key).await, 401);

    let revoked = json(
        &database,
        &["stores", "keys", "revoke", "--key-id", &new_id],
    );
    assert!(revoked["revoked_at"].is_string());
    assert!(revoked.get("key").is_none());
    // Another process revoked it: the server notices at once, or within the few seconds it
    // may keep a verified key.
    let mut status = status_with(&url, &new_key).await;
    for _ in 0..40 {
        if status == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        status = status_with(&url, &new_key).await;
    }
    assert_eq!(status, 401, "a revoked key is refused");
    let live_key = store["secret_key_live"].as_str().unwrap();
    assert_eq!(status_with(&url, live_key).await, 200);
    server.abort();

    let keys = json(
        &database,
        &["stores", "keys", "list", "--store-id", &store_id],
    );
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 5);
    assert_eq!(keys.iter().filter(|k| k["revoked_at"].is_null()).count(), 3);

    // Unknown ids and malformed arguments fail cleanly.
    let unknown = uuid::Uuid::now_v7().to_string();
    for args in [
        vec!["stores", "keys", "list", "--store-id", unknown.as_str()],
        vec!["stores", "keys", "revoke", "--key-id", unknown.as_str()],
        vec!["stores", "keys", "revoke", "--key-id", "not-a-uuid"],
    ] {
        let output = run(&database, &args);
        assert!(!output.success, "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}: {}", output.stdout);
        assert!(!output.stderr.is_empty());
    }
}

#[test]
fn smtp_delivery_needs_its_settings_and_never_prints_the_url() {
    let database = TempDatabase::new();
    let missing = run(
        &database,
        &["serve", "--bind", "127.0.0.1:0", "--otp-delivery", "smtp"],
    );
    assert!(!missing.success);
    assert!(missing.stderr.contains("--smtp-url"), "{}", missing.stderr);

    let bad = run(
        &database,
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--otp-delivery",
            "smtp",
            "--smtp-url",
            "http://user:hunter2@mail.example.com",
            "--smtp-from",
            "no-reply@example.com",
        ],
    );
    assert!(!bad.success);
    assert!(
        bad.stderr.contains("SMTP URL is not valid"),
        "{}",
        bad.stderr
    );
    assert!(!bad.stderr.contains("hunter2"), "{}", bad.stderr);
}

#[test]
fn the_readme_says_what_serve_help_says_about_rate_limits() {
    let output = Command::new(env!("CARGO_BIN_EXE_messaging-server"))
        .args(["serve", "--help"])
        .output()
        .expect("run messaging-server serve --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let start = help
        .find("Rate limits (429")
        .expect("serve --help explains the rate limits");
    let explained = help[start..].trim_end();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("the README");
    assert!(
        readme.contains(explained),
        "README.md's rate-limit section must quote `serve --help`:\n{explained}"
    );
}
