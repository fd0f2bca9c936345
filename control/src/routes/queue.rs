//! `GET /api/ops/queue/{id}`: a request the HTTP gateway queued during an
//! outage (`on_outage = "queue"`), its state and, once delivered, the
//! upstream's answer. `GET /api/ops/queue`: depth and oldest age per service.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::PathParam;
use crate::error::ApiError;
use crate::AppState;

pub async fn entry(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let queue = state
        .engine
        .queue()
        .ok_or_else(|| ApiError::NotFound("this engine keeps no HTTP queue".to_string()))?;
    let e = queue
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no queued request with id '{id}'")))?;
    Ok(Json(e.to_json()).into_response())
}

pub async fn summary(State(state): State<AppState>) -> Response {
    let services: Vec<_> = match state.engine.queue() {
        Some(q) => q
            .services()
            .into_iter()
            .map(|s| {
                json!({
                    "service": s,
                    "depth": q.depth(&s),
                    "oldest_age_seconds": q.oldest_age(&s).map_or(0.0, |d| d.as_secs_f64()),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    Json(json!({ "services": services })).into_response()
}
