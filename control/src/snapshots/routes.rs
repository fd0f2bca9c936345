//! `GET /api/ops/health/snapshots?window=1h|24h|30d` and
//! `GET /api/ops/sla?month=YYYY-MM` (SPEC 4, 10).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Month, SlaReport, Window, WindowReport};
use crate::error::ApiError;
use crate::AppState;

/// `/api/ops/health/snapshots` and `/api/ops/sla`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(snapshots))
        .routes(routes!(sla))
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(q: Params) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|_| ApiError::BadRequest("the query string could not be decoded".to_string()))
}

#[utoipa::path(
    get, path = "/api/ops/health/snapshots", tag = "health",
    summary = "Uptime buckets per service",
    description = "Per minute for 1h and 24h, per hour for 30d; the current bucket included as partial.",
    params(("window" = Option<String>, Query, description = "`1h` (default), `24h` or `30d`")),
    responses(
        (status = 200, description = "Buckets", body = WindowReport),
        (status = 400, description = "`bad_request`: a bad query parameter", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn snapshots(
    State(state): State<AppState>,
    q: Params,
) -> Result<Json<WindowReport>, ApiError> {
    let q = params(q)?;
    let window = match q.get("window").map(String::as_str) {
        None => Window::H1,
        Some(w) => Window::parse(w).ok_or_else(|| {
            ApiError::BadRequest(format!("window must be 1h, 24h or 30d, not '{w}'"))
        })?,
    };
    let live = state.engine.snapshot();
    Ok(Json(state.snapshots.window(window, &live)))
}

#[utoipa::path(
    get, path = "/api/ops/sla", tag = "health",
    summary = "Monthly SLA per category and service",
    params(("month" = Option<String>, Query, description = "`YYYY-MM`; the current month by default")),
    responses(
        (status = 200, description = "SLA report", body = SlaReport),
        (status = 400, description = "`bad_request`: a bad query parameter", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn sla(State(state): State<AppState>, q: Params) -> Result<Json<SlaReport>, ApiError> {
    let q = params(q)?;
    let month = match q.get("month").map(String::as_str) {
        None => Month::of(state.snapshots.now()),
        Some(m) => Month::parse(m).ok_or_else(|| {
            ApiError::BadRequest(format!("month must be YYYY-MM (e.g. 2025-01), not '{m}'"))
        })?,
    };
    let live = state.engine.snapshot();
    Ok(Json(state.snapshots.sla(month, &live)))
}
