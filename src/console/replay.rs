//! Failures and replay (scope `ops`): failed, undelivered and expired
//! deliveries grouped by provider and error code; a dry run of a selection
//! or a whole group (what would be replayed, every refusal with its reason);
//! then the replay of exactly what the dry run listed, checked again. The
//! rules are `crate::replay`'s, as for `tuma replay` and the API; replays are
//! recorded with the signed-in key's name.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::pages::list_row;
use super::session::Session;
use super::view::{ConsoleError, field, read_form, render, within};
use crate::api::ApiState;
use crate::api::auth::Scope;
use crate::domain::DeliveryStatus;
use crate::replay::{ReplayError, ReplayFilter, ReplayPlan, ReplayRules};
use crate::store::ConsoleFilter;

/// At most this many deliveries in one console replay (run it again for more).
const MAX_REPLAY: usize = 500;
/// Failed deliveries listed for selection.
const LISTED: i64 = 100;

impl From<ReplayError> for ConsoleError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Invalid { field, reason } => ConsoleError::invalid(field, reason),
            ReplayError::Store(e) => e.into(),
        }
    }
}

const PERIODS: [(&str, &str); 4] = [
    ("24h", "last 24 hours"),
    ("7d", "last 7 days"),
    ("30d", "last 30 days"),
    ("90d", "last 90 days"),
];

fn since_of(text: &str) -> Result<chrono::Duration, ConsoleError> {
    if !PERIODS.iter().any(|(p, _)| *p == text) {
        return Err(ConsoleError::invalid(
            "since",
            format!("`{text}` is not one of 24h, 7d, 30d, 90d"),
        ));
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| ConsoleError::invalid("since", e.to_string()))?;
    chrono::Duration::from_std(d).map_err(|_| ConsoleError::invalid("since", "too long"))
}

/// `GET /console/failures?since=7d`.
pub async fn failures(
    State(state): State<ApiState>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Ops)?;
    if let Some(unknown) = params.keys().find(|k| k.as_str() != "since") {
        return Err(ConsoleError::invalid(
            unknown,
            "is not a field of this page",
        ));
    }
    let since_text = params.get("since").map(String::as_str).unwrap_or("7d");
    let now = state.app.clock.now();
    let since = now - since_of(since_text)?;
    let groups = within(&state, state.app.db.failure_groups(since)).await?;
    let recent = within(
        &state,
        state.app.db.console_deliveries(&ConsoleFilter {
            statuses: vec![
                DeliveryStatus::Failed,
                DeliveryStatus::Undelivered,
                DeliveryStatus::Expired,
            ],
            from: Some(since),
            limit: LISTED,
            ..ConsoleFilter::default()
        }),
    )
    .await?;
    let codes = within(
        &state,
        state
            .app
            .db
            .latest_error_codes(&recent.iter().map(|d| d.row.id.clone()).collect::<Vec<_>>()),
    )
    .await?;
    let rows: Vec<Value> = recent
        .iter()
        .map(|d| {
            let mut v = list_row(d, &state, now);
            v["error_code"] = json!(codes.get(&d.row.id).cloned().unwrap_or_default());
            v
        })
        .collect();
    render(
        "failures.html",
        json!({
            "nav": session.nav("failures"),
            "since": since_text,
            "periods": PERIODS.iter().map(|(v, l)| json!({"value": v, "label": l})).collect::<Vec<_>>(),
            "groups": groups.iter().map(|g| json!({
                "provider": g.provider.clone().unwrap_or_default(),
                "error_code": g.error_code.clone().unwrap_or_default(),
                "status": g.status,
                "count": g.count,
            })).collect::<Vec<_>>(),
            "rows": rows,
            "listed": LISTED,
            "max": MAX_REPLAY,
        }),
    )
}

fn ids_of(form: &[(String, String)]) -> Result<Vec<String>, ConsoleError> {
    let ids: Vec<String> = form
        .iter()
        .filter(|(k, v)| k == "id" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_owned())
        .collect();
    if ids.len() > MAX_REPLAY {
        return Err(ConsoleError::invalid(
            "id",
            format!("at most {MAX_REPLAY} deliveries at a time"),
        ));
    }
    Ok(ids)
}

