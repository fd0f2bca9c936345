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
#[utoipa::path(
    get, path = "/api/ops/audit/logs", tag = "audit",
    summary = "Audit entries, newest first",
    params(
        ("action" = Option<String>, Query, description = "Only this action (`failover_activated`, `manual_intervention`, ...)"),
        ("severity" = Option<String>, Query, description = "Only this severity (`info`, `warning`, `error`, `critical`)"),
        ("since" = Option<String>, Query, description = "Entries at or after this RFC 3339 instant"),
        ("limit" = Option<u32>, Query, description = "How many entries at most"),
    ),
    responses(
        (status = 200, description = "Entries", body = crate::openapi::AuditLogs),
        (status = 404, description = "`not_found`: this engine keeps no audit log", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: an unknown action or severity, a bad `since` or `limit`", body = crate::openapi::ErrorEnvelope),
    ),
)]
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

#[utoipa::path(
    get, path = "/api/ops/audit/status", operation_id = "audit_status", tag = "audit",
    summary = "Entry counts and the chain's state",
    responses(
        (status = 200, description = "Status", body = crate::audit::index::AuditStatus),
        (status = 404, description = "`not_found`: this engine keeps no audit log", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?;
    Ok(Json(json!(audit.status())))
}

#[utoipa::path(
    get, path = "/api/ops/audit/report", operation_id = "audit_report", tag = "audit",
    summary = "Compliance report",
    description = "Totals by action and severity, chain verification result, retention window, manual interventions with actor and reason.",
    responses(
        (status = 200, description = "Report", body = crate::openapi::AuditReport),
        (status = 404, description = "`not_found`: this engine keeps no audit log", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn report(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?.clone();
    let report = tokio::task::spawn_blocking(move || audit.report())
        .await
        .map_err(|_| ApiError::Internal)?;
    Ok(Json(report))
}

/// Re-verifies the whole chain, unless nothing changed since the last
/// scan: concurrent callers share one scan.
#[utoipa::path(
    get, path = "/api/ops/audit/verify", tag = "audit",
    summary = "Re-verify the whole hash chain",
    description = "Reads every retained segment unless nothing changed since the last scan; concurrent callers share one scan.",
    responses(
        (status = 200, description = "Verification result (a broken chain is still a 200, with `chain_verified: false`)", body = crate::audit::verify::VerifyReport),
        (status = 404, description = "`not_found`: this engine keeps no audit log", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn verify(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = log(&state)?.clone();
    Ok(Json(json!(audit.verify_cached().await)))
}
