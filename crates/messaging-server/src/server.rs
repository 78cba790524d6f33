//! Running the app: binding, serving until a shutdown signal, and spawning it on an ephemeral
//! port for tests.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use messaging_service::{MessagingService, ServiceConfig, StartupError};
use poem::{Endpoint, Response};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{HttpSettings, app, connections};

/// How often the background publisher moves due scheduled messages into their channels.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// How often expired idempotency keys are pruned.
pub const IDEMPOTENCY_PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How long in-flight requests may take to finish after a shutdown signal.
const GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything `run` needs.
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub bind: String,
    /// `sqlite://…`, `sqlite::memory:` or `postgres://…`.
    pub database_url: String,
    pub service: ServiceConfig,
    pub http: HttpSettings,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not start the messaging service")]
    Startup(#[from] StartupError),
    #[error("could not listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] io::Error),
}

/// Connects to the database (running migrations), listens on `config.bind` and serves until
/// Ctrl-C or SIGTERM, then lets in-flight requests finish.
pub async fn run(config: ServerConfig) -> Result<(), ServeError> {
    let service = MessagingService::connect(&config.database_url, config.service).await?;
    let listener = TcpListener::bind(&config.bind)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.bind.clone(),
            source,
        })?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "messaging-server listening");
    }
    // The app (and its metrics recorder) first, so the background tasks' first counts are kept.
    let app = app(service.clone(), &config.http);
    let publisher = tokio::spawn(service.clone().run_publisher(PUBLISH_INTERVAL));
    let feed = tokio::spawn(service.clone().run_event_feed());
    let retention = tokio::spawn(service.clone().run_event_retention());
    let dispatcher = tokio::spawn(service.clone().run_webhook_dispatcher());
    let webhooks = tokio::spawn(service.clone().run_webhook_worker());
    let pruner = tokio::spawn(
        service
            .clone()
            .run_idempotency_pruner(IDEMPOTENCY_PRUNE_INTERVAL),
    );
    let shutdown = async move {
        shutdown_signal().await;
        // Open streams and long-polls end now instead of holding the shutdown for 30 s;
        // clients reconnect (to another replica) with Last-Event-ID and miss nothing.
        service.close_event_feed();
    };
    let served = serve(listener, app, shutdown).await;
    publisher.abort();
    feed.abort();
    retention.abort();
    dispatcher.abort();
    webhooks.abort();
    pruner.abort();
    served.map_err(ServeError::Serve)?;
    tracing::info!("messaging-server stopped");
    Ok(())
}

/// Serves `app` on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve<E>(
    listener: TcpListener,
    app: E,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    connections::serve(listener, app, shutdown, GRACEFUL_SHUTDOWN_TIMEOUT).await
}

/// Starts the real app on `127.0.0.1` at a free port, in the background. Returns the address
/// and the task; the server stops when the task is aborted or the runtime ends.
pub async fn spawn(
    service: MessagingService,
    settings: &HttpSettings,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let publisher = service.clone().run_publisher(PUBLISH_INTERVAL);
    let feed = service.clone().run_event_feed();
    let retention = service.clone().run_event_retention();
    let dispatcher = service.clone().run_webhook_dispatcher();
    let webhooks = service.clone().run_webhook_worker();
    let pruner = service
        .clone()
        .run_idempotency_pruner(IDEMPOTENCY_PRUNE_INTERVAL);
    let app = app(service, settings);
    // One task for all, so aborting it stops the server and its background work together.
    let task = tokio::spawn(async move {
        tokio::select! {
            () = publisher => Ok(()),
            () = feed => Ok(()),
            () = retention => Ok(()),
            () = dispatcher => Ok(()),
            () = webhooks => Ok(()),
            () = pruner => Ok(()),
            result = serve(listener, app, std::future::pending()) => result,
        }
    });
    Ok((address, task))
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = sigterm() => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(unix)]
async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
async fn sigterm() {
    std::future::pending::<()>().await;
}
