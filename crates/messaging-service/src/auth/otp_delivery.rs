//! How one-time codes reach customers: the server log (development), email over SMTP (real
//! deployments, with `lettre` on rustls), or an in-memory outbox (tests read codes from it).
//!
//! Codes are secrets: apart from the log delivery, which exists to show them to a developer,
//! no code is ever written to a log line.

use std::sync::{Arc, Mutex};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use tracing::Instrument;
use uuid::Uuid;

/// Which of a customer's addresses a code was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpChannel {
    Email,
    Phone,
}

impl OtpChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
        }
    }
}

/// A one-time code on its way to a customer.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpMessage {
    pub customer_id: Uuid,
    pub channel: OtpChannel,
    /// The email address or phone number the code was asked for.
    pub to: String,
    /// The customer's name, for the greeting.
    pub name: String,
    pub code: String,
    /// Seconds the code stays valid.
    pub expires_in: i64,
}

impl std::fmt::Debug for OtpMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtpMessage")
            .field("customer_id", &self.customer_id)
            .field("channel", &self.channel)
            .field("code", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Codes kept in memory instead of sent: for tests, which read them back without scraping logs.
#[derive(Clone, Default)]
pub struct OtpOutbox {
    sent: Arc<Mutex<Vec<OtpMessage>>>,
}

impl std::fmt::Debug for OtpOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OtpOutbox({} messages)", self.messages().len())
    }
}

impl OtpOutbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every code delivered so far, oldest first.
    pub fn messages(&self) -> Vec<OtpMessage> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The newest code sent to `to` (an email address, compared case-insensitively, or a phone).
    pub fn last_code_for(&self, to: &str) -> Option<String> {
        let to = to.trim().to_lowercase();
        self.messages()
            .into_iter()
            .rev()
            .find(|m| m.to.to_lowercase() == to)
            .map(|m| m.code)
    }

    fn push(&self, message: OtpMessage) {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

/// Why SMTP delivery could not be set up. Never includes the URL: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    #[error(
        "the SMTP URL is not valid (expected smtp://[user:password@]host[:port][?tls=required|opportunistic] or smtps://…)"
    )]
    Url,
    #[error("the sender address is not a valid mailbox (e.g. `Shop <no-reply@example.com>`)")]
    From,
}

/// Sends codes by email through an SMTP relay. TLS is rustls: `smtps://` connects with TLS,
/// `smtp://…?tls=required` upgrades with STARTTLS, plain `smtp://` is for a local relay.
#[derive(Clone)]
pub struct SmtpSender {
    inner: Arc<SmtpInner>,
}

struct SmtpInner {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport holds the relay's credentials: show only the sender.
        f.debug_struct("SmtpSender")
            .field("from", &self.inner.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Checks the URL and the sender address; connects lazily, on the first code.
    pub fn new(url: &str, from: &str) -> Result<Self, SmtpConfigError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| SmtpConfigError::Url)?
            .build();
        let from = from.parse().map_err(|_| SmtpConfigError::From)?;
        Ok(Self {
            inner: Arc::new(SmtpInner { transport, from }),
        })
    }

    async fn send(&self, otp: &OtpMessage) -> Result<(), String> {
        let to = otp
            .to
            .parse()
            .map(|address| Mailbox::new(Some(otp.name.clone()), address))
            .map_err(|_| "the customer's email address is not deliverable".to_owned())?;
        let minutes = (otp.expires_in + 59) / 60;
        let email = Message::builder()
            .from(self.inner.from.clone())
            .to(to)
            .subject("Your sign-in code")
            .header(ContentType::TEXT_PLAIN)
            .body(format!(
                "Hello {},\n\nYour sign-in code is {}. It expires in {minutes} minute{}.\n\n\
                 If you did not ask for it, you can ignore this email.\n",
                otp.name,
                otp.code,
                if minutes == 1 { "" } else { "s" },
            ))
            .map_err(|e| format!("could not build the email: {e}"))?;
        self.inner
            .transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| format!("the SMTP relay refused or failed: {e}"))
    }
}

