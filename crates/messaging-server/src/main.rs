//! `messaging-server`: serves the messaging API (`serve`, the default) and administers stores
//! and their API keys (`stores create`, `stores keys list|rotate|revoke`). Flags can also be set
//! through environment variables. Administrative commands print JSON on stdout and nothing else
//! there; logs and errors go to stderr.

use std::{num::NonZeroU32, str::FromStr, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use messaging_server::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, HttpSettings, LogFormat, RateLimitSettings,
    RedisBudgets, ServerConfig, init_tracing, run,
};
use messaging_service::{
    DEFAULT_POSTGRES_MAX_CONNECTIONS, EventFeedSettings, MessagingService, OtpDelivery,
    ServiceConfig, SmtpSender,
};
use serde::Serialize;
use uuid::Uuid;

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
    #[command(after_help = RATE_LIMIT_HELP)]
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
    /// List, rotate and revoke a store's API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a store's keys (never the keys themselves: id, mode, kind, prefix, dates) as a JSON
    /// array, newest first, revoked ones included.
    List {
        #[arg(long)]
        store_id: Uuid,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Replace a key with a fresh one of the same store, kind and mode and revoke the old one.
    /// Prints the new key (shown once) and its record as one JSON object.
    Rotate {
        #[arg(long)]
        key_id: Uuid,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Revoke a key at once; requests with it get 401. Prints its record as one JSON object.
    Revoke {
        #[arg(long)]
        key_id: Uuid,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

/// A value that never shows in `Debug` output: secrets and URLs that may hold passwords.
#[derive(Clone)]
struct Secret(String);

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What every command needs to reach the service.
#[derive(Debug, Args)]
struct ServiceArgs {
    /// Database: `sqlite://path` (created on first start), `sqlite::memory:` or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/messaging.db",
        hide_env_values = true
    )]
    database_url: Secret,

    /// Server secret for signing tokens and keying hashes; when absent, one is generated and kept
    /// in the database.
    #[arg(long, env = "MESSAGING_SECRET", hide_env_values = true)]
    secret: Option<Secret>,

    /// PostgreSQL only: the most connections this process opens, one of them kept for the event
    /// feed's `LISTEN`. Replicas each open their own: keep replicas × this under PostgreSQL's
    /// `max_connections` (100 by default), leaving room for migrations and administration.
    #[arg(
        long,
        env = "MESSAGING_DATABASE_MAX_CONNECTIONS",
        default_value_t = DEFAULT_POSTGRES_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(2..)
    )]
    database_max_connections: u32,
}

/// How one-time login codes reach customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
enum OtpDeliveryKind {
    /// Write codes to the server log (target `otp`): development only.
    #[default]
    Log,
    /// Email codes through an SMTP relay (`--smtp-url`, `--smtp-from`). Codes by phone are
    /// refused with 400 `otp_channel_unavailable`: there is no SMS sender.
    Smtp,
}

#[derive(Debug, Args)]
struct OtpArgs {
    /// Where one-time codes go.
    #[arg(long, env = "MESSAGING_OTP_DELIVERY", value_enum, default_value_t)]
    otp_delivery: OtpDeliveryKind,

    /// SMTP relay for `--otp-delivery smtp`: `smtps://user:password@host[:465]` (TLS),
    /// `smtp://user:password@host:587?tls=required` (STARTTLS) or `smtp://localhost:25` (plain,
    /// for a local relay). TLS is rustls with the Mozilla roots.
    #[arg(long, env = "MESSAGING_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<Secret>,

    /// Sender of code emails, e.g. `Acme <no-reply@acme.example>`.
    #[arg(long, env = "MESSAGING_SMTP_FROM")]
    smtp_from: Option<String>,
}

impl OtpArgs {
    fn delivery(&self) -> anyhow::Result<OtpDelivery> {
        match self.otp_delivery {
            OtpDeliveryKind::Log => Ok(OtpDelivery::Log),
            OtpDeliveryKind::Smtp => {
                let url = self
                    .smtp_url
                    .as_ref()
                    .context("--otp-delivery smtp needs --smtp-url (or MESSAGING_SMTP_URL)")?;
                let from = self
                    .smtp_from
                    .as_deref()
                    .context("--otp-delivery smtp needs --smtp-from (or MESSAGING_SMTP_FROM)")?;
                let sender = SmtpSender::new(&url.0, from).context("invalid SMTP settings")?;
                Ok(OtpDelivery::Smtp(sender))
            }
        }
    }
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

    /// Largest total size of the request headers in bytes (names and values); larger ones get
    /// 431. The HTTP parser itself refuses headers past about 400 KiB.
    #[arg(long, env = "MESSAGING_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: usize,

    #[command(flatten)]
    otp: OtpArgs,

    #[command(flatten)]
    rate_limits: RateLimitArgs,

    #[command(flatten)]
    events: EventArgs,

    #[command(flatten)]
    webhooks: WebhookArgs,
}

