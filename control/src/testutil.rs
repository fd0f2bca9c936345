//! Hand-built engine snapshots for unit tests of the response shapes and
//! metrics, so they do not need a running engine.

use chrono::Utc;
use continuity_proxy::config::{Category, FailoverMode, Kind, OnFailover, Redundancy, Role};
use continuity_proxy::snapshot::{
    EngineSnapshot, FailoverMetrics, FailoverState, Percentiles, PoolState, ServiceSnapshot,
    ServiceStatus, UpstreamHealth, UpstreamSnapshot,
};
use serde::Serialize;

pub fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serialisable")
}

pub fn upstream(service: &str, name: &str, role: Role, active: bool) -> UpstreamSnapshot {
    UpstreamSnapshot {
        name: name.to_string(),
        service: service.to_string(),
        address: "127.0.0.1:1".to_string(),
        role,
        observed_role: None,
        health: UpstreamHealth::Up,
        slow: false,
        active,
        fenced: false,
        diverged: false,
        warm_connections: 0,
        pool_state: PoolState::Connected,
        last_probe: None,
        last_error: None,
        probe_latency_ms: Percentiles::default(),
        inline_latency_ms: Percentiles::default(),
        consecutive_failures: 0,
        consecutive_successes: 3,
        total_checks: 10,
        failed_checks: 1,
        active_connections: 4,
        total_connections: 9,
        history: Vec::new(),
        quota_limited: false,
        quota_until: None,
        quota_wait_seconds: None,
    }
}

/// A service with a primary `<name>-primary` (active) and a secondary.
pub fn service(name: &str, kind: Kind, status: ServiceStatus) -> ServiceSnapshot {
    let primary = format!("{name}-primary");
    ServiceSnapshot {
        name: name.to_string(),
        kind,
        category: Category::Core,
        listen: None,
        redundancy: Redundancy::Hot,
        failover: FailoverMode::Auto,
        on_failover: OnFailover::Route,
        status,
        active_upstream: Some(primary.clone()),
        epoch: 0,
        in_failover: false,
        since: Utc::now(),
        held_connections: 0,
        active_connections: 4,
        fenced: Vec::new(),
        consecutive_failures: 0,
        latency_ms: Some(1.5),
        latency_threshold_ms: 1000.0,
        uptime_percent_1h: 100.0,
        uptime_percent_24h: 99.5,
        total_checks: 20,
        failed_checks: 2,
        upstreams: vec![
            upstream(name, &primary, Role::Primary, true),
            upstream(name, &format!("{name}-secondary"), Role::Secondary, false),
        ],
    }
}

pub fn engine_snapshot(services: Vec<ServiceSnapshot>) -> EngineSnapshot {
    EngineSnapshot {
        failover_state: FailoverState::Normal,
        emergency_declared: false,
        services,
        failover_metrics: FailoverMetrics::default(),
        generated_at: Utc::now(),
    }
}
