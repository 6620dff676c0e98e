//! Intake: turns a send request into a recorded delivery, due at its send time.
//!
//! Everything that can be wrong with a request is found here, before anything
//! is written: the recipient, the code, the template, every variable. What is
//! accepted is written with its job in one transaction, so it is never lost.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::app::App;
use crate::domain::otp::{OtpCode, redact};
use crate::domain::phone::{LineType, PhoneNumber};
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

/// Shortest own deadline a notification may have, from its acceptance.
pub const MIN_NOTIFICATION_TTL: Duration = Duration::from_secs(30);
/// Longest own deadline a notification may have, from its acceptance: as
/// long as `retry.give_up_after` may keep one going.
pub const MAX_NOTIFICATION_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A notification's own deadline: past it, it is `expired`, never sent late
/// (stored as its `expires_at`, which the dispatcher checks before every
/// send, as for an OTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// This long after it is accepted (`ttl`).
    Ttl(Duration),
    /// At this time (`expires_at`).
    At(DateTime<Utc>),
}

impl Deadline {
    /// The request field that gave it.
    fn field(self) -> &'static str {
        match self {
            Deadline::Ttl(_) => "ttl",
            Deadline::At(_) => "expires_at",
        }
    }

    /// When it falls, for a notification accepted at `now` and first tried
    /// at `send_at`: between [`MIN_NOTIFICATION_TTL`] and
    /// [`MAX_NOTIFICATION_TTL`] from now, and after `send_at`.
    fn resolve(
        self,
        now: DateTime<Utc>,
        send_at: Option<DateTime<Utc>>,
    ) -> Result<DateTime<Utc>, IntakeError> {
        let range = format!(
            "a notification's own deadline is {} to {} from now",
            humantime::format_duration(MIN_NOTIFICATION_TTL),
            humantime::format_duration(MAX_NOTIFICATION_TTL)
        );
        let at = match self {
            Deadline::Ttl(ttl) => {
                if !(MIN_NOTIFICATION_TTL..=MAX_NOTIFICATION_TTL).contains(&ttl) {
                    return Err(invalid(
                        "ttl",
                        format!(
                            "{} is out of range: {range}",
                            humantime::format_duration(ttl)
                        ),
                    ));
                }
                now + chrono::Duration::from_std(ttl).map_err(|e| invalid("ttl", e.to_string()))?
            }
            Deadline::At(at) => {
                let shown = at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
                if at <= now {
                    return Err(invalid(
                        "expires_at",
                        format!("{shown} is not in the future"),
                    ));
                }
                let ahead = (at - now).to_std().unwrap_or_default();
                if !(MIN_NOTIFICATION_TTL..=MAX_NOTIFICATION_TTL).contains(&ahead) {
                    return Err(invalid(
                        "expires_at",
                        format!("{shown} is out of range: {range}"),
                    ));
                }
                at
            }
        };
        if let Some(send_at) = send_at.filter(|s| *s >= at) {
            return Err(invalid(
                self.field(),
                format!(
                    "falls at {}, not after send_at ({}): the notification would expire before \
                     its first attempt",
                    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    send_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
            ));
        }
        Ok(at)
    }
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
    /// Not after this: its own deadline, if it has one.
    pub expires: Option<Deadline>,
}

pub use crate::refusal::IntakeError;

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

/// Who sent an API request, and why: recorded on the delivery, whose
/// status webhooks go to that key's endpoints.
#[derive(Debug, Clone, Default)]
pub struct ApiOrigin {
    /// The API key's name.
    pub key_name: String,
    /// The caller's word for why (`login`, `signup`, …), at most 64 characters.
    pub purpose: Option<String>,
}

/// The longest `purpose`.
pub const MAX_PURPOSE_CHARS: usize = 64;

/// The limits an API send is held to (`[api]` in the configuration);
/// command-line sends are the operator's and skip them.
#[derive(Debug, Clone, Default)]
struct ApiSend {
    idempotency: Option<IdempotencyKey>,
    origin: ApiOrigin,
}

