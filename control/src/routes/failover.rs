//! Failover routes: `GET /api/ops/failover/status` and the operator
//! commands `POST /api/ops/failover/trigger/{type}` and
//! `/api/ops/failover/recover/{type}` (SPEC 4).
//!
//! A command answers once the engine has finished the switch, with the
//! resulting service; the engine's own errors map to 404/409/504, and the
//! whole call is bounded by the state's command timeout (30 s) so that a
//! stuck switch becomes a 504 rather than a hung request.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use continuity_proxy::snapshot::{
    EngineSnapshot, FailoverMetrics, FailoverState, ServiceSnapshot, ServiceStatus,
};
use continuity_proxy::{Command, CommandOutcome};
use serde::Serialize;
use serde_json::json;

use super::{operator_reason, PathParam};
use crate::audit::{Action, NewEntry, Severity};
use crate::auth::Actor;
use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusBody<'a> {
    pub failover_state: FailoverState,
    pub services: Vec<FailoverService<'a>>,
    pub metrics: FailoverMetrics,
}

/// A service as `failover/status` lists it; a command's answer adds
/// `status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailoverService<'a> {
    pub name: &'a str,
    pub active_upstream: Option<&'a str>,
    pub epoch: u64,
    pub in_failover: bool,
    pub since: DateTime<Utc>,
    pub held_connections: u64,
    pub fenced: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

impl<'a> FailoverService<'a> {
    pub fn of(s: &'a ServiceSnapshot) -> FailoverService<'a> {
        FailoverService {
            name: &s.name,
            active_upstream: s.active_upstream.as_deref(),
            epoch: s.epoch,
            in_failover: s.in_failover,
            since: s.since,
            held_connections: s.held_connections,
            fenced: &s.fenced,
            status: None,
        }
    }

    pub fn with_status(s: &'a ServiceSnapshot) -> FailoverService<'a> {
        FailoverService {
            status: Some(s.status),
            ..FailoverService::of(s)
        }
    }
}

pub fn status_body(snap: &EngineSnapshot) -> StatusBody<'_> {
    StatusBody {
        failover_state: snap.failover_state,
        services: snap.services.iter().map(FailoverService::of).collect(),
        metrics: snap.failover_metrics,
    }
}

#[utoipa::path(
    get, path = "/api/ops/failover/status", operation_id = "failover_status", tag = "failover",
    summary = "Failover state, per-service active upstream and failover metrics",
    responses((status = 200, description = "Failover status", body = StatusBody)),
)]
pub async fn status(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    Json(status_body(&snap)).into_response()
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Trigger,
    Recover,
}

