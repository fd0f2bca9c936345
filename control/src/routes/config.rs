//! `POST /api/ops/config/reload` (operator, `{"reason"}`): reloads the
//! config file through the hook the binary installs
//! ([`AppState::with_reload`]); the control plane cannot read the file
//! itself. The hook validates, applies and audits (`config_change`, or the
//! refusal with severity `error`), so SIGHUP and this route behave alike.
//! 200 with what changed; 409 `conflict` listing the problems when the new
//! config is refused (the old one keeps running).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::operator_reason;
use crate::auth::Actor;
use crate::error::ApiError;
use crate::AppState;

/// A reload's answer: what changed, or every reason it was refused.
pub type ReloadFuture = Pin<Box<dyn Future<Output = Result<Value, Vec<String>>> + Send>>;

/// `(actor, reason) -> reload`, installed by the binary.
pub type ReloadHook = Arc<dyn Fn(String, String) -> ReloadFuture + Send + Sync>;

#[utoipa::path(
    post, path = "/api/ops/config/reload", tag = "config",
    summary = "Reload the config file",
    description = "Validates, applies and audits the config file like SIGHUP; the running config is unchanged when it is refused.",
    request_body(content = crate::openapi::ReasonBody, description = "Why (masked, audited); an empty body counts as `{}`"),
    responses(
        (status = 200, description = "What changed (masked)", body = Object),
        (status = 400, description = "`bad_request`: the body is not a JSON object, or `reason` is not a string", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`reason_required`: `reason` missing or blank", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`conflict`: the new config is refused (the problems are listed), or live reload is not available", body = crate::openapi::ErrorEnvelope),
    ),
)]
pub async fn reload(
    State(state): State<AppState>,
    actor: Actor,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let reason = operator_reason(&state, body)?;
    let Some(hook) = state.reload.clone() else {
        return Err(ApiError::Conflict(
            "live reload is not available in this process".to_string(),
        ));
    };
    // What changed and what is wrong may quote the file (an upstream URL
    // with its password): masked like the audit entry of the reload.
    let masker = state.masker();
    match hook(actor.name, reason).await {
        Ok(report) => Ok(Json(masker.masked(&report).unwrap_or(report)).into_response()),
        Err(problems) => Err(ApiError::Conflict(format!(
            "config refused, the running config is unchanged: {}",
            masker.mask_str(&problems.join("; "))
        ))),
    }
}
