//! Projection of the running state into the snapshot types the control
//! plane answers with: one [`ServiceSnapshot`] per service, and the
//! [`EngineSnapshot`] around them.

use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::Utc;

use crate::engine::shared::Shared;
use crate::snapshot::{
    EngineSnapshot, FailoverMetrics, Percentiles, ServiceSnapshot, UpstreamSnapshot,
};
use crate::upstream::latency::percentiles_of;
use crate::upstream::pool;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;

/// The whole engine as the control plane sees it.
pub(crate) fn engine_snapshot(shared: &Shared) -> EngineSnapshot {
    let running = shared.services.load_full();
    let services: Vec<ServiceSnapshot> = running.iter().map(|s| service_snapshot(s)).collect();
    let c = &shared.counters;
    let recoveries = c.recoveries.load(Ordering::Relaxed);
    EngineSnapshot {
        failover_state: shared.current_state(),
        emergency_declared: shared.emergency.load(Ordering::SeqCst),
        services,
        failover_metrics: FailoverMetrics {
            total_failovers: c.total.load(Ordering::Relaxed),
            auto_failovers: c.auto.load(Ordering::Relaxed),
            manual_failovers: c.manual.load(Ordering::Relaxed),
            avg_recovery_time_seconds: if recoveries == 0 {
                0.0
            } else {
                c.recovery_us_sum.load(Ordering::Relaxed) as f64 / 1_000_000.0 / recoveries as f64
            },
        },
        generated_at: Utc::now(),
    }
}

pub(crate) fn service_snapshot(s: &ServiceRt) -> ServiceSnapshot {
    let route = s.route.load_full();
    let status = s.status();
    let now = Utc::now();
    let upstreams: Vec<UpstreamSnapshot> = s
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            // Takes the health lock itself: before ours.
            let pool_state = pool::pool_state(s, i, &route);
            // The gateway's 429 window (HTTP), while it is open.
            let quota_wait = (*lock(&u.quota))
                .and_then(|until| until.checked_duration_since(Instant::now()))
                .filter(|w| !w.is_zero());
            let h = lock(&u.health);
            let active = route.active == i;
            let fenced = route.fenced.get(i).copied().unwrap_or(false);
            let probe_samples: Vec<f64> = h.probe_ms.iter().copied().collect();
            UpstreamSnapshot {
                name: u.cfg.name.clone(),
                service: s.cfg.name.clone(),
                address: u.cfg.target(),
                role: u.cfg.role,
                observed_role: h.observed,
                health: h.counters.health,
                slow: h.slow,
                active,
                fenced,
                diverged: h.diverged,
                pool_state,
                warm_connections: u.pool.len() as u64,
                last_probe: h.last.clone(),
                last_error: h.last_error.clone(),
                probe_latency_ms: percentiles_of(&probe_samples),
                inline_latency_ms: Percentiles {
                    p50: u.inline.percentile_ms(0.50),
                    p95: u.inline.percentile_ms(0.95),
                    p99: u.inline.percentile_ms(0.99),
                    samples: u.inline.samples(),
                },
                consecutive_failures: h.counters.consecutive_failures,
                consecutive_successes: h.counters.consecutive_successes,
                total_checks: h.total,
                failed_checks: h.failed,
                active_connections: u.active_conns.load(Ordering::Relaxed),
                total_connections: u.total_conns.load(Ordering::Relaxed),
                history: h.history.iter().cloned().collect(),
                quota_limited: quota_wait.is_some(),
                quota_until: quota_wait
                    .and_then(|w| chrono::Duration::from_std(w).ok())
                    .and_then(|w| now.checked_add_signed(w)),
                quota_wait_seconds: quota_wait.map(|w| w.as_secs_f64()),
            }
        })
        .collect();
    let active = upstreams.get(route.active);
    let latency_ms = active.and_then(|u| {
        u.inline_latency_ms
            .p50
            .or_else(|| u.last_probe.as_ref().map(|p| p.latency_ms))
    });
    let st = lock(&s.state);
    ServiceSnapshot {
        name: s.cfg.name.clone(),
        kind: s.cfg.kind,
        category: s.cfg.category,
        listen: s.cfg.listen.map(|a| a.to_string()),
        redundancy: s.cfg.redundancy,
        failover: s.cfg.failover,
        on_failover: s.cfg.on_failover,
        status,
        active_upstream: active.map(|u| u.name.clone()),
        epoch: route.epoch,
        in_failover: route.active != s.cfg.configured_primary(),
        since: st.since,
        held_connections: s.held.load(Ordering::Relaxed),
        active_connections: s.active_conns.load(Ordering::Relaxed),
        fenced: upstreams
            .iter()
            .filter(|u| u.fenced)
            .map(|u| u.name.clone())
            .collect(),
        consecutive_failures: active.map(|u| u.consecutive_failures).unwrap_or(0),
        latency_ms,
        latency_threshold_ms: s.cfg.health.latency_threshold.as_secs_f64() * 1000.0,
        uptime_percent_1h: st.uptime.percent(now, 60),
        uptime_percent_24h: st.uptime.percent(now, 24 * 60),
        total_checks: upstreams.iter().map(|u| u.total_checks).sum(),
        failed_checks: upstreams.iter().map(|u| u.failed_checks).sum(),
        upstreams,
    }
}
