//! Replay: ops send failed deliveries again, each as a new delivery linked to
//! the original (`replay_of`), with its own attempts; the original keeps its
//! history. Who replayed it and when are recorded.
//!
//! The rules, checked for every delivery and again just before it is replayed:
//! - only `failed`, `undelivered` and `expired` deliveries are replayed; a
//!   `sent` or `delivered` one never is (no double sends), nor one still
//!   pending or sending;
//! - an OTP is never replayed: past its TTL the code is useless, and within it
//!   the code is no longer stored (codes are wiped when a delivery stops being
//!   sendable, and are not kept longer for replays); the auth service must
//!   issue a new one;
//! - a delivery whose last attempt failed permanently (invalid number,
//!   blacklisted) would fail again: refused unless forced;
//! - a delivery to a suppressed recipient is refused, forced or not (force
//!   overrides these rules, not the suppression list), unless ops ignore
//!   the suppression explicitly; such a replay carries a note saying so,
//!   who asked and what the suppression said;
//! - a delivery with a replay still going or gone through is not replayed
//!   again; the database enforces this (a unique index), so two replays of the
//!   same delivery at once record one.
//!
//! Notifications are rendered again from the stored template, locale and
//! variables, as intake does.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::app::App;
use crate::domain::attempt::Outcome;
use crate::domain::email::EmailAddress;
use crate::domain::phone::PhoneNumber;
use crate::domain::segments::count_segments;
use crate::domain::{Channel, DeliveryKind, DeliveryStatus};
use crate::queue::Lane;
use crate::store::{Delivery, ListFilter, NewDelivery, ReplayLink, StoreError, Suppression};

/// The most deliveries one filtered replay considers unless told otherwise.
pub const DEFAULT_REPLAY_LIMIT: i64 = 10_000;

/// Which deliveries a filtered replay (`tuma replay --status …`, `POST /v1/replays`) takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    /// Status; `failed` when absent.
    pub status: Option<DeliveryStatus>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Channel.
    pub channel: Option<Channel>,
    /// Provider of the latest attempt.
    pub provider: Option<String>,
    /// Provider error code of the latest attempt.
    pub error_code: Option<String>,
    /// Replay even when the last attempt failed permanently (or its status is
    /// `unknown`). Does not pass the suppression list.
    #[serde(default)]
    pub force: bool,
    /// Replay to suppressed recipients too; each such replay records who
    /// asked and the suppression it ignored.
    #[serde(default)]
    pub ignore_suppression: bool,
    /// At most this many ([`DEFAULT_REPLAY_LIMIT`] when absent), newest first.
    pub limit: Option<i64>,
}

/// Which rules a replay may pass, as ops asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayRules {
    /// Replay permanent failures and `unknown` deliveries too.
    pub force: bool,
    /// Replay to suppressed recipients too (`--ignore-suppression`).
    pub ignore_suppression: bool,
}

impl ReplayRules {
    /// Force only: the suppression list is honoured.
    pub const FORCE: ReplayRules = ReplayRules {
        force: true,
        ignore_suppression: false,
    };
}

impl ReplayFilter {
    /// The rules this filter asks to pass.
    pub fn rules(&self) -> ReplayRules {
        ReplayRules {
            force: self.force,
            ignore_suppression: self.ignore_suppression,
        }
    }
}

/// Why a delivery is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// No delivery has the id.
    NotFound,
    /// Sent, delivered, pending or sending: replaying would send twice.
    NotReplayableStatus,
    /// An OTP past its TTL.
    OtpExpired,
    /// An OTP within its TTL whose code is no longer stored.
    OtpCodeGone,
    /// A notification past its own deadline (`ttl`, `expires_at`): a replay
    /// would send it late.
    DeadlinePassed,
    /// The last attempt failed permanently and `force` was not given.
    PermanentError,
    /// It already has a replay that is going or went through.
    AlreadyReplayed,
    /// Its recipient is suppressed and `ignore_suppression` was not given.
    Suppressed,
    /// Its template, locale or recipient no longer works.
    Unrenderable,
}

/// A delivery that is not replayed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Refusal {
    /// The delivery id.
    pub id: String,
    /// Why, as a code.
    pub reason: RefusalReason,
    /// Why, in plain words.
    pub message: String,
}