#[derive(Debug, Args)]
struct EventArgs {
    /// Days events are kept for catching up (`after`, `Last-Event-ID`), at least 7; older
    /// positions get 410 events_expired. Pruned in the background.
    #[arg(long, env = "MESSAGING_EVENT_RETENTION_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u64).range(7..=3650))]
    event_retention_days: u64,

    /// Seconds between the comment lines that keep an idle event stream open (1 to 15).
    #[arg(long, env = "MESSAGING_EVENT_KEEP_ALIVE_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=15))]
    event_keep_alive_secs: u64,
}

impl EventArgs {
    fn settings(&self) -> EventFeedSettings {
        EventFeedSettings {
            retention: Duration::from_secs(self.event_retention_days * 24 * 60 * 60),
            keep_alive: Duration::from_secs(self.event_keep_alive_secs),
            ..EventFeedSettings::default()
        }
    }
}

#[derive(Debug, Args)]
struct WebhookArgs {
    /// Delays before each webhook retry after the first attempt, comma-separated (`500ms`,
    /// `5s`, `5m`, `2h`); when they run out the delivery fails. Default: the production
    /// schedule `5s,5m,30m,2h,5h,10h,10h` (eight attempts over about 28 hours).
    #[arg(long, env = "MESSAGING_WEBHOOK_RETRY_SCHEDULE", value_parser = parse_schedule)]
    webhook_retry_schedule: Option<Schedule>,
}

/// A list of delays, as `--webhook-retry-schedule` takes it.
#[derive(Debug, Clone)]
struct Schedule(Vec<Duration>);

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    text.split(',')
        .map(|part| parse_duration(part.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map(Schedule)
}

/// `250ms`, `5s`, `5m` or `2h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number with a unit"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 60 * 60)),
        other => Err(format!(
            "unknown unit `{other}` in `{text}`: use ms, s, m or h"
        )),
    }
}

