//! `GET /api/ops/openapi.json`: the OpenAPI 3.1 document of every route the
//! control plane serves, derived from the code.
//!
//! [`api_router`] registers every route through utoipa-axum's `routes!`,
//! which takes each handler's path and method from its `#[utoipa::path]`
//! annotation and adds the same operation to the document: the router and
//! the document come from the same calls, so a route cannot be served
//! without being documented, or documented at a path it is not served at.
//! [`document`] then adds, for every operation, what the auth middleware
//! enforces, computed by the middleware's own rules ([`crate::auth`]): the
//! security requirement, the role (`x-required-role`, and a sentence in the
//! description) and the 401/403/429 answers, plus 413 on POSTs.
//!
//! Response and request schemas are the handlers' own types
//! (`#[derive(ToSchema)]` next to `Serialize`); where a handler builds its
//! answer with `json!`, a type below describes it.
//!
//! The document needs a viewer token like every other GET: SPEC 4 lists the
//! public routes (health, ready, the operations page, `/metrics` with
//! `metrics_public`), and this one holds no data an operator would miss
//! without it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{is_public, role_check};
use crate::config::TokenRole;
use crate::error::ApiError;
use crate::AppState;

/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";
/// The `?token=` scheme, accepted on WebSocket paths only.
pub const WS_TOKEN: &str = "ws_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "continuity control plane",
        description = "The control plane of continuity (SPEC 4, 5, 6, 8). \
            Every route but `/api/ops/health`, `/api/ops/ready`, the operations page and \
            (with `metrics_public = true`) `/metrics` needs `Authorization: Bearer TOKEN`. \
            GETs and WebSockets take a viewer or operator token; POSTs an operator token, \
            except heartbeats (reporter or operator). Each operation carries the role it \
            needs as `x-required-role` (`none`, `viewer`, `operator` or `reporter`; an \
            operator token may do everything). Errors are \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`; checks run in the \
            order 401, 403, 404, 400, 422, 409.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorEnvelope, ErrorBody, ErrorCode)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Health, readiness, uptime and SLA"),
        (name = "failover", description = "Failover status and operator switches"),
        (name = "redundancy", description = "Pools and planned switchovers"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "diagnostics", description = "Diagnostic events, slow queries and alerts"),
        (name = "alerts", description = "Alert acknowledgement, emergencies and heartbeats"),
        (name = "queue", description = "The HTTP gateway's durable queue"),
        (name = "config", description = "Live configuration reload"),
        (name = "websocket", description = "Live channels (SPEC 5)"),
        (name = "meta", description = "Metrics, identity, this document and the operations page"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token configured under [[control.tokens]] (its SHA-256 digest is \
                         configured, never the token). Roles: viewer, operator, reporter.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            WS_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same token as `?token=TOKEN`, on /ws/ paths only (browsers cannot set \
                 headers on a WebSocket). Never logged.",
            ))),
        );
    }
}

/// Every route of the control plane: the router and its document.
pub fn api_router() -> OpenApiRouter<AppState> {
    use crate::routes::{audit, config, failover, health, metrics, queue, redundancy, whoami};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::deep))
        .routes(routes!(health::service))
        .routes(routes!(config::reload))
        .routes(routes!(failover::status))
        .routes(routes!(failover::trigger))
        .routes(routes!(failover::recover))
        .routes(routes!(audit::logs))
        .routes(routes!(audit::report))
        .routes(routes!(audit::status))
        .routes(routes!(audit::verify))
        .routes(routes!(redundancy::status))
        .routes(routes!(redundancy::failover))
        .routes(routes!(redundancy::failback))
        .routes(routes!(redundancy::resync))
        .routes(routes!(redundancy::pool_by_name))
        .routes(routes!(queue::summary))
        .routes(routes!(queue::entry))
        .routes(routes!(metrics::metrics))
        .routes(routes!(whoami::whoami))
        .routes(routes!(openapi_json))
        .merge(crate::diagnostics::routes())
        .merge(crate::snapshots::routes())
        .merge(crate::alerts::routes())
        .merge(crate::ws::routes())
        .merge(crate::ui::routes())
}

/// The finished document (built once).
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = api_router().split_for_parts();
        finish(&mut doc);
        doc
    })
}

/// An axum path template as OpenAPI writes it: `{*path}` is `{path}`.
pub fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

