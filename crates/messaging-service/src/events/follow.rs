//! The two ways a caller follows its feed: `listEvents` (catch-up and long-poll) and
//! `streamEvents` (server-sent events). Both read the database from the caller's position until
//! they reach the frontier, then take new events from the process's tail reader (`hub`).

use std::{collections::VecDeque, time::Duration};

use futures::stream::{BoxStream, StreamExt};
use messaging_api::{Event, EventList, SseEvent};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{
    Gate, Position, ensure_retained, gate_of,
    hub::{Batch, FeedEvent, sse_of},
    read_page,
};
use crate::{MessagingService, auth::Caller, error::ServiceError};

/// Events per database read of a stream catching up.
const STREAM_PAGE: u64 = 200;

/// Keeps a gauge one higher while it lives.
struct Gauged(&'static str);

impl Gauged {
    fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

fn delivered(count: usize) {
    if count > 0 {
        metrics::counter!("messaging_events_delivered_total").increment(count as u64);
    }
}

/// The events of `batch` that `gate` admits after `cursor`, in the form `form` takes from
/// them; moves `cursor` past the batch.
fn admitted<T>(
    batch: &Batch,
    gate: &Gate,
    cursor: &mut Position,
    form: impl Fn(&FeedEvent) -> T,
) -> impl Iterator<Item = T> {
    let after = *cursor;
    if let Some(last) = batch.last() {
        *cursor = (*cursor).max(last.stored.position);
    }
    batch
        .iter()
        .filter(move |e| e.stored.position > after && gate.admits(&e.stored))
        .map(form)
}

impl MessagingService {
    /// Where a reader starts: the position it names (400 when malformed, 410 when expired),
    /// or the current position.
    async fn start_position(&self, after: Option<&str>) -> Result<Option<Position>, ServiceError> {
        match after {
            Some(text) => {
                let position = Position::decode(text)?;
                ensure_retained(self.reader(), position).await?;
                Ok(Some(position))
            }
            None => Ok(None),
        }
    }

    /// `listEvents`: the caller's events after `after`, waiting up to `wait` for a first one.
    pub(crate) async fn list_events(
        &self,
        caller: &Caller,
        after: Option<&str>,
        limit: u64,
        wait: Duration,
    ) -> Result<EventList, ServiceError> {
        let gate = gate_of(caller);
        let Some(after) = self.start_position(after).await? else {
            let now = super::frontier(self.reader()).await?;
            return Ok(EventList {
                events: Vec::new(),
                next_after: now.encode(),
            });
        };
        // Subscribe before reading, so nothing committed in between is missed.
        let mut live = (!wait.is_zero()).then(|| self.inner.events.subscribe());
        let page = read_page(self.reader(), Some(&gate), after, limit).await?;
        let mut cursor = page.next;
        let mut events = page
            .events
            .iter()
            .map(super::StoredEvent::to_wire)
            .collect::<Result<Vec<_>, _>>()?;
        if let (true, Some(live)) = (events.is_empty(), live.as_mut()) {
            let _waiting = Gauged::new("messaging_event_long_polls_waiting");
            let deadline = tokio::time::Instant::now() + wait;
            while events.is_empty() {
                let received = tokio::select! {
                    received = live.recv() => received,
                    () = tokio::time::sleep_until(deadline) => break,
                };
                match received {
                    Ok(batch) => {
                        events = admitted(&batch, &gate, &mut cursor, |e| e.wire.clone()).collect();
                    }
                    Err(RecvError::Lagged(_)) => {
                        let page = read_page(self.reader(), Some(&gate), cursor, limit).await?;
                        cursor = page.next;
                        events = page
                            .events
                            .iter()
                            .map(super::StoredEvent::to_wire)
                            .collect::<Result<Vec<_>, _>>()?;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            if events.len() as u64 > limit {
                events.truncate(limit as usize);
                if let Some(last) = events.last() {
                    cursor = Position::decode(&last.id)?;
                }
            }
        }
        delivered(events.len());
        Ok(EventList {
            events,
            next_after: cursor.encode(),
        })
    }

    /// `streamEvents`: the caller's events after `Last-Event-ID` (or `after`, or from now), as
    /// long as the client stays.
    pub(crate) async fn stream_events(
        &self,
        caller: &Caller,
        last_event_id: Option<&str>,
        after: Option<&str>,
    ) -> Result<BoxStream<'static, SseEvent<Event>>, ServiceError> {
        let gate = gate_of(caller);
        let start = self.start_position(last_event_id.or(after)).await?;
        let live = self.inner.events.subscribe();
        let cursor = match start {
            Some(position) => position,
            None => super::frontier(self.reader()).await?,
        };
        // A customer's stream ends when its access token does: it reconnects with a fresh one.
        let ends_at = caller.token_expires_at.map(|exp| {
            let left = (exp - chrono::Utc::now().timestamp()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_secs(left)
        });
        let follower = Follower {
            service: self.clone(),
            ends_at,
            gate,
            cursor,
            live,
            backlog: VecDeque::new(),
            catching_up: true,
            _open: Gauged::new("messaging_event_streams_open"),
        };
        Ok(
            futures::stream::unfold(follower, |mut follower| async move {
                let event = follower.next().await?;
                delivered(1);
                Some((event, follower))
            })
            .boxed(),
        )
    }

    /// How often an idle stream gets a comment line.
    pub(crate) fn event_keep_alive(&self) -> Duration {
        self.inner.config.events.keep_alive
    }
}

/// One open stream: its position, its gate and its subscription to the tail.
struct Follower {
    service: MessagingService,
    /// When the stream ends (the customer's token expires).
    ends_at: Option<tokio::time::Instant>,
    gate: Gate,
    cursor: Position,
    live: broadcast::Receiver<Batch>,
    /// Events to send, rendered: shared with every other stream when they came from the tail.
    backlog: VecDeque<SseEvent<Event>>,
    /// Reading the database (at the start, or after falling behind the tail).
    catching_up: bool,
    _open: Gauged,
}

impl Follower {
    /// The next event, or `None` when the stream ends (shutdown, the customer's token expired,
    /// or a failed read: the client reconnects with `Last-Event-ID` and misses nothing).
    async fn next(&mut self) -> Option<SseEvent<Event>> {
        loop {
            if self
                .ends_at
                .is_some_and(|end| tokio::time::Instant::now() >= end)
            {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                return Some(event);
            }
            if self.catching_up {
                // Boxed: the database read's state exists only while it runs, instead of
                // making every idle stream's future as large as the read's.
                let page = match Box::pin(read_page(
                    self.service.reader(),
                    Some(&self.gate),
                    self.cursor,
                    STREAM_PAGE,
                ))
                .await
                {
                    Ok(page) => page,
                    Err(err) => {
                        tracing::warn!(error = %err, "event stream: reading the feed failed; closing it");
                        return None;
                    }
                };
                self.catching_up = !page.complete;
                self.cursor = page.next;
                for stored in &page.events {
                    match stored.to_wire() {
                        Ok(event) => self.backlog.push_back(sse_of(&event)),
                        Err(err) => {
                            tracing::error!(error = %err, "event stream: unreadable event; closing it");
                            return None;
                        }
                    }
                }
                continue;
            }
            let received = match self.ends_at {
                Some(end) => tokio::select! {
                    received = self.live.recv() => received,
                    () = tokio::time::sleep_until(end) => return None,
                },
                None => self.live.recv().await,
            };
            match received {
                Ok(batch) => {
                    self.backlog
                        .extend(admitted(&batch, &self.gate, &mut self.cursor, |e| {
                            e.sse.clone()
                        }))
                }
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
