//! Fan-out within one process: one tail reader per process reads each new stretch of the feed
//! once and hands it to every open stream and waiting long-poll, which filter it by their
//! gates. No stream queries the database per event.
//!
//! The tail reader wakes when this process commits events ([`EventHub::committed`]), when
//! another process does (PostgreSQL `LISTEN messaging_events` on one connection per process),
//! and every `reread_interval` anyway, so a lost notification delays an event but never loses
//! it. When a wake-up finds nothing (an earlier transaction still running holds the frontier
//! back), it reads again after 5 ms, 10 ms, 20 ms … up to `reread_interval`. Reads are at least
//! `coalesce` apart: under steady writes one read takes the commits of that stretch together.
//!
//! On PostgreSQL each process announces its own commits: after a commit that wrote events, its
//! announcer sends `NOTIFY messaging_events` in a statement of its own, one at a time and at
//! least `coalesce` apart, so one notification covers every commit made since the previous one
//! (sent back to back, they were a transaction, and a log flush, for nearly every send). A
//! `NOTIFY` inside the writing transaction would take PostgreSQL's one notification lock, shared
//! by the whole cluster, from before that transaction's commit until its commit record is flushed:
//! every write of every replica would then commit alone, one log flush each (measured with
//! `pgbench`, 16 clients inserting a row: 1 800 commits per second with the `NOTIFY` in the
//! transaction, 4 100 without, 2 900 beside one client that notifies as fast as it can). The
//! notification carries the process's id, and its own listener ignores it: the process woke
//! its tail reader already. Should a process die between a commit and its announcement, the
//! others read its events at their next `reread_interval`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use messaging_api::{Event, SseEvent};
use sea_orm::DbBackend;
use tokio::{
    sync::{Notify, broadcast},
    time::Instant,
};
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::{Position, StoredEvent, read_page};
use crate::{MessagingService, auth::Mode};

/// Settings of the event feed.
#[derive(Debug, Clone)]
pub struct EventFeedSettings {
    /// How long events are kept (at least 7 days in production).
    pub retention: Duration,
    /// How often an idle stream gets a comment line (at most 15 s).
    pub keep_alive: Duration,
    /// How often the tail reader reads the feed without being woken.
    pub reread_interval: Duration,
    /// The shortest time between two reads of the tail, and between two announcements of this
    /// process's commits (PostgreSQL): under steady writes one read or one `NOTIFY` then covers
    /// the commits of this stretch, instead of one each. An event reaches its readers at most
    /// this much later.
    pub coalesce: Duration,
    /// How often retention prunes.
    pub prune_interval: Duration,
}

impl Default for EventFeedSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 60 * 60),
            keep_alive: Duration::from_secs(15),
            reread_interval: Duration::from_secs(1),
            coalesce: COALESCE,
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// Who reads: a store and mode, and for a customer its id.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub store_id: Uuid,
    pub mode: Mode,
    pub customer_id: Option<Uuid>,
}

/// An event as read by the tail reader, with its wire forms made once for every reader: the
/// object for long-polls, and the server-sent event (serialised once) whose bytes every
/// stream shares.
#[derive(Debug)]
pub(crate) struct FeedEvent {
    pub stored: StoredEvent,
    pub wire: Event,
    pub sse: SseEvent<Event>,
}

impl FeedEvent {
    pub fn new(stored: StoredEvent, wire: Event) -> Self {
        let sse = sse_of(&wire);
        Self { stored, wire, sse }
    }
}

