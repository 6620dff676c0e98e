//! One email, one SMTP conversation (on a pooled connection), and what the
//! server's answer means.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use lettre::Message;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use secrecy::ExposeSecret;
use tokio::sync::SemaphorePermit;

use super::config::{SmtpConfig, SmtpTls};
use super::connection::{ConnectError, Pool, Progress, TransferError};
use crate::domain::unknown::UnknownCause;
use crate::providers::{Accepted, OutgoingMessage, Provider, SendError};

use crate::providers::MAX_CONNECT_TIMEOUT;

/// How much of a server's text goes into an error message.
const MAX_MESSAGE_CHARS: usize = 500;

/// Reply codes that mean our login is wrong or refused: configuration to fix,
/// so they alert (RFC 4954: 530 authentication required, 534 mechanism too
/// weak, 535 credentials invalid, 538 encryption required).
const AUTH_FAILURE_CODES: [&str; 4] = ["530", "534", "535", "538"];

/// The SMTP provider: one pool of connections per configured server.
pub struct Smtp {
    /// Where and how to send.
    config: SmtpConfig,
    /// The most one `send` may take, connection included.
    timeout: Duration,
    /// At most `max_connections` connections, reused from send to send.
    pool: Pool,
}

impl fmt::Debug for Smtp {
    /// Host, port, mode and user; never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smtp")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("tls", &self.config.tls)
            .field(
                "username",
                &self.config.auth.as_ref().map(|a| a.username.as_str()),
            )
            .field("from", &self.config.from.to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Smtp {
    /// Checks the settings and prepares the connection pool; nothing is
    /// connected until the first send.
    pub fn new(config: SmtpConfig, timeout: Duration) -> Result<Smtp, String> {
        crate::providers::install_crypto();
        // The connect alone is bounded here; the whole conversation in `send`.
        let pool = Pool::new(&config, timeout.min(MAX_CONNECT_TIMEOUT))?;
        Ok(Smtp {
            config,
            timeout,
            pool,
        })
    }

    /// The EHLO name: `hello_name`, else the domain of `from`.
    fn hello_name(&self) -> &str {
        self.config
            .hello_name
            .as_deref()
            .unwrap_or_else(|| self.config.from.email.domain())
    }

    /// One conversation on a pooled connection; a connection that ends it
    /// in good order goes back to the pool before the permit is released.
    /// `progress` is given the connection's, for a send cut short.
    async fn attempt(
        &self,
        email: &Message,
        permit: SemaphorePermit<'_>,
        progress: &OnceLock<Arc<Progress>>,
    ) -> Outcome {
        let mut conn = match self.pool.checkout(&permit).await {
            Ok(conn) => conn,
            Err(ConnectError::Network(reason)) => return Outcome::Unreachable(reason),
            Err(ConnectError::Smtp(error)) => return Outcome::Failed(error),
        };
        let _ = progress.set(conn.progress());
        let outcome = match conn.transfer(email.envelope(), &email.formatted()).await {
            Ok(reply) => Outcome::Replied(reply),
            Err(TransferError::Unsupported(what)) => Outcome::Unsupported(what),
            Err(TransferError::Failed(error)) => Outcome::Failed(error),
            Err(TransferError::LostAfterData(error)) => Outcome::LostAfterData(error),
        };
        self.pool.checkin(conn, permit);
        outcome
    }

    /// The Message-ID for a delivery: the same on every attempt, so a
    /// receiver can drop a duplicate of a retried send.
    fn message_id(&self, delivery_id: &str) -> String {
        crate::providers::message_id(&self.config.from, delivery_id)
    }

    /// The complete email for `message`, or a permanent error if it cannot be one.
    fn email(&self, message: &OutgoingMessage) -> Result<Message, SendError> {
        crate::providers::email_message(&self.config.from, message, "SMTP sends email only")
    }

    /// Replaces the password with `****` in text that reached us from outside.
    fn scrub(&self, error: SendError) -> SendError {
        let Some(auth) = &self.config.auth else {
            return error;
        };
        let password = auth.password.expose_secret();
        // A very short password would mask ordinary words; none should be that short.
        if password.len() < 4 {
            return error;
        }
        match error {
            SendError::Permanent { code, message } => SendError::Permanent {
                code,
                message: message.replace(password, "****"),
            },
            SendError::Transient { code, message } => SendError::Transient {
                code,
                message: message.replace(password, "****"),
            },
            SendError::Unknown { cause, message } => SendError::Unknown {
                cause,
                message: message.replace(password, "****"),
            },
        }
    }
}

#[async_trait]
impl Provider for Smtp {
    fn recipient_gone(&self, code: Option<&str>, message: &str) -> Option<&'static str> {
        recipient_gone(code, message)
    }

    fn dry_run(&self, message: &OutgoingMessage) -> String {
        let email = match self.email(message) {
            Ok(email) => email,
            Err(e) => return format!("cannot build the message: {e}"),
        };
        let c = &self.config;
        let mode = match c.tls {
            SmtpTls::None => "no TLS",
            SmtpTls::StartTls => "STARTTLS required",
            SmtpTls::Tls => "implicit TLS",
        };
        let hello = self.hello_name();
        let mut out = format!("connect {}:{} ({mode})\nEHLO {hello}\n", c.host, c.port);
        if let Some(auth) = &c.auth {
            out.push_str(&format!(
                "AUTH {} **** (password from ${})\n",
                auth.username, auth.password_env
            ));
        }
        let envelope = email.envelope();
        if let Some(from) = envelope.from() {
            out.push_str(&format!("MAIL FROM:<{from}>\n"));
        }
        for to in envelope.to() {
            out.push_str(&format!("RCPT TO:<{to}>\n"));
        }
        out.push_str("DATA\n");
        out.push_str(&String::from_utf8_lossy(&email.formatted()));
        out.push_str("\n.\n");
        out
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        let email = self.email(message)?;
        let message_id = self.message_id(&message.delivery_id);
        // Waiting for a connection counts against the send's timeout; a send
        // cut short drops its connection (see `connection.rs`).
        let deadline = tokio::time::Instant::now() + self.timeout;
        let Ok(Some(permit)) = tokio::time::timeout_at(deadline, self.pool.permit()).await else {
            return Err(SendError::transient(format!(
                "all {} connections to {} stayed busy for {}",
                self.config.max_connections,
                self.config.host,
                humantime::format_duration(self.timeout)
            )));
        };
        let progress = OnceLock::new();
        let attempt = self.attempt(&email, permit, &progress);
        let outcome = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(outcome) => outcome,
            Err(_) if progress.get().is_some_and(|p| p.awaiting_reply()) => {
                Outcome::NoReplyAfterData(self.timeout)
            }
            Err(_) => Outcome::TimedOut(self.timeout),
        };
        let cannot = match &outcome {
            Outcome::Failed(error) if error.is_client() => Some(error.to_string()),
            Outcome::Unsupported(what) => Some((*what).to_owned()),
            _ => None,
        };
        if let Some(error) = cannot {
            let c = &self.config;
            tracing::error!(
                host = %c.host,
                port = c.port,
                tls = %c.tls,
                error = %error,
                "the SMTP server cannot do what the send needs (STARTTLS, an AUTH mechanism, SMTPUTF8): check tls and the server"
            );
        }
        classify(outcome, &message_id).map_err(|e| {
            let e = self.scrub(e);
            if let SendError::Permanent {
                code: Some(code),
                message,
            } = &e
                && is_login_refused(code)
            {
                let c = &self.config;
                tracing::error!(
                    host = %c.host,
                    port = c.port,
                    username = c.auth.as_ref().map(|a| a.username.as_str()).unwrap_or("(none)"),
                    password_env = c.auth.as_ref().map(|a| a.password_env.as_str()).unwrap_or("(none)"),
                    code = %code,
                    reply = %message,
                    "SMTP login refused: check username and the password in password_env"
                );
            }
            e
        })
    }
}

