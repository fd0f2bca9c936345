//! `GET /api/ops/diagnostics/report`, `/events` and `/slow-queries`.
//! Answers are masked with the audit log's masker: an event's message may
//! quote an operator's reason or an upstream's error text.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Value};

use super::model::Filter;
use crate::error::ApiError;
use crate::AppState;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn filter(q: Params) -> Result<Filter, ApiError> {
    let Query(q) = q.map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
    Filter::parse(|k| q.get(k).cloned()).map_err(ApiError::BadRequest)
}

/// `metrics`, the open `alerts[]` of the alert engine, `top_error_classes[]`.
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
async fn events(State(state): State<AppState>, q: Params) -> Result<Json<Value>, ApiError> {
    let f = filter(q)?;
    Ok(masked(
        &state,
        json!({ "events": state.diagnostics.events(&f) }),
    ))
}

/// `slow_queries[]`, newest first; filters `service`, `since`, `limit`.
async fn slow_queries(State(state): State<AppState>, q: Params) -> Result<Json<Value>, ApiError> {
    let f = filter(q)?;
    Ok(masked(
        &state,
        json!({ "slow_queries": state.diagnostics.slow_queries(&f) }),
    ))
}

/// `/api/ops/diagnostics/*` routes (the alert engine serves `/alerts`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/ops/diagnostics/report", get(report))
        .route("/api/ops/diagnostics/events", get(events))
        .route("/api/ops/diagnostics/slow-queries", get(slow_queries))
}
