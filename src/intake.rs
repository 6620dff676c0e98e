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
use crate::store::{
    Delivery, IdempotencyClaim, InsertGuards, Inserted, NewDelivery, OtpLimit, StoreError,
};

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
    /// An abuse guard refused the request; nothing was written.
    #[error("{field}: refused by rule {rule}: {reason}")]
    Refused {
        /// The configuration rule (`api.sms_prefix_allowlist`).
        rule: &'static str,
        /// The request field.
        field: &'static str,
        /// Why, in plain words.
        reason: String,
    },
    /// Too many OTPs to this recipient lately; nothing was written.
    #[error("too many one-time codes to this recipient; try again in {}", humantime::format_duration(*retry_after))]
    TooMany {
        /// When the oldest OTP in the window leaves it.
        retry_after: Duration,
    },
    /// The Idempotency-Key was used with a different request; nothing was written.
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    /// The Idempotency-Key is claimed but its response cannot be read yet.
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInFlight,
    /// The database failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An `Idempotency-Key` as an API send carries it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The API key it belongs to: keys are per API key.
    pub api_key_id: i64,
    /// The client's key.
    pub key: String,
    /// A hash of the request (route and canonical body).
    pub request_hash: String,
    /// The status of the response to save and replay.
    pub response_status: u16,
}

/// How long an Idempotency-Key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What an API send did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// A new delivery; `receipt` is the response body (also saved for replays).
    /// The row is not read back: an API answer needs no more than this.
    Created {
        /// The new delivery's id.
        id: String,
        /// Its channel.
        channel: Channel,
        /// Its template.
        template: String,
        /// `{"id", "status": "pending", "expires_at"?}`.
        receipt: Value,
    },
    /// A repeat of an earlier request with the same Idempotency-Key: its
    /// saved response; nothing was written.
    Replayed {
        /// The saved status.
        status: u16,
        /// The saved body.
        body: String,
    },
}

/// The response body of an accepted send: what a client needs to follow it.
/// It never holds the OTP code.
pub fn receipt(d: &NewDelivery) -> Value {
    let mut v = serde_json::json!({ "id": d.id, "status": "pending" });
    if let (Some(at), Some(obj)) = (d.expires_at, v.as_object_mut()) {
        obj.insert("expires_at".into(), Value::from(at.to_rfc3339()));
    }
    v
}

/// The limits an API send is held to (`[api]` in the configuration);
/// command-line sends are the operator's and skip them.
#[derive(Debug, Clone, Default)]
struct ApiSend {
    idempotency: Option<IdempotencyKey>,
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
        self.created(self.otp(req, None).await?).await
    }

    /// An OTP send from the HTTP API: the `[api]` guards apply (SMS prefix
    /// allowlist, per-recipient limit) and an Idempotency-Key is claimed in
    /// the same transaction as the delivery.
    pub async fn enqueue_otp_from_api(
        &self,
        req: OtpRequest,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Enqueued, IntakeError> {
        self.otp(req, Some(ApiSend { idempotency })).await
    }

    /// A notification send from the HTTP API (see [`App::enqueue_otp_from_api`]).
    pub async fn enqueue_notification_from_api(
        &self,
        req: NotificationRequest,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Enqueued, IntakeError> {
        self.notification(req, Some(ApiSend { idempotency })).await
    }

    async fn otp(&self, req: OtpRequest, api: Option<ApiSend>) -> Result<Enqueued, IntakeError> {
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
            api,
        )
        .await
    }

    /// Validates and records a notification send; returns the new delivery.
    pub async fn enqueue_notification(
        &self,
        req: NotificationRequest,
    ) -> Result<Delivery, IntakeError> {
        self.created(self.notification(req, None).await?).await
    }

    async fn notification(
        &self,
        req: NotificationRequest,
        api: Option<ApiSend>,
    ) -> Result<Enqueued, IntakeError> {
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
            api,
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
        api: Option<ApiSend>,
    ) -> Result<Enqueued, IntakeError> {
        if let (Some(_), Recipient::Phone(_)) = (&api, &recipient) {
            let allow = &self.config.api.sms_prefix_allowlist;
            if !allow.is_empty()
                && !allow
                    .iter()
                    .any(|p| recipient.as_str().starts_with(p.as_str()))
            {
                return Err(IntakeError::Refused {
                    rule: "api.sms_prefix_allowlist",
                    field: "to",
                    reason: format!(
                        "SMS is only sent to numbers starting with {}",
                        allow.join(", ")
                    ),
                });
            }
        }
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
        let receipt = receipt(&new);
        let mut guards = InsertGuards::default();
        if let Some(api) = &api {
            let since =
                |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
            if let (DeliveryKind::Otp, Some(limit)) = (kind, self.config.api.otp_per_recipient) {
                guards.otp_limit = Some(OtpLimit {
                    max: limit.max,
                    since: since(limit.per),
                });
            }
            guards.idempotency = api.idempotency.as_ref().map(|k| IdempotencyClaim {
                api_key_id: k.api_key_id,
                key: k.key.clone(),
                request_hash: k.request_hash.clone(),
                response_status: k.response_status,
                response_body: receipt.to_string(),
                expired_before: since(IDEMPOTENCY_TTL),
            });
        }
        let (id, template) = (new.id.clone(), new.template.clone());
        let claim = guards.idempotency.clone();
        let _first = (kind == DeliveryKind::Otp).then(|| self.batcher.otp_in_flight());
        match self.batcher.insert_delivery_guarded(new, guards).await? {
            Inserted::Created(_) => {}
            Inserted::Limited { oldest } => {
                let window = self
                    .config
                    .api
                    .otp_per_recipient
                    .map(|l| l.per)
                    .unwrap_or_default();
                let free_at =
                    oldest + chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
                let wait = (free_at - now).to_std().unwrap_or_default();
                // Whole seconds, rounded up, at least one: what Retry-After carries.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(IntakeError::TooMany {
                    retry_after: Duration::from_secs(secs.max(1)),
                });
            }
            Inserted::KeyTaken => {
                let Some(claim) = &claim else {
                    return Err(StoreError::Corrupt(
                        "an idempotency key was taken without a claim".into(),
                    )
                    .into());
                };
                let saved = self
                    .db
                    .saved_response(claim.api_key_id, &claim.key, claim.expired_before)
                    .await?;
                return match saved {
                    Some(s) if s.request_hash == claim.request_hash => Ok(Enqueued::Replayed {
                        status: u16::try_from(s.response_status).unwrap_or(500),
                        body: s.response_body,
                    }),
                    Some(_) => Err(IntakeError::KeyReused),
                    None => Err(IntakeError::KeyInFlight),
                };
            }
        }
        if kind == DeliveryKind::Otp {
            self.batcher.otp_recorded();
        }
        self.wakers.wake(Lane::for_kind(kind));
        Ok(Enqueued::Created {
            id,
            channel,
            template,
            receipt,
        })
    }

    /// The delivery a command-line or library send created, as stored.
    async fn created(&self, outcome: Enqueued) -> Result<Delivery, IntakeError> {
        match outcome {
            Enqueued::Created { id, .. } => Ok(self.db.delivery(&id).await?.ok_or_else(|| {
                StoreError::Corrupt(format!("delivery {id} vanished after insert"))
            })?),
            Enqueued::Replayed { .. } => Err(StoreError::Corrupt(
                "a send without an Idempotency-Key was replayed".into(),
            )
            .into()),
        }
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
