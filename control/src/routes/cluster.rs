//! `GET /api/ops/cluster` (issue #17, docs/cluster.md): the members of
//! this engine's `[cluster]`, each coordinated service's leader, agreed
//! route and every engine's view, and the etcd revision, as this engine
//! last read them. Without `[cluster]`: `{"enabled": false, ...}`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use continuity_proxy::snapshot::ClusterSnapshot;

use crate::AppState;

#[utoipa::path(
    get, path = "/api/ops/cluster", operation_id = "cluster_status", tag = "failover",
    summary = "The cluster of engines coordinating failover through etcd",
    description = "Members, the leader and agreed route of each coordinated service, every engine's view of each upstream, whether this engine agrees, and the etcd revision it last saw. `enabled` is false without `[cluster]`.",
    responses((status = 200, description = "The cluster as this engine knows it", body = ClusterSnapshot)),
)]
pub async fn status(State(state): State<AppState>) -> Response {
    Json(state.engine.cluster()).into_response()
}
