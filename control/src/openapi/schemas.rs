//! Schemas of answers a handler builds with `json!` (and of request bodies
//! a handler reads by hand), for the OpenAPI document only. The handlers'
//! tests pin the members; the tests in `openapi/mod.rs` check these against
//! real answers where they can.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

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
