//! Audit routes (SPEC 4): `GET /api/ops/audit/logs`, `/report`, `/status`
//! and `/verify`. Verification reads every retained segment, so it runs on
//! the blocking pool, never on the executor threads that serve traffic.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use crate::audit::{AuditFilter, AuditLog};
use crate::error::ApiError;
use crate::AppState;

fn log(state: &AppState) -> Result<&AuditLog, ApiError> {
    state
        .audit
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this engine keeps no audit log".into()))
}

/// `entries[]`, filtered by `action`, `severity`, `since` (RFC 3339), `limit`.
pub async fn logs(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?;
    let get = |k: &str| q.get(k).map(String::as_str);
    let filter = AuditFilter::parse(get("action"), get("severity"), get("since"), get("limit"))
        .map_err(ApiError::BadRequest)?;
    Ok(Json(json!({ "entries": audit.query(&filter) })))
}

pub async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?;
    Ok(Json(json!(audit.status())))
}

pub async fn report(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?.clone();
    let report = tokio::task::spawn_blocking(move || audit.report())
        .await
        .map_err(|_| ApiError::Internal)?;
    Ok(Json(report))
}

/// Re-verifies the whole chain now.
pub async fn verify(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?.clone();
    let report = tokio::task::spawn_blocking(move || audit.verify_now())
        .await
        .map_err(|_| ApiError::Internal)?;
    Ok(Json(json!(report)))
}
