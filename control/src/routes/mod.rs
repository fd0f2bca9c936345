//! REST handlers, one module per area of SPEC 4, plus the extractors they
//! share. Handlers are thin: take one engine snapshot, resolve the path
//! parameter (404), read the body (400, 422), call the engine (409, 504),
//! and shape the answer from the snapshot types.

pub mod audit;
pub mod cluster;
pub mod config;
pub mod failover;
pub mod health;
pub mod metrics;
pub mod queue;
pub mod redundancy;
pub mod whoami;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde_json::Value;

use crate::error::ApiError;

/// A single path parameter whose rejection is our JSON error, not axum's
/// plain-text one.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathParam, ApiError> {
        let Path(p) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(PathParam(p))
    }
}

/// Reads an operator POST body `{"reason": "..."}` and returns the reason,
/// trimmed. An empty body counts as `{}` (so `curl -X POST` without `-d`
/// is told that a reason is needed, 422, rather than that its JSON is
/// bad); JSON that does not parse or is not an object is 400; a `reason`
/// that is absent, `null` or blank after trimming is 422. Unknown members
/// are ignored so that clients may send more than we read.
pub fn read_reason(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<String, ApiError> {
    let body = body.map_err(|e| ApiError::from_body_rejection(&e, limit))?;
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        // serde_json's messages say where and what ("expected value at
        // line 1 column 2"), never one of our type names.
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?
    };
    let Value::Object(map) = value else {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object like {\"reason\": \"...\"}".to_string(),
        ));
    };
    match map.get("reason") {
        None | Some(Value::Null) => Err(ApiError::ReasonRequired),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::ReasonRequired),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(ApiError::BadRequest(
            "\"reason\" must be a string".to_string(),
        )),
    }
}

/// [`read_reason`] with the audit log's masker applied as the reason comes
/// in: the engine's events, the WebSocket messages, the diagnostics, the
/// logs and the audit entry then only ever see `password=***`, never the
/// secret an operator pasted into a reason.
pub fn operator_reason(
    state: &crate::AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, ApiError> {
    let reason = read_reason(body, crate::BODY_LIMIT)?;
    Ok(state.masker().mask_str(&reason).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(body: &str) -> Result<String, ApiError> {
        read_reason(Ok(Bytes::copy_from_slice(body.as_bytes())), 65536)
    }

    #[test]
    fn reasons() {
        assert_eq!(reason(r#"{"reason":"  drill  "}"#), Ok("drill".to_string()));
        assert_eq!(reason(r#"{"reason":"x","extra":1}"#), Ok("x".to_string()));
        assert_eq!(reason(""), Err(ApiError::ReasonRequired));
        assert_eq!(reason(" \n"), Err(ApiError::ReasonRequired));
        assert_eq!(reason("{}"), Err(ApiError::ReasonRequired));
        assert_eq!(reason(r#"{"reason":null}"#), Err(ApiError::ReasonRequired));
        assert_eq!(reason(r#"{"reason":"  "}"#), Err(ApiError::ReasonRequired));
        assert_eq!(
            reason(r#"{"reason":"\t\n"}"#),
            Err(ApiError::ReasonRequired)
        );
    }

    #[test]
    fn bad_bodies_are_400_without_type_names() {
        for body in ["{", "reason=x", "[]", "5", r#""x""#, r#"{"reason":5}"#] {
            match reason(body) {
                Err(ApiError::BadRequest(msg)) => {
                    assert!(!msg.contains("struct") && !msg.contains("::"), "{msg}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