/// How one-time codes reach customers.
#[derive(Debug, Clone, Default)]
pub enum OtpDelivery {
    /// Development default: the code is written to the server log (target `otp`). Email and
    /// phone both work.
    #[default]
    Log,
    /// Email over SMTP. A code asked for by phone is refused (400 `otp_channel_unavailable`):
    /// there is no SMS sender, and the customer can ask for one by email instead.
    Smtp(SmtpSender),
    /// Kept in memory for tests.
    Memory(OtpOutbox),
}

impl OtpDelivery {
    /// Whether codes can be delivered on `channel` at all.
    pub fn supports(&self, channel: OtpChannel) -> bool {
        !matches!((self, channel), (Self::Smtp(_), OtpChannel::Phone))
    }

    /// Hands the code over. SMTP runs in the background so the answer (and its timing) does not
    /// depend on the relay, nor tell whether the customer exists; failures are logged, without
    /// the code.
    pub fn deliver(&self, otp: OtpMessage) {
        match self {
            Self::Log => tracing::info!(
                target: "otp",
                customer_id = %otp.customer_id,
                channel = otp.channel.as_str(),
                code = %otp.code,
                "one-time code (development delivery: log)"
            ),
            Self::Memory(outbox) => outbox.push(otp),
            Self::Smtp(sender) => {
                let sender = sender.clone();
                tokio::spawn(
                    async move {
                        match sender.send(&otp).await {
                            Ok(()) => tracing::info!(
                                customer_id = %otp.customer_id,
                                "one-time code sent by email"
                            ),
                            Err(reason) => tracing::error!(
                                customer_id = %otp.customer_id,
                                %reason,
                                "one-time code not delivered"
                            ),
                        }
                    }
                    .in_current_span(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otp(to: &str, code: &str) -> OtpMessage {
        OtpMessage {
            customer_id: Uuid::nil(),
            channel: OtpChannel::Email,
            to: to.to_owned(),
            name: "Jane".to_owned(),
            code: code.to_owned(),
            expires_in: 300,
        }
    }

    #[test]
    fn the_outbox_returns_the_newest_code_per_address() {
        let outbox = OtpOutbox::new();
        let delivery = OtpDelivery::Memory(outbox.clone());
        delivery.deliver(otp("jane@example.com", "111111"));
        delivery.deliver(otp("bob@example.com", "222222"));
        delivery.deliver(otp("jane@example.com", "333333"));
        assert_eq!(
            outbox.last_code_for("Jane@Example.com").as_deref(),
            Some("333333")
        );
        assert_eq!(outbox.last_code_for("nobody@example.com"), None);
        assert_eq!(outbox.messages().len(), 3);
    }

    #[test]
    fn debug_output_shows_no_code_and_no_credentials() {
        let message = format!("{:?}", otp("jane@example.com", "123456"));
        assert!(!message.contains("123456"), "{message}");
        let sender = SmtpSender::new(
            "smtps://user:hunter2@smtp.example.com",
            "Shop <no-reply@example.com>",
        )
        .unwrap();
        let shown = format!("{:?}", OtpDelivery::Smtp(sender));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("no-reply@example.com"), "{shown}");
    }

    #[test]
    fn bad_smtp_settings_are_refused_without_echoing_the_url() {
        let err = SmtpSender::new("http://user:hunter2@x", "a@b.c").unwrap_err();
        assert!(matches!(err, SmtpConfigError::Url));
        assert!(!err.to_string().contains("hunter2"));
        assert!(matches!(
            SmtpSender::new("smtp://localhost:25", "not an address").unwrap_err(),
            SmtpConfigError::From
        ));
        assert!(
            !OtpDelivery::Smtp(SmtpSender::new("smtp://localhost", "a@b.c").unwrap())
                .supports(OtpChannel::Phone)
        );
        assert!(OtpDelivery::Log.supports(OtpChannel::Phone));
    }
}
