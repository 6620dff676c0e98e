//! `kind = "smtp"`: email through an SMTP server (Postfix, a relay service,
//! a mailbox provider's submission port), with lettre's pooled async
//! transport.
//!
//! Each email is multipart/alternative (text + HTML) when it has HTML, plain
//! text otherwise, with `From` from the configuration and a `Message-ID` of
//! `<delivery-id@from-domain>`, so a retried send carries the same one and a
//! receiver can drop the duplicate. The provider message id is the id the
//! server gives after "queued as " in its reply to the end of DATA (Postfix),
//! else that Message-ID. SMTP sends email only.
//!
//! [`classify`] is the one table of what a reply means: 5yz permanent, 4yz,
//! connection, TLS and timeout transient; refused logins also alert.

mod config;
mod service;

#[cfg(test)]
mod double;
#[cfg(test)]
mod tests;

pub use config::{DEFAULT_MAX_CONNECTIONS, SmtpAuth, SmtpConfig, SmtpTls};
pub use service::{Outcome, Smtp, classify};
