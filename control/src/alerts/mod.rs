//! Escalation, routing, webhooks, predictive alerts, emergency and
//! heartbeats (issue #4). Placeholder until that work lands.

use axum::Router;

use crate::AppState;

/// The alert engine (cheap to clone).
#[derive(Clone, Default)]
pub struct Alerts {}

/// `/api/ops/diagnostics/alerts`, `/api/ops/alerts/{id}/ack`,
/// `/api/ops/emergency`, `/api/ops/heartbeat/{name}`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
