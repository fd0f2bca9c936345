//! Redundancy routes: `GET /api/ops/redundancy/status` (one pool per
//! upstream), `GET /api/ops/redundancy/pool/{name}`, and the zero-loss
//! planned switchovers `POST /api/ops/redundancy/failover/{pool}` and
//! `/failback/{pool}` (SPEC 4; docs/switchover.md).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use continuity_proxy::config::{Redundancy, Role};
use continuity_proxy::snapshot::ObservedRole;
use continuity_proxy::snapshot::{EngineSnapshot, PoolState, UpstreamHealth, UpstreamSnapshot};
use continuity_proxy::{Command, CommandOutcome};
use serde::Serialize;

use super::{operator_reason, PathParam};
use crate::auth::Actor;
use crate::error::ApiError;
use crate::AppState;

/// One upstream seen as the design's connection pool.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Pool<'a> {
    pub name: &'a str,
    pub service: &'a str,
    /// The service's redundancy mode (hot/warm/cold).
    pub mode: Redundancy,
    pub state: PoolState,
    /// Configured role.
    pub role: Role,
    pub active: bool,
    pub fenced: bool,
    /// Open client connections through this upstream.
    pub connections: u64,
    pub health: UpstreamHealth,
    pub address: &'a str,
    /// Role the probes see (`primary`/`replica`), where the protocol tells it.
    pub observed_role: Option<ObservedRole>,
    /// A promotion left this upstream behind: it gets no traffic until it
    /// is a caught-up replica of the active upstream.
    pub diverged: bool,
    /// Diverged and still a primary of its own: a postgres one must be
    /// rebuilt (pg_rewind / pg_basebackup), a redis one resynced.
    pub needs_rebuild: bool,
}

impl<'a> Pool<'a> {
    fn of(mode: Redundancy, u: &'a UpstreamSnapshot) -> Pool<'a> {
        Pool {
            observed_role: u.observed_role,
            diverged: u.diverged,
            needs_rebuild: u.diverged && u.observed_role == Some(ObservedRole::Primary),
            name: &u.name,
            service: &u.service,
            mode,
            state: u.pool_state,
            role: u.role,
            active: u.active,
            fenced: u.fenced,
            connections: u.active_connections,
            health: u.health,
            address: &u.address,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolsBody<'a> {
    pub pools: Vec<Pool<'a>>,
}

pub fn pools(snap: &EngineSnapshot) -> Vec<Pool<'_>> {
    snap.services
        .iter()
        .flat_map(|s| s.upstreams.iter().map(|u| Pool::of(s.redundancy, u)))
        .collect()
}

pub fn pool<'a>(snap: &'a EngineSnapshot, name: &str) -> Option<Pool<'a>> {
    snap.services.iter().find_map(|s| {
        s.upstreams
            .iter()
            .find(|u| u.name == name)
            .map(|u| Pool::of(s.redundancy, u))
    })
}

#[utoipa::path(
    get, path = "/api/ops/redundancy/status", operation_id = "redundancy_status", tag = "redundancy",
    summary = "One pool per upstream",
    responses((status = 200, description = "Pools", body = PoolsBody)),
)]
pub async fn status(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    Json(PoolsBody {
        pools: pools(&snap),
    })
    .into_response()
}

