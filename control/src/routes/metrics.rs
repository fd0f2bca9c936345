//! `GET /metrics`: the Prometheus text exposition of the shared registry,
//! with the control-plane state gauges refreshed from a fresh snapshot.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::metrics::CONTENT_TYPE;
use crate::AppState;

#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    summary = "Prometheus text exposition (SPEC 6)",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 500, description = "`internal`: the metrics could not be encoded", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snap = state.engine.snapshot();
    let text = state.metrics.render(&snap, &state.registry).map_err(|e| {
        tracing::error!(error = %e, "metrics encoding failed");
        ApiError::Internal
    })?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
