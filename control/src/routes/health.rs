//! Health routes: `/api/ops/health`, `/api/ops/ready` (both public, for
//! Docker and load balancers), `/api/ops/health/deep` and
//! `/api/ops/health/service/{type}` (SPEC 4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use continuity_proxy::config::{Category, Kind};
use continuity_proxy::snapshot::{EngineSnapshot, FailoverState, ServiceSnapshot, ServiceStatus};
use serde::Serialize;

use super::PathParam;
use crate::error::ApiError;
use crate::AppState;

/// The overall `status` of `/api/ops/health` for an engine state (SPEC 3).
pub fn overall_status(state: FailoverState) -> &'static str {
    match state {
        FailoverState::Normal => "healthy",
        FailoverState::Degraded | FailoverState::Failover => "degraded",
        FailoverState::Emergency => "unhealthy",
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthBody<'a> {
    #[schema(value_type = crate::openapi::OverallStatus)]
    pub status: &'static str,
    pub failover_state: FailoverState,
    pub services: Vec<HealthService<'a>>,
    pub metrics: HealthMetrics,
    pub generated_at: DateTime<Utc>,
    /// With `[cluster]` only: this engine's link to etcd. Cut off, the
    /// engine is `degraded` and says why here (docs/cluster.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterLink>,
}

/// `cluster` in `/api/ops/health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterLink {
    pub node_id: String,
    pub connected: bool,
    /// Why not connected.
    pub reason: Option<String>,
}

/// Exactly the members SPEC 4 lists for `/api/ops/health` `services[]`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthService<'a> {
    pub name: &'a str,
    pub kind: Kind,
    pub category: Category,
    pub status: ServiceStatus,
    pub active_upstream: Option<&'a str>,
    pub latency_ms: Option<f64>,
    pub uptime_percent_1h: f64,
    pub uptime_percent_24h: f64,
    pub consecutive_failures: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthMetrics {
    pub total_checks: u64,
    pub failed_checks: u64,
    /// Mean of the services' `latency_ms`; 0 while none has a sample.
    pub avg_latency_ms: f64,
    /// Mean of the services' 24 h uptime; 100 with no services.
    pub uptime_percent: f64,
}

impl<'a> HealthService<'a> {
    fn of(s: &'a ServiceSnapshot) -> HealthService<'a> {
        HealthService {
            name: &s.name,
            kind: s.kind,
            category: s.category,
            status: s.status,
            active_upstream: s.active_upstream.as_deref(),
            latency_ms: s.latency_ms,
            uptime_percent_1h: s.uptime_percent_1h,
            uptime_percent_24h: s.uptime_percent_24h,
            consecutive_failures: s.consecutive_failures,
        }
    }
}

pub fn health_body(snap: &EngineSnapshot) -> HealthBody<'_> {
    let services = &snap.services;
    let latencies: Vec<f64> = services.iter().filter_map(|s| s.latency_ms).collect();
    let metrics = HealthMetrics {
        total_checks: services.iter().map(|s| s.total_checks).sum(),
        failed_checks: services.iter().map(|s| s.failed_checks).sum(),
        avg_latency_ms: mean(&latencies).unwrap_or(0.0),
        uptime_percent: mean(
            &services
                .iter()
                .map(|s| s.uptime_percent_24h)
                .collect::<Vec<_>>(),
        )
        .unwrap_or(100.0),
    };
    HealthBody {
        status: overall_status(snap.failover_state),
        failover_state: snap.failover_state,
        services: services.iter().map(HealthService::of).collect(),
        metrics,
        generated_at: snap.generated_at,
        cluster: None,
    }
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Ready when every `core` service has a usable upstream. A service not
/// yet probed (`unknown`) is not usable: a load balancer must not send
/// traffic before the first results.
pub fn is_ready(snap: &EngineSnapshot) -> bool {
    snap.services
        .iter()
        .filter(|s| s.category == Category::Core)
        // Heartbeat services carry no traffic: they never gate readiness.
        .filter(|s| !s.upstreams.is_empty())
        .all(|s| matches!(s.status, ServiceStatus::Healthy | ServiceStatus::Degraded))
}

/// `/api/ops/health/deep`: every service with its `upstreams[]`, as the
/// snapshot types serialise them (last probe and error, probe and inline
/// latency percentiles, consecutive failures/successes, pool state,
/// fenced, recent probe `history[]`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeepBody<'a> {
    #[schema(value_type = crate::openapi::OverallStatus)]
    pub status: &'static str,
    pub failover_state: FailoverState,
    pub services: &'a [ServiceSnapshot],
    pub generated_at: DateTime<Utc>,
}

