//! The connections to one SMTP server: opened here, spoken over with lettre's
//! `AsyncSmtpConnection`, and kept in a pool of at most `max_connections`.
//!
//! Two reasons not to use lettre's own pooled transport:
//! - Its sockets have Nagle's algorithm on, and it writes a message and the
//!   closing `\r\n.\r\n` separately: the second write waits for the ACK of
//!   the first, which a normal Linux receiver delays by about 40 ms, so each
//!   connection carried about 25 messages a second. Here every socket has
//!   TCP_NODELAY set before the first byte.
//! - It hands a used connection back to its pool from a spawned task, after
//!   the send has returned: the next send often found the pool empty and
//!   opened another connection, which the pool then closed for being over
//!   its size. Here a connection is back among the idle ones before the
//!   send's permit is released, so connections are reused and never more
//!   than `max_connections` are open.
//!
//! A send owns its connection until it ends. A send cut short (its timeout,
//! or its caller dropping it) drops the connection, which closes it: a late
//! reply can never be read as the answer to a later command.
//!
//! A send is spoken here step by step (MAIL, RCPT, DATA, the message), as
//! lettre's `send` does, so a failure says where it happened: the stream
//! under lettre ([`Watched`]) marks when the reply to the message's final
//! `.` starts being read. A connection lost from then on, or no reply in
//! time, may follow a message the server took ([`Progress`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::config::{SmtpConfig, SmtpTls};

/// An idle connection older than this is closed rather than reused: most
/// servers drop idle clients after a few minutes anyway (lettre's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a connection is protected.
enum Security {
    None,
    /// STARTTLS after the greeting, required (lettre's upgrade, our roots).
    StartTls(TlsParameters),
    /// TLS from the first byte.
    Tls(tokio_rustls::TlsConnector, ServerName<'static>),
}

/// Why a connection could not be made ready to send.
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connection or the TLS handshake failed or timed out.
    Network(String),
    /// The server refused or failed a step: greeting, EHLO, STARTTLS, AUTH.
    Smtp(SmtpError),
}

/// How far the current send on a connection has got, as its stream sees it.
#[derive(Debug, Default)]
pub struct Progress(AtomicU8);

/// Commands, or nothing yet: a failure here changed nothing at the server.
const BEFORE_DATA: u8 = 0;
/// The message is being written; its final `.` may not be out yet.
const WRITING_DATA: u8 = 1;
/// The message and its final `.` were written and flushed; the reply is
/// being read: the server may have taken the message.
const AWAITING_REPLY: u8 = 2;

impl Progress {
    fn set(&self, state: u8) {
        self.0.store(state, Ordering::SeqCst);
    }