/// What `serve --help` says about rate limits (the README's rate-limit section says the same).
const RATE_LIMIT_HELP: &str = "\
Rate limits (429 with Retry-After and RateLimit-Limit, -Remaining, -Reset):
  - A customer (a request whose x-auth-token verifies) has its own budget, whatever key it
    comes with: customers sharing a publishable key never share a budget.
  - A request without a token counts against its API key: a secret key alone is the store's
    backend, and its budget alone holds /v1/auth/* (no per-address budget there).
  - A request whose token does not verify counts against its key and the client address; one
    without a well-formed key, against the client address.
  Each budget refills --rate-limit-per-second (50) and holds --rate-limit-burst (100).
  - POST /v1/auth/otp also counts against the email or phone it sends a code to:
    --code-rate-limit-per-minute (5), --code-rate-limit-burst (5).
  - Guessing: at most --failed-login-limit (10) failed logins (password or one-time code) per
    email or phone and key in --failed-login-window-secs (900); then 429 for that account
    only. A one-time code allows 5 tries.
Replicas: with --redis-url every budget and failed-login count is kept in that Redis and
shared by all replicas using it (and --redis-key-prefix). Without it each process keeps its own
budgets and failed logins are counted in the database (shared by replicas of one PostgreSQL).
An unreachable Redis at start stops the server; at runtime a failing Redis makes each process
fall back to its own budgets (failed logins to the database), logged at error level and
counted in rate_limit_redis_errors_total on /metrics.";

#[derive(Debug, Args)]
#[command(next_help_heading = "Rate limits")]
struct RateLimitArgs {
    /// Requests per second refilled into each budget (a customer, an API key, a client address).
    #[arg(long, env = "MESSAGING_RATE_LIMIT_PER_SECOND", default_value = "50")]
    rate_limit_per_second: NonZeroU32,

    /// Requests each budget holds at once.
    #[arg(long, env = "MESSAGING_RATE_LIMIT_BURST", default_value = "100")]
    rate_limit_burst: NonZeroU32,

    /// One-time codes per minute refilled into the budget of one email or phone.
    #[arg(
        long,
        env = "MESSAGING_CODE_RATE_LIMIT_PER_MINUTE",
        default_value = "5"
    )]
    code_rate_limit_per_minute: NonZeroU32,

    /// One-time codes one email or phone may be sent at once.
    #[arg(long, env = "MESSAGING_CODE_RATE_LIMIT_BURST", default_value = "5")]
    code_rate_limit_burst: NonZeroU32,

    /// Failed logins allowed per target account (API key and email or phone) in the window.
    #[arg(long, env = "MESSAGING_FAILED_LOGIN_LIMIT", default_value = "10")]
    failed_login_limit: NonZeroU32,

    /// The sliding window of --failed-login-limit, in seconds.
    #[arg(
        long,
        env = "MESSAGING_FAILED_LOGIN_WINDOW_SECS",
        default_value = "900"
    )]
    failed_login_window_secs: NonZeroU32,

    /// Redis shared by all replicas for budgets and failed logins: `redis://host:6379/0`
    /// (`rediss://` for TLS). Must answer at start.
    #[arg(long, env = "MESSAGING_REDIS_URL", hide_env_values = true)]
    redis_url: Option<Secret>,

    /// Prefix of every Redis key this server writes (replicas of one deployment share it).
    #[arg(
        long,
        env = "MESSAGING_REDIS_KEY_PREFIX",
        default_value = "messaging:ratelimit"
    )]
    redis_key_prefix: String,

    /// Turn rate limiting off (benchmarks, trusted networks).
    #[arg(long, env = "MESSAGING_DISABLE_RATE_LIMITS")]
    disable_rate_limits: bool,
}

/// mimalloc: noticeably faster than the system allocator for a server that allocates per
/// request (about a quarter more getThread throughput in `cargo bench-api`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Stores(command)) => stores(command).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut service = service_config(&args.service);
    service.otp = args.otp.delivery()?;
    service.events = args.events.settings();
    if let Some(Schedule(schedule)) = args.webhooks.webhook_retry_schedule {
        service.webhooks.retry_schedule = schedule;
    }
    let config = ServerConfig {
        bind: args.bind,
        database_url: args.service.database_url.0,
        service,
        http: HttpSettings {
            max_body_bytes: args.max_body_bytes,
            max_header_bytes: args.max_header_bytes,
            rate_limits: args.rate_limits.settings().await?,
        },
    };
    run(config).await.context("messaging-server failed")
}

/// Each command prints exactly one JSON value on stdout; everything else goes to stderr.
async fn stores(command: StoresCommand) -> anyhow::Result<()> {
    match command {
        StoresCommand::Create { name, service } => {
            let store = connect(service)
                .await?
                .create_store(&name)
                .await
                .context("could not create the store")?;
            print_json(&store)
        }
        StoresCommand::Keys(KeysCommand::List { store_id, service }) => {
            let keys = connect(service)
                .await?
                .list_keys(store_id)
                .await
                .context("could not list the keys")?;
            print_json(&keys)
        }
        StoresCommand::Keys(KeysCommand::Rotate { key_id, service }) => {
            let rotated = connect(service)
                .await?
                .rotate_key(key_id)
                .await
                .context("could not rotate the key")?;
            print_json(&rotated)
        }
        StoresCommand::Keys(KeysCommand::Revoke { key_id, service }) => {
            let revoked = connect(service)
                .await?
                .revoke_key(key_id)
                .await
                .context("could not revoke the key")?;
            print_json(&revoked)
        }
    }
}

async fn connect(args: ServiceArgs) -> anyhow::Result<MessagingService> {
    MessagingService::connect(&args.database_url.0, service_config(&args))
        .await
        .context("could not start the messaging service")
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn service_config(args: &ServiceArgs) -> ServiceConfig {
    ServiceConfig {
        secret: args.secret.as_ref().map(|s| s.0.clone()),
        postgres_max_connections: args.database_max_connections,
        ..ServiceConfig::default()
    }
}

impl RateLimitArgs {
    /// The settings, connected to Redis when one is configured: a Redis that does not answer
    /// stops the server here rather than leaving each replica with budgets of its own.
    async fn settings(&self) -> anyhow::Result<Option<RateLimitSettings>> {
        if self.disable_rate_limits {
            return Ok(None);
        }
        let redis = match &self.redis_url {
            Some(url) => Some(
                RedisBudgets::connect(&url.0, &self.redis_key_prefix)
                    .await
                    .context("cannot reach Redis at --redis-url (MESSAGING_REDIS_URL)")?,
            ),
            None => None,
        };
        Ok(Some(RateLimitSettings {
            per_second: self.rate_limit_per_second,
            burst: self.rate_limit_burst,
            codes_per_minute: self.code_rate_limit_per_minute,
            codes_burst: self.code_rate_limit_burst,
            failed_logins: self.failed_login_limit,
            failed_login_window: Duration::from_secs(u64::from(
                self.failed_login_window_secs.get(),
            )),
            redis,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedules_parse_with_units() {
        let Schedule(delays) = parse_schedule("500ms, 5s,5m,2h").unwrap();
        assert_eq!(
            delays,
            [
                Duration::from_millis(500),
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(7200)
            ]
        );
        for bad in ["5", "s", "5d", "-1s", "5s,,1m"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }

    /// PostgreSQL's pool needs one connection for the event feed's `LISTEN` and one for requests.
    #[test]
    fn the_postgres_pool_size_is_at_least_two() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["messaging-server"], args].concat());
        let default = parse(&[]).unwrap().serve.service;
        assert_eq!(
            service_config(&default).postgres_max_connections,
            DEFAULT_POSTGRES_MAX_CONNECTIONS
        );
        let four = parse(&["--database-max-connections", "4"]).unwrap();
        assert_eq!(
            service_config(&four.serve.service).postgres_max_connections,
            4
        );
        for bad in ["0", "1", "-3", "many"] {
            assert!(
                parse(&["--database-max-connections", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
