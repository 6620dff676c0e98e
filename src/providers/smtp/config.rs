//! The `[[provider]]` keys of `kind = "smtp"`.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use lettre::message::Mailbox;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::SecretString;
use serde::Deserialize;

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text, no TLS at all: local relays and tests only.
    None,
    /// Plain connect, then STARTTLS, which is required: the message and the
    /// password are never sent unencrypted (submission, port 587).
    StartTls,
    /// TLS from the first byte, "implicit TLS" (submissions, port 465).
    Tls,
}

impl SmtpTls {
    /// The port used when `port` is not given.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        }
    }

    /// The word written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::StartTls => "starttls",
            SmtpTls::Tls => "tls",
        }
    }
}

impl fmt::Display for SmtpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A login for servers that want one.
#[derive(Debug, Clone)]
pub struct SmtpAuth {
    /// The account name sent with AUTH.
    pub username: String,
    /// The password, read from `password_env` at load (Debug prints `[REDACTED]`).
    pub password: SecretString,
    /// The environment variable the password came from, so messages can name it.
    pub password_env: String,
}

/// SMTP settings, parsed and checked.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// The server's host name; with TLS, also the name its certificate must carry.
    pub host: String,
    /// The server's port (the TLS mode's usual port unless set).
    pub port: u16,
    /// Implicit TLS, STARTTLS or none.
    pub tls: SmtpTls,
    /// Username and password, when the server wants a login.
    pub auth: Option<SmtpAuth>,
    /// The `From` of every email, with display name; its domain also names the Message-IDs.
    pub from: Mailbox,
    /// The name sent with EHLO; the domain of `from` when absent (a fully
    /// qualified name, as RFC 5321 asks, where a bare host name is not).
    pub hello_name: Option<String>,
    /// Connections open to the server at most; sends beyond them wait for
    /// one. Many servers refuse a client that opens too many.
    pub max_connections: u32,
    /// The trust roots from `ca_file`, for a relay whose certificate a
    /// private CA signed; when set, only they are trusted. Mozilla's roots
    /// (built in) otherwise.
    pub ca: Option<CaFile>,
    /// `allow_plaintext_login = true`: the owner accepts that with
    /// `tls = "none"` the password crosses the network unencrypted. Without
    /// it such a login is refused at load.
    pub allow_plaintext_login: bool,
}

/// The certificates of a `ca_file`, read and parsed at load.
#[derive(Clone)]
pub struct CaFile {
    /// The file, as resolved from the configuration's folder (for messages).
    pub path: PathBuf,
    /// Its certificates (DER), at least one.
    pub certificates: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// [`SmtpConfig::max_connections`] unless set.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// The keys as written, before checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    from: String,
    hello_name: Option<String>,
    max_connections: Option<u32>,
    ca_file: Option<String>,
    allow_plaintext_login: Option<bool>,
}

impl SmtpConfig {
    /// Reads the SMTP keys of a `[[provider]]` table (without `name`, `kind`,
    /// `rate_limit` and `timeout`) and the password from the environment;
    /// errors name the key and the reason.
    pub fn from_table(table: toml::Table, base: &Path) -> Result<SmtpConfig, (String, String)> {
        Self::from_table_with(table, base, crate::settings::secret_from_env)
    }