/// A delivery that will be (or was) replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The original delivery id.
    pub id: String,
    /// OTP or notification.
    pub kind: DeliveryKind,
    /// SMS or email.
    pub channel: Channel,
    /// The recipient.
    pub recipient: String,
    /// The template.
    pub template: String,
    /// Its status.
    pub status: DeliveryStatus,
    /// The provider of its latest attempt.
    pub provider: Option<String>,
    /// The provider error code of its latest attempt.
    pub error_code: Option<String>,
    /// Its last error.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What a replay will do: shown before asking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayPlan {
    /// Will be replayed.
    pub replayable: Vec<Candidate>,
    /// Will not, with reasons.
    pub refused: Vec<Refusal>,
}

/// One replay made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The original delivery id.
    pub original: String,
    /// The new delivery's id.
    pub replay: String,
}

/// What a replay did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Replayed (with `dry_run`: the new ids are empty).
    pub replayed: Vec<Replayed>,
    /// Refused, with reasons.
    pub refused: Vec<Refusal>,
}

/// Why a replay could not run at all (a refused delivery is not an error).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A filter value is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn refuse(id: &str, reason: RefusalReason, message: impl Into<String>) -> Refusal {
    Refusal {
        id: id.to_owned(),
        reason,
        message: message.into(),
    }
}

