//! Bearer-token authentication and role checks for every route (SPEC 4).
//!
//! One middleware ([`require`]) runs before routing decides anything, so
//! the check order is 401 (no or unknown token, or 429 once a client has
//! failed too often), then 403 (role), and only then the handlers' 404,
//! 400, 422 and 409. A valid token is checked first and always gets in:
//! only failures are counted and only failures are refused with 429
//! ([`crate::ratelimit`]), so one bad neighbour behind a shared NAT or
//! reverse proxy cannot lock the operators out. The presented token is
//! hashed with SHA-256 and the digest compared against *every* configured digest in constant time;
//! tokens themselves are never stored or logged. The matched token becomes
//! the request's [`Actor`], whose `name` is the `actor` of audit entries.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ControlConfig, TokenConfig, TokenRole};
use crate::error::ApiError;
use crate::metrics::auth_reason;
use crate::ratelimit::FailureLimiter;

/// Who made an authenticated request; inserted by [`require`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: TokenRole,
}

/// Handlers that act (operator POSTs) take an `Actor`. If the middleware
/// did not run, the request is refused rather than acted on anonymously.
impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Actor, ApiError> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or(ApiError::Unauthorized("missing bearer token"))
    }
}

/// The authentication state shared by every request.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<TokenConfig>,
    metrics_public: bool,
    body_limit: usize,
    limiter: FailureLimiter,
    failures: IntCounterVec,
}

impl Auth {
    /// `failures` is `continuity_auth_failures_total{reason}`.
    pub fn new(config: &ControlConfig, body_limit: usize, failures: IntCounterVec) -> Auth {
        Auth {
            tokens: config.tokens.clone(),
            metrics_public: config.metrics_public,
            body_limit,
            limiter: FailureLimiter::new(config.auth_failures_per_minute),
            failures,
        }
    }

    /// The configured token whose digest matches `token`, if any. Every
    /// digest is compared, in constant time, whatever matches first.
    fn find(&self, token: &str) -> Option<&TokenConfig> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            if bool::from(digest.ct_eq(&t.sha256)) {
                found = Some(t);
            }
        }
        found
    }

    /// A failed authentication: 401 while the address has failures left
    /// in its budget, 429 past it (not counted, not logged: an attacker
    /// cannot flood the log either).
    fn fail(&self, ip: IpAddr, reason: &'static str, err: ApiError) -> Response {
        if let Some(wait) = self.limiter.failure(ip) {
            self.failures
                .with_label_values(&[auth_reason::RATE_LIMITED])
                .inc();
            return ApiError::RateLimited(wait).into_response();
        }
        self.failures.with_label_values(&[reason]).inc();
        tracing::warn!(client = %ip, reason, "control-plane authentication failed");
        err.into_response()
    }
}

/// Routes that need no token: the probes Docker and load balancers use,
/// the operations page (its data needs a token), and `/metrics` when
/// `metrics_public`. Only reads are public.
pub(crate) fn is_public(method: &Method, path: &str, metrics_public: bool) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    matches!(path, "/api/ops/health" | "/api/ops/ready")
        || path == "/operations-center"
        || path.starts_with("/operations-center/")
        || (metrics_public && path == "/metrics")
}

/// SPEC 4 roles: reads for viewers and operators, heartbeats for
/// reporters and operators, every other write for operators only.
pub(crate) fn role_check(role: TokenRole, method: &Method, path: &str) -> Result<(), ApiError> {
    let read = method == Method::GET || method == Method::HEAD || method == Method::OPTIONS;
    let heartbeat = method == Method::POST && path.starts_with("/api/ops/heartbeat/");
    let ok = match role {
        TokenRole::Operator => true,
        TokenRole::Viewer => read,
        TokenRole::Reporter => heartbeat,
    };
    if ok {
        return Ok(());
    }
    let needed = match (read, heartbeat) {
        (true, _) => "a viewer or operator token",
        (false, true) => "a reporter or operator token",
        (false, false) => "an operator token",
    };
    Err(ApiError::Forbidden(format!(
        "a {} token may not do this; it needs {needed}",
        role.as_str()
    )))
}

/// `Authorization: Bearer TOKEN` (scheme case-insensitive, RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<Result<&str, ()>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    Some(parsed.ok_or(()))
}

/// `?token=TOKEN` on a WebSocket path (SPEC 5: browsers cannot set
/// headers on a WebSocket). Only there: elsewhere a token in a URL would
/// end up in proxies' and browsers' histories. The URI is never logged.
fn query_token(uri: &Uri) -> Option<Result<String, ()>> {
    if !uri.path().starts_with("/ws/") {
        return None;
    }
    let Ok(Query(params)) = Query::<Vec<(String, String)>>::try_from_uri(uri) else {
        return uri.query().map(|_| Err(()));
    };
    let (_, token) = params.into_iter().find(|(k, _)| k == "token")?;
    let token = token.trim();
    Some(if token.is_empty() {
        Err(())
    } else {
        Ok(token.to_string())
    })
}

/// The peer address from `into_make_service_with_connect_info` (or a
/// test's `MockConnectInfo`). `X-Forwarded-For` is deliberately ignored:
/// a client could set it to dodge the limiter.
fn client_ip(req: &Request) -> IpAddr {
    let ext = req.extensions();
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|m| m.0.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The middleware: 401 (or 429 past the failure budget) / 403, an early
/// 413 on a declared oversize body, then the request goes on with its
/// [`Actor`]. A valid token is never refused with 429.
pub async fn require(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path(), auth.metrics_public) {
        return next.run(req).await;
    }
    let ip = client_ip(&req);
    let presented = match bearer(req.headers()) {
        Some(found) => Some(
            found
                .map(Cow::Borrowed)
                .map_err(|()| "malformed Authorization header; expected 'Bearer TOKEN'"),
        ),
        None => query_token(req.uri()).map(|found| {
            found
                .map(Cow::Owned)
                .map_err(|()| "malformed token parameter; expected '?token=TOKEN'")
        }),
    };
    let token = match presented {
        Some(Ok(t)) => t,
        Some(Err(why)) => {
            return auth.fail(ip, auth_reason::INVALID_TOKEN, ApiError::Unauthorized(why));
        }
        None => {
            let e = ApiError::Unauthorized("missing bearer token");
            return auth.fail(ip, auth_reason::MISSING_TOKEN, e);
        }
    };
    let Some(matched) = auth.find(&token) else {
        let e = ApiError::Unauthorized("invalid token");
        return auth.fail(ip, auth_reason::INVALID_TOKEN, e);
    };
    if let Err(e) = role_check(matched.role, req.method(), req.uri().path()) {
        return e.into_response();
    }
    // Refuse a declared oversize body before anyone reads it; a chunked
    // one is stopped by the extractor limit (`DefaultBodyLimit`).
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > auth.body_limit as u64) {
        return ApiError::PayloadTooLarge(auth.body_limit).into_response();
    }
    req.extensions_mut().insert(Actor {
        name: matched.name.clone(),
        role: matched.role,
    });
    next.run(req).await
}

#[cfg(test)]
mod tests;