    /// [`Self::from_table`] with the environment lookup passed in, so tests
    /// need not change the process environment.
    pub(crate) fn from_table_with(
        table: toml::Table,
        base: &Path,
        read_secret: impl Fn(&str) -> Result<SecretString, String>,
    ) -> Result<SmtpConfig, (String, String)> {
        let raw = RawSmtp::deserialize(table).map_err(|e| crate::settings::table_error(&e))?;
        let refuse = |key: &str, reason: String| (key.to_owned(), reason);

        let host = check_host(&raw.host).map_err(|reason| refuse("host", reason))?;
        let tls = match raw.tls.as_deref().map(str::trim) {
            None | Some("starttls") => SmtpTls::StartTls,
            Some("tls") => SmtpTls::Tls,
            Some("none") => SmtpTls::None,
            Some(other) => {
                return Err(refuse(
                    "tls",
                    format!(
                        "`{other}` is not a TLS mode; write \"starttls\" (port 587), \"tls\" (implicit TLS, port 465) or \"none\" (local servers only)"
                    ),
                ));
            }
        };
        let port = match raw.port {
            Some(0) => {
                return Err(refuse(
                    "port",
                    "must be a port number from 1 to 65535".into(),
                ));
            }
            Some(p) => p,
            None => tls.default_port(),
        };
        let auth = match (raw.username, raw.password_env) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(refuse(
                    "password_env",
                    "is set but `username` is not; set both to log in, or neither".into(),
                ));
            }
            (Some(_), None) => {
                return Err(refuse(
                    "password_env",
                    "is required when `username` is set: name the environment variable that holds the password, e.g. \"SMTP_PASSWORD\"".into(),
                ));
            }
            (Some(username), Some(var)) => {
                if username.trim().is_empty() || username.trim() != username {
                    return Err(refuse(
                        "username",
                        "must be the account name, without spaces around it".into(),
                    ));
                }
                if tls == SmtpTls::None && raw.allow_plaintext_login != Some(true) {
                    return Err(refuse(
                        "username",
                        "with tls = \"none\" the password would cross the network unencrypted; use tls = \"starttls\" or \"tls\", or set allow_plaintext_login = true for a trusted local relay".into(),
                    ));
                }
                let var = var.trim().to_owned();
                if var.is_empty() {
                    return Err(refuse(
                        "password_env",
                        "must name the environment variable that holds the password, e.g. \"SMTP_PASSWORD\"".into(),
                    ));
                }
                let password =
                    read_secret(&var).map_err(|reason| refuse("password_env", reason))?;
                Some(SmtpAuth {
                    username,
                    password,
                    password_env: var,
                })
            }
        };
        let from = raw.from.trim().parse::<Mailbox>().map_err(|e| {
            refuse(
                "from",
                format!(
                    "`{}` is not an address like \"MtaaDAO <no-reply@mtaadao.org>\": {e}",
                    raw.from
                ),
            )
        })?;
        let hello_name = match raw.hello_name {
            None => None,
            Some(name) if name.is_empty() || name.chars().any(char::is_whitespace) => {
                return Err(refuse(
                    "hello_name",
                    "must be a host name without spaces, e.g. \"mail.mtaadao.org\"".into(),
                ));
            }
            Some(name) => Some(name),
        };
        let max_connections = match raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(0) => {
                return Err(refuse(
                    "max_connections",
                    "must be at least 1: sends need a connection".into(),
                ));
            }
            Some(n) => n,
        };
        let ca = match raw.ca_file {
            None => None,
            Some(_) if tls == SmtpTls::None => {
                return Err(refuse(
                    "ca_file",
                    "is set but tls = \"none\" checks no certificate; use tls = \"starttls\" or \"tls\", or remove ca_file".into(),
                ));
            }
            Some(file) => {
                Some(read_ca_file(&base.join(file.trim())).map_err(|r| refuse("ca_file", r))?)
            }
        };
        Ok(SmtpConfig {
            host,
            port,
            tls,
            auth,
            from,
            hello_name,
            max_connections,
            ca,
            allow_plaintext_login: raw.allow_plaintext_login.unwrap_or(false),
        })
    }
}

/// The certificates of a PEM file: at least one, every block readable.
fn read_ca_file(path: &Path) -> Result<CaFile, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a PEM file of certificates: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (a PEM file with \"-----BEGIN CERTIFICATE-----\" blocks)"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in certificates.iter().enumerate() {
        roots.add(der.clone()).map_err(|e| {
            format!(
                "certificate {} of {shown} cannot be a trust root: {e}",
                i + 1
            )
        })?;
    }
    Ok(CaFile {
        path: path.to_path_buf(),
        certificates,
    })
}

/// A bare host name or IP address: no scheme, no port, no spaces.
fn check_host(text: &str) -> Result<String, String> {
    let host = text.trim();
    if host.is_empty() {
        return Err("must name the SMTP server, e.g. \"smtp.example.org\"".into());
    }
    if host.contains("://") || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(format!(
            "`{text}` is not a host name; write only the name, e.g. \"smtp.example.org\", and the port in `port`"
        ));
    }
    if host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
        return Err(format!(
            "`{text}` is not a host name; put the port in `port`"
        ));
    }
    Ok(host.to_owned())
}