/// Wildcard paths, auth, roles and the errors every route shares.
fn finish(doc: &mut utoipa::openapi::OpenApi) {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, mut item) in paths {
        let path = openapi_path(&path);
        for (method, op) in [
            (Method::GET, item.get.as_mut()),
            (Method::POST, item.post.as_mut()),
            (Method::PUT, item.put.as_mut()),
            (Method::DELETE, item.delete.as_mut()),
            (Method::PATCH, item.patch.as_mut()),
        ] {
            if let Some(op) = op {
                apply_auth(&method, &path, op);
            }
        }
        doc.paths.paths.insert(path, item);
    }
}

/// The role an operation needs, by the middleware's own rules.
pub fn required_role(method: &Method, path: &str) -> &'static str {
    if is_public(method, path, false) {
        return "none";
    }
    let may = |role| role_check(role, method, path).is_ok();
    if may(TokenRole::Viewer) {
        "viewer"
    } else if may(TokenRole::Reporter) {
        "reporter"
    } else {
        "operator"
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build(),
    )
}

fn apply_auth(method: &Method, path: &str, op: &mut Operation) {
    let role = required_role(method, path);
    let metrics_public = !is_public(method, path, false) && is_public(method, path, true);
    let sentence = match role {
        "none" => "Public: no token needed.".to_string(),
        "viewer" if metrics_public => {
            "Needs a viewer or operator token, unless `[control] metrics_public = true`."
                .to_string()
        }
        "viewer" => "Needs a viewer or operator token.".to_string(),
        "reporter" => "Needs a reporter or operator token.".to_string(),
        _ => "Needs an operator token.".to_string(),
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
        _ => sentence,
    });
    let mut ext = op.extensions.take().unwrap_or_default();
    ext.merge(
        ExtensionsBuilder::new()
            .add("x-required-role", role)
            .build(),
    );
    op.extensions = Some(ext);
    if role == "none" {
        op.security = Some(vec![SecurityRequirement::default()]);
        return;
    }
    let mut security = vec![SecurityRequirement::new(BEARER, Vec::<String>::new())];
    if path.starts_with("/ws/") {
        security.push(SecurityRequirement::new(WS_TOKEN, Vec::<String>::new()));
        let token = ParameterBuilder::new()
            .name("token")
            .parameter_in(ParameterIn::Query)
            .description(Some("The token, for clients that cannot set headers."))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String),
            ))
            .build();
        op.parameters
            .get_or_insert_with(Vec::new)
            .push(RefOr::T(token));
    }
    if metrics_public {
        security.push(SecurityRequirement::default());
    }
    op.security = Some(security);
    let responses = &mut op.responses.responses;
    let mut add = |code: &str, description: &str| {
        responses
            .entry(code.to_string())
            .or_insert_with(|| error_response(description));
    };
    add(
        "401",
        "`unauthorized`: no token, or one that matches no configured token.",
    );
    add(
        "403",
        "`forbidden`: a valid token whose role may not do this.",
    );
    add(
        "429",
        "`rate_limited`: too many failed authentications from this address; `Retry-After` says when to retry. A valid token is never refused with 429.",
    );
    if *method == Method::POST {
        add("413", "`payload_too_large`: a body over 64 KiB.");
        add(
            "500",
            "`internal`: a fault on our side, e.g. the action's audit entry could not be written, so the action was refused; the detail is in the log.",
        );
    }
}

/// The document's JSON text (built once).
fn json_text() -> Result<&'static str, ApiError> {
    static TEXT: OnceLock<Result<String, String>> = OnceLock::new();
    TEXT.get_or_init(|| serde_json::to_string(document()).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            ApiError::Internal
        })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/ops/openapi.json",
    tag = "meta",
    summary = "The OpenAPI document of every route",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)),
)]
pub async fn openapi_json() -> Result<Response, ApiError> {
    let text = json_text()?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

// ---------------------------------------------------------------------------
// Schemas of answers a handler builds with `json!` (and of request bodies a
// handler reads by hand), for the document only. The handlers' tests pin the
// members; `tests` below checks these against real answers where it can.

/// SPEC 4's error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// For operators: never a type name, a file path or a trace.
    pub message: String,
}

/// The wire codes ([`crate::error::code`]).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    ReasonRequired,
    Conflict,
    NotResynced,
    PayloadTooLarge,
    RateLimited,
    Timeout,
    Internal,
}

/// The overall `status` of the health answers (SPEC 3): `healthy` for
/// `normal`, `degraded` for `degraded` and `failover`, `unhealthy` for
/// `emergency`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverallStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

/// A token's role.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Viewer,
    Operator,
    Reporter,
}