fn invalid(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> IntakeError {
    IntakeError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The first control character in `text` other than those `allowed`, as
/// `U+0000`: named by code point, so the text itself is never repeated.
pub fn control_character(text: &str, allowed: &[char]) -> Option<String> {
    text.chars()
        .find(|c| c.is_control() && !allowed.contains(c))
        .map(|c| format!("U+{:04X}", u32::from(c)))
}

/// Line breaks and tabs: allowed in a template variable, whose value may
/// well be several lines of a message, and nowhere else.
pub const MULTI_LINE: [char; 3] = ['\n', '\r', '\t'];

/// Refuses a text field holding a control character (a NUL would fail on
/// Postgres and reach a provider on SQLite).
fn plain_text(field: &'static str, text: &str) -> Result<(), IntakeError> {
    match control_character(text, &[]) {
        Some(c) => Err(invalid(
            field,
            format!("must not contain control characters (found {c})"),
        )),
        None => Ok(()),
    }
}

/// A send checked and rendered: the row to write and the guards to write
/// it under. Nothing is written yet.
struct Prepared {
    new: NewDelivery,
    guards: InsertGuards,
    receipt: Value,
    now: DateTime<Utc>,
}

/// What answering a prepared send needs once its insert has answered.
struct Outcome {
    id: String,
    kind: DeliveryKind,
    channel: Channel,
    template: String,
    receipt: Value,
    claim: Option<IdempotencyClaim>,
    now: DateTime<Utc>,
}

impl Prepared {
    fn outcome(&self) -> Outcome {
        Outcome {
            id: self.new.id.clone(),
            kind: self.new.kind,
            channel: self.new.channel,
            template: self.new.template.clone(),
            receipt: self.receipt.clone(),
            claim: self.guards.idempotency.clone(),
            now: self.now,
        }
    }
}

impl ApiSend {
    fn new(origin: ApiOrigin, idempotency: Option<IdempotencyKey>) -> Result<Self, IntakeError> {
        if let Some(purpose) = &origin.purpose {
            plain_text("purpose", purpose)?;
            if purpose.trim().is_empty() || purpose.chars().count() > MAX_PURPOSE_CHARS {
                return Err(invalid(
                    "purpose",
                    format!("must be 1 to {MAX_PURPOSE_CHARS} characters"),
                ));
            }
        }
        Ok(ApiSend {
            idempotency,
            origin,
        })
    }
}

/// Whether a send from the command line is refused when its recipient is
/// suppressed (API sends always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressions {
    /// Refused, as over the API (the default).
    Honour,
    /// Sent anyway: ops know better (`--ignore-suppression`).
    Ignore,
}

impl App {
    /// Validates and records an OTP send; returns the new delivery. A
    /// suppressed recipient is refused.
    pub async fn enqueue_otp(&self, req: OtpRequest) -> Result<Delivery, IntakeError> {
        self.enqueue_otp_with(req, Suppressions::Honour).await
    }

    /// [`App::enqueue_otp`], past the suppression list when ops say so.
    pub async fn enqueue_otp_with(
        &self,
        req: OtpRequest,
        suppressions: Suppressions,
    ) -> Result<Delivery, IntakeError> {
        self.created(self.otp(req, None, suppressions).await?).await
    }

    /// An OTP send from the HTTP API: the `[api]` guards apply (SMS prefix
    /// allowlist, per-recipient limit) and an Idempotency-Key is claimed in
    /// the same transaction as the delivery.
    pub async fn enqueue_otp_from_api(
        &self,
        req: OtpRequest,
        origin: ApiOrigin,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Enqueued, IntakeError> {
        self.otp(
            req,
            Some(ApiSend::new(origin, idempotency)?),
            Suppressions::Honour,
        )
        .await
    }

    /// A notification send from the HTTP API (see [`App::enqueue_otp_from_api`]).
    pub async fn enqueue_notification_from_api(
        &self,
        req: NotificationRequest,
        origin: ApiOrigin,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Enqueued, IntakeError> {
        self.notification(
            req,
            Some(ApiSend::new(origin, idempotency)?),
            Suppressions::Honour,
        )
        .await
    }

    async fn otp(
        &self,
        req: OtpRequest,
        api: Option<ApiSend>,
        suppressions: Suppressions,
    ) -> Result<Enqueued, IntakeError> {
        plain_text("code", &req.code)?;
        plain_text("to", &req.to)?;
        if let Some(locale) = &req.locale {
            plain_text("locale", locale)?;
        }
        let code = OtpCode::parse(&req.code).map_err(|e| invalid("code", e.to_string()))?;
        let recipient = self.parse_recipient(&req.to, req.channel)?;
        if let Recipient::Phone(number) = &recipient {
            self.check_otp_line(number)?;
        }
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
        let prepared = self
            .prepare(
                DeliveryKind::Otp,
                recipient,
                OTP_TEMPLATE,
                req.locale,
                vars,
                Some(&code),
                Some(expires_at),
                None,
                api,
                None,
                suppressions,
            )
            .await?;
        self.record(prepared).await
    }

    /// Validates and records a notification send; returns the new
    /// delivery. A suppressed recipient is refused.
    pub async fn enqueue_notification(
        &self,
        req: NotificationRequest,
    ) -> Result<Delivery, IntakeError> {
        self.enqueue_notification_with(req, Suppressions::Honour)
            .await
    }

    /// [`App::enqueue_notification`], past the suppression list when ops
    /// say so.
    pub async fn enqueue_notification_with(
        &self,
        req: NotificationRequest,
        suppressions: Suppressions,
    ) -> Result<Delivery, IntakeError> {
        self.created(self.notification(req, None, suppressions).await?)
            .await
    }

    async fn notification(
        &self,
        req: NotificationRequest,
        api: Option<ApiSend>,
        suppressions: Suppressions,
    ) -> Result<Enqueued, IntakeError> {
        let prepared = self
            .check_notification(req, api, None, suppressions)
            .await?;
        self.record(prepared).await
    }

    /// A command-line notification recorded under the delivery id `id`
    /// (a CSV row's, derived from its idempotency key), at most once: `false`
    /// when a delivery with this id exists already, and then nothing is
    /// written. The id is the delivery's primary key, so two runs racing on
    /// one row write it once.
    pub async fn enqueue_notification_once(
        &self,
        req: NotificationRequest,
        id: String,
        suppressions: Suppressions,
    ) -> Result<bool, IntakeError> {
        if self.db.delivery(&id).await?.is_some() {
            return Ok(false);
        }
        let prepared = self
            .check_notification(req, None, Some(id.clone()), suppressions)
            .await?;
        match self.record(prepared).await {
            Ok(_) => Ok(true),
            Err(IntakeError::Store(e)) => match self.db.delivery(&id).await {
                Ok(Some(_)) => Ok(false),
                _ => Err(e.into()),
            },
            Err(e) => Err(e),
        }
    }

    /// A notification send checked and rendered, nothing written.
    async fn check_notification(
        &self,
        req: NotificationRequest,
        api: Option<ApiSend>,
        id: Option<String>,
        suppressions: Suppressions,
    ) -> Result<Prepared, IntakeError> {
        if req.template == OTP_TEMPLATE {
            return Err(invalid(
                "template",
                "the otp template is sent with `send otp`, which keeps the code secret",
            ));
        }
        plain_text("to", &req.to)?;
        plain_text("template", &req.template)?;
        if let Some(locale) = &req.locale {
            plain_text("locale", locale)?;
        }
        self.check_vars(&req.vars)?;
        let recipient = self.parse_recipient(&req.to, None)?;
        let expires_at = req
            .expires
            .map(|d| d.resolve(self.clock.now(), req.send_at))
            .transpose()?;
        if let Recipient::Phone(number) = &recipient {
            self.check_notification_line(number)?;
        }
        self.prepare(
            DeliveryKind::Notification,
            recipient,
            &req.template,
            req.locale,
            req.vars,
            None,
            expires_at,
            req.send_at,
            api,
            id,
            suppressions,
        )
        .await
    }

    /// Notification sends from the HTTP API's batch route: each is checked
    /// as [`App::enqueue_notification_from_api`] checks one, then every
    /// accepted one is written in ONE transaction. The answers are in the
    /// order given: a refused item gets its own error and writes nothing;
    /// the others do not depend on it. An error of the database fails the
    /// whole batch (the outer `Err`), and then nothing is written.
    pub async fn enqueue_notifications_from_api(
        &self,
        items: Vec<(NotificationRequest, ApiOrigin, Option<IdempotencyKey>)>,
    ) -> Result<Vec<Result<Enqueued, IntakeError>>, IntakeError> {
        let mut answers: Vec<Option<Result<Enqueued, IntakeError>>> = Vec::new();
        let mut ready: Vec<(usize, Prepared)> = Vec::new();
        for (i, (req, origin, idempotency)) in items.into_iter().enumerate() {
            let checked = match ApiSend::new(origin, idempotency) {
                Ok(api) => {
                    self.check_notification(req, Some(api), None, Suppressions::Honour)
                        .await
                }
                Err(e) => Err(e),
            };
            match checked {
                Ok(p) => {
                    answers.push(None);
                    ready.push((i, p));
                }
                Err(IntakeError::Store(e)) => return Err(e.into()),
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        if !ready.is_empty() {
            let rows: Vec<(&NewDelivery, &InsertGuards)> =
                ready.iter().map(|(_, p)| (&p.new, &p.guards)).collect();
            let inserted = self.db.insert_deliveries_guarded(&rows).await?;
            let mut any = false;
            for ((i, p), inserted) in ready.into_iter().zip(inserted) {
                let answer = self.settle(p.outcome(), inserted).await;
                if let Err(IntakeError::Store(e)) = answer {
                    return Err(e.into());
                }
                any |= matches!(answer, Ok(Enqueued::Created { .. }));
                if let Some(slot) = answers.get_mut(i) {
                    *slot = Some(answer);
                }
            }
            if any {
                self.wakers.wake(Lane::for_kind(DeliveryKind::Notification));
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(StoreError::Corrupt("a batch item got no answer".into()).into())
                })
            })
            .collect())
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

    /// Every request variable is a plain value (string, number or boolean;
    /// a null would render as `None`) with no control character but line
    /// breaks and tabs, and names none that the configuration sets
    /// (`[templates] vars`, such as `app_name`) or that intake sets (`code`).
    fn check_vars(&self, vars: &Map<String, Value>) -> Result<(), IntakeError> {
        for (name, value) in vars {
            if let Some(c) = control_character(name, &[]) {
                return Err(invalid(
                    "vars",
                    format!("a variable name must not contain control characters (found {c})"),
                ));
            }
            let field = || format!("vars.{name}");
            if name == "code" {
                return Err(invalid(
                    field(),
                    "`code` is reserved for OTP sends, whose codes are kept secret",
                ));
            }
            if self.templates.is_configured(name) {
                return Err(invalid(
                    field(),
                    "is set by the configuration ([templates] vars) and cannot be given in a request",
                ));
            }
            match value {
                Value::String(text) => {
                    if let Some(c) = control_character(text, &MULTI_LINE) {
                        return Err(invalid(
                            field(),
                            format!(
                                "must not contain control characters other than line breaks and tabs (found {c})"
                            ),
                        ));
                    }
                }
                Value::Number(_) | Value::Bool(_) => {}
                Value::Null => {
                    return Err(invalid(
                        field(),
                        "must be a string, number or boolean, not null",
                    ));
                }
                Value::Array(_) | Value::Object(_) => {
                    return Err(invalid(
                        field(),
                        "must be a string, number or boolean, not a list or object",
                    ));
                }
            }
        }
        Ok(())
    }

    /// An OTP goes only to a line that reaches a handset: premium-rate,
    /// shared-cost and other such numbers are what SMS pumping sends codes
    /// to. Fixed lines only with `[otp] allow_fixed_line`. Every OTP send,
    /// the CLI's too: this is about the number, not the caller.
    fn check_otp_line(&self, number: &PhoneNumber) -> Result<(), IntakeError> {
        if let Some(network) = number.international_network()
            && !self.config.otp.allow_satellite
        {
            return Err(IntakeError::Refused {
                rule: "otp.number_type",
                field: "to",
                reason: format!(
                    "{number} is a {network} number, a revenue-share fraud destination; one-time \
                     codes are not sent to satellite or international-network numbers (set [otp] \
                     allow_satellite = true if your users have them)"
                ),
            });
        }
        let line = number.line_type();
        if line.is_mobile() || (line == LineType::FixedLine && self.config.otp.allow_fixed_line) {
            return Ok(());
        }
        let hint = if line == LineType::FixedLine {
            " (set [otp] allow_fixed_line = true where fixed lines take SMS)"
        } else {
            ""
        };
        Err(IntakeError::Refused {
            rule: "otp.number_type",
            field: "to",
            reason: format!(
                "{number} is a {line} number; one-time codes are sent only to mobile numbers{hint}"
            ),
        })
    }

    /// A notification does not go to a premium-rate or shared-cost number
    /// (its owner is paid for what reaches it) unless `[api]
    /// allow_premium_rate`; every notification send, the CLI's too.
    fn check_notification_line(&self, number: &PhoneNumber) -> Result<(), IntakeError> {
        let line = number.line_type();
        if self.config.api.allow_premium_rate
            || !matches!(line, LineType::PremiumRate | LineType::SharedCost)
        {
            return Ok(());
        }
        Err(IntakeError::Refused {
            rule: "notification.number_type",
            field: "to",
            reason: format!(
                "{number} is a {line} number: what reaches it is paid for by the sender; \
                 notifications are not sent to premium-rate or shared-cost numbers (set [api] \
                 allow_premium_rate = true to allow them)"
            ),
        })
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one private helper shared by both kinds"
    )]
    async fn prepare(
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
        id: Option<String>,
        suppressions: Suppressions,
    ) -> Result<Prepared, IntakeError> {
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
        if api.is_some() || suppressions == Suppressions::Honour {
            crate::suppression::check(self, &recipient).await?;
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
        let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let new = NewDelivery {
            id: id.clone(),
            kind,
            channel,
            recipient: recipient.as_str().to_owned(),
            quota_key: (kind == DeliveryKind::Otp).then(|| recipient.quota_key()),
            template: template.to_owned(),
            locale,
            vars: Value::Object(vars),
            subject: rendered.subject.as_deref().map(hide),
            body: hide(&rendered.text),
            body_html: rendered.html.as_deref().map(hide),
            otp_code: code.map(|c| self.otp_keys.seal(&id, c)),
            max_attempts: self.config.retry.max_attempts,
            expires_at,
            created_at: now,
            send_at: send_at.filter(|at| *at > now).unwrap_or(now),
            segments,
            encoding,
            api_key_name: api.as_ref().map(|a| a.origin.key_name.clone()),
            purpose: api.as_ref().and_then(|a| a.origin.purpose.clone()),
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
            guards.pumping = crate::pumping::guard(self, kind, &recipient);
            guards.idempotency = api.idempotency.as_ref().map(|k| IdempotencyClaim {
                api_key_id: k.api_key_id,
                key: k.key.clone(),
                request_hash: k.request_hash.clone(),
                response_status: k.response_status,
                response_body: receipt.to_string(),
                expired_before: since(IDEMPOTENCY_TTL),
            });
        }
        Ok(Prepared {
            new,
            guards,
            receipt,
            now,
        })
    }

    /// Writes a prepared send (with its job, under its guards) and answers.
    async fn record(&self, prepared: Prepared) -> Result<Enqueued, IntakeError> {
        let outcome = prepared.outcome();
        let _first = (outcome.kind == DeliveryKind::Otp).then(|| self.batcher.otp_in_flight());
        let inserted = self
            .batcher
            .insert_delivery_guarded(prepared.new, prepared.guards)
            .await?;
        let kind = outcome.kind;
        let answer = self.settle(outcome, inserted).await?;
        if let Enqueued::Created { .. } = answer {
            if kind == DeliveryKind::Otp {
                self.batcher.otp_recorded();
            }
            self.wakers.wake(Lane::for_kind(kind));
        }
        Ok(answer)
    }

    /// What a guarded insert's answer means for the caller.
    async fn settle(&self, o: Outcome, inserted: Inserted) -> Result<Enqueued, IntakeError> {
        let Outcome {
            id,
            kind: _,
            channel,
            template,
            receipt,
            claim,
            now,
        } = o;
        match inserted {
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
            Inserted::Pumped(refusal) => return Err(crate::pumping::refused(refusal)),
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
