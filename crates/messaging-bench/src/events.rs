//! The event feed under load: how long a sent message takes from sendMessage's answer to its
//! `message.created` event arriving on each of many open streams (p50, p99), and how many idle
//! streams one process holds and the resident memory each costs.
//!
//! The streams' client side runs in a child process (this binary, `read-streams` and
//! `hold-streams`), so the server's process holds only its own side of each connection and the
//! figures are the server's: its resident memory, and its delivery time without a thousand
//! readers of the benchmark queued on its own runtime. Both processes take their timestamps
//! from the system clock, which they share.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
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

/// How long the readers wait for deliveries after the last send.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Has a child process open `streams` streams as the store, then sends `sends` messages one by
/// one (20 ms apart) and measures, per stream and message, the time from the send's answer to
/// the event's arrival in the child.
pub async fn delivery(
    base: &str,
    key: &str,
    threads: &[Uuid],
    streams: usize,
    sends: usize,
) -> anyhow::Result<Delivery> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let mut child = Child::start("read-streams", base, key, streams, Some(sends))?;
    child.ready().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut answered: HashMap<String, u64> = HashMap::new();
    for i in 0..sends {
        let thread = threads[i % threads.len()];
        let response = http
            .post(format!("{base}/v1/messaging/threads/{thread}/messages"))
            .bearer_auth(key)
            .json(&serde_json::json!({"message": format!("event bench {i}")}))
            .send()
            .await?;
        let at = unix_nanos();
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

    // The child reports once every delivery arrived, or when asked to after the timeout.
    let arrivals = child.arrivals(DELIVERY_TIMEOUT).await?;
    let expected = streams * sends;
    let mut latencies: Vec<f64> = arrivals
        .iter()
        .filter_map(|(id, arrived)| {
            let sent = answered.get(id)?;
            Some(arrived.saturating_sub(*sent) as f64 / 1e6)
        })
        .collect();
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
        missing: expected.saturating_sub(latencies.len()),
    })
}

/// What holding idle streams cost the server's process: its anonymous resident memory (what the
/// process itself holds; the file-backed part is the binary and the memory-mapped database file,
/// which does not grow with streams but with what reads touched).
pub struct Idle {
    pub streams: usize,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    pub kib_per_stream: f64,
    /// `messaging_event_streams_open` on `/metrics` while the streams were held, and after the
    /// holder left.
    pub gauge_held: Option<f64>,
    pub gauge_after: Option<f64>,
}

/// Has a child process open `count` idle streams to `base`, then reads this process's resident
/// memory and the open-streams gauge. The streams stay open until the child is killed.
pub async fn idle(base: &str, key: &str, count: usize) -> anyhow::Result<Idle> {
    let (before, _) = resident_split()?;
    let mut child = Child::start("hold-streams", base, key, count, None)?;
    child.ready().await?;
    // Let the server settle (buffers, the first keep-alive) before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, file) = resident_split()?;
    println!("resident while held: {after:.0} MB anonymous, {file:.0} MB file-backed");
    let gauge_held = open_streams_gauge(base).await?;
    child.kill();
    // The server notices a vanished idle client when a keep-alive comment (every 15 s) fails:
    // the first write after the client left may still succeed, the next one does not.
    let mut gauge_after = open_streams_gauge(base).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while gauge_after.is_some_and(|g| g > 0.0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        gauge_after = open_streams_gauge(base).await?;
    }
    Ok(Idle {
        streams: count,
        rss_before_mb: before,
        rss_after_mb: after,
        kib_per_stream: (after - before).max(0.0) * 1e6 / count as f64 / 1024.0,
        gauge_held,
        gauge_after,
    })
}

/// `messaging_event_streams_open` as `/metrics` shows it.
async fn open_streams_gauge(base: &str) -> anyhow::Result<Option<f64>> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text.lines().find_map(|line| {
        line.strip_prefix("messaging_event_streams_open ")
            .and_then(|value| value.trim().parse().ok())
    }))
}