/// A snapshot window.
#[derive(Debug, Serialize, ToSchema)]
pub enum WindowName {
    #[serde(rename = "1h")]
    H1,
    #[serde(rename = "24h")]
    H24,
    #[serde(rename = "30d")]
    D30,
}

/// An operator POST's body. An empty body counts as `{}` (then 422);
/// other members are ignored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReasonBody {
    /// Why; blank after trimming is 422 `reason_required`. Masked like the
    /// audit entry it ends up in.
    #[schema(example = "planned maintenance of redis-primary")]
    pub reason: String,
}

/// `POST /api/ops/emergency`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmergencyRequest {
    /// `true` declares an emergency, `false` clears it (400 if absent).
    pub enabled: bool,
    /// 422 `reason_required` when blank.
    pub reason: String,
}

/// `POST /api/ops/heartbeat/{name}`: all optional; an empty body is a beat.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatRequest {
    /// Items processed so far (a non-negative integer).
    pub processed: Option<u64>,
    /// The pipeline's checkpoint, at most 1024 bytes.
    #[schema(max_length = 1024)]
    pub checkpoint: Option<String>,
}

/// A heartbeat service's status.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatStatus {
    pub name: String,
    pub stall_after_seconds: f64,
    pub silent_seconds: f64,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub processed: Option<u64>,
    /// Masked like its audit entry.
    pub checkpoint: Option<String>,
    pub heartbeats: u64,
    pub stalled: bool,
    pub stalled_since: Option<DateTime<Utc>>,
}

/// One audit entry (SPEC 7), as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub entry_id: String,
    pub timestamp: DateTime<Utc>,
    pub action: crate::audit::Action,
    pub severity: crate::audit::Severity,
    /// A token's name, or `system`.
    pub actor: String,
    pub service: Option<String>,
    /// What happened, by action (masked).
    #[schema(value_type = Object)]
    pub details: Value,
    /// The previous entry's `hash` (64 zeros for seq 1).
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /api/ops/audit/logs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogs {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

/// `GET /api/ops/audit/report`: the compliance report.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditReport {
    pub generated_at: DateTime<Utc>,
    pub total_entries: u64,
    pub entries_by_action: BTreeMap<String, u64>,
    pub entries_by_severity: BTreeMap<String, u64>,
    /// The last verification's result, as `GET /api/ops/audit/verify` answers it.
    pub chain_verification: Option<crate::audit::verify::VerifyReport>,
    pub retention: AuditRetention,
    pub signing: AuditSigning,
    /// Every `manual_intervention` kept: actor, operation, reason.
    #[schema(value_type = Vec<Object>)]
    pub manual_interventions: Vec<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRetention {
    pub retention_days: Option<u64>,
    pub oldest_entry: Option<DateTime<Utc>>,
    pub newest_entry: Option<DateTime<Utc>>,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub segments: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditSigning {
    pub enabled: bool,
    pub checkpoint_every: u64,
    pub checkpoints: u64,
    pub last_checkpoint_seq: Option<u64>,
}

/// `GET /api/ops/queue`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueSummary {
    pub services: Vec<QueueService>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueService {
    pub service: String,
    pub depth: u64,
    pub pending_bytes: u64,
    /// 0 when empty.
    pub oldest_age_seconds: f64,
}

/// A header of a queued request or of its answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueHeader {
    pub name: String,
    /// `***` for credential headers.
    pub value: String,
}

/// `GET /api/ops/queue/{id}`, masked (the answer's body is shown as it came).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueEntry {
    pub id: String,
    pub service: String,
    /// `queued`, `delivering`, `delivered` or `failed`.
    pub state: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<QueueHeader>,
    pub enqueued_at: DateTime<Utc>,
    pub attempts: u64,
    pub last_error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Once delivered.
    pub result: Option<QueueResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueResult {
    pub status: u16,
    pub headers: Vec<QueueHeader>,
    pub upstream: String,
    /// UTF-8 text, else base64 (then `body_encoding` is `base64`).
    pub body: String,
    pub body_encoding: Option<String>,
}

/// An alert of `GET /api/ops/diagnostics/alerts`: an escalation (SPEC 9)
/// or a predictive alert; members of the other kind are absent.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    /// `escalation` or `predictive`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub severity: String,
    pub tier: u8,
    pub color: String,
    /// The dashboards it is routed to (`ops_center`, `command_center`, ...).
    pub routes: Vec<String>,
    pub service: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// `false` once resolved.
    pub open: bool,
    pub message: String,
    /// Escalations: the rule's name.
    pub rule: Option<String>,
    /// Escalations: the rule's condition (`service_unresponsive`, ...).
    pub condition: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    /// Predictive alerts.
    pub category: Option<String>,
    pub prediction_type: Option<String>,
    pub confidence: Option<f64>,
    pub predicted_failure_time: Option<DateTime<Utc>>,
    pub indicators: Option<Vec<String>>,
    pub recommended_actions: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub trend: Option<Value>,
}

