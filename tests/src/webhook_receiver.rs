//! A webhook receiver for tests: a real HTTP server on `127.0.0.1:0` that records every request
//! it gets and answers each path from a script (a status, or hanging for a while), plus the
//! receiver-side signature check the README shows.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::{
    Request, Response, Route, Server,
    endpoint::make,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
};
use tokio::task::JoinHandle;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: String,
    pub at: Instant,
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Wait this long before answering 200 (longer than the sender's timeout: a hanging receiver).
    Hang(Duration),
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    always: Mutex<HashMap<String, Reply>>,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    address: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("the receiver binds 127.0.0.1:0");
        let address = *acceptor.local_addr()[0]
            .as_socket_addr()
            .expect("a socket address");
        let state = Arc::new(State::default());
        let shared = state.clone();
        let app = Route::new().at(
            "/*path",
            make(move |request: Request| receive(shared.clone(), request)),
        );
        let server = tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Self {
            address,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.address)
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The next answers of `path`, in order; after them, `200` (or what [`Receiver::always`] set).
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .entry(format!("/{path}"))
            .or_default()
            .extend(replies);
    }

    /// What `path` answers once its script is used up.
    pub fn always(&self, path: &str, reply: Reply) {
        self.state
            .always
            .lock()
            .unwrap()
            .insert(format!("/{path}"), reply);
    }

    /// Every request `path` got so far, in arrival order.
    pub fn received(&self, path: &str) -> Vec<Received> {
        let path = format!("/{path}");
        self.state
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `count` requests; panics after `timeout`.
    pub async fn wait_for(&self, path: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received(path);
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "/{path} got {} of {count} requests within {timeout:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(state: Arc<State>, mut request: Request) -> Response {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = request.uri().path().to_owned();
    let received = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        path: path.clone(),
        body: String::new(),
        at: Instant::now(),
    };
    let body = request.take_body().into_string().await.unwrap_or_default();
    state
        .received
        .lock()
        .unwrap()
        .push(Received { body, ..received });
    let scripted = state
        .scripts
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    let reply = scripted
        .or_else(|| state.always.lock().unwrap().get(&path).copied())
        .unwrap_or(Reply::Status(200));
    let status = match reply {
        Reply::Status(status) => status,
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            200
        }
    };
    Response::builder()
        .status(StatusCode::from_u16(status).expect("a valid status"))
        .finish()
}

// README: verify-webhook-rust (begin)
/// Verifies a webhook as Standard Webhooks 1.0 defines it: `secret` is the endpoint's
/// `whsec_…`, the rest are the `webhook-id`, `webhook-timestamp` and `webhook-signature`
/// headers and the raw body. Refuses timestamps more than five minutes away (replays).
pub fn verify_webhook(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
) -> bool {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use hmac::{Hmac, Mac};

    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let Ok(sent_at) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - sent_at).abs() > 5 * 60 {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    // The header may carry several space-separated signatures (key rotation): any may match.
    signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|candidate| mac.clone().verify_slice(&candidate).is_ok())
}
// README: verify-webhook-rust (end)
