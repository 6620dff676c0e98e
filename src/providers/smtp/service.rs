//! One email, one SMTP conversation (on a pooled connection), and what the
//! server's answer means.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, Error as SmtpError};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::config::{SmtpConfig, SmtpTls};
use crate::providers::{Accepted, OutgoingMessage, Provider, SendError};

use crate::providers::MAX_CONNECT_TIMEOUT;

/// How much of a server's text goes into an error message.
const MAX_MESSAGE_CHARS: usize = 500;

/// Reply codes that mean our login is wrong or refused: configuration to fix,
/// so they alert (RFC 4954: 530 authentication required, 534 mechanism too
/// weak, 535 credentials invalid, 538 encryption required).
const AUTH_FAILURE_CODES: [&str; 4] = ["530", "534", "535", "538"];

/// The SMTP provider: one pooled lettre transport per configured server.
pub struct Smtp {
    /// Where and how to send.
    config: SmtpConfig,
    /// The most one `send` may take, connection included.
    timeout: Duration,
    /// The pool, built on first use and rebuilt after a send is cut short.
    pool: Pool,
    /// One permit per connection the server may see (`max_connections`):
    /// lettre's pool opens a new connection whenever none is idle.
    connections: tokio::sync::Semaphore,
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
        let host = config.host.as_str();
        let builder = match config.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("cannot set up STARTTLS for {host}: {e}"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("cannot set up TLS for {host}: {e}"))?,
        };
        // lettre's own timeout bounds only the TCP connect in its async
        // transport; the whole conversation is bounded in `send`.
        let mut builder = builder
            .port(config.port)
            .timeout(Some(timeout.min(MAX_CONNECT_TIMEOUT)));
        if let Some(name) = &config.hello_name {
            builder = builder.hello_name(client_id(name));
        }
        if let Some(auth) = &config.auth {
            builder = builder.credentials(Credentials::new(
                auth.username.clone(),
                auth.password.expose_secret().to_owned(),
            ));
        }
        let builder = builder.pool_config(
            lettre::transport::smtp::PoolConfig::new().max_size(config.max_connections),
        );
        let permits = usize::try_from(config.max_connections).unwrap_or(usize::MAX);
        Ok(Smtp {
            config,
            timeout,
            pool: Pool::new(builder),
            connections: tokio::sync::Semaphore::new(permits),
        })
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
        }
    }
}

#[async_trait]
impl Provider for Smtp {
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
        let hello = c
            .hello_name
            .as_deref()
            .unwrap_or("(this machine's host name)");
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
        // Waiting for a connection counts against the send's timeout.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let _connection = match tokio::time::timeout_at(deadline, self.connections.acquire()).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => {
                return Err(SendError::transient(format!(
                    "all {} connections to {} stayed busy for {}",
                    self.config.max_connections,
                    self.config.host,
                    humantime::format_duration(self.timeout)
                )));
            }
        };
        let (transport, mut guard) = self.pool.checkout();
        let outcome = match tokio::time::timeout_at(deadline, transport.send(email)).await {
            Ok(Ok(reply)) => Outcome::Replied(reply),
            Ok(Err(error)) => Outcome::Failed(error),
            Err(_) => Outcome::TimedOut(self.timeout),
        };
        if !matches!(outcome, Outcome::TimedOut(_)) {
            // The conversation ran to its end: the connection is fit for reuse
            // (lettre closes it itself after an error).
            guard.finished();
        }
        drop(guard);
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
    /// or protocol failure.
    Failed(SmtpError),
    /// No final answer within the provider's timeout.
    TimedOut(Duration),
}

/// The one table that turns a send's outcome into accepted, permanent or
/// transient.
///
/// | outcome                                   | class                                    |
/// |-------------------------------------------|------------------------------------------|
/// | 2yz reply to the end of DATA              | accepted: id after "queued as ", else our Message-ID; status = the code |
/// | any other positive reply (3yz)            | transient, with the code                 |
/// | 5yz at any step                           | permanent, with the code (530, 534, 535, 538: the login; `send` alerts) |
/// | 4yz at any step                           | transient, with the code                 |
/// | timeout                                   | transient                                |
/// | connection, TLS, protocol, anything else  | transient                                |
pub fn classify(outcome: Outcome, message_id: &str) -> Result<Accepted, SendError> {
    match outcome {
        Outcome::Replied(reply) => {
            let code = reply.code().to_string();
            if !code.starts_with('2') {
                return Err(SendError::Transient {
                    message: truncate(&format!(
                        "unexpected reply to the end of the message: {code} {}",
                        reply.message().collect::<Vec<_>>().join(" ")
                    )),
                    code: Some(code),
                });
            }
            Ok(Accepted {
                provider_message_id: queued_as(&reply).unwrap_or_else(|| message_id.to_owned()),
                provider_status: Some(code),
                cost: None,
                segments: None,
            })
        }
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
        Outcome::TimedOut(after) => Err(SendError::transient(format!(
            "no answer from the SMTP server within {}",
            humantime::format_duration(after)
        ))),
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

fn client_id(name: &str) -> ClientId {
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        Err(_) => ClientId::Domain(name.to_owned()),
    }
}

/// lettre's pooled transport, replaced whenever a send is cut short.
///
/// A send dropped mid-conversation (our timeout, or the caller's) hands its
/// connection back to lettre's pool as if it were idle, with the server's
/// answer still to come. lettre checks a pooled connection with NOOP before
/// reuse, but a late "250" would pass for the NOOP's reply, and every later
/// reply on that connection would then answer the command before it: a
/// rejection could be read as an acceptance. So a cut-short send discards
/// the whole pool (its idle connections are closed with QUIT) and the next
/// send starts a fresh one.
struct Pool {
    /// How to build a transport (server, TLS, login, timeouts).
    builder: AsyncSmtpTransportBuilder,
    /// The current transport and its generation.
    slot: Arc<Mutex<Slot>>,
}

#[derive(Default)]
struct Slot {
    /// Counts replacements, so a late guard does not discard a newer pool.
    generation: u64,
    /// Built on first use (lettre's pool needs a running tokio runtime).
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

impl Pool {
    fn new(builder: AsyncSmtpTransportBuilder) -> Pool {
        Pool {
            builder,
            slot: Arc::new(Mutex::new(Slot::default())),
        }
    }

    /// The current transport, and a guard that discards it unless the send
    /// using it reaches its end.
    fn checkout(&self) -> (AsyncSmtpTransport<Tokio1Executor>, InFlight) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let transport = slot
            .transport
            .get_or_insert_with(|| self.builder.clone().build())
            .clone();
        let guard = InFlight {
            slot: Arc::clone(&self.slot),
            generation: slot.generation,
            finished: false,
        };
        (transport, guard)
    }
}

/// Discards the pool when dropped before [`InFlight::finished`].
struct InFlight {
    slot: Arc<Mutex<Slot>>,
    generation: u64,
    finished: bool,
}

impl InFlight {
    fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let old = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.generation != self.generation {
                return;
            }
            slot.generation += 1;
            slot.transport.take()
        };
        tracing::debug!("SMTP send cut short: discarding the connection pool");
        drop(old);
    }
}
