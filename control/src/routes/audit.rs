//! Audit routes (SPEC 4): `GET /api/ops/audit/logs`, `/report`, `/status`
//! and `/verify`. Verification reads every retained segment, so it runs on
//! the blocking pool, never on the executor threads that serve traffic; it
//! is single-flight and cached until the log changes
//! ([`AuditLog::verify_cached`]).

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::audit::{AuditFilter, AuditLog};
use crate::error::{ApiError, ApiQuery};
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
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
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

/// Re-verifies the whole chain, unless nothing changed since the last
/// scan: concurrent callers share one scan.
pub async fn verify(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?.clone();
    Ok(Json(json!(audit.verify_cached().await)))
}
