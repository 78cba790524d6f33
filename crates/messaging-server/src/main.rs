//! `messaging-server`: serves the messaging API (`serve`, the default) and administers stores
//! and their API keys (`stores create`, `stores keys list|rotate|revoke`). Flags can also be set
//! through environment variables. Administrative commands print JSON on stdout and nothing else
//! there; logs and errors go to stderr.

use std::{num::NonZeroU32, str::FromStr, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use messaging_server::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, HttpSettings, LogFormat, RateLimitSettings,
    ServerConfig, init_tracing, run,
};
use messaging_service::{
    EventFeedSettings, MessagingService, OtpDelivery, ServiceConfig, SmtpSender,
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

#[derive(Debug, Args)]
struct RateLimitArgs {
    /// Requests per second allowed per API key and per customer (every session of one customer
    /// shares one budget).
    #[arg(long, env = "MESSAGING_RATE_LIMIT_PER_SECOND", default_value = "50")]
    rate_limit_per_second: NonZeroU32,

    /// Requests allowed at once per API key and per customer.
    #[arg(long, env = "MESSAGING_RATE_LIMIT_BURST", default_value = "100")]
    rate_limit_burst: NonZeroU32,

    /// Requests per minute to /v1/auth/* allowed per client IP, per email and per phone.
    #[arg(
        long,
        env = "MESSAGING_AUTH_RATE_LIMIT_PER_MINUTE",
        default_value = "10"
    )]
    auth_rate_limit_per_minute: NonZeroU32,

    /// Requests to /v1/auth/* allowed at once per client IP, per email and per phone.
    #[arg(long, env = "MESSAGING_AUTH_RATE_LIMIT_BURST", default_value = "10")]
    auth_rate_limit_burst: NonZeroU32,

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
    let mut service = service_config(args.service.secret);
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
            rate_limits: args.rate_limits.settings(),
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
    MessagingService::connect(&args.database_url.0, service_config(args.secret))
        .await
        .context("could not start the messaging service")
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn service_config(secret: Option<Secret>) -> ServiceConfig {
    ServiceConfig {
        secret: secret.map(|s| s.0),
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
}