/// What came back from one send.
#[derive(Debug)]
pub enum Outcome {
    /// The server's (positive) reply to the end of DATA.
    Replied(Response),
    /// lettre gave up: a 4yz or 5yz reply at any step, or a connection, TLS
    /// or protocol failure before the message's final `.` went out.
    Failed(SmtpError),
    /// A step the server cannot do, found before sending anything.
    Unsupported(&'static str),
    /// The message and its final `.` went out, then the connection broke or
    /// the reply could not be read: the server may have taken it.
    LostAfterData(SmtpError),
    /// No final answer within the provider's timeout (waiting for a free
    /// connection included), before the message's final `.` went out.
    TimedOut(Duration),
    /// The message and its final `.` went out and no reply came within the
    /// provider's timeout: the server may have taken it.
    NoReplyAfterData(Duration),
    /// No connection: TCP connect or TLS handshake failed.
    Unreachable(String),
}

/// Whether a permanent error says the mailbox does not exist: a 550 reply
/// with the enhanced status 5.1.1 (RFC 3463, "bad destination mailbox
/// address"); the recipient is then suppressed. Other 5xx replies (policy,
/// a full mailbox) may pass.
pub fn recipient_gone(code: Option<&str>, message: &str) -> Option<&'static str> {
    let mailbox_unknown = message
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|word| word == "5.1.1");
    (code? == "550" && mailbox_unknown).then_some("the mailbox does not exist (SMTP 550 5.1.1)")
}