impl App {
    /// Checks the rules for each id, in order, without writing anything.
    pub async fn plan_replay(
        &self,
        ids: &[String],
        rules: ReplayRules,
    ) -> Result<ReplayPlan, ReplayError> {
        let mut plan = ReplayPlan::default();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            match self.check_replay(id, rules).await?.map(|(c, _)| c) {
                Ok(c) => plan.replayable.push(c),
                Err(r) => plan.refused.push(r),
            }
        }
        Ok(plan)
    }

    /// The deliveries `filter` selects, checked against the rules.
    pub async fn plan_replay_matching(
        &self,
        filter: &ReplayFilter,
    ) -> Result<ReplayPlan, ReplayError> {
        let limit = filter.limit.unwrap_or(DEFAULT_REPLAY_LIMIT);
        if limit < 1 {
            return Err(ReplayError::Invalid {
                field: "limit",
                reason: "must be at least 1".into(),
            });
        }
        let list = ListFilter {
            recipient: None,
            status: Some(filter.status.unwrap_or(DeliveryStatus::Failed)),
            channel: filter.channel,
            since: filter.since,
            provider: filter.provider.clone(),
            error_code: filter.error_code.clone(),
            limit,
        };
        let ids: Vec<String> = self
            .db
            .list_deliveries(&list)
            .await?
            .into_iter()
            .rev()
            .map(|d| d.row.id)
            .collect();
        self.plan_replay(&ids, filter.rules()).await
    }

    /// Replays what `plan` lists as replayable, as `actor`, checking each
    /// again first (it may have changed since the plan). `progress` is told
    /// `(done, total)` after each one.
    pub async fn execute_replay(
        &self,
        plan: &ReplayPlan,
        actor: &str,
        rules: ReplayRules,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<ReplayReport, ReplayError> {
        let mut report = ReplayReport {
            dry_run: false,
            replayed: Vec::new(),
            refused: plan.refused.clone(),
        };
        let total = plan.replayable.len();
        for (i, c) in plan.replayable.iter().enumerate() {
            match self.replay_one(&c.id, actor, rules).await? {
                Ok(new_id) => report.replayed.push(Replayed {
                    original: c.id.clone(),
                    replay: new_id,
                }),
                Err(r) => report.refused.push(r),
            }
            progress(i + 1, total);
        }
        Ok(report)
    }

    /// `POST /v1/deliveries/{id}/replay`: replays one delivery as `actor`.
    pub async fn replay_delivery(
        &self,
        id: &str,
        actor: &str,
        rules: ReplayRules,
        dry_run: bool,
    ) -> Result<ReplayReport, ReplayError> {
        let plan = self.plan_replay(&[id.to_owned()], rules).await?;
        self.finish(plan, actor, rules, dry_run).await
    }

    /// `POST /v1/replays`: replays every delivery `filter` selects, as `actor`.
    pub async fn replay_matching(
        &self,
        filter: &ReplayFilter,
        actor: &str,
        dry_run: bool,
    ) -> Result<ReplayReport, ReplayError> {
        let plan = self.plan_replay_matching(filter).await?;
        self.finish(plan, actor, filter.rules(), dry_run).await
    }

    async fn finish(
        &self,
        plan: ReplayPlan,
        actor: &str,
        rules: ReplayRules,
        dry_run: bool,
    ) -> Result<ReplayReport, ReplayError> {
        if dry_run {
            return Ok(ReplayReport {
                dry_run: true,
                replayed: plan
                    .replayable
                    .iter()
                    .map(|c| Replayed {
                        original: c.id.clone(),
                        replay: String::new(),
                    })
                    .collect(),
                refused: plan.refused,
            });
        }
        self.execute_replay(&plan, actor, rules, |_, _| {}).await
    }

    /// The rules for one delivery: the candidate, and the suppression in
    /// force for its recipient when `rules` ignore it.
    async fn check_replay(
        &self,
        id: &str,
        rules: ReplayRules,
    ) -> Result<Result<(Candidate, Option<Suppression>), Refusal>, StoreError> {
        let force = rules.force;
        let Some(d) = self.db.delivery(id).await? else {
            return Ok(Err(refuse(
                id,
                RefusalReason::NotFound,
                "no delivery has this id",
            )));
        };
        let status = d.status;
        if status == DeliveryStatus::Unknown && !force {
            return Ok(Err(refuse(
                id,
                RefusalReason::NotReplayableStatus,
                "status unknown: a provider may have sent it (no answer came); a replay may send it twice: replay with --force (the API's and console's force) to send it anyway",
            )));
        }
        if !replayable(status) && status != DeliveryStatus::Unknown {
            let why = match status {
                DeliveryStatus::Sent | DeliveryStatus::Delivered => {
                    "a provider already accepted it; replaying would send it twice"
                }
                _ => "it is still being delivered",
            };
            return Ok(Err(refuse(
                id,
                RefusalReason::NotReplayableStatus,
                format!(
                    "status {status}: {why}; only failed, undelivered or expired deliveries are replayed"
                ),
            )));
        }
        if d.kind == DeliveryKind::Otp {
            let now = self.clock.now();
            return Ok(Err(match d.row.expires_at {
                Some(at) if at <= now => refuse(
                    id,
                    RefusalReason::OtpExpired,
                    format!(
                        "the code expired at {}; a stale code is useless: the auth service must issue a new one",
                        at.to_rfc3339()
                    ),
                ),
                _ => refuse(
                    id,
                    RefusalReason::OtpCodeGone,
                    "the code is no longer stored; the auth service must issue a new one",
                ),
            }));
        }
        if let Some(at) = d.row.expires_at.filter(|at| *at <= self.clock.now()) {
            return Ok(Err(refuse(
                id,
                RefusalReason::DeadlinePassed,
                format!(
                    "its own deadline passed at {}; a replay would send it late",
                    at.to_rfc3339()
                ),
            )));
        }
        // Before the permanent-error rule: force does not pass this one.
        let suppression = crate::suppression::in_force(self, d.channel, &d.row.recipient).await?;
        if let Some(s) = &suppression
            && !rules.ignore_suppression
        {
            return Ok(Err(refuse(
                id,
                RefusalReason::Suppressed,
                crate::suppression::replay_refusal(s),
            )));
        }
        let attempts = self.db.attempts(id).await?;
        let last = attempts.last();
        if !force && last.and_then(|a| a.outcome) == Some(Outcome::Permanent) {
            let code = last
                .and_then(|a| a.error_code.as_deref())
                .map(|c| format!("{c}: "))
                .unwrap_or_default();
            let error = last.and_then(|a| a.error.as_deref()).unwrap_or("");
            return Ok(Err(refuse(
                id,
                RefusalReason::PermanentError,
                format!(
                    "the last attempt failed permanently ({code}{error}) and would fail again; force to replay anyway"
                ),
            )));
        }
        if let Some(r) = self
            .db
            .replays_of(id)
            .await?
            .into_iter()
            .find(|r| !replayable(r.status))
        {
            return Ok(Err(already(id, &r.id, r.status)));
        }
        Ok(Ok((
            Candidate {
                id: d.row.id.clone(),
                kind: d.kind,
                channel: d.channel,
                recipient: d.row.recipient.clone(),
                template: d.row.template.clone(),
                status,
                provider: last.map(|a| a.provider.clone()),
                error_code: last.and_then(|a| a.error_code.clone()),
                last_error: d.row.last_error.clone(),
                created_at: d.row.created_at,
            },
            suppression,
        )))
    }

    /// Checks the rules once more and records the replay with its job.
    async fn replay_one(
        &self,
        id: &str,
        actor: &str,
        rules: ReplayRules,
    ) -> Result<Result<String, Refusal>, StoreError> {
        let ignored = match self.check_replay(id, rules).await? {
            Err(r) => return Ok(Err(r)),
            Ok((_, suppression)) => suppression,
        };
        let Some(original) = self.db.delivery(id).await? else {
            return Ok(Err(refuse(
                id,
                RefusalReason::NotFound,
                "no delivery has this id",
            )));
        };
        let new = match self.rebuild(&original) {
            Ok(n) => n,
            Err(why) => return Ok(Err(refuse(id, RefusalReason::Unrenderable, why))),
        };
        let link = ReplayLink {
            replay_of: id.to_owned(),
            replayed_by: actor.to_owned(),
            replayed_at: new.created_at,
            note: ignored
                .as_ref()
                .map(|s| crate::suppression::ignored_note(s, actor)),
        };
        match self.db.insert_replay(&new, &link).await? {
            Some(_) => {
                if ignored.is_some() {
                    // Names no recipient: the delivery does.
                    warn!(actor, replay = %new.id, "replayed past the suppression list");
                }
                self.wakers.wake(Lane::for_kind(new.kind));
                Ok(Ok(new.id))
            }
            None => {
                let other = self
                    .db
                    .replays_of(id)
                    .await?
                    .into_iter()
                    .find(|r| !replayable(r.status));
                Ok(Err(match other {
                    Some(r) => already(id, &r.id, r.status),
                    None => refuse(
                        id,
                        RefusalReason::AlreadyReplayed,
                        "replayed by someone else at the same time",
                    ),
                }))
            }
        }
    }

    /// A new delivery from a notification's stored template, locale and variables.
    fn rebuild(&self, d: &Delivery) -> Result<NewDelivery, String> {
        let row = &d.row;
        let recipient_ok = match d.channel {
            Channel::Sms => PhoneNumber::parse_e164(&row.recipient)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Channel::Email => EmailAddress::parse(&row.recipient)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        recipient_ok
            .map_err(|e| format!("stored recipient `{}` is not usable: {e}", row.recipient))?;
        let vars = match serde_json::from_str::<serde_json::Value>(&row.vars) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err("stored template variables are not a JSON object".into()),
        };
        let rendered = self
            .templates
            .render(&row.template, &row.locale, d.channel, &vars)
            .map_err(|e| format!("the template no longer renders: {e}"))?;
        let (segments, encoding) = match d.channel {
            Channel::Sms => {
                let info = count_segments(&rendered.text);
                (Some(info.segments), Some(info.encoding.to_string()))
            }
            Channel::Email => (None, None),
        };
        let now = self.clock.now();
        Ok(NewDelivery {
            id: uuid::Uuid::now_v7().to_string(),
            kind: d.kind,
            channel: d.channel,
            recipient: row.recipient.clone(),
            // Only notifications are replayed: none counts against an OTP limit.
            quota_key: None,
            template: row.template.clone(),
            locale: row.locale.clone(),
            vars: serde_json::Value::Object(vars),
            subject: rendered.subject,
            body: rendered.text,
            body_html: rendered.html,
            otp_code: None,
            max_attempts: self.config.retry.max_attempts,
            // A notification's own deadline holds for its replay too.
            expires_at: row.expires_at,
            created_at: now,
            send_at: now,
            segments,
            encoding,
            // The replay is the calling service's message still: its
            // webhooks hear of it too.
            api_key_name: row.api_key_name.clone(),
            purpose: row.purpose.clone(),
        })
    }
}

/// Whether a delivery in `status` may be replayed: it ended without reaching
/// its recipient. A replay in any other status is live (going or gone
/// through), and a delivery has at most one live replay.
fn replayable(status: DeliveryStatus) -> bool {
    matches!(
        status,
        DeliveryStatus::Failed | DeliveryStatus::Undelivered | DeliveryStatus::Expired
    )
}

fn already(id: &str, replay: &str, status: DeliveryStatus) -> Refusal {
    refuse(
        id,
        RefusalReason::AlreadyReplayed,
        format!("already replayed as {replay} (status {status})"),
    )
}

/// Who is acting, for the CLI: `$USER`, else `whoami`, else `unknown`.
pub fn os_user() -> String {
    if let Ok(u) = std::env::var("USER")
        && !u.trim().is_empty()
    {
        return u.trim().to_owned();
    }
    std::process::Command::new("whoami")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