fn plan_view(plan: &ReplayPlan) -> Value {
    json!({
        "replayable": plan.replayable.iter().map(|c| json!({
            "id": c.id,
            "kind": c.kind.as_str(),
            "channel": c.channel.as_str(),
            "recipient": c.recipient,
            "template": c.template,
            "status": c.status.as_str(),
            "provider": c.provider.clone().unwrap_or_default(),
            "error_code": c.error_code.clone().unwrap_or_default(),
            "last_error": c.last_error.clone().unwrap_or_default(),
        })).collect::<Vec<_>>(),
        "refused": plan.refused.iter().map(|r| json!({
            "id": r.id,
            "reason": serde_json::to_value(r.reason).unwrap_or_default(),
            "message": r.message,
        })).collect::<Vec<_>>(),
    })
}

/// `POST /console/replay/plan`: the dry run of the selected ids, or of a
/// whole group (`status`, `provider`, `error_code`, `since`). Writes nothing.
pub async fn plan(
    State(state): State<ApiState>,
    session: Session,
    body: Body,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Ops)?;
    let form = read_form(body).await?;
    session.check_csrf(&form)?;
    let force = field(&form, "force").is_some();
    let ignore_suppression = field(&form, "ignore_suppression").is_some();
    let rules = ReplayRules {
        force,
        ignore_suppression,
    };
    let ids = ids_of(&form)?;
    let plan = if field(&form, "mode") == Some("filter") {
        let status = field(&form, "status")
            .map(|s| s.parse::<DeliveryStatus>())
            .transpose()
            .map_err(|e| ConsoleError::invalid("status", e))?;
        let since = since_of(field(&form, "since").unwrap_or("7d"))?;
        let filter = ReplayFilter {
            status,
            since: Some(state.app.clock.now() - since),
            channel: None,
            provider: field(&form, "provider").map(str::to_owned),
            error_code: field(&form, "error_code").map(str::to_owned),
            force,
            ignore_suppression,
            limit: Some(MAX_REPLAY as i64),
        };
        within(&state, state.app.plan_replay_matching(&filter)).await?
    } else {
        if ids.is_empty() {
            return Err(ConsoleError::invalid(
                "id",
                "select at least one delivery, or dry-run a whole group",
            ));
        }
        within(&state, state.app.plan_replay(&ids, rules)).await?
    };
    render(
        "replay_plan.html",
        json!({
            "nav": session.nav("failures"),
            "plan": plan_view(&plan),
            "force": force,
            "ignore_suppression": ignore_suppression,
            "max": MAX_REPLAY,
        }),
    )
}

/// `POST /console/replay`: replays the ids the dry run listed, each checked
/// again just before, as the signed-in key.
pub async fn execute(
    State(state): State<ApiState>,
    session: Session,
    body: Body,
) -> Result<Response, ConsoleError> {
    session.require(Scope::Ops)?;
    let form = read_form(body).await?;
    session.check_csrf(&form)?;
    let rules = ReplayRules {
        force: field(&form, "force").is_some(),
        ignore_suppression: field(&form, "ignore_suppression").is_some(),
    };
    let ids = ids_of(&form)?;
    if ids.is_empty() {
        return Err(ConsoleError::invalid("id", "nothing to replay"));
    }
    let plan = within(&state, state.app.plan_replay(&ids, rules)).await?;
    let report = state
        .app
        .execute_replay(&plan, &session.key_name, rules, |_, _| {})
        .await?;
    tracing::info!(
        key = %session.key_name,
        replayed = report.replayed.len(),
        refused = report.refused.len(),
        "console replay"
    );
    render(
        "replay_result.html",
        json!({
            "nav": session.nav("failures"),
            "replayed": report.replayed.iter().map(|r| json!({"original": r.original, "replay": r.replay})).collect::<Vec<_>>(),
            "refused": report.refused.iter().map(|r| json!({
                "id": r.id,
                "reason": serde_json::to_value(r.reason).unwrap_or_default(),
                "message": r.message,
            })).collect::<Vec<_>>(),
            "by": session.key_name,
        }),
    )
}
