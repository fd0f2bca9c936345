//! `GET /api/ops/queue/{id}`: a request the HTTP gateway queued during an
//! outage (`on_outage = "queue"`), its state and, once delivered, the
//! upstream's answer. `GET /api/ops/queue`: depth and oldest age per service.
//!
//! The queue keeps a request as it came (it is replayed upstream as such);
//! what this route shows is masked like an audit entry: the query values
//! of secret names (`api_key=***`), every credential header of the request
//! and of the upstream's answer (`Authorization`, `Cookie`, `Set-Cookie`,
//! `X-Api-Key`, ...: [`Masker::mask_header`]), and the rules of
//! [`Masker::mask_str`] in every other string. The answer's body is the
//! upstream's, shown as it came.

use std::borrow::Cow;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::PathParam;
use crate::audit::mask::Masker;
use crate::error::ApiError;
use crate::AppState;

#[utoipa::path(
    get, path = "/api/ops/queue/{id}", tag = "queue",
    summary = "A queued HTTP request: state and, once delivered, the upstream's answer",
    description = "Masked like an audit entry, except the answer's body.",
    params(("id" = String, Path, description = "The id the gateway answered 202 with")),
    responses(
        (status = 200, description = "The request", body = crate::openapi::QueueEntry),
        (status = 404, description = "`not_found`: no such request, or no queue", body = crate::openapi::ErrorEnvelope),
    ),
)]
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
    Ok(Json(masked_entry(state.masker(), e.to_json())).into_response())
}

/// A queue entry as a viewer may see it (see the module doc).
fn masked_entry(m: &Masker, mut v: Value) -> Value {
    let body = v
        .get_mut("result")
        .and_then(Value::as_object_mut)
        .and_then(|r| r.remove("body"));
    mask_headers(m, v.get_mut("headers"));
    mask_headers(m, v.get_mut("result").and_then(|r| r.get_mut("headers")));
    m.mask_value(&mut v);
    if let (Some(body), Some(r)) = (body, v.get_mut("result").and_then(Value::as_object_mut)) {
        r.insert("body".to_string(), body);
    }
    v
}

/// `[{"name","value"}]`: a credential header's value becomes `***`.
fn mask_headers(m: &Masker, headers: Option<&mut Value>) {
    let Some(list) = headers.and_then(Value::as_array_mut) else {
        return;
    };
    for h in list {
        let name = h
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(Value::String(value)) = h.get_mut("value") {
            if let Cow::Owned(masked) = m.mask_header(&name, value) {
                *value = masked;
            }
        }
    }
}

#[utoipa::path(
    get, path = "/api/ops/queue", tag = "queue",
    summary = "Depth, pending bytes and oldest age per service",
    responses((status = 200, description = "Queues (empty without an HTTP gateway queue)", body = crate::openapi::QueueSummary)),
)]
pub async fn summary(State(state): State<AppState>) -> Response {
    let services: Vec<_> = match state.engine.queue() {
        Some(q) => q
            .services()
            .into_iter()
            .map(|s| {
                json!({
                    "service": s,
                    "depth": q.depth(&s),
                    "pending_bytes": q.pending_bytes(&s),
                    "oldest_age_seconds": q.oldest_age(&s).map_or(0.0, |d| d.as_secs_f64()),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    Json(json!({ "services": services })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_masked_but_the_answer_body_is_not() {
        let m = Masker::new(&[]).unwrap();
        let v = json!({
            "id": "q1", "state": "delivered", "method": "POST",
            "path": "/v1/sar?case=7&api_key=K1&access_token=T1",
            "headers": [
                {"name": "content-type", "value": "application/json"},
                {"name": "x-auth-token", "value": "T2"},
                {"name": "authorization", "value": "Basic dXNlcjpwYXNz"},
                {"name": "idempotency-key", "value": "abc"},
            ],
            "last_error": "connect to http://u:pw@h failed",
            "result": {
                "status": 200, "upstream": "a",
                "headers": [
                    {"name": "Set-Cookie", "value": "session=S1; HttpOnly"},
                    {"name": "Location", "value": "/next?token=T3"},
                    {"name": "Content-Type", "value": "text/plain"},
                ],
                "body": "password=kept as the upstream sent it",
            },
        });
        let out = masked_entry(&m, v);
        assert_eq!(out["path"], "/v1/sar?case=7&api_key=***&access_token=***");
        let value = |list: &Value, i: usize| list[i]["value"].as_str().unwrap().to_string();
        assert_eq!(value(&out["headers"], 0), "application/json");
        assert_eq!(value(&out["headers"], 1), "***");
        assert_eq!(value(&out["headers"], 2), "***");
        assert_eq!(value(&out["headers"], 3), "abc");
        assert_eq!(out["last_error"], "connect to http://u:***@h failed");
        let r = &out["result"];
        assert_eq!(value(&r["headers"], 0), "***");
        assert_eq!(value(&r["headers"], 1), "/next?token=***");
        assert_eq!(value(&r["headers"], 2), "text/plain");
        assert_eq!(r["body"], "password=kept as the upstream sent it");
        assert_eq!(r["status"], 200);
        for secret in ["K1", "T1", "T2", "T3", "S1", "dXNlcjpwYXNz", "pw@"] {
            assert!(!out.to_string().contains(secret), "{secret} in {out}");
        }
    }

    #[test]
    fn a_queued_entry_without_result_is_masked_too() {
        let m = Masker::new(&[]).unwrap();
        let out = masked_entry(
            &m,
            json!({"path": "/x?key=1", "headers": [], "state": "queued"}),
        );
        assert_eq!(out["path"], "/x?key=***");
        assert!(out.get("result").is_none());
    }
}