/// A child process holding streams.
struct Child {
    process: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Child {
    fn start(
        role: &str,
        base: &str,
        key: &str,
        streams: usize,
        sends: Option<usize>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([role, base, &streams.to_string()])
            .args(sends.map(|s| s.to_string()))
            .env("BENCH_KEY", key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut process = command
            .spawn()
            .with_context(|| format!("starting the {role} child"))?;
        let stdout = process.stdout.take().context("the child's stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { process, lines })
    }

    /// Waits for `ready` (every stream open).
    async fn ready(&mut self) -> anyhow::Result<()> {
        match self.lines.recv().await {
            Some(line) if line.starts_with("ready") => Ok(()),
            other => bail!("the stream child did not get ready: {other:?}"),
        }
    }

    /// The `(message id, arrival)` of every `message.created` event on every stream: sent by
    /// the child once all arrived, or after `timeout` when asked.
    async fn arrivals(&mut self, timeout: Duration) -> anyhow::Result<Vec<(String, u64)>> {
        let mut arrivals = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut asked = false;
        loop {
            let line = if asked {
                self.lines.recv().await
            } else {
                match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                    Ok(line) => line,
                    Err(_) => {
                        let stdin = self.process.stdin.as_mut().context("the child's stdin")?;
                        writeln!(stdin, "report")?;
                        stdin.flush()?;
                        asked = true;
                        continue;
                    }
                }
            };
            let Some(line) = line else {
                bail!("the stream child ended before reporting");
            };
            if line == "end" {
                return Ok(arrivals);
            }
            if let Some(rest) = line.strip_prefix("arrival ") {
                let (id, at) = rest.split_once(' ').context("an arrival line")?;
                arrivals.push((id.to_owned(), at.parse()?));
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child's side: `hold-streams <base> <count>` or `read-streams <base> <count> <sends>`,
/// the key in `BENCH_KEY`. Opens the streams over plain TCP (nothing per connection but the
/// socket and a small buffer) and prints `ready`. `hold-streams` then holds them until killed.
/// `read-streams` notes when each `message.created` event arrives on each stream and, once
/// `count * sends` arrived or `report` comes on stdin, prints them (`arrival <message id>
/// <unix nanos>`) and `end`.
pub async fn child(role: &str, base: &str, count: usize, sends: usize) -> anyhow::Result<()> {
    let key = std::env::var("BENCH_KEY").context("BENCH_KEY")?;
    let address = base.trim_start_matches("http://").to_owned();
    let request = Arc::new(format!(
        "GET /v1/messaging/events/stream HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
    ));
    let reading = role == "read-streams";
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(String, u64)>();
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let mut socket = tokio::net::TcpStream::connect(&address).await?;
        socket.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 512];
        let read = socket.read(&mut head).await?;
        if !head[..read].starts_with(b"HTTP/1.1 200") {
            println!("failed: {}", String::from_utf8_lossy(&head[..read]));
            bail!("a stream was refused");
        }
        sockets.push(socket);
    }
    for socket in sockets {
        let arrivals = reading.then(|| arrivals_tx.clone());
        // Keep reading (events, keep-alive comments) so the server's writes never block.
        tokio::spawn(read_stream(socket, arrivals));
    }
    drop(arrivals_tx);
    println!("ready {count}");
    if !reading {
        std::future::pending::<()>().await;
    }
    let expected = count * sends;
    // Any line on stdin (or its end) asks for the report.
    let (report_tx, mut report) = mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().lines().next();
        let _ = report_tx.send(());
    });
    let mut seen = Vec::with_capacity(expected);
    while seen.len() < expected {
        tokio::select! {
            arrival = arrivals.recv() => match arrival {
                Some(arrival) => seen.push(arrival),
                None => break,
            },
            _ = report.recv() => break,
        }
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (id, at) in &seen {
        writeln!(out, "arrival {id} {at}")?;
    }
    writeln!(out, "end")?;
    out.flush()?;
    std::process::exit(0);
}

/// Reads one stream; with `arrivals`, sends the message id of each `message.created` event
/// and when the read that completed it returned.
async fn read_stream(
    mut socket: tokio::net::TcpStream,
    arrivals: Option<mpsc::UnboundedSender<(String, u64)>>,
) {
    let mut chunk = vec![0u8; if arrivals.is_some() { 16 * 1024 } else { 256 }];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let read = match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let Some(arrivals) = &arrivals else { continue };
        let at = unix_nanos();
        pending.extend_from_slice(&chunk[..read]);
        while let Some(end) = find(&pending, b"\n\n") {
            let block: Vec<u8> = pending.drain(..end + 2).collect();
            if let Some(id) = message_created_id(&block)
                && arrivals.send((id, at)).is_err()
            {
                return;
            }
        }
    }
}

/// The message id of a `message.created` event block.
fn message_created_id(block: &[u8]) -> Option<String> {
    find(block, b"event: message.created")?;
    let message = find(block, b"\"message\":{")?;
    let start = message + find(&block[message..], b"\"id\":\"")? + 6;
    let id = block.get(start..start + 36)?;
    Some(String::from_utf8_lossy(id).into_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// This process's resident memory in MB as `/proc/self/status` splits it: anonymous (heap),
/// and file-backed (the binary's pages and the memory-mapped database file's).
pub fn resident_split() -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{name} in /proc/self/status"))?;
        Ok(kib as f64 * 1024.0 / 1e6)
    };
    Ok((field("RssAnon:")?, field("RssFile:")?))
}
