//! The alert routes (SPEC 4). Check order as everywhere: 401/403 (auth
//! layer), 404, 400, 422, 409. Operator actions are audited before they
//! take effect; a heartbeat is not audited (its stall and resume are).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use continuity_proxy::{Command, CommandOutcome};
use serde_json::{json, Map, Value};

use super::effects;
use super::heartbeat::Report;
use super::model::Effect;
use super::state::AckError;
use crate::audit::{Action, NewEntry, Severity};
use crate::auth::Actor;
use crate::error::ApiError;
use crate::routes::{operator_reason, PathParam};
use crate::AppState;

/// `?open=true` lists only open alerts; `?type=escalation|predictive`.
#[utoipa::path(
    get, path = "/api/ops/diagnostics/alerts", tag = "diagnostics",
    summary = "Escalations and predictive alerts (masked)",
    params(
        ("open" = Option<bool>, Query, description = "`true`: open alerts only"),
        ("type" = Option<String>, Query, description = "`escalation` or `predictive`"),
    ),
    responses(
        (status = 200, description = "Alerts, newest first", body = crate::openapi::AlertList),
        (status = 400, description = "`bad_request`: a bad query parameter", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let mut open_only = false;
    let mut kind: Option<String> = None;
    for pair in q
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, v) {
            ("open", "true" | "1") => open_only = true,
            ("open", "false" | "0") => open_only = false,
            ("type", "escalation" | "predictive") => kind = Some(v.to_string()),
            ("open" | "type", _) => {
                return Err(ApiError::BadRequest(format!(
                "bad value `{v}` for `{k}` (open: true or false; type: escalation or predictive)"
            )))
            }
            _ => {}
        }
    }
    let all = if open_only {
        state.alerts.open_alerts()
    } else {
        state.alerts.all_alerts()
    };
    let alerts: Vec<Value> = all
        .into_iter()
        .filter(|a| kind.as_deref().is_none_or(|k| a["type"] == k))
        .collect();
    let open = alerts.iter().filter(|a| a["open"] == true).count();
    let body = json!({ "alerts": alerts, "open": open, "generated_at": Utc::now() });
    Ok(Json(state.masker().masked(&body).unwrap_or(body)).into_response())
}

fn ack_error(id: &str, e: AckError) -> ApiError {
    match e {
        AckError::NotFound => ApiError::NotFound(format!("no alert with id '{id}'")),
        AckError::Already(by) => {
            ApiError::Conflict(format!("alert '{id}' was already acknowledged by {by}"))
        }
    }
}