/// The server-sent event of `event`: `id`, `event` (its type) and `data` (the event object).
pub(crate) fn sse_of(event: &Event) -> SseEvent<Event> {
    SseEvent::new(&event.id, event.r#type.as_str(), event)
}

/// A stretch of the feed, in order, shared by every reader of the process.
pub(crate) type Batch = Arc<Vec<FeedEvent>>;

/// Stretches read by the tail that a slow reader may fall behind by before it re-reads the
/// database from its own position.
const BACKLOG: usize = 1024;

/// The default [`EventFeedSettings::coalesce`].
const COALESCE: Duration = Duration::from_millis(5);

/// Events the tail reads per query.
const TAIL_PAGE: u64 = 500;

/// The PostgreSQL channel processes announce their commits of events on.
const CHANNEL: &str = "messaging_events";

/// The process's fan-out point.
pub(crate) struct EventHub {
    /// Where the tail reader starts: the frontier when the service connected, before any
    /// stream could open. A stream reads the database from its own position (read later, so
    /// at or after this one) until it reaches the frontier, then takes the tail's batches: the
    /// tail must not start after any stream's position, or the events between would reach
    /// neither. Started from a frontier read when its task first ran, it could (a stream that
    /// opened in a new process's first milliseconds missed a conversation's events).
    start: Position,
    wake: Notify,
    /// Wakes the announcer (PostgreSQL): this process committed events.
    announce: Notify,
    /// This process's name in the notifications it sends.
    process: String,
    sender: Mutex<Option<broadcast::Sender<Batch>>>,
}

impl EventHub {
    pub fn new(start: Position) -> Self {
        Self {
            start,
            wake: Notify::new(),
            announce: Notify::new(),
            process: Uuid::new_v4().simple().to_string(),
            sender: Mutex::new(Some(broadcast::channel(BACKLOG).0)),
        }
    }

    /// This process committed events: its tail reader reads now, and (PostgreSQL) the other
    /// processes are told.
    pub fn committed(&self) {
        self.wake.notify_one();
        self.announce.notify_one();
    }

    /// Another process committed events: the tail reader reads now.
    fn wake(&self) {
        self.wake.notify_one();
    }

    /// Every stretch the tail reads from now on. After [`EventHub::close`], a closed receiver.
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        match &*self.sender.lock().expect("the hub lock is never poisoned") {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Ends every stream and long-poll of the process (shutdown).
    pub fn close(&self) {
        self.sender
            .lock()
            .expect("the hub lock is never poisoned")
            .take();
    }

    fn publish(&self, batch: Batch) {
        if let Some(sender) = &*self.sender.lock().expect("the hub lock is never poisoned") {
            // No receiver is fine: nobody follows the feed right now.
            let _ = sender.send(batch);
        }
    }
}

impl MessagingService {
    /// Ends every open stream and waiting long-poll of this process, so a graceful shutdown
    /// does not wait for them. Clients reconnect (to another replica) with `Last-Event-ID`.
    pub fn close_event_feed(&self) {
        self.inner.events.close();
    }

    /// The tail reader of this process: runs until the task is dropped. Errors are logged and
    /// the next wake-up reads again from the same position, so nothing is lost.
    pub async fn run_event_feed(self) {
        let hub = self.inner.events.clone();
        let coalesce = self.inner.config.events.coalesce;
        // PostgreSQL: hearing of the other processes' commits, and announcing this one's.
        let _replicas = (self.backend() == DbBackend::Postgres).then(|| {
            let pool = self.writer().get_postgres_connection_pool();
            (
                AbortOnDropHandle::new(tokio::spawn(listen(pool.clone(), hub.clone()))),
                AbortOnDropHandle::new(tokio::spawn(announce(pool.clone(), hub.clone(), coalesce))),
            )
        });
        let reread = self.inner.config.events.reread_interval;
        let mut position = hub.start;
        let mut retry: Option<Duration> = None;
        let mut last_read = Instant::now();
        loop {
            let pause = retry.unwrap_or(reread);
            let woken = tokio::select! {
                () = hub.wake.notified() => true,
                () = tokio::time::sleep(pause) => false,
            };
            // A wake-up that came during the pause stays: its events may be behind the
            // frontier this read stops at, and the next read (or its retries) finds them.
            tokio::time::sleep_until(last_read + coalesce).await;
            last_read = Instant::now();
            match self.read_tail(&mut position).await {
                Ok(0) if woken || retry.is_some() => {
                    let next = retry.map_or(Duration::from_millis(5), |d| d * 2);
                    retry = (next < reread).then_some(next);
                }
                Ok(_) => retry = None,
                Err(err) => {
                    tracing::warn!(error = %err, "event feed: reading the tail failed; retrying");
                    retry = None;
                }
            }
        }
    }

    /// Reads everything after `position` up to the frontier and publishes it. Returns how many
    /// events it read.
    async fn read_tail(&self, position: &mut Position) -> Result<usize, sea_orm::DbErr> {
        let mut total = 0;
        loop {
            let page = read_page(self.reader(), None, *position, TAIL_PAGE).await?;
            total += page.events.len();
            let batch: Vec<FeedEvent> = page
                .events
                .into_iter()
                .filter_map(|stored| match stored.to_wire() {
                    Ok(wire) => Some(FeedEvent::new(stored, wire)),
                    Err(err) => {
                        tracing::error!(error = %err, "event feed: skipping an unreadable event");
                        None
                    }
                })
                .collect();
            *position = page.next;
            if !batch.is_empty() {
                self.inner.events.publish(Arc::new(batch));
            }
            if page.complete {
                return Ok(total);
            }
        }
    }
}

/// The announcer: after this process commits events, `NOTIFY messaging_events` with the
/// process's id, once for every commit made before it is sent (see the module).
async fn announce(pool: sea_orm::sqlx::PgPool, hub: Arc<EventHub>, coalesce: Duration) {
    let mut last = Instant::now();
    loop {
        hub.announce.notified().await;
        tokio::time::sleep_until(last + coalesce).await;
        // The notification about to be sent covers the commits made during the pause.
        let _ = hub.announce.notified().now_or_never();
        last = Instant::now();
        let sent = sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&hub.process)
            .execute(&pool)
            .await;
        if let Err(err) = sent {
            tracing::warn!(error = %err, "event feed: NOTIFY failed; other processes read on their next pass");
        }
    }
}

/// `LISTEN messaging_events` on one connection, waking the tail reader on each notification
/// from another process and after every reconnection (notifications sent meanwhile are lost;
/// the re-read finds their events).
async fn listen(pool: sea_orm::sqlx::PgPool, hub: Arc<EventHub>) {
    use sea_orm::sqlx::postgres::PgListener;
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    hub.wake();
                    loop {
                        match listener.recv().await {
                            Ok(notification) if notification.payload() == hub.process => {}
                            Ok(_) => hub.wake(),
                            Err(err) => {
                                tracing::warn!(error = %err, "event feed: LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "event feed: LISTEN failed"),
            },
            Err(err) => tracing::warn!(error = %err, "event feed: cannot connect to LISTEN"),
        }
        hub.wake();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