#[utoipa::path(
    post, path = "/api/ops/failover/trigger/{type}", tag = "failover",
    summary = "Switch the service to its best usable other upstream (a cold one is probed once first)",
    description = "Audited (fsynced) before the engine acts; answers once the switch is complete. A switch to the upstream already active is a 200 no-op, still audited.",
    params(("type" = String, Path, description = "A service name, else the kind of the only service of that kind (`redis`, `postgres`, `neo4j`, ...)"), ForceParam),
    request_body(content = crate::openapi::ReasonBody, description = "Why (masked, audited); an empty body counts as `{}`"),
    responses(
        (status = 200, description = "The service after the switch", body = FailoverService),
        (status = 404, description = "`not_found`: no such service", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: the body is not a JSON object, or `reason` is not a string", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`conflict`: no usable other upstream", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`timeout`: the switch did not complete within 30 s", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn trigger(
    State(state): State<AppState>,
    actor: Actor,
    PathParam(ty): PathParam,
    force: Result<Query<ForceParam>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    run(state, Op::Trigger, actor, ty, force, body).await
}

#[utoipa::path(
    post, path = "/api/ops/failover/recover/{type}", tag = "failover",
    summary = "Switch back to the configured primary",
    description = "Audited (fsynced) before the engine acts; answers once the switch is complete. A switch to the upstream already active is a 200 no-op, still audited.",
    params(("type" = String, Path, description = "A service name, else the kind of the only service of that kind (`redis`, `postgres`, `neo4j`, ...)"), ForceParam),
    request_body(content = crate::openapi::ReasonBody, description = "Why (masked, audited); an empty body counts as `{}`"),
    responses(
        (status = 200, description = "The service after the switch", body = FailoverService),
        (status = 404, description = "`not_found`: no such service", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: the body is not a JSON object, or `reason` is not a string", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`conflict`: the primary is not usable; `not_resynced`: a promote made it diverge and it has not been resynchronized", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`timeout`: the switch did not complete within 30 s", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn recover(
    State(state): State<AppState>,
    actor: Actor,
    PathParam(ty): PathParam,
    force: Result<Query<ForceParam>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    run(state, Op::Recover, actor, ty, force, body).await
}

/// `?force=true`: in a `[cluster]`, act on this engine alone, even while
/// etcd is unreachable (docs/cluster.md); audited as `force`. Without a
/// cluster it changes nothing.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceParam {
    /// true: this engine alone, not the cluster.
    #[serde(default)]
    pub force: bool,
}

/// 404 (unknown service) before 400/422 (body) before the engine's 409.
async fn run(
    state: AppState,
    op: Op,
    actor: Actor,
    ty: String,
    force: Result<Query<ForceParam>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service = state
        .engine
        .snapshot()
        .resolve_service(&ty)
        .map(|s| s.name.clone())
        .ok_or_else(|| ApiError::service_not_found(&ty))?;
    let force = force?.0.force;
    let reason = operator_reason(&state, body)?;
    let actor = actor.name;
    let cmd = match op {
        Op::Trigger => Command::Trigger {
            service: service.clone(),
            actor,
            reason,
            force,
        },
        Op::Recover => Command::Recover {
            service: service.clone(),
            actor,
            reason,
            force,
        },
    };
    // Audit before acting: the intent is on disk (fsynced) before the switch.
    let operation = match op {
        Op::Trigger => "failover_trigger",
        Op::Recover => "failover_recover",
    };
    let outcome = state.apply_audited(cmd, operation, Some(&service)).await?;
    let snap = match outcome {
        CommandOutcome::Service(s) | CommandOutcome::Switched { service: s, .. } => *s,
        // Not what a service command returns today; take the service from
        // the engine view rather than fail an operation that succeeded.
        CommandOutcome::Engine(_) | CommandOutcome::Reloaded(_) => {
            let engine = state.engine.snapshot();
            engine.service(&service).cloned().ok_or_else(|| {
                tracing::error!(%service, "command outcome lacks the service");
                ApiError::Internal
            })?
        }
    };
    Ok(Json(FailoverService::with_status(&snap)).into_response())
}

/// The `manual_intervention` entry of an operator command (SPEC 7).
pub fn manual_intervention(cmd: &Command, operation: &str) -> NewEntry {
    let (service, actor, reason) = match cmd {
        Command::Trigger {
            service,
            actor,
            reason,
            ..
        }
        | Command::Recover {
            service,
            actor,
            reason,
            ..
        }
        | Command::Resync {
            service,
            actor,
            reason,
        } => (Some(service.as_str()), actor.as_str(), reason.as_str()),
        // The caller adds the service (and the pool is in the details).
        Command::Switchover { actor, reason, .. } | Command::Failback { actor, reason, .. } => {
            (None, actor.as_str(), reason.as_str())
        }
        Command::Emergency { actor, reason, .. } => (None, actor.as_str(), reason.as_str()),
        // Not operator commands: a heartbeat and the reload steps (the
        // reload audits each step itself, src/reload.rs).
        Command::ReportStatus { service, .. } => (Some(service.as_str()), "system", ""),
        Command::AddService { .. }
        | Command::RemoveService { .. }
        | Command::ReplaceService { .. } => (None, "system", ""),
    };
    let mut details = json!({ "operation": operation, "reason": reason });
    if let Command::Emergency { enabled, .. } = cmd {
        details["enabled"] = json!(enabled);
    }
    if let Command::Trigger { force: true, .. } | Command::Recover { force: true, .. } = cmd {
        // An engine acting alone in a [cluster] (docs/cluster.md).
        details["force"] = json!(true);
    }
    if let Command::Switchover { pool, .. } | Command::Failback { pool, .. } = cmd {
        details["pool"] = json!(pool);
    }
    let entry = NewEntry::new(
        Action::ManualIntervention,
        Severity::Warning,
        actor,
        details,
    );
    match service {
        Some(s) => entry.service(s),
        None => entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{engine_snapshot, service, to_value};
    use continuity_proxy::config::Kind;

    #[test]
    fn status_shape() {
        let mut snap =
            engine_snapshot(vec![service("redis", Kind::Redis, ServiceStatus::Degraded)]);
        snap.services[0].fenced = vec!["redis-primary".to_string()];
        snap.failover_metrics.total_failovers = 2;
        let v = to_value(&status_body(&snap));
        assert_eq!(v["failover_state"], "normal");
        let s = &v["services"][0];
        let mut keys: Vec<&str> = s
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "active_upstream",
                "epoch",
                "fenced",
                "held_connections",
                "in_failover",
                "name",
                "since"
            ]
        );
        assert_eq!(s["fenced"][0], "redis-primary");
        assert_eq!(v["metrics"]["total_failovers"], 2);
        for k in [
            "auto_failovers",
            "manual_failovers",
            "avg_recovery_time_seconds",
        ] {
            assert!(v["metrics"][k].is_number(), "{k}");
        }
    }

    #[test]
    fn command_answer_adds_status() {
        let s = service("redis", Kind::Redis, ServiceStatus::Degraded);
        let v = to_value(&FailoverService::with_status(&s));
        assert_eq!(v["status"], "degraded");
        assert_eq!(v["name"], "redis");
    }
}
