//! The one shape of a delivery in API responses and CLI JSON:
//! `GET /v1/deliveries/{id}`, the items of `GET /v1/deliveries`, and
//! `tuma deliveries show|list --format json` (a webhook carries its own
//! smaller, masked payload; the console reads `store/console.rs`). Built only from
//! the store, so it can hold nothing the store does not: no OTP code (bodies are
//! stored with it as `******` and the code column is never read into a view).

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::attempt::Outcome;
use crate::domain::money::{Currency, Money};
use crate::domain::{Channel, DeliveryKind, DeliveryStatus};
use crate::store::{
    AttemptRow, Db, Delivery, DeliveryDetails, ReceiptRow, ReplayInfo, ReplayOrigin, StoreError,
};

/// What `display_status` says instead of `sent` once no receipt came in time.
pub const NO_RECEIPT: &str = "no receipt";

/// A string schema with these values.
fn string_enum(description: &str, values: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

impl PartialSchema for DeliveryStatus {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "pending → sending → sent → delivered / undelivered; or failed, expired \
             (its expires_at passed first: an OTP's TTL, a notification's own deadline) \
             or canceled (taken back before any provider had it)",
            DeliveryStatus::ALL.map(DeliveryStatus::as_str),
        )
    }
}
impl ToSchema for DeliveryStatus {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DeliveryStatus")
    }
}

impl PartialSchema for Channel {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "How the message travels",
            [Channel::Sms, Channel::Email].map(Channel::as_str),
        )
    }
}
impl ToSchema for Channel {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Channel")
    }
}

impl PartialSchema for DeliveryKind {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "A one-time code or a templated notification",
            [DeliveryKind::Otp, DeliveryKind::Notification].map(DeliveryKind::as_str),
        )
    }
}
impl ToSchema for DeliveryKind {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DeliveryKind")
    }
}

/// `status`, or `no receipt` for a delivery sent longer than
/// `receipts.no_receipt_after` ago with no final receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DisplayStatus(pub String);

impl PartialSchema for DisplayStatus {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "The status to show: the status, or `no receipt` for a delivery sent longer than \
             receipts.no_receipt_after ago without a final receipt",
            DeliveryStatus::ALL
                .map(DeliveryStatus::as_str)
                .into_iter()
                .chain([NO_RECEIPT]),
        )
    }
}
impl ToSchema for DisplayStatus {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DisplayStatus")
    }
}

/// One template variable's value: text, a number or a boolean.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum VarValue {
    /// Text.
    String(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Boolean(bool),
}

/// An amount of money: exact, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Cost {
    /// The amount as an exact decimal string, with at least the currency's
    /// usual decimals (`"0.80"` KES, `"0.0079"` USD): never a float.
    #[schema(example = "0.80", pattern = r"^-?[0-9]+(\.[0-9]+)?$")]
    pub amount: String,
    /// ISO 4217 code.
    #[schema(example = "KES", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// True when it is segments × the `[[price]]` table's rate, false when
    /// it is the provider's own figure.
    pub estimate: bool,
}

impl Cost {
    fn new(money: Money, estimate: bool) -> Cost {
        Cost {
            amount: money.to_decimal_string(),
            currency: money.currency.as_str().to_owned(),
            estimate,
        }
    }

    /// The cost of stored micro-units and currency code, if both are there
    /// and the code is one tuma knows.
    fn stored(micros: Option<i64>, currency: Option<&str>, estimate: Option<bool>) -> Option<Cost> {
        let currency: Currency = currency?.parse().ok()?;
        Some(Cost::new(
            Money::new(micros?, currency),
            estimate.unwrap_or(false),
        ))
    }
}

/// How a provider call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// The provider took the message.
    Accepted,
    /// Worth retrying.
    Transient,
    /// Will fail again.
    Permanent,
    /// The worker stopped during the call: it may or may not have been sent.
    Unknown,
}

/// One provider call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first call.
    pub attempt: i64,
    /// The configured provider it went to.
    pub provider: String,
    /// Why that provider (`primary`, `failover after …`, …).
    pub reason: Option<String>,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// When it ended; null while it is open.
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended; null while it is open.
    pub outcome: Option<AttemptOutcome>,
    /// The provider's id of the message.
    pub provider_message_id: Option<String>,
    /// The provider's status word, as sent.
    pub provider_status: Option<String>,
    /// The provider's error code (`21211`), or tuma's for an unknown outcome (`tuma.worker_stopped`).
    pub error_code: Option<String>,
    /// The error as tuma shows it.
    pub error: Option<String>,
    /// What this call cost, when known.
    pub cost: Option<Cost>,
    /// SMS segments by tuma's count.
    pub segments: Option<i64>,
    /// SMS segments by the provider's count, when it said.
    pub provider_segments: Option<i64>,
    /// How long the call took.
    pub latency_ms: Option<i64>,
    /// Whether this call may have reached the recipient: accepted, or its
    /// outcome unknown (the request was sent and no answer came). Two such
    /// attempts on one delivery may be two messages.
    pub may_have_reached: bool,
    /// Every part's id, in order, when the provider split the message into
    /// parts with their own ids (the first is `provider_message_id`); absent
    /// otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub part_ids: Vec<String>,
}

