//! Serving connections: accepts TCP connections and serves each with hyper, HTTP/1.1 or HTTP/2
//! with prior knowledge (h2c; no protocol upgrades: the API has none), until shutdown; then lets in-flight requests finish (hyper-util's
//! `GracefulShutdown`) for at most the grace period. [`serve`] is the one entry point.
//!
//! This replaces poem's `Server` for one measured reason: memory per open connection, which an
//! event stream holds for hours. poem serves through hyper-util's `auto` builder, which reads the
//! first 24 bytes to tell HTTP/2's preface from HTTP/1 and hands them back through a rewinding
//! reader. hyper's HTTP/1 reader then sees a partial head, asks for a full 8 KiB of free space
//! behind those bytes, and doubles its read buffer to 16 KiB for the life of the connection.
//! Here the protocol is chosen by peeking at the socket (`MSG_PEEK`, nothing consumed), so hyper
//! reads the whole head into its first 8 KiB buffer: 8 KiB less per idle stream (measured in
//! `cargo bench-api`'s event feed figures).

use std::{convert::Infallible, io, sync::Arc, time::Duration};

use hyper::server::conn::{http1, http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::graceful::GracefulShutdown,
};
use poem::{
    Endpoint, EndpointExt, Response,
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use tokio::net::{TcpListener, TcpStream};

/// What an HTTP/2 connection with prior knowledge starts with (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection whose first bytes could still be either protocol is waited on.
const UNDECIDED_WAIT: Duration = Duration::from_secs(5);

/// How long an accept error (out of file descriptors, say) pauses accepting, so the loop does not
/// spin on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` completes, then waits for in-flight requests for
/// at most `grace`.
pub async fn serve<E>(
    listener: TcpListener,
    app: E,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    // Boxed, as poem's own server does: hyper keeps each connection's in-flight request future
    // in an allocation sized for the future type for the life of the connection, and the whole
    // middleware chain's future is about 16 KiB; boxed, that allocation is one pointer wide and
    // the chain's future is freed when its answer is ready.
    let app = Arc::new(app.boxed());
    let local = LocalAddr(listener.local_addr()?.into());
    let graceful = GracefulShutdown::new();
    let builders = Arc::new(Builders::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Each request through `app`, as poem's own server does.
        let service = {
            let (app, local, remote) = (app.clone(), local.clone(), RemoteAddr(remote.into()));
            hyper::service::service_fn(move |req| {
                let (app, local, remote) = (app.clone(), local.clone(), remote.clone());
                async move {
                    let req = poem::Request::from((req, local, remote, Scheme::HTTP));
                    Ok::<_, Infallible>(hyper::Response::from(app.get_response(req).await))
                }
            })
        };
        let watcher = graceful.watcher();
        let builders = builders.clone();
        // The task is what an idle connection costs: the builders stay shared, and the rarer
        // HTTP/2 connection is boxed so it does not size every HTTP/1 connection's task.
        tokio::spawn(async move {
            let served = match protocol(&stream).await {
                Ok(Protocol::Http1) => {
                    let connection = builders
                        .http1
                        .serve_connection(TokioIo::new(stream), service);
                    drop(builders);
                    watcher.watch(connection).await
                }
                Ok(Protocol::Http2) => {
                    let connection = builders
                        .http2
                        .serve_connection(TokioIo::new(stream), service);
                    drop(builders);
                    Box::pin(watcher.watch(connection)).await
                }
                Err(_) => return,
            };
            if let Err(err) = served {
                tracing::debug!(error = %err, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "connections still open after the grace period");
        }
    }
    Ok(())
}

/// How connections are served, shared by all of them.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Self {
        let mut http1 = http1::Builder::new();
        // As poem served: no header read timeout (it would also close idle keep-alive
        // connections).
        http1.header_read_timeout(None);
        Self {
            http1,
            http2: http2::Builder::new(TokioExecutor::new()),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Which protocol the client speaks, from the bytes it sent first, without consuming them.
/// HTTP/1 methods differ from the preface within its first two bytes (`PR…` against `PO…`,
/// `PU…`, `PA…`), so one peek that returns two or more bytes decides.
/// A client that sent only `P` and then nothing (or closed: a peek keeps returning the byte) is
/// handed to HTTP/1 after [`UNDECIDED_WAIT`], which reads what there is and ends the connection,
/// instead of being peeked at forever.
async fn protocol(stream: &TcpStream) -> io::Result<Protocol> {
    let mut first = [0u8; 2];
    let deadline = tokio::time::Instant::now() + UNDECIDED_WAIT;
    loop {
        let seen = stream.peek(&mut first).await?;
        match decide(&first[..seen]) {
            Some(protocol) => return Ok(protocol),
            None if seen == 0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            None if tokio::time::Instant::now() >= deadline => return Ok(Protocol::Http1),
            // One byte, `P`, so far: wait for the next instead of peeking it again at once.
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The protocol the first bytes say, or `None` while they could still be either.
fn decide(first: &[u8]) -> Option<Protocol> {
    if first.is_empty() || (first.len() < 2 && H2_PREFACE.starts_with(first)) {
        return None;
    }
    if H2_PREFACE.starts_with(first) {
        Some(Protocol::Http2)
    } else {
        Some(Protocol::Http1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_two_bytes_decide() {
        assert_eq!(decide(b"PR"), Some(Protocol::Http2));
        assert_eq!(decide(b"GE"), Some(Protocol::Http1));
        assert_eq!(decide(b"PO"), Some(Protocol::Http1));
        assert_eq!(decide(b"PA"), Some(Protocol::Http1));
        assert_eq!(decide(b"G"), Some(Protocol::Http1));
        assert_eq!(decide(b"P"), None);
        assert_eq!(decide(b""), None);
    }
}
