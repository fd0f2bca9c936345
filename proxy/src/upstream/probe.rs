//! Probe accounting: how one probe result, or one piece of passive
//! evidence from real traffic, changes an upstream's health counters,
//! history and metrics. Each entry point then re-evaluates the service
//! (upstream/evaluate.rs), except [`record_locked`], whose caller holds
//! the switch lock and decides itself.

use std::time::Duration;

use chrono::Utc;

use crate::events::EventKind;
use crate::health::{FailureKind, ProbeOutcome};
use crate::snapshot::{ProbeRecord, ServiceStatus, UpstreamHealth};
use crate::upstream::evaluate::evaluate;
use crate::upstream::failover;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;

/// Probe records kept per upstream for the snapshot.
const HISTORY: usize = 20;
/// Probe latencies kept per upstream for its percentiles.
const PROBE_SAMPLES: usize = 100;

/// Records one probe (or a connect timeout, which counts as one), then
/// re-evaluates the service.
pub(crate) async fn on_probe(svc: &ServiceRt, idx: usize, outcome: ProbeOutcome) {
    let Some(up) = svc.upstreams.get(idx) else {
        return;
    };
    let latency_ms = outcome.latency.as_secs_f64() * 1000.0;
    let record = ProbeRecord {
        at: Utc::now(),
        ok: outcome.ok,
        latency_ms,
        role: outcome.role,
        error: outcome.error.clone(),
    };
    let result = if outcome.ok { "success" } else { "failure" };
    svc.metrics
        .health_checks
        .with_label_values(&[svc.name(), &up.cfg.name, result])
        .inc();
    svc.metrics
        .probe_latency
        .with_label_values(&[svc.name(), &up.cfg.name])
        .observe(outcome.latency.as_secs_f64());
    let transition = {
        let mut h = lock(&up.health);
        h.total += 1;
        if !outcome.ok {
            h.failed += 1;
            h.last_error = outcome.error.clone();
        } else {
            // A busy redis (degraded, no role read) keeps the role seen last.
            if outcome.role.is_some() || outcome.degraded.is_none() {
                h.observed = outcome.role;
            }
            h.slow =
                outcome.latency > svc.cfg.health.latency_threshold || outcome.degraded.is_some();
            // `diverged` is cleared only by `resync::verify`: a replica
            // of the current active upstream that has caught up.
        }
        h.history.push_back(record.clone());
        while h.history.len() > HISTORY {
            h.history.pop_front();
        }
        h.probe_ms.push_back(latency_ms);
        while h.probe_ms.len() > PROBE_SAMPLES {
            h.probe_ms.pop_front();
        }
        h.last = Some(record);
        if outcome.failure == Some(FailureKind::Unanswered) {
            // Busy is not dead: graced from the first unanswered probe in
            // a row, counted from when it was sent.
            let now = tokio::time::Instant::now();
            let since = *h
                .silent_since
                .get_or_insert_with(|| now.checked_sub(outcome.latency).unwrap_or(now));
            failover::on_unanswered(
                &mut h.counters,
                now.saturating_duration_since(since),
                svc.cfg.health.busy_grace,
                svc.thresholds(),
            )
        } else {
            h.silent_since = None;
            failover::on_probe(&mut h.counters, outcome.ok, svc.thresholds())
        }
    };
    if let Some((old, new)) = transition {
        upstream_changed(svc, idx, old, new, outcome.error.clone(), false);
    }
    if idx == svc.route.load().active {
        let status = svc.status();
        lock(&svc.state)
            .uptime
            .record(Utc::now(), status != ServiceStatus::Down);
    }
    svc.notify_changed();
    evaluate(svc).await;
}

/// Passive evidence from real traffic: a refused or reset connect marks
/// the upstream down at once.
pub(crate) async fn on_refused(svc: &ServiceRt, idx: usize, error: &std::io::Error) {
    let Some(up) = svc.upstreams.get(idx) else {
        return;
    };
    svc.metrics
        .passive_failures
        .with_label_values(&[svc.name(), &up.cfg.name, "refused"])
        .inc();
    let message = format!("connect: {error}");
    let transition = {
        let mut h = lock(&up.health);
        h.last_error = Some(message.clone());
        failover::on_refused(&mut h.counters, svc.thresholds())
    };
    if let Some((old, new)) = transition {
        upstream_changed(svc, idx, old, new, Some(message), true);
    }
    svc.notify_changed();
    evaluate(svc).await;
}

/// Other evidence from real traffic (the HTTP gateway: a 502/503/504
/// answer, a read timeout, a reset mid-request): one probe failure,
/// counted in `continuity_passive_failures_total` as `timeout` or
/// `http_error`.
pub(crate) async fn on_passive_failure(
    svc: &ServiceRt,
    idx: usize,
    kind: FailureKind,
    waited: Duration,
    message: String,
) {
    if let Some(up) = svc.upstreams.get(idx) {
        let reason = if kind == FailureKind::Timeout {
            "timeout"
        } else {
            "http_error"
        };
        svc.metrics
            .passive_failures
            .with_label_values(&[svc.name(), &up.cfg.name, reason])
            .inc();
    }
    on_probe(svc, idx, ProbeOutcome::failed(waited, kind, message)).await;
}

/// A client connect that ran past `connect_timeout_ms`: one probe failure.
pub(crate) async fn on_connect_timeout(svc: &ServiceRt, idx: usize, waited: Duration) {
    if let Some(up) = svc.upstreams.get(idx) {
        svc.metrics
            .passive_failures
            .with_label_values(&[svc.name(), &up.cfg.name, "timeout"])
            .inc();
    }
    let outcome = ProbeOutcome::failed(
        waited,
        FailureKind::Timeout,
        format!(
            "client connect timed out after {} ms",
            svc.cfg.health.connect_timeout.as_millis()
        ),
    );
    on_probe(svc, idx, outcome).await;
}

/// Records a probe taken while holding the switch lock (an operator's
/// command checks its target first), without re-evaluating.
pub(crate) fn record_locked(svc: &ServiceRt, idx: usize, outcome: ProbeOutcome) {
    let Some(up) = svc.upstreams.get(idx) else {
        return;
    };
    let t = svc.thresholds();
    let mut h = lock(&up.health);
    h.total += 1;
    if outcome.ok {
        h.observed = outcome.role;
        // An operator's explicit check counts as enough evidence to be up.
        if h.counters.health != UpstreamHealth::Up {
            h.counters.health = UpstreamHealth::Up;
            h.counters.consecutive_failures = 0;
            h.counters.consecutive_successes = t.recovery;
        }
    } else {
        h.failed += 1;
        h.last_error = outcome.error.clone();
        failover::on_probe(&mut h.counters, false, t);
    }
}

fn upstream_changed(
    svc: &ServiceRt,
    idx: usize,
    old: UpstreamHealth,
    new: UpstreamHealth,
    error: Option<String>,
    passive: bool,
) {
    let Some(up) = svc.upstreams.get(idx) else {
        return;
    };
    if idx == svc.route.load().active && new == UpstreamHealth::Down {
        let mut st = lock(&svc.state);
        st.down_since.get_or_insert_with(tokio::time::Instant::now);
    }
    tracing::info!(service = svc.name(), upstream = %up.cfg.name, ?old, ?new, passive, error = ?error, "upstream health changed");
    svc.emit(EventKind::UpstreamStateChanged {
        upstream: up.cfg.name.clone(),
        old,
        new,
        error,
        passive,
    });
}
