//! `GET /api/ops/diagnostics/report`, `/events` and `/slow-queries`.
//! Answers are masked with the audit log's masker: an event's message may
//! quote an operator's reason or an upstream's error text.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::Filter;
use crate::error::ApiError;
use crate::AppState;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn filter(q: Params) -> Result<Filter, ApiError> {
    let Query(q) = q.map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
    Filter::parse(|k| q.get(k).cloned()).map_err(ApiError::BadRequest)
}

/// `metrics`, the open `alerts[]` of the alert engine, `top_error_classes[]`.
#[utoipa::path(
    get, path = "/api/ops/diagnostics/report", operation_id = "diagnostics_report", tag = "diagnostics",
    summary = "Event counts, open alerts and top error classes (masked)",
    responses((status = 200, description = "Report", body = crate::openapi::DiagnosticsReport)),
)]
async fn report(State(state): State<AppState>) -> Json<Value> {
    let mut body = state
        .diagnostics
        .report(state.alerts.predictive_alerts_generated());
    body["alerts"] = Value::Array(state.alerts.open_alerts());
    body["generated_at"] = json!(Utc::now());
    masked(&state, body)
}

fn masked(state: &AppState, body: Value) -> Json<Value> {
    Json(state.masker().masked(&body).unwrap_or(body))
}

/// `events[]`, newest first; filters `category`, `severity`, `service`,
/// `since` (RFC 3339), `limit` (default 100, at most 10000).
#[utoipa::path(
    get, path = "/api/ops/diagnostics/events", tag = "diagnostics",
    summary = "Diagnostic events, newest first (masked)",
    params(
        ("category" = Option<String>, Query, description = "`network`, `database`, `federal`, `vendor` or `internal`"),
        ("severity" = Option<String>, Query, description = "Only this severity: `info`, `warning`, `error` or `critical`"),
        ("service" = Option<String>, Query, description = "Only this service"),
        ("since" = Option<String>, Query, description = "At or after this RFC 3339 instant"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 10000)"),
    ),
    responses(
        (status = 200, description = "Events", body = crate::openapi::EventList),
        (status = 400, description = "`bad_request`: a bad query parameter", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn events(State(state): State<AppState>, q: Params) -> Result<Json<Value>, ApiError> {
    let f = filter(q)?;
    Ok(masked(
        &state,
        json!({ "events": state.diagnostics.events(&f) }),
    ))
}

/// `slow_queries[]`, newest first; filters `service`, `since`, `limit`.
#[utoipa::path(
    get, path = "/api/ops/diagnostics/slow-queries", tag = "diagnostics",
    summary = "Slow statements, newest first (masked)",
    params(
        ("service" = Option<String>, Query, description = "Only this service"),
        ("since" = Option<String>, Query, description = "At or after this RFC 3339 instant"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 10000)"),
    ),
    responses(
        (status = 200, description = "Slow queries", body = crate::openapi::SlowQueryList),
        (status = 400, description = "`bad_request`: a bad query parameter", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn slow_queries(State(state): State<AppState>, q: Params) -> Result<Json<Value>, ApiError> {
    let f = filter(q)?;
    Ok(masked(
        &state,
        json!({ "slow_queries": state.diagnostics.slow_queries(&f) }),
    ))
}

/// `/api/ops/diagnostics/*` routes (the alert engine serves `/alerts`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(report))
        .routes(routes!(events))
        .routes(routes!(slow_queries))
}
