//! Intake: turns a send request into a recorded delivery and its first job.
//!
//! Everything that can be wrong with a request is found here, before anything
//! is written: the recipient, the code, the template, every variable. What is
//! accepted is written with its job in one transaction, so it is never lost.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::app::App;
use crate::domain::otp::{OtpCode, redact};
use crate::domain::segments::count_segments;
use crate::domain::{Channel, DeliveryKind, Recipient};
use crate::queue::Lane;
use crate::store::{Delivery, NewDelivery, StoreError};

/// The name of the OTP template.
pub const OTP_TEMPLATE: &str = "otp";
/// Shortest OTP lifetime accepted.
pub const MIN_OTP_TTL: Duration = Duration::from_secs(30);
/// Longest OTP lifetime accepted.
pub const MAX_OTP_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A request to send a one-time code.
#[derive(Debug, Clone)]
pub struct OtpRequest {
    /// Phone number or email address.
    pub to: String,
    /// The code (4 to 10 digits).
    pub code: String,
    /// The channel; inferred from `to` when absent.
    pub channel: Option<Channel>,
    /// Template locale; the configured default when absent.
    pub locale: Option<String>,
    /// How long the code is worth sending; the configured TTL when absent.
    pub ttl: Option<Duration>,
}

/// A request to send a templated notification.
#[derive(Debug, Clone)]
pub struct NotificationRequest {
    /// Phone number or email address.
    pub to: String,
    /// Template name.
    pub template: String,
    /// Template locale; the configured default when absent.
    pub locale: Option<String>,
    /// Template variables.
    pub vars: Map<String, Value>,
    /// Not before this time.
    pub send_at: Option<DateTime<Utc>>,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A field is wrong; nothing was written.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// Why, in plain words.
        reason: String,
    },
    /// The database failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> IntakeError {
    IntakeError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl App {
    /// Validates and records an OTP send; returns the new delivery.
    pub async fn enqueue_otp(&self, req: OtpRequest) -> Result<Delivery, IntakeError> {
        let code = OtpCode::parse(&req.code).map_err(|e| invalid("code", e.to_string()))?;
        let recipient = self.parse_recipient(&req.to, req.channel)?;
        let ttl = req.ttl.unwrap_or(self.config.otp.ttl);
        if !(MIN_OTP_TTL..=MAX_OTP_TTL).contains(&ttl) {
            return Err(invalid(
                "ttl",
                format!(
                    "{} is out of range: an OTP lives between {} and {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(MIN_OTP_TTL),
                    humantime::format_duration(MAX_OTP_TTL)
                ),
            ));
        }
        let mut vars = Map::new();
        vars.insert(
            "ttl_minutes".into(),
            Value::from(ttl.as_secs().div_ceil(60)),
        );
        let now = self.clock.now();
        let expires_at =
            now + chrono::Duration::from_std(ttl).map_err(|e| invalid("ttl", e.to_string()))?;
        self.record(
            DeliveryKind::Otp,
            recipient,
            OTP_TEMPLATE,
            req.locale,
            vars,
            Some(&code),
            Some(expires_at),
            None,
        )
        .await
    }

    /// Validates and records a notification send; returns the new delivery.
    pub async fn enqueue_notification(
        &self,
        req: NotificationRequest,
    ) -> Result<Delivery, IntakeError> {
        if req.template == OTP_TEMPLATE {
            return Err(invalid(
                "template",
                "the otp template is sent with `send otp`, which keeps the code secret",
            ));
        }
        if req.vars.contains_key("code") {
            return Err(invalid(
                "vars",
                "`code` is reserved for OTP sends, whose codes are kept secret",
            ));
        }
        let recipient = self.parse_recipient(&req.to, None)?;
        self.record(
            DeliveryKind::Notification,
            recipient,
            &req.template,
            req.locale,
            req.vars,
            None,
            None,
            req.send_at,
        )
        .await
    }

    fn parse_recipient(
        &self,
        to: &str,
        channel: Option<Channel>,
    ) -> Result<Recipient, IntakeError> {
        let recipient =
            Recipient::parse(to, self.config.otp.default_region).map_err(|e| invalid("to", e))?;
        if let Some(channel) = channel
            && channel != recipient.channel()
        {
            return Err(invalid(
                "channel",
                format!(
                    "`{to}` is reached by {}, not {channel}",
                    recipient.channel()
                ),
            ));
        }
        if self.router.route(&recipient).is_none() {
            return Err(invalid(
                "to",
                format!("no route carries {} to {}", recipient.channel(), recipient),
            ));
        }
        Ok(recipient)
    }

    #[allow(clippy::too_many_arguments)] // one private helper shared by both kinds
    async fn record(
        &self,
        kind: DeliveryKind,
        recipient: Recipient,
        template: &str,
        locale: Option<String>,
        vars: Map<String, Value>,
        code: Option<&OtpCode>,
        expires_at: Option<DateTime<Utc>>,
        send_at: Option<DateTime<Utc>>,
    ) -> Result<Delivery, IntakeError> {
        let locale = locale.unwrap_or_else(|| self.templates.default_locale().to_owned());
        let channel = recipient.channel();
        let rendered = self
            .templates
            .render(template, &locale, channel, &with_code(&vars, code))
            .map_err(|e| {
                invalid(
                    if template == OTP_TEMPLATE {
                        "locale"
                    } else {
                        "template"
                    },
                    e.to_string(),
                )
            })?;
        let hide = |s: &str| match code {
            Some(c) => redact(s, c),
            None => s.to_owned(),
        };
        let (segments, encoding) = match channel {
            Channel::Sms => {
                let info = count_segments(&rendered.text);
                (Some(info.segments), Some(info.encoding.to_string()))
            }
            Channel::Email => (None, None),
        };
        let now = self.clock.now();
        let new = NewDelivery {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            channel,
            recipient: recipient.as_str().to_owned(),
            template: template.to_owned(),
            locale,
            vars: Value::Object(vars),
            subject: rendered.subject.as_deref().map(hide),
            body: hide(&rendered.text),
            body_html: rendered.html.as_deref().map(hide),
            otp_code: code.map(|c| c.expose().to_owned()),
            max_attempts: self.config.retry.max_attempts,
            expires_at,
            created_at: now,
            send_at: send_at.filter(|at| *at > now).unwrap_or(now),
            segments,
            encoding,
        };
        self.db.insert_delivery(&new).await?;
        self.wakers.wake(Lane::for_kind(kind));
        let delivery = self.db.delivery(&new.id).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("delivery {} vanished after insert", new.id))
        })?;
        Ok(delivery)
    }
}

/// Template variables with the OTP code added, for rendering only.
pub fn with_code(vars: &Map<String, Value>, code: Option<&OtpCode>) -> Map<String, Value> {
    let mut all = vars.clone();
    if let Some(code) = code {
        all.insert("code".into(), Value::from(code.expose()));
    }
    all
}