impl From<&AttemptRow> for AttemptView {
    fn from(a: &AttemptRow) -> Self {
        AttemptView {
            attempt: a.attempt,
            provider: a.provider.clone(),
            reason: a.reason.clone(),
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome.map(|o| match o {
                Outcome::Accepted => AttemptOutcome::Accepted,
                Outcome::Transient => AttemptOutcome::Transient,
                Outcome::Permanent => AttemptOutcome::Permanent,
                Outcome::Unknown => AttemptOutcome::Unknown,
            }),
            may_have_reached: !matches!(a.outcome, Some(Outcome::Transient | Outcome::Permanent)),
            provider_message_id: a.provider_message_id.clone(),
            provider_status: a.provider_status.clone(),
            error_code: a.error_code.clone(),
            error: a.error.clone(),
            cost: Cost::stored(a.cost_micros, a.currency.as_deref(), a.cost_is_estimate),
            segments: a.segments,
            provider_segments: a.provider_segments,
            latency_ms: a.latency_ms,
            part_ids: a.part_ids.clone(),
        }
    }
}

/// A delivery receipt: what the provider said about the message's arrival.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiptView {
    /// The attempt whose message it is about.
    pub attempt: i64,
    /// The provider that sent it.
    pub provider: String,
    /// The provider's id of the message.
    pub provider_message_id: String,
    /// The provider's status word, as sent (`delivered`, `Success`, …).
    pub status: String,
    /// The provider's error code.
    pub error_code: Option<String>,
    /// The error as tuma shows it.
    pub error: Option<String>,
    /// Whether it changed the delivery's status (late and repeated ones do not).
    pub applied: bool,
    /// The provider's fields as sent (never a signature or URL secret, never a body).
    pub fields: std::collections::BTreeMap<String, String>,
    /// When tuma received it.
    pub received_at: DateTime<Utc>,
}

impl From<&ReceiptRow> for ReceiptView {
    fn from(r: &ReceiptRow) -> Self {
        let fields = serde_json::from_str::<Map<String, Value>>(&r.fields)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        ReceiptView {
            attempt: r.attempt,
            provider: r.provider.clone(),
            provider_message_id: r.provider_message_id.clone(),
            status: r.status.clone(),
            error_code: r.error_code.clone(),
            error: r.error.clone(),
            applied: r.applied,
            fields,
            received_at: r.received_at,
        }
    }
}

/// The delivery this one replays.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayOfView {
    /// The original delivery's id.
    pub id: String,
    /// Who replayed it: the API key's name, or the operator's user name.
    pub replayed_by: Option<String>,
    /// When.
    pub replayed_at: Option<DateTime<Utc>>,
    /// How it was made, when ops should know: set when it was sent past the
    /// suppression list, naming who asked and what the suppression said.
    pub note: Option<String>,
}

/// A replay of this delivery: a new delivery with its own id and history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayView {
    /// The replay's id.
    pub id: String,
    /// The replay's status.
    pub status: DeliveryStatus,
    /// Who replayed it.
    pub replayed_by: Option<String>,
    /// When.
    pub replayed_at: Option<DateTime<Utc>>,
}

impl From<&ReplayInfo> for ReplayView {
    fn from(r: &ReplayInfo) -> Self {
        ReplayView {
            id: r.id.clone(),
            status: r.status,
            replayed_by: r.replayed_by.clone(),
            replayed_at: r.replayed_at,
        }
    }
}

impl From<&ReplayOrigin> for ReplayOfView {
    fn from(o: &ReplayOrigin) -> Self {
        ReplayOfView {
            id: o.replay_of.clone(),
            replayed_by: o.replayed_by.clone(),
            replayed_at: o.replayed_at,
            note: o.replay_note.clone(),
        }
    }
}