/// Always 200 while the engine runs (SPEC 4).
#[utoipa::path(
    get, path = "/api/ops/health", tag = "health",
    summary = "Overall health of the engine and its services",
    description = "Always 200 while the engine runs (SPEC 4).",
    responses((status = 200, description = "Health", body = HealthBody)),
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    let mut body = health_body(&snap);
    let cluster = state.engine.cluster();
    if cluster.enabled {
        body.cluster = Some(ClusterLink {
            node_id: cluster.node_id,
            connected: cluster.connected,
            reason: cluster.reason,
        });
    }
    Json(body).into_response()
}

/// 200 or 503, with the health body either way.
#[utoipa::path(
    get, path = "/api/ops/ready", tag = "health",
    summary = "Readiness for load balancers",
    description = "200 when every `core` service has a usable upstream, else 503 (also before the first probe results); the health body either way.",
    responses(
        (status = 200, description = "Ready", body = HealthBody),
        (status = 503, description = "Not ready", body = HealthBody),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    let status = if is_ready(&snap) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health_body(&snap))).into_response()
}

#[utoipa::path(
    get, path = "/api/ops/health/deep", tag = "health",
    summary = "Every service with its upstreams, probes and latencies",
    responses((status = 200, description = "Deep health", body = DeepBody)),
)]
pub async fn deep(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    Json(DeepBody {
        status: overall_status(snap.failover_state),
        failover_state: snap.failover_state,
        services: &snap.services,
        generated_at: snap.generated_at,
    })
    .into_response()
}

/// One service as in `deep`; `{type}` is a name, else the unique service
/// of that kind.
#[utoipa::path(
    get, path = "/api/ops/health/service/{type}", tag = "health",
    summary = "One service, as in deep",
    params(("type" = String, Path, description = "A service name, else the kind of the only service of that kind (`redis`, `postgres`, `neo4j`, ...)")),
    responses(
        (status = 200, description = "The service", body = continuity_proxy::snapshot::ServiceSnapshot),
        (status = 404, description = "`not_found`: no such service", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn service(
    State(state): State<AppState>,
    PathParam(ty): PathParam,
) -> Result<Response, ApiError> {
    let snap = state.engine.snapshot();
    let s = snap
        .resolve_service(&ty)
        .ok_or_else(|| ApiError::service_not_found(&ty))?;
    Ok(Json(s).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::to_value;
    use crate::testutil::{engine_snapshot, service};

    #[test]
    fn overall_status_by_state() {
        assert_eq!(overall_status(FailoverState::Normal), "healthy");
        assert_eq!(overall_status(FailoverState::Degraded), "degraded");
        assert_eq!(overall_status(FailoverState::Failover), "degraded");
        assert_eq!(overall_status(FailoverState::Emergency), "unhealthy");
    }

    #[test]
    fn health_services_have_exactly_the_spec_members() {
        let snap = engine_snapshot(vec![service("redis", Kind::Redis, ServiceStatus::Healthy)]);
        let v = to_value(&health_body(&snap));
        let mut keys: Vec<&str> = v["services"][0]
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "active_upstream",
                "category",
                "consecutive_failures",
                "kind",
                "latency_ms",
                "name",
                "status",
                "uptime_percent_1h",
                "uptime_percent_24h"
            ]
        );
        assert_eq!(v["status"], "healthy");
        assert_eq!(v["failover_state"], "normal");
        assert_eq!(v["services"][0]["kind"], "redis");
        assert_eq!(v["services"][0]["category"], "core");
        assert!(v["generated_at"]
            .as_str()
            .is_some_and(|t| { DateTime::parse_from_rfc3339(t).is_ok() }));
        for k in [
            "total_checks",
            "failed_checks",
            "avg_latency_ms",
            "uptime_percent",
        ] {
            assert!(v["metrics"][k].is_number(), "{k}");
        }
    }

    #[test]
    fn readiness_needs_every_core_service_usable() {
        let mut snap = engine_snapshot(vec![
            service("redis", Kind::Redis, ServiceStatus::Healthy),
            service("pg", Kind::Postgres, ServiceStatus::Degraded),
        ]);
        assert!(is_ready(&snap));
        snap.services[1].status = ServiceStatus::Unknown;
        assert!(!is_ready(&snap), "unknown (not yet probed) is not ready");
        snap.services[1].status = ServiceStatus::Down;
        assert!(!is_ready(&snap));
        snap.services[1].category = Category::Vendor;
        assert!(is_ready(&snap), "only core services gate readiness");
        assert!(is_ready(&engine_snapshot(vec![])));
    }
}
