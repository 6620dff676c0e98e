//! `kind = "smtp"`: email through an SMTP server (Postfix, a relay service,
//! a mailbox provider's submission port), with lettre's SMTP client over
//! connections this adapter opens and pools (`connection.rs`).
//!
//! Each email is multipart/alternative (text + HTML) when it has HTML, plain
//! text otherwise, with `From` from the configuration and a `Message-ID` of
//! `<delivery-id@from-domain>`, so a retried send carries the same one and a
//! receiver can drop the duplicate. The provider message id is the id the
//! server gives after "queued as " in its reply to the end of DATA (Postfix),
//! else that Message-ID. SMTP sends email only.
//!
//! [`classify`] is the one table of what a reply means: 5yz permanent, and a
//! step the server cannot do (STARTTLS not offered) permanent; 4yz,
//! connection, TLS and timeout transient; refused logins and missing
//! STARTTLS also alert. Once the message's final `.` went out, a lost
//! connection, a reply that does not parse or no reply in time is unknown:
//! the server may have taken it.

mod config;
mod connection;
mod service;

#[cfg(test)]
mod double;
#[cfg(test)]
mod tests;

pub use config::{CaFile, DEFAULT_MAX_CONNECTIONS, SmtpAuth, SmtpConfig, SmtpTls};
pub use service::{Outcome, Smtp, classify, recipient_gone};

/// `kind = "smtp"`.
pub const KIND: crate::providers::registry::Kind = crate::providers::registry::Kind {
    name: "smtp",
    parse: |table, base, read_secret| {
        Ok(std::sync::Arc::new(SmtpConfig::from_table_with(
            table,
            base,
            read_secret,
        )?))
    },
};

impl crate::providers::registry::KindConfig for SmtpConfig {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn channels(&self) -> &'static [crate::domain::Channel] {
        &[crate::domain::Channel::Email]
    }

    fn describe(&self) -> String {
        format!(
            "{}:{} ({}) from {}",
            self.host,
            self.port,
            self.tls.as_str(),
            self.from
        )
    }

    fn build(
        &self,
        timeout: std::time::Duration,
    ) -> Result<crate::providers::registry::Adapter, String> {
        Ok(crate::providers::registry::Adapter::sends(
            std::sync::Arc::new(Smtp::new(self.clone(), timeout)?),
        ))
    }
}
