//! Log capture for tests that check what the server logs: one process-wide JSON subscriber
//! (at TRACE, so every library's lines are searched too) whose lines are routed by the thread
//! that logs them, so each test sees its own app's lines (the app runs on the test's thread)
//! apart from everything the other tests log concurrently.
//!
//! Why routing by thread: the subscriber is installed when the first test asks for it, while
//! other tests' requests may already be running; their spans were created without a
//! subscriber, so their later lines (`request finished`) arrive without a span or
//! `request_id`, and a test checking "every access line has its id" could not tell those from
//! its own. Why not a thread-local subscriber per test instead: spans travel between threads
//! (SQLite's connection threads enter the caller's span), and a span closed on a thread whose
//! default is another subscriber panics in `tracing-subscriber`; and with a single registered
//! dispatcher, `tracing-core` caches a callsite first hit on another thread as "never".

use std::{
    cell::RefCell,
    sync::{Arc, Mutex, OnceLock},
};

use serde_json::Value;

/// Lines (JSON, one per event) routed to one place.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A test that panicked while writing leaves whole lines behind: keep reading them.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }
}

thread_local! {
    /// Where lines logged on this thread go: the capture of the test running on it, if any.
    static ROUTE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Writes one formatted event to the capture of the thread that logs it, or to
/// [`elsewhere`].
struct RoutedWriter;

impl std::io::Write for RoutedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let own = ROUTE.with(|route| route.borrow().clone());
        own.as_ref()
            .unwrap_or_else(|| elsewhere())
            .lock()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the process logs outside capturing threads (other tests, the blocking pool, SQLite's
/// connection threads), from the first capture on.
fn elsewhere() -> &'static Buffer {
    static ELSEWHERE: OnceLock<Buffer> = OnceLock::new();
    ELSEWHERE.get_or_init(Buffer::default)
}

/// Installs the process-wide subscriber once, as the global default (with `log` records
/// forwarded to `tracing`).
fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| RoutedWriter)
            .init();
    });
}

/// The log lines of the calling test, while it holds this value.
pub struct LogCapture {
    own: Buffer,
    /// The route is the thread's: the capture cannot move to another thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Starts capturing what this test's thread logs. Call it at the start of a
/// `#[tokio::test]` (the default current-thread runtime: the app spawned by the test, its
/// connections and its publisher all run on the test's thread), before spawning the app.
///
/// # Panics
///
/// Outside a current-thread Tokio runtime, where the app's tasks would log on other threads.
pub fn capture_logs() -> LogCapture {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    assert!(
        matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)),
        "capture_logs needs the current-thread runtime of a plain #[tokio::test]"
    );
    install();
    let own = Buffer::default();
    ROUTE.with(|route| *route.borrow_mut() = Some(own.clone()));
    LogCapture {
        own,
        _not_send: std::marker::PhantomData,
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        ROUTE.with(|route| route.borrow_mut().take());
    }
}

impl LogCapture {
    /// This test's lines, parsed: its app's requests, its client, its service calls.
    pub fn own_events(&self) -> Vec<Value> {
        self.own
            .text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Every line that may hold this test's data: its own, and everything logged elsewhere in
    /// the process (including other tests' lines). Where to look for a leaked secret.
    pub fn all_text(&self) -> String {
        let mut text = self.own.text();
        text.push_str(&elsewhere().text());
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flaky audit's cause, reproduced: a line logged on another thread (another test's
    /// server) without a span lands in the process-wide text, never in this test's own lines.
    #[tokio::test]
    async fn a_test_sees_only_its_own_threads_lines() {
        let logs = capture_logs();
        let marker = uuid::Uuid::new_v4().to_string();
        let elsewhere_marker = marker.clone();
        std::thread::spawn(move || {
            tracing::info!(marker = %elsewhere_marker, "request finished");
        })
        .join()
        .unwrap();
        tokio::spawn(async {
            let span = tracing::info_span!("request", request_id = "own-1");
            let _entered = span.enter();
            tracing::info!("request finished");
        })
        .await
        .unwrap();

        let own = logs.own_events();
        assert!(own.iter().all(|e| e["fields"]["marker"] != marker.as_str()));
        assert!(
            own.iter().any(|e| e["span"]["request_id"] == "own-1"
                && e["fields"]["message"] == "request finished"),
            "{own:?}"
        );
        assert!(logs.all_text().contains(&marker));
        drop(logs);
        // Once the capture ends, the thread's lines go elsewhere again.
        tracing::info!(marker = "after-capture", "request finished");
        assert!(elsewhere().text().contains("after-capture"));
    }
}
