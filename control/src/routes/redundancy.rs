//! Redundancy routes: `GET /api/ops/redundancy/status` (one pool per
//! upstream) and `GET /api/ops/redundancy/pool/{name}` (SPEC 4). The
//! planned switchover POSTs come with the redundancy issue.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use continuity_proxy::config::{Redundancy, Role};
use continuity_proxy::snapshot::{EngineSnapshot, PoolState, UpstreamHealth, UpstreamSnapshot};
use serde::Serialize;

use super::PathParam;
use crate::error::ApiError;
use crate::AppState;

/// One upstream seen as the design's connection pool.
#[derive(Debug, Serialize)]
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
}

impl<'a> Pool<'a> {
    fn of(mode: Redundancy, u: &'a UpstreamSnapshot) -> Pool<'a> {
        Pool {
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

#[derive(Debug, Serialize)]
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

pub async fn status(State(state): State<AppState>) -> Response {
    let snap = state.engine.snapshot();
    Json(PoolsBody {
        pools: pools(&snap),
    })
    .into_response()
}

pub async fn pool_by_name(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    let snap = state.engine.snapshot();
    let p = pool(&snap, &name).ok_or_else(|| ApiError::pool_not_found(&name))?;
    Ok(Json(p).into_response())
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
    fn pool_lookup_by_upstream_name() {
        let snap = engine_snapshot(vec![service("pg", Kind::Postgres, ServiceStatus::Healthy)]);
        assert_eq!(pool(&snap, "pg-secondary").map(|p| p.service), Some("pg"));
        assert!(pool(&snap, "pg").is_none(), "a service name is not a pool");
    }
}