/// The one table that turns a send's outcome into accepted, permanent,
/// transient or unknown.
///
/// | outcome                                   | class                                    |
/// |-------------------------------------------|------------------------------------------|
/// | 2yz reply to the end of DATA              | accepted: id after "queued as ", else our Message-ID; status = the code |
/// | any other positive reply (3yz) to the end of DATA | unknown (unreadable answer), with the code |
/// | 5yz at any step                           | permanent, with the code (530, 534, 535, 538: the login; `send` alerts) |
/// | 4yz at any step                           | transient, with the code                 |
/// | a step the server cannot do (STARTTLS not offered, no AUTH mechanism, SMTPUTF8 needed) | permanent, no code; `send` alerts |
/// | after the final `.` went out: the connection lost | unknown (connection lost)        |
/// | after the final `.` went out: a reply that does not parse | unknown (unreadable answer) |
/// | after the final `.` went out: no reply in time | unknown (no answer)                 |
/// | timeout before that                       | transient                                |
/// | connection, TLS, protocol, anything else before that | transient                     |
pub fn classify(outcome: Outcome, message_id: &str) -> Result<Accepted, SendError> {
    match outcome {
        Outcome::Replied(reply) => {
            let code = reply.code().to_string();
            if !code.starts_with('2') {
                return Err(SendError::unknown(
                    UnknownCause::UnreadableAnswer,
                    truncate(&format!(
                        "unexpected reply {code} to the end of the message, which was sent: {}",
                        reply.message().collect::<Vec<_>>().join(" ")
                    )),
                ));
            }
            Ok(Accepted {
                provider_message_id: queued_as(&reply).unwrap_or_else(|| message_id.to_owned()),
                provider_status: Some(code),
                cost: None,
                segments: None,
                part_ids: Vec::new(),
            })
        }
        // lettre refusing a step the server cannot do: STARTTLS not offered,
        // no common AUTH mechanism, an address needing SMTPUTF8. The same
        // will happen on every retry.
        Outcome::Failed(error) if error.is_client() => Err(SendError::Permanent {
            code: None,
            message: truncate(&format!(
                "the server cannot do what is asked: {}",
                std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| error.to_string())
            )),
        }),
        Outcome::Failed(error) => {
            let code = error.status().map(|c| c.to_string());
            let server_text = std::error::Error::source(&error)
                .map(ToString::to_string)
                .unwrap_or_default();
            match code {
                Some(code) if error.is_permanent() => Err(SendError::Permanent {
                    message: truncate(&format!("the server answered {code} {server_text}")),
                    code: Some(code),
                }),
                Some(code) if error.is_transient() => Err(SendError::Transient {
                    message: truncate(&format!("the server answered {code} {server_text}")),
                    code: Some(code),
                }),
                _ => Err(SendError::Transient {
                    code: None,
                    message: truncate(&if error.is_timeout() {
                        format!("timed out: {error}")
                    } else {
                        error.to_string()
                    }),
                }),
            }
        }
        Outcome::Unsupported(what) => Err(SendError::permanent(format!(
            "the server cannot do what is asked: {what}"
        ))),
        // lettre's "incomplete response" is the connection closing before a
        // whole reply line; any other response error is a reply that does
        // not parse.
        Outcome::LostAfterData(error) => {
            let unreadable =
                error.is_response() && !error.to_string().contains("incomplete response");
            let (cause, what) = if unreadable {
                (
                    UnknownCause::UnreadableAnswer,
                    "the server's reply to the end of the message cannot be read",
                )
            } else {
                (
                    UnknownCause::ConnectionLost,
                    "the connection broke after the message was sent, before the server's reply",
                )
            };
            Err(SendError::unknown(
                cause,
                truncate(&format!("{what}: {error}")),
            ))
        }
        Outcome::NoReplyAfterData(after) => Err(SendError::unknown(
            UnknownCause::NoAnswer { timeout: after },
            format!(
                "the message was sent and the SMTP server did not reply within {}",
                humantime::format_duration(after)
            ),
        )),
        Outcome::TimedOut(after) => Err(SendError::transient(format!(
            "no answer from the SMTP server within {}",
            humantime::format_duration(after)
        ))),
        Outcome::Unreachable(reason) => Err(SendError::transient(truncate(&reason))),
    }
}

/// A permanent reply code that means our login is wrong or missing: the
/// owner must fix the configuration, so it alerts.
fn is_login_refused(code: &str) -> bool {
    AUTH_FAILURE_CODES.contains(&code)
}

/// The id after "queued as " in a reply, as Postfix says it
/// (`250 2.0.0 Ok: queued as 4XyzAbC`).
fn queued_as(reply: &Response) -> Option<String> {
    const MARK: &str = "queued as ";
    reply.message().find_map(|line| {
        let at = line.to_ascii_lowercase().find(MARK)?;
        let id = line[at + MARK.len()..]
            .split_whitespace()
            .next()?
            .trim_matches(|c: char| {
                matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | '.' | ',' | ';')
            });
        (!id.is_empty()).then(|| id.to_owned())
    })
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

pub(super) fn client_id(name: &str) -> ClientId {
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        Err(_) => ClientId::Domain(name.to_owned()),
    }
}
