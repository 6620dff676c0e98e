//! `POST /v1/deliveries/{id}/cancel`: take back a delivery no provider has had.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::error::ApiError;
use super::handlers::check_path_id;
use crate::delivery_view::DeliveryView;
use crate::store::Canceled;

/// `POST /v1/deliveries/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/cancel",
    operation_id = "cancelDelivery",
    tag = "deliveries",
    summary = "Cancel a delivery no provider has had yet",
    description = "Scope `send` for the deliveries this key created, or `ops` for any. Another \
        key's delivery answers 403 to a key that may read it (scope `read`) and 404, as for an \
        id that does not exist, to one that may not. A `pending` delivery (queued, scheduled or waiting for a retry) \
        or a `held` one (waiting for its budget) becomes `canceled`: final, its OTP code wiped, never sent. One a provider already has \
        (`sending`, `sent`, …) or that is finished answers 409 with its status. Canceling a \
        canceled delivery answers 409 too.",
    params(("id" = String, Path, description = "The delivery id")),
    responses((status = 200, description = "Canceled; the delivery as it is now", body = DeliveryView))
)]
pub async fn cancel_delivery(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if caller.require(Scope::Ops).is_err() {
        caller.require(Scope::Send)?;
        check_path_id(&id)?;
        // The creating key never changes, so reading it first cannot race
        // with the cancel below.
        let created_by = state
            .within_timeout(state.app.db.delivery(&id))
            .await?
            .map(|d| d.row.api_key_name);
        match created_by {
            None => return Err(ApiError::NotFound(format!("no delivery has id `{id}`"))),
            Some(Some(name)) if name == caller.key.name => {}
            Some(_) if caller.require(Scope::Read).is_ok() => return Err(ApiError::NotYours),
            Some(_) => return Err(ApiError::NotFound(format!("no delivery has id `{id}`"))),
        }
    }
    check_path_id(&id)?;
    let now = state.app.clock.now();
    let by = format!("key {}", caller.key.name);
    match state
        .within_timeout(state.app.db.cancel_delivery(&id, &by, now))
        .await?
    {
        Canceled::Done => {}
        Canceled::TooLate(status) => return Err(ApiError::NotCancelable(status)),
        Canceled::NotFound => {
            return Err(ApiError::NotFound(format!("no delivery has id `{id}`")));
        }
    }
    info!(delivery = %id, key = %caller.key.name, "delivery canceled");
    let view = state
        .within_timeout(DeliveryView::load(
            &state.app.db,
            &id,
            now,
            state.app.config.receipts.no_receipt_after,
        ))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery has id `{id}`")))?;
    Ok(Json(view).into_response())
}
