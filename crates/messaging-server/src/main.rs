//! `messaging-server`: serves the messaging API (`serve`, the default) and administers stores
//! (`stores create`). Flags can also be set through environment variables.

use std::num::NonZeroU32;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use messaging_server::{
    DEFAULT_MAX_BODY_BYTES, HttpSettings, LogFormat, RateLimitSettings, ServerConfig, init_tracing,
    run,
};
use messaging_service::{MessagingService, ServiceConfig};

#[derive(Debug, Parser)]
#[command(name = "messaging-server", version, about)]
struct Cli {
    /// Log line format (logs go to stderr; RUST_LOG filters them, default `info`).
    #[arg(
        long,
        env = "MESSAGING_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,

    /// Flags of `serve` when no subcommand is given.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (the default).
    Serve(ServeArgs),
    /// Administer stores.
    #[command(subcommand)]
    Stores(StoresCommand),
}

#[derive(Debug, Subcommand)]
enum StoresCommand {
    /// Create a store and print its id and four API keys as one JSON object on stdout.
    Create {
        /// Name of the store.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

/// What every command needs to reach the service.
#[derive(Debug, Args)]
struct ServiceArgs {
    /// Database: `sqlite://path` (created on first start), `sqlite::memory:` or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/messaging.db"
    )]
    database_url: String,

    /// Server secret for signing tokens and keying hashes; when absent, one is generated and kept
    /// in the database.
    #[arg(long, env = "MESSAGING_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MESSAGING_BIND", default_value = "127.0.0.1:8080")]
    bind: String,

    #[command(flatten)]
    service: ServiceArgs,

    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, env = "MESSAGING_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,

    #[command(flatten)]
    rate_limits: RateLimitArgs,
}

#[derive(Debug, Args)]
struct RateLimitArgs {
    /// Requests per second allowed per API key and per customer token.
    #[arg(long, env = "MESSAGING_RATE_LIMIT_PER_SECOND", default_value = "50")]
    rate_limit_per_second: NonZeroU32,

    /// Requests allowed at once per API key and per customer token.
    #[arg(long, env = "MESSAGING_RATE_LIMIT_BURST", default_value = "100")]
    rate_limit_burst: NonZeroU32,

    /// Requests per minute to /v1/auth/* allowed per client IP and per email.
    #[arg(
        long,
        env = "MESSAGING_AUTH_RATE_LIMIT_PER_MINUTE",
        default_value = "10"
    )]
    auth_rate_limit_per_minute: NonZeroU32,

    /// Requests to /v1/auth/* allowed at once per client IP and per email.
    #[arg(long, env = "MESSAGING_AUTH_RATE_LIMIT_BURST", default_value = "10")]
    auth_rate_limit_burst: NonZeroU32,

    /// Turn rate limiting off (benchmarks, trusted networks).
    #[arg(long, env = "MESSAGING_DISABLE_RATE_LIMITS")]
    disable_rate_limits: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Stores(StoresCommand::Create { name, service })) => {
            create_store(&name, service).await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        bind: args.bind,
        database_url: args.service.database_url,
        service: service_config(args.service.secret),
        http: HttpSettings {
            max_body_bytes: args.max_body_bytes,
            rate_limits: args.rate_limits.settings(),
        },
    };
    run(config).await.context("messaging-server failed")
}

/// Prints exactly one JSON object on stdout; everything else goes to the log on stderr.
async fn create_store(name: &str, args: ServiceArgs) -> anyhow::Result<()> {
    let service = MessagingService::connect(&args.database_url, service_config(args.secret))
        .await
        .context("could not start the messaging service")?;
    let store = service
        .create_store(name)
        .await
        .context("could not create the store")?;
    println!("{}", serde_json::to_string(&store)?);
    Ok(())
}

fn service_config(secret: Option<String>) -> ServiceConfig {
    ServiceConfig {
        secret,
        ..ServiceConfig::default()
    }
}

impl RateLimitArgs {
    fn settings(&self) -> Option<RateLimitSettings> {
        (!self.disable_rate_limits).then_some(RateLimitSettings {
            per_second: self.rate_limit_per_second,
            burst: self.rate_limit_burst,
            auth_per_minute: self.auth_rate_limit_per_minute,
            auth_burst: self.auth_rate_limit_burst,
        })
    }
}