#[utoipa::path(
    get, path = "/api/ops/redundancy/pool/{name}", tag = "redundancy",
    summary = "One pool",
    params(("name" = String, Path, description = "An upstream (pool) name")),
    responses(
        (status = 200, description = "The pool", body = Pool),
        (status = 404, description = "`not_found`: no such pool", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn pool_by_name(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    let snap = state.engine.snapshot();
    let p = pool(&snap, &name).ok_or_else(|| ApiError::pool_not_found(&name))?;
    Ok(Json(p).into_response())
}

/// A planned switchover's answer: the pool named in the path, the service's
/// active upstream and epoch after it, and the pause clients saw.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SwitchBody<'a> {
    #[serde(flatten)]
    pub pool: Pool<'a>,
    pub active_upstream: Option<&'a str>,
    pub epoch: u64,
    pub pause_ms: u64,
    pub position: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Failover,
    Failback,
    Resync,
}

#[utoipa::path(
    post, path = "/api/ops/redundancy/failover/{pool}", operation_id = "redundancy_failover", tag = "redundancy",
    summary = "Planned switchover away from `{pool}` (which must be active), without losing acknowledged writes",
    description = "Audited before the engine acts (docs/switchover.md).",
    params(("pool" = String, Path, description = "An upstream (pool) name")),
    request_body(content = crate::openapi::ReasonBody, description = "Why (masked, audited); an empty body counts as `{}`"),
    responses(
        (status = 200, description = "The pool after the switch, with the pause clients saw", body = SwitchBody),
        (status = 404, description = "`not_found`: no such pool", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: the body is not a JSON object, or `reason` is not a string", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`conflict`: `{pool}` is not active or there is nothing to switch to; `not_resynced`: the target is not caught up", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`timeout`: the switch did not complete within 30 s", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn failover(
    State(state): State<AppState>,
    actor: Actor,
    PathParam(pool): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    run(state, Op::Failover, actor, pool, body).await
}

#[utoipa::path(
    post, path = "/api/ops/redundancy/failback/{pool}", tag = "redundancy",
    summary = "Planned switch back to `{pool}`",
    description = "Audited before the engine acts (docs/switchover.md).",
    params(("pool" = String, Path, description = "An upstream (pool) name")),
    request_body(content = crate::openapi::ReasonBody, description = "Why (masked, audited); an empty body counts as `{}`"),
    responses(
        (status = 200, description = "The pool after the switch, with the pause clients saw", body = SwitchBody),
        (status = 404, description = "`not_found`: no such pool", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: the body is not a JSON object, or `reason` is not a string", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`conflict`: `{pool}` is not usable; `not_resynced`: it diverged and was not resynchronized", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`timeout`: the switch did not complete within 30 s", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn failback(
    State(state): State<AppState>,
    actor: Actor,
    PathParam(pool): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    run(state, Op::Failback, actor, pool, body).await
}

/// `POST /api/ops/redundancy/resync/{pool}` (beyond SPEC 4): makes the
/// diverged old primaries of `{pool}`'s service replicas of the active one
/// (redis `REPLICAOF`); postgres answers 409 with the rebuild it needs.
#[utoipa::path(
    post, path = "/api/ops/redundancy/resync/{pool}", tag = "redundancy",
    summary = "Make the diverged old primaries of the service replicas of the active one (redis `REPLICAOF`), and unfence every fenced upstream that is a caught-up replica",
    description = "Audited before the engine acts (docs/switchover.md). A fenced upstream already rebuilt as a replica of the active one (postgres `pg_basebackup`/`pg_rewind`, a redis `REPLICAOF` by hand) is checked for up to 10 s and unfenced. With nothing to resync the answer is 200.",
    params(("pool" = String, Path, description = "An upstream (pool) name")),
    request_body(content = crate::openapi::ReasonBody, description = "Why (masked, audited); an empty body counts as `{}`"),
    responses(
        (status = 200, description = "The pool after the switch, with the pause clients saw", body = SwitchBody),
        (status = 404, description = "`not_found`: no such pool", body = crate::openapi::ErrorEnvelope),
        (status = 400, description = "`bad_request`: the body is not a JSON object, or `reason` is not a string", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`not_resynced`: an upstream did not become a caught-up replica within 10 s, or a postgres one needs a rebuild (the answer says which)", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`timeout`: the switch did not complete within 30 s", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn resync(
    State(state): State<AppState>,
    actor: Actor,
    PathParam(pool): PathParam,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    run(state, Op::Resync, actor, pool, body).await
}

/// 404 (unknown pool) before 400/422 (body) before 409 (not the active
/// pool, nothing to switch to, target not resynced).
async fn run(
    state: AppState,
    op: Op,
    actor: Actor,
    pool_name: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service = {
        let snap = state.engine.snapshot();
        pool(&snap, &pool_name)
            .map(|p| p.service.to_string())
            .ok_or_else(|| ApiError::pool_not_found(&pool_name))?
    };
    let reason = operator_reason(&state, body)?;
    let (cmd, operation) = match op {
        Op::Failover => (
            Command::Switchover {
                pool: pool_name.clone(),
                to: None,
                actor: actor.name,
                reason,
            },
            "redundancy_failover",
        ),
        Op::Failback => (
            Command::Failback {
                pool: pool_name.clone(),
                actor: actor.name,
                reason,
            },
            "redundancy_failback",
        ),
        Op::Resync => (
            Command::Resync {
                service: service.clone(),
                actor: actor.name,
                reason,
            },
            "redundancy_resync",
        ),
    };
    // Audit before acting: the intent is on disk before the switch.
    let outcome = state.apply_audited(cmd, operation, Some(&service)).await?;
    let (pause_ms, position) = match &outcome {
        CommandOutcome::Switched {
            pause_ms, position, ..
        } => (*pause_ms, position.clone()),
        _ => (0, None),
    };
    let snap = state.engine.snapshot();
    let svc = snap.service(&service).ok_or(ApiError::Internal)?;
    let u = svc
        .upstreams
        .iter()
        .find(|u| u.name == pool_name)
        .ok_or(ApiError::Internal)?;
    Ok(Json(SwitchBody {
        pool: Pool::of(svc.redundancy, u),
        active_upstream: svc.active_upstream.as_deref(),
        epoch: svc.epoch,
        pause_ms,
        position,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{engine_snapshot, service, to_value};
    use continuity_proxy::config::Kind;
    use continuity_proxy::snapshot::ServiceStatus;

    #[test]
    fn one_pool_per_upstream() {
        let snap = engine_snapshot(vec![
            service("redis", Kind::Redis, ServiceStatus::Healthy),
            service("pg", Kind::Postgres, ServiceStatus::Healthy),
        ]);
        let v = to_value(&PoolsBody {
            pools: pools(&snap),
        });
        let list = v["pools"].as_array().expect("pools[]");
        assert_eq!(list.len(), 4);
        let p = &list[0];
        assert_eq!(p["name"], "redis-primary");
        assert_eq!(p["service"], "redis");
        assert_eq!(p["mode"], "hot");
        assert_eq!(p["state"], "connected");
        assert_eq!(p["role"], "primary");
        assert_eq!(p["active"], true);
        assert_eq!(p["fenced"], false);
        assert_eq!(p["connections"], 4);
        assert_eq!(list[1]["role"], "secondary");
    }

    #[test]
    fn switch_answer_is_the_pool_plus_pause() {
        let mut s = service("redis", Kind::Redis, ServiceStatus::Healthy);
        s.upstreams[0].diverged = true;
        s.upstreams[0].observed_role = Some(ObservedRole::Primary);
        let v = to_value(&SwitchBody {
            pool: Pool::of(s.redundancy, &s.upstreams[0]),
            active_upstream: Some("redis-replica"),
            epoch: 3,
            pause_ms: 7,
            position: Some("redis offset 42".into()),
        });
        assert_eq!(v["name"], "redis-primary");
        assert_eq!(v["diverged"], true);
        assert_eq!(v["needs_rebuild"], true);
        assert_eq!(v["observed_role"], "primary");
        assert_eq!(v["active_upstream"], "redis-replica");
        assert_eq!(v["epoch"], 3);
        assert_eq!(v["pause_ms"], 7);
        assert_eq!(v["position"], "redis offset 42");
    }

    #[test]
    fn pool_lookup_by_upstream_name() {
        let snap = engine_snapshot(vec![service("pg", Kind::Postgres, ServiceStatus::Healthy)]);
        assert_eq!(pool(&snap, "pg-secondary").map(|p| p.service), Some("pg"));
        assert!(pool(&snap, "pg").is_none(), "a service name is not a pool");
    }
}
