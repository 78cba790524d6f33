//! The event feed under load: how long a sent message takes from sendMessage's answer to its
//! `message.created` event arriving on each of many open streams (p50, p99), and how many idle
//! streams one process holds and the resident memory each costs.
//!
//! Idle streams are held by a child process (this binary, `hold-streams`), so the server's
//! process pays only for its own side of each connection and both stay under the file limit.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use uuid::Uuid;

/// What the delivery measurement found.
pub struct Delivery {
    pub streams: usize,
    pub sends: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Deliveries that did not arrive within 10 s.
    pub missing: usize,
}

/// Opens `streams` streams as the store, then sends `sends` messages one by one (20 ms apart)
/// and measures, per stream and message, the time from the send's answer to the event.
pub async fn delivery(
    base: &str,
    key: &str,
    threads: &[Uuid],
    streams: usize,
    sends: usize,
) -> anyhow::Result<Delivery> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut readers = Vec::new();
    for _ in 0..streams {
        let response = http
            .get(format!("{base}/v1/messaging/events/stream"))
            .bearer_auth(key)
            .send()
            .await
            .context("opening a stream")?;
        if !response.status().is_success() {
            bail!("the stream answered {}", response.status());
        }
        readers.push(tokio::spawn(read_message_ids(
            response,
            arrivals_tx.clone(),
        )));
    }
    drop(arrivals_tx);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut answered: HashMap<String, Instant> = HashMap::new();
    for i in 0..sends {
        let thread = threads[i % threads.len()];
        let response = http
            .post(format!("{base}/v1/messaging/threads/{thread}/messages"))
            .bearer_auth(key)
            .json(&serde_json::json!({"message": format!("event bench {i}")}))
            .send()
            .await?;
        let at = Instant::now();
        if !response.status().is_success() {
            bail!("sendMessage answered {}", response.status());
        }
        let body: serde_json::Value = response.json().await?;
        let id = body["message"]["id"]
            .as_str()
            .context("a message id")?
            .to_owned();
        answered.insert(id, at);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let expected = streams * sends;
    let mut latencies = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while latencies.len() < expected {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some((id, arrived))) => {
                if let Some(sent) = answered.get(&id) {
                    latencies.push(arrived.saturating_duration_since(*sent).as_secs_f64() * 1e3);
                }
            }
            _ => break,
        }
    }
    for reader in readers {
        reader.abort();
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Delivery {
        streams,
        sends,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        missing: expected - latencies.len(),
    })
}

/// Sends the message id of every `message.created` event of a stream, with when it arrived.
async fn read_message_ids(
    mut response: reqwest::Response,
    arrivals: mpsc::UnboundedSender<(String, Instant)>,
) {
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let at = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if !block.contains("event: message.created") {
                continue;
            }
            let Some(id) = block
                .find("\"message\":{")
                .and_then(|m| block[m..].find("\"id\":\"").map(|i| m + i + 6))
                .and_then(|start| block.get(start..start + 36))
            else {
                continue;
            };
            if arrivals.send((id.to_owned(), at)).is_err() {
                return;
            }
        }
    }
}

/// What holding idle streams cost the server's process.
pub struct Idle {
    pub streams: usize,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    pub kib_per_stream: f64,
}

/// Has a child process open `count` idle streams to `base`, then reads this process's resident
/// memory. The streams stay open until the child is killed at the end.
pub async fn idle(base: &str, key: &str, count: usize) -> anyhow::Result<Idle> {
    let before = resident_bytes()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["hold-streams", base, &count.to_string()])
        .env("BENCH_KEY", key)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the stream holder")?;
    let stdout = child.stdout.take().context("the holder's stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("ready") || line.starts_with("failed"))
    })
    .await?;
    let outcome = match ready.as_deref() {
        Some(line) if line.starts_with("ready") => {
            // Let the server settle (buffers, the first keep-alive) before measuring.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let after = resident_bytes()?;
            Ok(Idle {
                streams: count,
                rss_before_mb: before as f64 / 1e6,
                rss_after_mb: after as f64 / 1e6,
                kib_per_stream: after.saturating_sub(before) as f64 / count as f64 / 1024.0,
            })
        }
        other => Err(anyhow::anyhow!(
            "the stream holder did not get ready: {other:?}"
        )),
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// The child's side: `hold-streams <base> <count>` with the key in `BENCH_KEY`. Opens the
/// streams over plain TCP (nothing per connection but the socket), prints `ready`, and holds
/// them until killed.
pub async fn hold_streams(base: &str, count: usize) -> anyhow::Result<()> {
    let key = std::env::var("BENCH_KEY").context("BENCH_KEY")?;
    let address = base.trim_start_matches("http://").to_owned();
    let request = Arc::new(format!(
        "GET /v1/messaging/events/stream HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
    ));
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut socket = tokio::net::TcpStream::connect(&address).await?;
        socket.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 512];
        let read = socket.read(&mut head).await?;
        if !head[..read].starts_with(b"HTTP/1.1 200") {
            println!("failed: {}", String::from_utf8_lossy(&head[..read]));
            bail!("a stream was refused");
        }
        // Keep reading (keep-alive comments) so the server's writes never block.
        held.push(tokio::spawn(async move {
            let mut sink = [0u8; 256];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
    }
    println!("ready {count}");
    std::future::pending::<()>().await;
    Ok(())
}

/// This process's resident memory (Linux): the server's, and the benchmark's small client.
pub fn resident_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .context("VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}
