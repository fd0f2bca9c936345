//! Read-only views of the engine's state, as the control plane sees them.
//!
//! These are plain serialisable values built on demand by
//! [`crate::Engine::snapshot`]; holding one never blocks the data plane.

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::cluster::doc::{
    AgreedRoute, ClusterService, ClusterSnapshot, MemberDoc, Phase, UpstreamView, ViewDoc,
};
use crate::config::{Category, FailoverMode, Kind, OnFailover, Redundancy, Role};
pub use crate::health::ObservedRole;

/// SPEC 3 service status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Unknown,
    Healthy,
    Degraded,
    Down,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Unknown => "unknown",
            ServiceStatus::Healthy => "healthy",
            ServiceStatus::Degraded => "degraded",
            ServiceStatus::Down => "down",
        }
    }
}

/// SPEC 3 engine state, `failover_state` everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailoverState {
    Normal,
    Degraded,
    Failover,
    Emergency,
}

impl FailoverState {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverState::Normal => "normal",
            FailoverState::Degraded => "degraded",
            FailoverState::Failover => "failover",
            FailoverState::Emergency => "emergency",
        }
    }

    /// The number exported as `continuity_failover_state`.
    pub fn as_gauge(self) -> i64 {
        self as i64
    }
}

/// Health of one upstream as the thresholds judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamHealth {
    Unknown,
    Up,
    Down,
}

/// Connection-pool state of an upstream (the design's redundancy manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    Disconnected,
    Connecting,
    Connected,
    Failed,
    Draining,
}

/// One probe, as kept in an upstream's recent history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProbeRecord {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub latency_ms: f64,
    pub role: Option<ObservedRole>,
    pub error: Option<String>,
}

/// Latency percentiles in milliseconds; `None` when there is no sample.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub samples: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UpstreamSnapshot {
    pub name: String,
    pub service: String,
    /// `host:port` or URL (credentials are never part of it).
    pub address: String,
    /// Configured role (first preference).
    pub role: Role,
    /// Role the last successful probe saw, where the protocol tells it.
    pub observed_role: Option<ObservedRole>,
    pub health: UpstreamHealth,
    /// Last probe slower than `latency_threshold_ms`.
    pub slow: bool,
    pub active: bool,
    pub fenced: bool,
    /// A promote moved the primary away from this upstream; it must be
    /// resynchronised before `recover` may return to it.
    pub diverged: bool,
    pub pool_state: PoolState,
    /// Ready (pre-connected, idle) connections kept for a hot standby.
    pub warm_connections: u64,
    pub last_probe: Option<ProbeRecord>,
    pub last_error: Option<String>,
    pub probe_latency_ms: Percentiles,
    pub inline_latency_ms: Percentiles,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub total_checks: u64,
    pub failed_checks: u64,
    pub active_connections: u64,
    pub total_connections: u64,
    pub history: Vec<ProbeRecord>,
    /// HTTP: the gateway sends this upstream nothing until `quota_until`,
    /// the end of the `Retry-After` of its last 429 (capped at
    /// `max_retry_after_seconds`). Always false for other kinds.
    pub quota_limited: bool,
    /// When the 429 window ends, while one is open.
    pub quota_until: Option<DateTime<Utc>>,
    /// Seconds left of the 429 window, while one is open.
    pub quota_wait_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceSnapshot {
    pub name: String,
    pub kind: Kind,
    pub category: Category,
    pub listen: Option<String>,
    pub redundancy: Redundancy,
    pub failover: FailoverMode,
    pub on_failover: OnFailover,
    pub status: ServiceStatus,
    pub active_upstream: Option<String>,
    pub epoch: u64,
    /// Serving from something other than the configured primary.
    pub in_failover: bool,
    /// When the current active upstream became active (or the engine started).
    pub since: DateTime<Utc>,
    pub held_connections: u64,
    pub active_connections: u64,
    pub fenced: Vec<String>,
    /// Consecutive probe failures of the active upstream.
    pub consecutive_failures: u32,
    /// p50 of inline latency over the last minute, else the last probe's.
    pub latency_ms: Option<f64>,
    /// The service's `latency_threshold_ms`: a probe slower than this
    /// marks the upstream slow.
    pub latency_threshold_ms: f64,
    pub uptime_percent_1h: f64,
    pub uptime_percent_24h: f64,
    pub total_checks: u64,
    pub failed_checks: u64,
    pub upstreams: Vec<UpstreamSnapshot>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct FailoverMetrics {
    pub total_failovers: u64,
    pub auto_failovers: u64,
    pub manual_failovers: u64,
    pub avg_recovery_time_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineSnapshot {
    pub failover_state: FailoverState,
    pub emergency_declared: bool,
    pub services: Vec<ServiceSnapshot>,
    pub failover_metrics: FailoverMetrics,
    pub generated_at: DateTime<Utc>,
}

impl EngineSnapshot {
    pub fn service(&self, name: &str) -> Option<&ServiceSnapshot> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Resolves a `{type}` path parameter: a service name, else the one
    /// service of that kind (SPEC 4).
    pub fn resolve_service(&self, type_or_name: &str) -> Option<&ServiceSnapshot> {
        if let Some(s) = self.service(type_or_name) {
            return Some(s);
        }
        let mut of_kind = self
            .services
            .iter()
            .filter(|s| s.kind.as_str() == type_or_name);
        match (of_kind.next(), of_kind.next()) {
            (Some(s), None) => Some(s),
            _ => None,
        }
    }

    /// Finds an upstream (a pool) by its globally unique name.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamSnapshot> {
        self.services
            .iter()
            .flat_map(|s| s.upstreams.iter())
            .find(|u| u.name == name)
    }
}