#[utoipa::path(
    post, path = "/api/ops/alerts/{id}/ack", tag = "alerts",
    summary = "Acknowledge an alert",
    params(("id" = String, Path, description = "The alert id")),
    request_body(content = crate::openapi::ReasonBody, description = "Why (masked, audited); an empty body counts as `{}`"),
    responses(
        (status = 200, description = "The acknowledged alert", body = crate::openapi::AlertView),
        (status = 404, description = "`not_found`: no such alert", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: the body is not a JSON object, or `reason` is not a string", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`conflict`: already acknowledged", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn ack(
    State(state): State<AppState>,
    actor: Actor,
    PathParam(id): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let checked = state.alerts.core().can_ack(&id);
    if let Err(AckError::NotFound) = checked {
        return Err(ack_error(&id, AckError::NotFound));
    }
    let reason = operator_reason(&state, body)?;
    checked.map_err(|e| ack_error(&id, e))?;
    let listed = state.alerts.all_alerts();
    let alert = listed.iter().find(|a| a["id"] == id.as_str());
    let service = alert
        .and_then(|a| a["service"].as_str())
        .map(str::to_string);
    let details = json!({
        "operation": "alert_ack", "reason": reason, "alert_id": id,
        "rule": alert.map(|a| a.get("rule").or_else(|| a.get("prediction_type")).cloned()),
    });
    let entry = NewEntry::new(
        Action::ManualIntervention,
        Severity::Info,
        &actor.name,
        details,
    );
    state
        .record(match &service {
            Some(s) => entry.service(s),
            None => entry,
        })
        .await?;
    let acked = state
        .alerts
        .core()
        .ack(&id, &actor.name, Utc::now())
        .map_err(|e| ack_error(&id, e))?;
    state.bus.publish(
        crate::bus::Channel::Diagnostics,
        "diagnostic_event",
        service.as_deref(),
        json!({ "event": "alert_acknowledged", "alert": acked, "reason": reason }),
    );
    Ok(Json(state.masker().masked(&acked).unwrap_or(acked)).into_response())
}

/// An empty body counts as `{}`; anything else must be a JSON object.
fn object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest(
            "request body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

#[utoipa::path(
    post, path = "/api/ops/emergency", tag = "alerts",
    summary = "Declare or clear an emergency",
    description = "State `emergency`, an `emergency_state` event, every open alert routed to every dashboard.",
    request_body(content = crate::openapi::EmergencyRequest),
    responses(
        (status = 200, description = "The engine state after it", body = crate::openapi::EmergencyAnswer),
        (status = 400, description = "`bad_request`: `enabled` missing or not a boolean, or the body is not a JSON object", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`conflict`: the engine refused", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`timeout`: the switch did not complete within 30 s", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn emergency(
    State(state): State<AppState>,
    actor: Actor,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::from_body_rejection(&e, crate::BODY_LIMIT))?;
    let Some(enabled) = object(&body)?.get("enabled").and_then(Value::as_bool) else {
        return Err(ApiError::BadRequest(
            "\"enabled\" is required: true to declare an emergency, false to clear it".into(),
        ));
    };
    let reason = operator_reason(&state, Ok(body))?;
    let cmd = Command::Emergency {
        enabled,
        actor: actor.name,
        reason,
    };
    let op = if enabled {
        "emergency_declare"
    } else {
        "emergency_clear"
    };
    let snap = match state.apply_audited(cmd, op, None).await? {
        CommandOutcome::Engine(s) => *s,
        CommandOutcome::Service(_)
        | CommandOutcome::Switched { .. }
        | CommandOutcome::Reloaded(_) => state.engine.snapshot(),
    };
    let rerouted = {
        let mut core = state.alerts.core();
        if enabled {
            core.reroute_all()
        } else {
            core.emergency = false;
            Vec::new()
        }
    };
    let ids: Vec<String> = rerouted.iter().map(|a| a.id.clone()).collect();
    effects::run(&state, &state.alerts, vec![Effect::Rerouted(rerouted)]).await;
    let body = json!({
        "failover_state": snap.failover_state,
        "emergency_declared": snap.emergency_declared,
        "rerouted_alerts": ids,
        "open_alerts": state.alerts.open_alerts(),
    });
    Ok(Json(state.masker().masked(&body).unwrap_or(body)).into_response())
}

fn report(body: &Bytes) -> Result<Report, ApiError> {
    let m = object(body)?;
    let processed = match m.get("processed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::BadRequest("\"processed\" must be a non-negative integer".into())
        })?),
    };
    let checkpoint = match m.get("checkpoint") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 1024 => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "\"checkpoint\" must be a string of at most 1024 bytes".into(),
            ))
        }
    };
    Ok(Report {
        processed,
        checkpoint,
    })
}

#[utoipa::path(
    post, path = "/api/ops/heartbeat/{name}", tag = "alerts",
    summary = "A heartbeat service (an ETL pipeline) reports progress",
    description = "No reason needed; silence past `stall_after_seconds` raises `etl_stall`. Only stall and resume are audited.",
    params(("name" = String, Path, description = "A `heartbeat` service name")),
    request_body(content = crate::openapi::HeartbeatRequest, description = "Optional; an empty body is a beat"),
    responses(
        (status = 200, description = "The pipeline's status (checkpoint masked)", body = crate::openapi::HeartbeatStatus),
        (status = 404, description = "`not_found`: no such heartbeat service", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: `processed` or `checkpoint` of the wrong type, or the body is not a JSON object", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    _actor: Actor,
    PathParam(name): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no heartbeat service named '{name}'"));
    if !state.alerts.core().heartbeats.contains(&name) {
        return Err(not_found());
    }
    let body = body.map_err(|e| ApiError::from_body_rejection(&e, crate::BODY_LIMIT))?;
    let report = report(&body)?;
    let snap = state.engine.snapshot();
    let (status, effects) = {
        let mut core = state.alerts.core();
        let (now, wall) = (Instant::now(), Utc::now());
        let (status, resumed) = core
            .heartbeats
            .beat(&name, report, now, wall)
            .ok_or_else(not_found)?;
        // A resume resolves the stall alert now, not at the next tick.
        let effects = match resumed {
            Some(r) => std::iter::once(r)
                .chain(core.evaluate(&snap, now, wall))
                .collect(),
            None => Vec::new(),
        };
        (status, effects)
    };
    effects::run(&state, &state.alerts, effects).await;
    // A beat means the pipeline is alive (a stall flips it to down).
    if let Err(e) = state
        .engine
        .report_status(&name, continuity_proxy::snapshot::ServiceStatus::Healthy)
        .await
    {
        tracing::debug!(pipeline = %name, error = %e, "heartbeat status not reported");
    }
    // The checkpoint is the pipeline's own text: masked like its audit entry.
    Ok(Json(state.masker().masked(&status).unwrap_or(status)).into_response())
}