    /// A read began: if the message was being written, all of it was (lettre
    /// writes the message and its `.`, flushes, then reads the reply).
    fn read_started(&self) {
        let _ = self.0.compare_exchange(
            WRITING_DATA,
            AWAITING_REPLY,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Whether the message's final `.` went out and its reply is awaited.
    pub fn awaiting_reply(&self) -> bool {
        self.0.load(Ordering::SeqCst) == AWAITING_REPLY
    }
}

/// The stream under lettre, telling [`Progress`] when the reply to the
/// message starts being read. It sits under STARTTLS's encryption, on the
/// TCP stream, and above implicit TLS; either way the first read after the
/// message's writes is the reply's.
#[derive(Debug)]
struct Watched {
    inner: Box<dyn AsyncTokioStream>,
    progress: Arc<Progress>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.progress.read_started();
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Watched {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

/// A ready connection and what its current send has got to.
pub struct Connection {
    smtp: AsyncSmtpConnection,
    progress: Arc<Progress>,
}

/// Why a message did not get a positive reply to its final `.`.
#[derive(Debug)]
pub enum TransferError {
    /// A step the server cannot do (an address needing SMTPUTF8, 8-bit
    /// content without 8BITMIME): nothing was sent.
    Unsupported(&'static str),
    /// A refusal at any step (a 4yz or 5yz reply, the message's own
    /// included), or a failure before the message's final `.` went out.
    Failed(SmtpError),
    /// No reply code after the message's final `.` went out: the
    /// connection broke, or the reply could not be read.
    LostAfterData(SmtpError),
}

impl Connection {
    /// What the current send on it has got to (for a send cut short).
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// MAIL, RCPT for each recipient, DATA, then the message and its final
    /// `.`, as lettre's `send` does; a failure closes the connection.
    pub async fn transfer(
        &mut self,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Response, TransferError> {
        self.progress.set(BEFORE_DATA);
        let info = self.smtp.server_info();
        let mut options = Vec::new();
        let ascii = |a: &lettre::Address| <lettre::Address as AsRef<str>>::as_ref(a).is_ascii();
        let addresses_ascii = envelope.from().is_none_or(ascii) && envelope.to().iter().all(ascii);
        if !addresses_ascii {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(TransferError::Unsupported(
                    "an address needs SMTPUTF8, which the server does not offer",
                ));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        if !email.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(TransferError::Unsupported(
                    "the message has 8-bit content and the server does not offer 8BITMIME",
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mut commands = vec![Mail::new(envelope.from().cloned(), options).to_string()];
        commands.extend(
            envelope
                .to()
                .iter()
                .map(|to| Rcpt::new(to.clone(), Vec::new()).to_string()),
        );
        commands.push(Data.to_string());
        for command in commands {
            if let Err(e) = self.smtp.command(command).await {
                self.smtp.abort().await;
                return Err(TransferError::Failed(e));
            }
        }
        self.progress.set(WRITING_DATA);
        match self.smtp.message(email).await {
            Ok(reply) => Ok(reply),
            Err(e) => {
                let lost = e.status().is_none() && self.progress.awaiting_reply();
                self.smtp.abort().await;
                Err(if lost {
                    TransferError::LostAfterData(e)
                } else {
                    TransferError::Failed(e)
                })
            }
        }
    }
}

/// Opens ready connections: connected, greeted, encrypted, logged in.
struct Connector {
    host: String,
    port: u16,
    /// Bounds the TCP connect (the whole send is bounded by the caller).
    connect_timeout: Duration,
    hello: ClientId,
    security: Security,
    credentials: Option<Credentials>,
}

impl Connector {
    async fn connect(&self) -> Result<Connection, ConnectError> {
        let at = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            ConnectError::Network(format!(
                "cannot connect to {at}: no answer within {}",
                humantime::format_duration(self.connect_timeout)
            ))
        })?
        .map_err(|e| ConnectError::Network(format!("cannot connect to {at}: {e}")))?;
        // Each write goes out at once; see the module.
        tcp.set_nodelay(true)
            .map_err(|e| ConnectError::Network(format!("cannot set TCP_NODELAY: {e}")))?;
        let stream: Box<dyn AsyncTokioStream> = match &self.security {
            Security::Tls(connector, name) => {
                Box::new(TlsTcp(connector.connect(name.clone(), tcp).await.map_err(
                    |e| ConnectError::Network(format!("TLS with {at} failed: {e}")),
                )?))
            }
            Security::None | Security::StartTls(_) => Box::new(tcp),
        };
        let progress = Arc::new(Progress::default());
        let stream = Box::new(Watched {
            inner: stream,
            progress: Arc::clone(&progress),
        });
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(ConnectError::Smtp)?;
        if let Security::StartTls(parameters) = &self.security {
            // Refused (a client error) when the server does not offer
            // STARTTLS: nothing is sent in plain text.
            if let Err(e) = conn.starttls(parameters.clone(), &self.hello).await {
                conn.abort().await;
                return Err(ConnectError::Smtp(e));
            }
        }
        if let Some(credentials) = &self.credentials
            && let Err(e) = conn
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
        {
            conn.abort().await;
            return Err(ConnectError::Smtp(e));
        }
        Ok(Connection {
            smtp: conn,
            progress,
        })
    }
}

/// A TLS stream over TCP, in the form lettre takes an existing stream.
#[derive(Debug)]
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for TlsTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

/// The trust roots: the `ca_file`'s certificates, else Mozilla's.
fn roots(config: &SmtpConfig) -> rustls::RootCertStore {
    match &config.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            // Each was checked at load.
            let (_added, _ignored) = roots.add_parsable_certificates(ca.certificates.clone());
            roots
        }
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    }
}

fn security(config: &SmtpConfig) -> Result<Security, String> {
    let host = &config.host;
    match config.tls {
        SmtpTls::None => Ok(Security::None),
        SmtpTls::StartTls => {
            let mut builder = TlsParameters::builder(host.clone());
            if let Some(ca) = &config.ca {
                builder = builder.certificate_store(CertificateStore::None);
                for der in &ca.certificates {
                    let certificate = Certificate::from_der(der.to_vec())
                        .map_err(|e| format!("cannot use a certificate of ca_file: {e}"))?;
                    builder = builder.add_root_certificate(certificate);
                }
            }
            let parameters = builder
                .build_rustls()
                .map_err(|e| format!("cannot set up STARTTLS for {host}: {e}"))?;
            Ok(Security::StartTls(parameters))
        }
        SmtpTls::Tls => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("cannot set up TLS for {host}: {e}"))?
                .with_root_certificates(roots(config))
                .with_no_client_auth();
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("cannot set up TLS for {host}: {e}"))?;
            Ok(Security::Tls(
                tokio_rustls::TlsConnector::from(Arc::new(tls)),
                name,
            ))
        }
    }
}

/// Ready connections to one server, at most `max_connections` open.
pub struct Pool {
    connector: Connector,
    /// Connections between sends, the most recently used last.
    idle: Mutex<Vec<(Connection, Instant)>>,
    /// One permit per connection the server may see.
    permits: Semaphore,
}

impl Pool {
    pub fn new(config: &SmtpConfig, connect_timeout: Duration) -> Result<Pool, String> {
        let hello = match &config.hello_name {
            Some(name) => super::service::client_id(name),
            None => ClientId::Domain(config.from.email.domain().to_owned()),
        };
        let credentials = config.auth.as_ref().map(|auth| {
            use secrecy::ExposeSecret;
            Credentials::new(
                auth.username.clone(),
                auth.password.expose_secret().to_owned(),
            )
        });
        Ok(Pool {
            connector: Connector {
                host: config.host.clone(),
                port: config.port,
                connect_timeout,
                hello,
                security: security(config)?,
                credentials,
            },
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(usize::try_from(config.max_connections).unwrap_or(usize::MAX)),
        })
    }

    /// Waits for a permit to use a connection (None only if the semaphore
    /// were closed, which nothing does).
    pub async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.permits.acquire().await.ok()
    }

    /// An idle connection that answers NOOP, else a new one. Takes the
    /// permit so that the connection's count is always covered by one.
    pub async fn checkout(
        &self,
        _permit: &SemaphorePermit<'_>,
    ) -> Result<Connection, ConnectError> {
        loop {
            let parked = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some((mut conn, since)) = parked else {
                break;
            };
            if since.elapsed() < IDLE_TIMEOUT && conn.smtp.test_connected().await {
                return Ok(conn);
            }
            tracing::debug!("SMTP: closing an idle connection that is stale or broken");
            conn.smtp.abort().await;
        }
        self.connector.connect().await
    }

    /// Puts a connection back for the next send, unless it broke (lettre
    /// closes a connection after an error).
    pub fn checkin(&self, conn: Connection, _permit: SemaphorePermit<'_>) {
        if conn.smtp.has_broken() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((conn, Instant::now()));
    }
}
