//! continuity-control: the control plane (axum): REST, WebSockets,
//! `/metrics`, and later the operations page and the audit log. It sees the
//! data plane only through `continuity_proxy::Engine`.
//!
//! The entry points are testable on their own: [`router`] builds the whole
//! HTTP surface from an [`AppState`] (drive it with `tower::ServiceExt::oneshot`,
//! no socket needed) and [`serve`] runs it on a listener the caller has
//! already bound, until `shutdown` resolves.
//!
//! Layers, outermost first: CORS (only with `cors_origins`, so that a
//! preflight needs no token), auth ([`auth::require`]: 429/401/403 and an
//! early 413), then routing with the extractor body limit; unknown routes
//! and wrong methods end in the same JSON error envelope as everything else.

// No unwrap on anything a network or a user can influence; tests may.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod bridge;
pub mod bus;
pub mod config;
pub mod diagnostics;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod recorder;
pub mod routes;
pub mod snapshots;
#[cfg(test)]
mod testutil;
pub mod tls;
pub mod ui;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::Router;
use continuity_proxy::{Command, CommandOutcome, Engine};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Auth;
use crate::config::ControlConfig;
use crate::error::ApiError;
use crate::metrics::ControlMetrics;

/// Largest request body accepted (SPEC 4: operator POSTs are small).
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a POST waits for the engine to finish a switch (SPEC 4).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a handler needs; cheap to clone (all shared).
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub config: Arc<ControlConfig>,
    /// Shared with the data plane, which registers its own families.
    pub registry: prometheus::Registry,
    pub metrics: Arc<ControlMetrics>,
    auth: Arc<Auth>,
    command_timeout: Duration,
    /// The audit log; `None` only in tests that do not audit.
    pub audit: Option<audit::AuditLog>,
    /// What the WebSocket channels carry.
    pub bus: bus::OpsBus,
    pub diagnostics: diagnostics::Diagnostics,
    pub snapshots: snapshots::Snapshots,
    pub alerts: alerts::Alerts,
    /// The WebSocket channels' metrics, diagnostics ring and drop ratio.
    pub ws: ws::WsState,
    /// Live config reload (installed by the binary; `None`: 409).
    pub reload: Option<routes::config::ReloadHook>,
}

impl AppState {
    /// Registers the control-plane metrics into `registry` (the one the
    /// engine was started with). Fails only if those names are already
    /// registered there.
    pub fn new(
        engine: Engine,
        config: Arc<ControlConfig>,
        registry: prometheus::Registry,
    ) -> Result<AppState, prometheus::Error> {
        let metrics = Arc::new(ControlMetrics::register(&registry)?);
        let auth = Arc::new(Auth::new(
            &config,
            BODY_LIMIT,
            metrics.auth_failures.clone(),
        ));
        let bus = bus::OpsBus::default();
        let ws = ws::WsState::new(&bus, &registry);
        Ok(AppState {
            engine,
            config,
            registry,
            metrics,
            auth,
            command_timeout: COMMAND_TIMEOUT,
            audit: None,
            bus,
            diagnostics: diagnostics::Diagnostics::default(),
            snapshots: snapshots::Snapshots::default(),
            alerts: alerts::Alerts::default(),
            ws,
            reload: None,
        })
    }

    /// Serves `POST /api/ops/config/reload` through `hook`.
    pub fn with_reload(mut self, hook: routes::config::ReloadHook) -> AppState {
        self.reload = Some(hook);
        self
    }

    /// Audits every operator action and serves the audit routes.
    pub fn with_audit(mut self, audit: audit::AuditLog) -> AppState {
        self.audit = Some(audit);
        self
    }

    /// The audit log's masker (built-in rules and `mask_patterns`); the
    /// built-in rules alone without an audit log. Whatever the audit file
    /// masks is masked with it wherever it leaves the process otherwise
    /// (WebSocket messages, operator reasons, queued requests).
    pub fn masker(&self) -> &audit::mask::Masker {
        self.audit
            .as_ref()
            .map_or(&audit::mask::BUILTIN, audit::AuditLog::masker)
    }

    /// Appends an audit entry and waits for its fsync. Without an audit log
    /// (some tests) this is a no-op. A failed append refuses the operation:
    /// an operator action that cannot be recorded does not happen.
    pub async fn record(&self, entry: audit::NewEntry) -> Result<(), ApiError> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        log.append(entry).await.map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "audit append failed; operation refused");
            ApiError::Internal
        })
    }

    /// An operator command, audited the one way every route does it: the
    /// `manual_intervention` (actor, operation, reason) is fsynced before
    /// the engine acts, and a refusal is recorded too, so no operator action
    /// is left without a trace.
    pub async fn apply_audited(
        &self,
        cmd: Command,
        operation: &str,
        service: Option<&str>,
    ) -> Result<CommandOutcome, ApiError> {
        let mut intent = routes::failover::manual_intervention(&cmd, operation);
        if let Some(s) = service {
            intent = intent.service(s);
        }
        self.record(intent).await?;
        match self.apply(cmd).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                let mut refused = audit::NewEntry::new(
                    audit::Action::DiagnosticEvent,
                    audit::Severity::Warning,
                    "system",
                    serde_json::json!({
                        "event": "operation_refused",
                        "operation": operation,
                        "error": e.to_string(),
                    }),
                );
                if let Some(s) = service {
                    refused = refused.service(s);
                }
                self.record(refused).await?;
                Err(e)
            }
        }
    }

    /// Overrides [`COMMAND_TIMEOUT`] (tests).
    pub fn with_command_timeout(mut self, timeout: Duration) -> AppState {
        self.command_timeout = timeout;
        self
    }

    /// Runs one command through the engine, bounded by the command timeout.
    /// If the bound fires, the `apply` future is dropped: the engine must
    /// treat that as the caller going away, not as a cancelled switch.
    pub async fn apply(&self, cmd: Command) -> Result<CommandOutcome, ApiError> {
        match tokio::time::timeout(self.command_timeout, self.engine.apply(cmd)).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError::Timeout(format!(
                "the switch did not complete within {}s",
                self.command_timeout.as_secs_f64()
            ))),
        }
    }
}

/// The whole HTTP surface of the control plane.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config.cors_origins);
    // Every route comes from `openapi::api_router`, which documents each
    // one from the same call that routes it (GET /api/ops/openapi.json).
    let (routes, _) = openapi::api_router().split_for_parts();
    let app = routes
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require,
        ))
        .with_state(state);
    match cors {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

/// CORS stays off (no headers, same-origin only) unless origins are
/// configured; `"*"` allows any origin. Tokens travel in the
/// `Authorization` header, never cookies, so credentials are not allowed.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| {
            let v = HeaderValue::from_str(o.trim_end_matches('/')).ok();
            if v.is_none() {
                tracing::warn!(origin = %o, "ignoring invalid CORS origin");
            }
            v
        }))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    )
}

/// Serves [`router`] on `listener` (bound by the caller, so that a bind
/// failure is reported before anything starts) until `shutdown` resolves,
/// then lets in-flight requests finish. Peer addresses reach the auth
/// limiter through `ConnectInfo<SocketAddr>`. The connection cap and
/// timeouts of `[control]` apply ([`limits`]); [`tls::serve_tls`] is the
/// HTTPS twin.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let limits = state.config.limits;
    let refused = state.engine.connections_refused("control");
    limits::serve_limited(listener, router(state), limits, refused, shutdown).await
}