/// A delivery: one message to one recipient, with its whole history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Its id (a UUIDv7).
    #[schema(example = "019ac1f2-6c1e-7a53-9d7e-2b1f3c4d5e6f")]
    pub id: String,
    /// OTP or notification.
    pub kind: DeliveryKind,
    /// SMS or email.
    pub channel: Channel,
    /// E.164 number or lower-cased email address.
    #[schema(example = "+254711000001")]
    pub recipient: String,
    /// Where it is in its life.
    pub status: DeliveryStatus,
    /// The status to show.
    pub display_status: DisplayStatus,
    /// Template name.
    #[schema(example = "welcome")]
    pub template: String,
    /// Template locale.
    #[schema(example = "en")]
    pub locale: String,
    /// The template variables it was rendered with (never the OTP code).
    #[schema(value_type = std::collections::BTreeMap<String, VarValue>)]
    pub vars: Map<String, Value>,
    /// Email subject.
    pub subject: Option<String>,
    /// The message text, any OTP code shown as `******`.
    pub body: String,
    /// The email's HTML part, any OTP code shown as `******`.
    pub body_html: Option<String>,
    /// The provider of the latest attempt.
    pub provider: Option<String>,
    /// The provider's id of the message that was accepted.
    pub provider_message_id: Option<String>,
    /// What it cost, when known.
    pub cost: Option<Cost>,
    /// When the provider's actual price was fetched.
    pub price_reconciled_at: Option<DateTime<Utc>>,
    /// What became of fetching the price.
    pub price_note: Option<String>,
    /// SMS segments.
    pub segments: Option<i64>,
    /// SMS encoding (`gsm7`, `ucs2`).
    pub encoding: Option<String>,
    /// Provider calls made.
    pub attempt_count: i64,
    /// Provider calls allowed.
    pub max_attempts: i64,
    /// The last error.
    pub last_error: Option<String>,
    /// The error code of the latest attempt, if it ended with one.
    pub error_code: Option<String>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When a provider accepted it.
    pub sent_at: Option<DateTime<Utc>>,
    /// When a receipt said it arrived.
    pub delivered_at: Option<DateTime<Utc>>,
    /// From then on it is expired rather than sent: an OTP's TTL, or a
    /// notification's own deadline (null for one without).
    pub expires_at: Option<DateTime<Utc>>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every provider call, oldest first.
    pub attempts: Vec<AttemptView>,
    /// Every receipt, in arrival order.
    pub receipts: Vec<ReceiptView>,
    /// The delivery this one replays, if it is a replay.
    pub replay_of: Option<ReplayOfView>,
    /// Its replays, oldest first.
    pub replays: Vec<ReplayView>,
}

impl DeliveryView {
    /// The view of `d` with its details; `display_status` as of `now`.
    pub fn build(
        d: &Delivery,
        attempts: &[AttemptRow],
        receipts: &[ReceiptRow],
        origin: Option<&ReplayOrigin>,
        replays: &[ReplayInfo],
        now: DateTime<Utc>,
        no_receipt_after: Duration,
    ) -> DeliveryView {
        let r = &d.row;
        let error_code = attempts
            .iter()
            .find(|a| a.attempt == r.attempts)
            .and_then(|a| a.error_code.clone());
        DeliveryView {
            id: r.id.clone(),
            kind: d.kind,
            channel: d.channel,
            recipient: r.recipient.clone(),
            status: d.status,
            display_status: DisplayStatus(d.display_status(now, no_receipt_after)),
            template: r.template.clone(),
            locale: r.locale.clone(),
            vars: serde_json::from_str(&r.vars).unwrap_or_default(),
            subject: r.subject.clone(),
            body: r.body.clone(),
            body_html: r.body_html.clone(),
            provider: r.provider.clone(),
            provider_message_id: r.provider_message_id.clone(),
            cost: d
                .cost
                .map(|c| Cost::new(c, r.cost_is_estimate.unwrap_or(false))),
            price_reconciled_at: r.reconciled_at,
            price_note: r.reconcile_note.clone(),
            segments: r.segments,
            encoding: r.encoding.clone(),
            attempt_count: r.attempts,
            max_attempts: r.max_attempts,
            last_error: r.last_error.clone(),
            error_code,
            created_at: r.created_at,
            updated_at: r.updated_at,
            sent_at: r.sent_at,
            delivered_at: r.delivered_at,
            expires_at: r.expires_at,
            next_attempt_at: r.next_attempt_at,
            attempts: attempts.iter().map(AttemptView::from).collect(),
            receipts: receipts.iter().map(ReceiptView::from).collect(),
            replay_of: origin.map(ReplayOfView::from),
            replays: replays.iter().map(ReplayView::from).collect(),
        }
    }

    /// The views of `deliveries`, in their order, with their details read in
    /// a few queries for all of them.
    pub async fn many(
        db: &Db,
        deliveries: &[Delivery],
        now: DateTime<Utc>,
        no_receipt_after: Duration,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        let ids: Vec<String> = deliveries.iter().map(|d| d.row.id.clone()).collect();
        let details: DeliveryDetails = db.delivery_details(&ids).await?;
        Ok(deliveries
            .iter()
            .map(|d| {
                let id = &d.row.id;
                DeliveryView::build(
                    d,
                    details.attempts.get(id).map_or(&[], Vec::as_slice),
                    details.receipts.get(id).map_or(&[], Vec::as_slice),
                    details.origins.get(id),
                    details.replays.get(id).map_or(&[], Vec::as_slice),
                    now,
                    no_receipt_after,
                )
            })
            .collect())
    }

    /// The view of the delivery `id`, or `None` when there is none.
    pub async fn load(
        db: &Db,
        id: &str,
        now: DateTime<Utc>,
        no_receipt_after: Duration,
    ) -> Result<Option<DeliveryView>, StoreError> {
        let Some(d) = db.delivery(id).await? else {
            return Ok(None);
        };
        Ok(DeliveryView::many(db, &[d], now, no_receipt_after)
            .await?
            .pop())
    }
}
