//! WebSocket channels `/ws/ops/{health,failover,diagnostics}` (issue #4).
//! Placeholder until that work lands.

use axum::Router;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
}
