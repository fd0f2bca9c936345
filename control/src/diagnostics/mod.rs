//! Diagnostics: error classification, the event store, slow queries
//! (issue #4). Placeholder until that work lands.

use axum::Router;

use crate::AppState;

/// The diagnostics engine (cheap to clone).
#[derive(Clone, Default)]
pub struct Diagnostics {}

/// `/api/ops/diagnostics/*` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
