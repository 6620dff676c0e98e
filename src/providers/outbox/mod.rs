//! `kind = "outbox"`: writes each message as a file instead of sending it,
//! like Django's file email backend. The development default.
//!
//! Email becomes `<delivery-id>.eml` (a complete RFC 5322 message, multipart
//! text + HTML); SMS becomes `<delivery-id>.json`. Files are written to a
//! temporary name and renamed, so a reader never sees half a message, and a
//! retried send replaces the same file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use serde::Deserialize;

use super::registry::{Adapter, Kind, KindConfig};
use super::{Accepted, Content, OutgoingMessage, Provider, SendError};
use crate::domain::Channel;
use crate::domain::segments::count_segments;

/// Outbox settings.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Where files go (relative paths resolve against the config file's folder).
    pub dir: PathBuf,
    /// The email `From`, with display name.
    pub from: Mailbox,
    /// The SMS sender id written into SMS files.
    pub sender_id: Option<String>,
    /// A pause before each write, to rehearse a slow provider (load tests, crash drills).
    pub latency: Option<std::time::Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    dir: String,
    from: Option<String>,
    sender_id: Option<String>,
    latency: Option<String>,
}

/// `kind = "outbox"`.
pub const KIND: Kind = Kind {
    name: "outbox",
    parse: |table, base, _read_secret| Ok(Arc::new(OutboxConfig::from_table(table, base)?)),
};

impl KindConfig for OutboxConfig {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn channels(&self) -> &'static [Channel] {
        &[Channel::Sms, Channel::Email]
    }

    fn describe(&self) -> String {
        format!("writes to {}", self.dir.display())
    }

    fn build(&self, _timeout: Duration) -> Result<Adapter, String> {
        Ok(Adapter::sends(Arc::new(Outbox::new(self.clone())?)))
    }
}

impl OutboxConfig {
    /// Reads the outbox keys of a `[[provider]]` table; errors name the key.
    pub fn from_table(table: toml::Table, base: &Path) -> Result<OutboxConfig, (String, String)> {
        let raw = RawOutbox::deserialize(table).map_err(|e| crate::settings::table_error(&e))?;
        let from_text = raw.from.as_deref().unwrap_or("tuma <no-reply@localhost>");
        let from = from_text.parse::<Mailbox>().map_err(|e| {
            (
                "from".to_owned(),
                format!(
                    "`{from_text}` is not an address like \"MtaaDAO <no-reply@mtaadao.org>\": {e}"
                ),
            )
        })?;
        let latency = raw
            .latency
            .as_deref()
            .map(|t| crate::settings::parse_duration_in(t, Duration::ZERO, Duration::from_secs(60)))
            .transpose()
            .map_err(|e| ("latency".to_owned(), e))?;
        if raw.dir.trim().is_empty() {
            return Err(("dir".into(), "must name a folder".into()));
        }
        Ok(OutboxConfig {
            dir: base.join(raw.dir),
            from,
            sender_id: raw.sender_id,
            latency,
        })
    }
}

/// The outbox provider.
#[derive(Debug)]
pub struct Outbox {
    config: OutboxConfig,
}

impl Outbox {
    /// Creates the folder if needed.
    pub fn new(config: OutboxConfig) -> Result<Outbox, String> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| format!("cannot create outbox folder {}: {e}", config.dir.display()))?;
        Ok(Outbox { config })
    }

    fn email_bytes(&self, message: &OutgoingMessage) -> Result<(String, Vec<u8>), SendError> {
        let email = super::email_message(&self.config.from, message, "not an email")?;
        Ok((format!("{}.eml", message.delivery_id), email.formatted()))
    }

    fn sms_bytes(&self, message: &OutgoingMessage) -> Result<(String, Vec<u8>, u32), SendError> {
        let Content::Sms { to, text } = &message.content else {
            return Err(SendError::permanent("not an SMS"));
        };
        let info = count_segments(text);
        let body = serde_json::json!({
            "id": message.delivery_id,
            "kind": message.kind,
            "to": to.as_str(),
            "from": self.config.sender_id,
            "text": text,
            "encoding": info.encoding,
            "segments": info.segments,
        });
        let bytes = serde_json::to_vec_pretty(&body)
            .map_err(|e| SendError::permanent(format!("cannot encode the SMS: {e}")))?;
        Ok((
            format!("{}.json", message.delivery_id),
            bytes,
            info.segments,
        ))
    }
}

#[async_trait]
impl Provider for Outbox {
    fn dry_run(&self, message: &OutgoingMessage) -> String {
        let rendered = match &message.content {
            Content::Email { .. } => self
                .email_bytes(message)
                .map(|(f, b)| (f, String::from_utf8_lossy(&b).into_owned())),
            Content::Sms { .. } => self
                .sms_bytes(message)
                .map(|(f, b, _)| (f, String::from_utf8_lossy(&b).into_owned())),
        };
        match rendered {
            Ok((file, body)) => format!("write {}\n\n{body}", self.config.dir.join(file).display()),
            Err(e) => format!("cannot build the message: {e}"),
        }
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<Accepted, SendError> {
        if let Some(pause) = self.config.latency {
            tokio::time::sleep(pause).await;
        }
        let (file, bytes, segments) = match &message.content {
            Content::Email { .. } => {
                let (f, b) = self.email_bytes(message)?;
                (f, b, None)
            }
            Content::Sms { .. } => {
                let (f, b, s) = self.sms_bytes(message)?;
                (f, b, Some(s))
            }
        };
        let dir = self.config.dir.clone();
        let name = file.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &bytes))
            .await
            .map_err(|e| SendError::transient(format!("outbox writer stopped: {e}")))?
            .map_err(|e| SendError::transient(format!("cannot write {file} in the outbox: {e}")))?;
        Ok(Accepted {
            provider_message_id: file,
            provider_status: Some("written".into()),
            cost: None,
            segments,
            part_ids: Vec::new(),
        })
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}