/// `GET /api/ops/diagnostics/alerts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
    /// How many of `alerts` are open.
    pub open: usize,
    pub generated_at: DateTime<Utc>,
}

/// `POST /api/ops/emergency`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmergencyAnswer {
    pub failover_state: continuity_proxy::snapshot::FailoverState,
    pub emergency_declared: bool,
    /// Ids of the alerts routed to every dashboard.
    pub rerouted_alerts: Vec<String>,
    pub open_alerts: Vec<AlertView>,
}

/// `GET /api/ops/diagnostics/report`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiagnosticsReport {
    pub metrics: DiagnosticsMetrics,
    /// The open alerts.
    pub alerts: Vec<AlertView>,
    pub top_error_classes: Vec<ErrorClass>,
    pub generated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiagnosticsMetrics {
    pub total_events: u64,
    pub events_by_category: BTreeMap<String, u64>,
    pub events_by_severity: BTreeMap<String, u64>,
    pub slow_queries_detected: u64,
    pub predictive_alerts_generated: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorClass {
    pub class: String,
    pub category: crate::diagnostics::model::DiagCategory,
    pub count: u64,
    pub last_seen: DateTime<Utc>,
}

/// `GET /api/ops/diagnostics/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// Newest first.
    pub events: Vec<crate::diagnostics::model::DiagnosticEvent>,
}

/// `GET /api/ops/diagnostics/slow-queries`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlowQueryList {
    /// Newest first.
    pub slow_queries: Vec<crate::diagnostics::model::SlowQuery>,
}

/// One WebSocket message (SPEC 5); the first is the channel's snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct WsMessage {
    /// `health_update`, `failover_event`, `diagnostic_event`, `lagged`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Strictly increasing per channel.
    pub seq: u64,
    pub timestamp: DateTime<Utc>,
    pub service: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_the_auth_rules() {
        assert_eq!(required_role(&Method::GET, "/api/ops/health"), "none");
        assert_eq!(
            required_role(&Method::GET, "/operations-center/assets/{path}"),
            "none"
        );
        assert_eq!(
            required_role(&Method::GET, "/api/ops/openapi.json"),
            "viewer"
        );
        assert_eq!(required_role(&Method::GET, "/metrics"), "viewer");
        assert_eq!(required_role(&Method::GET, "/ws/ops/health"), "viewer");
        assert_eq!(
            required_role(&Method::POST, "/api/ops/failover/trigger/{type}"),
            "operator"
        );
        assert_eq!(
            required_role(&Method::POST, "/api/ops/heartbeat/{name}"),
            "reporter"
        );
    }

    #[test]
    fn every_operation_has_its_role_security_and_errors() {
        let doc = serde_json::to_value(document()).expect("serialises");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(
            paths.contains_key("/operations-center/assets/{path}"),
            "wildcard renamed"
        );
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                let role = op["x-required-role"].as_str().unwrap_or_default();
                assert!(
                    ["none", "viewer", "operator", "reporter"].contains(&role),
                    "{method} {path}: {role}"
                );
                let codes = op["responses"].as_object().expect("responses");
                assert!(
                    codes.keys().any(|c| c.starts_with('2') || c == "101"),
                    "{method} {path}"
                );
                if role != "none" {
                    for c in ["401", "403", "429"] {
                        assert!(codes.contains_key(c), "{method} {path} lacks {c}");
                    }
                    assert_eq!(op["security"][0]["bearer"], serde_json::json!([]));
                } else {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{path}");
                }
                if method == "post" {
                    assert!(codes.contains_key("413"), "{path}");
                }
                let described = op["description"].as_str().unwrap_or_default();
                assert!(
                    described.contains("token") || described.contains("Public"),
                    "{path}"
                );
            }
        }
        assert_eq!(
            doc["paths"]["/api/ops/heartbeat/{name}"]["post"]["x-required-role"],
            "reporter"
        );
    }
}
