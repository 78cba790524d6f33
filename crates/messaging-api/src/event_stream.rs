//! `text/event-stream` bodies whose events are rendered once and shared by every stream that
//! carries them.
//!
//! poem-openapi's `EventStream` takes the items themselves and serialises each one for each
//! stream, then copies the text through an `AsyncRead` adapter with a 4 KiB buffer per
//! connection. A feed that sends one event to a thousand streams would serialise it a thousand
//! times. Here an event is rendered once into an [`SseEvent`] (its `id:`, `event:` and `data:`
//! lines, by poem's own SSE encoder) and a stream only hands those shared bytes to the
//! connection. The OpenAPI description is the same as `EventStream`'s: an `event-stream`
//! array of `T`.

use std::{marker::PhantomData, task::Poll, time::Duration};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream::BoxStream};
use poem::{IntoResponse, Response, web::sse};
use poem_openapi::{
    ApiResponse,
    payload::Payload,
    registry::{MetaResponses, MetaSchema, MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};

/// One server-sent event carrying a `T` as JSON, rendered once; cloning shares the bytes.
pub struct SseEvent<T> {
    rendered: Bytes,
    _item: PhantomData<fn() -> T>,
}

impl<T> Clone for SseEvent<T> {
    fn clone(&self) -> Self {
        Self {
            rendered: self.rendered.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for SseEvent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SseEvent")
            .field(&String::from_utf8_lossy(&self.rendered))
            .finish()
    }
}

impl<T: ToJSON> SseEvent<T> {
    /// `id: <id>`, `event: <event>` and `data: <item as JSON>`, then the blank line.
    pub fn new(id: &str, event: &str, item: &T) -> Self {
        let rendered = sse::Event::message(item.to_json_string())
            .id(id)
            .event_type(event)
            .to_string();
        Self {
            rendered: Bytes::from(rendered),
            _item: PhantomData,
        }
    }
}

impl<T> SseEvent<T> {
    /// The event as written on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.rendered
    }
}

/// A `text/event-stream` response: the events of `events`, and a comment line (`:`) every
/// `keep_alive` so that idle connections stay open.
pub struct SseStream<T> {
    events: BoxStream<'static, SseEvent<T>>,
    keep_alive: Option<Duration>,
}

impl<T> SseStream<T> {
    pub fn new(events: BoxStream<'static, SseEvent<T>>) -> Self {
        Self {
            events,
            keep_alive: None,
        }
    }

    /// Sends a comment line at this interval.
    #[must_use]
    pub fn keep_alive(self, interval: Duration) -> Self {
        Self {
            keep_alive: Some(interval),
            ..self
        }
    }
}

impl<T: Type + ToJSON> Payload for SseStream<T> {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    /// As poem-openapi describes its `EventStream`.
    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            items: Some(Box::new(T::schema_ref())),
            ..MetaSchema::new_with_format("array", "event-stream")
        }))
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + ToJSON> ApiResponse for SseStream<T> {
    fn meta() -> MetaResponses {
        crate::json::ok_payload_meta::<Self>()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send + 'static> IntoResponse for SseStream<T> {
    fn into_response(self) -> Response {
        let events = self.events.map(|event| event.rendered);
        let frames: BoxStream<'static, Bytes> = match self.keep_alive {
            Some(interval) => with_keep_alive(events, interval).boxed(),
            None => events.boxed(),
        };
        Response::builder()
            .content_type("text/event-stream")
            .header("X-Accel-Buffering", "no")
            .header("Cache-Control", "no-cache")
            // The shared bytes go to the connection as they are: no copy, no buffer per stream.
            .body(poem::Body::from_bytes_stream(
                frames.map(Ok::<_, std::io::Error>),
            ))
    }
}

/// `events`, with a comment line every `interval` (as poem's SSE response does); ends when
/// `events` ends.
fn with_keep_alive(
    mut events: impl Stream<Item = Bytes> + Unpin + Send + 'static,
    interval: Duration,
) -> impl Stream<Item = Bytes> + Send + 'static {
    const COMMENT: Bytes = Bytes::from_static(b":\n\n");
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    futures::stream::poll_fn(move |cx| {
        if let Poll::Ready(event) = events.poll_next_unpin(cx) {
            return Poll::Ready(event);
        }
        ticks.poll_tick(cx).map(|_| Some(COMMENT))
    })
}
