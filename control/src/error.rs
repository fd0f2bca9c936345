//! The one error type of the REST API and its JSON envelope
//! `{"error": {"code": "...", "message": "..."}}` (SPEC 4).
//!
//! Every failure a handler, an extractor or the auth layer can produce is an
//! [`ApiError`]; its `IntoResponse` is the only place that picks a status
//! code and a wire code. Messages are written for operators: they never
//! carry a Rust type name, a file path or a backtrace. Details that would
//! help a developer go to the log (`tracing`) instead.

use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use continuity_proxy::CommandError;
use serde::Serialize;

/// Wire codes, exactly as SPEC 4 names them.
pub mod code {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const REASON_REQUIRED: &str = "reason_required";
    pub const CONFLICT: &str = "conflict";
    pub const NOT_RESYNCED: &str = "not_resynced";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const TIMEOUT: &str = "timeout";
    pub const INTERNAL: &str = "internal";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No bearer token, or one that matches no configured token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid token whose role may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The path exists but not with this method. Not in SPEC 4's list; a
    /// 405 is what HTTP tooling expects, so it keeps its own code.
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    BadRequest(String),
    #[error("a non-blank \"reason\" is required")]
    ReasonRequired,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotResynced(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Too many failed authentications from one client address.
    #[error("too many failed authentication attempts; retry in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("{0}")]
    Timeout(String),
    /// A bug on our side; the detail is logged, never sent.
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::ReasonRequired => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) | ApiError::NotResynced(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => code::UNAUTHORIZED,
            ApiError::Forbidden(_) => code::FORBIDDEN,
            ApiError::NotFound(_) => code::NOT_FOUND,
            ApiError::MethodNotAllowed => code::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => code::BAD_REQUEST,
            ApiError::ReasonRequired => code::REASON_REQUIRED,
            ApiError::Conflict(_) => code::CONFLICT,
            ApiError::NotResynced(_) => code::NOT_RESYNCED,
            ApiError::PayloadTooLarge(_) => code::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) => code::RATE_LIMITED,
            ApiError::Timeout(_) => code::TIMEOUT,
            ApiError::Internal => code::INTERNAL,
        }
    }

    pub fn service_not_found(name: &str) -> ApiError {
        ApiError::NotFound(format!("no service named or of kind '{name}'"))
    }

    pub fn pool_not_found(name: &str) -> ApiError {
        ApiError::NotFound(format!("no upstream (pool) named '{name}'"))
    }

    /// Maps a failed body read. Only the limit is the client's business;
    /// anything else (a reset connection) is reported as a bad request.
    pub fn from_body_rejection(rejection: &BytesRejection, limit: usize) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest("the request body could not be read".to_string())
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::NotFound(m) => ApiError::NotFound(m),
            CommandError::Conflict(m) => ApiError::Conflict(m),
            CommandError::NotResynced(m) => ApiError::NotResynced(m),
            CommandError::Timeout(d) => ApiError::Timeout(format!(
                "the switch did not complete within {}s",
                d.as_secs_f64()
            )),
        }
    }
}

/// A path parameter that cannot be decoded (bad percent-encoding, not
/// UTF-8) can name no service or pool, so it is a 404: that keeps the
/// check order (404 before 400) and says nothing about our extractors.
impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> ApiError {
        ApiError::NotFound("no such resource".to_string())
    }
}

/// A query string that does not deserialise is SPEC 4's JSON 400, not
/// axum's plain-text one. The serde detail (it can name Rust types) goes to
/// the debug log only.
impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        tracing::debug!(%rejection, "malformed query string");
        ApiError::BadRequest("malformed query string".to_string())
    }
}

/// `Query<T>` whose rejection is an [`ApiError`]: use it instead of axum's
/// `Query` in every handler, so that no query string can get a plain-text
/// answer.
#[derive(Debug, Clone, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Envelope {
            error: Body {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited(wait) = &self {
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if let ApiError::Unauthorized(_) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"continuity\""),
            );
        }
        response
    }
}

/// Fallback for unknown routes: a JSON 404 like every other error.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_string())
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn envelope_shape_and_codes() {
        let cases = [
            (
                ApiError::Unauthorized("missing bearer token"),
                401,
                "unauthorized",
            ),
            (ApiError::Forbidden("x".into()), 403, "forbidden"),
            (ApiError::NotFound("x".into()), 404, "not_found"),
            (ApiError::BadRequest("x".into()), 400, "bad_request"),
            (ApiError::ReasonRequired, 422, "reason_required"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::NotResynced("x".into()), 409, "not_resynced"),
            (ApiError::PayloadTooLarge(65536), 413, "payload_too_large"),
            (
                ApiError::RateLimited(Duration::from_secs(30)),
                429,
                "rate_limited",
            ),
            (ApiError::Timeout("x".into()), 504, "timeout"),
        ];
        for (err, status, code) in cases {
            let (s, v) = json_of(err).await;
            assert_eq!(s.as_u16(), status);
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].is_string());
            assert_eq!(v.as_object().map(|o| o.len()), Some(1));
            assert_eq!(v["error"].as_object().map(|o| o.len()), Some(2));
        }
    }

    #[tokio::test]
    async fn rate_limited_sets_retry_after() {
        let r = ApiError::RateLimited(Duration::from_millis(12_500)).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "12");
    }

    /// A typed query that does not parse: axum's `Query` answers plain
    /// text, [`ApiQuery`] the JSON envelope.
    #[tokio::test]
    async fn api_query_rejects_with_the_json_envelope() {
        use axum::extract::FromRequest;
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Q {
            limit: Option<u32>,
        }
        let req = || {
            axum::http::Request::builder()
                .uri("/x?limit=abc")
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let plain = match Query::<Q>::from_request(req(), &()).await {
            Err(r) => r.into_response(),
            Ok(_) => panic!("limit=abc parsed"),
        };
        assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
        assert_ne!(
            plain
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let err = match ApiQuery::<Q>::from_request(req(), &()).await {
            Err(e) => e,
            Ok(_) => panic!("limit=abc parsed"),
        };
        let (s, v) = json_of(err).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["error"]["message"], "malformed query string");
        let ok = ApiQuery::<Q>::from_request(
            axum::http::Request::builder()
                .uri("/x?limit=7")
                .body(axum::body::Body::empty())
                .expect("request"),
            &(),
        )
        .await;
        assert!(matches!(ok, Ok(ApiQuery(Q { limit: Some(7) }))));
    }

    #[test]
    fn command_errors_map_to_spec_codes() {
        let c = |e: CommandError| ApiError::from(e).code();
        assert_eq!(c(CommandError::NotFound("a".into())), "not_found");
        assert_eq!(c(CommandError::Conflict("a".into())), "conflict");
        assert_eq!(c(CommandError::NotResynced("a".into())), "not_resynced");
        assert_eq!(c(CommandError::Timeout(Duration::from_secs(30))), "timeout");
    }
}
