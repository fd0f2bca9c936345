//! Health snapshots, uptime and SLA (issue #4). Placeholder until that work lands.

use axum::Router;

use crate::AppState;

/// The snapshot store (cheap to clone).
#[derive(Clone, Default)]
pub struct Snapshots {}

/// `/api/ops/health/snapshots` and `/api/ops/sla`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
