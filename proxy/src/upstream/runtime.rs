//! Runtime state of one service and its upstreams, and the only code that
//! changes it: probe results, passive evidence, and switches.
//!
//! The hot path reads [`Route`] through an `ArcSwap` (no lock). Mutable
//! health lives behind short `std::sync::Mutex`es never held across an
//! await. Switches are serialised by an async mutex per service; automatic
//! evaluation only `try_lock`s it, because whoever holds it re-evaluates
//! after the next probe anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::watch;

use super::failover::{self, Counters, Decision, Thresholds, UpView, View};
use super::latency::LatencyWindow;
use super::pool::WarmPool;
use crate::config::{Kind, OnFailover, ServiceConfig, UpstreamConfig};
use crate::engine::CommandError;
use crate::events::{Event, EventKind, Trigger};
use crate::health::{self, FailureKind, ObservedRole, ProbeOutcome};
use crate::metrics::{ProxyMetrics, UpstreamMetrics};
use crate::snapshot::{ProbeRecord, ServiceStatus, UpstreamHealth};

const HISTORY: usize = 20;
const PROBE_SAMPLES: usize = 100;

/// Where a service's traffic goes. Replaced whole on every switch.
#[derive(Debug, Clone)]
pub struct Route {
    pub active: usize,
    pub epoch: u64,
    pub fenced: Vec<bool>,
    /// A switch (e.g. a promotion) is in progress: new clients are held.
    pub switching: bool,
    /// After a recover, connections on this upstream may finish until then.
    pub drain: Option<(usize, Instant)>,
}

/// Mutable health of one upstream.
#[derive(Debug, Default)]
pub struct HealthState {
    pub counters: Counters,
    pub last: Option<ProbeRecord>,
    pub last_error: Option<String>,
    pub history: VecDeque<ProbeRecord>,
    pub probe_ms: VecDeque<f64>,
    pub observed: Option<ObservedRole>,
    pub slow: bool,
    pub total: u64,
    pub failed: u64,
    /// A promote moved the primary away from here; cleared once a probe
    /// sees this upstream as a replica again.
    pub diverged: bool,
}

pub struct UpstreamRt {
    pub cfg: UpstreamConfig,
    pub health: Mutex<HealthState>,
    pub active_conns: AtomicU64,
    pub total_conns: AtomicU64,
    pub inline: LatencyWindow,
    pub metrics: UpstreamMetrics,
    /// Pre-connected idle connections (`redundancy = "hot"`, upstream/pool.rs).
    pub pool: WarmPool,
    /// HTTP: no request before this instant (a 429's Retry-After). The
    /// gateway's `Shared::quota` holds the same cell; snapshots read it.
    pub quota: Arc<Mutex<Option<Instant>>>,
}

/// Per-minute (rounds, up rounds) for uptime over 1 h and 24 h.
#[derive(Debug, Default)]
pub struct Uptime {
    minutes: VecDeque<(i64, u64, u64)>,
}

impl Uptime {
    pub fn record(&mut self, at: DateTime<Utc>, up: bool) {
        let minute = at.timestamp() / 60;
        match self.minutes.back_mut() {
            Some((m, rounds, ups)) if *m == minute => {
                *rounds += 1;
                *ups += u64::from(up);
            }
            _ => self.minutes.push_back((minute, 1, u64::from(up))),
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _, _)| *m < minute - 24 * 60)
        {
            self.minutes.pop_front();
        }
    }

    /// Percentage of rounds that were up over the last `minutes`; 100 with no data.
    pub fn percent(&self, now: DateTime<Utc>, minutes: i64) -> f64 {
        let from = now.timestamp() / 60 - minutes;
        let (rounds, ups) = self
            .minutes
            .iter()
            .filter(|(m, _, _)| *m > from)
            .fold((0u64, 0u64), |(r, u), (_, rr, uu)| (r + rr, u + uu));
        if rounds == 0 {
            100.0
        } else {
            ups as f64 * 100.0 / rounds as f64
        }
    }
}

/// Service-level mutable state.
#[derive(Debug)]
pub struct ServiceState {
    pub last_switch: Option<Instant>,
    pub since: DateTime<Utc>,
    /// When the active upstream was first seen down (for recovery time).
    pub down_since: Option<Instant>,
    /// When the service left its configured primary.
    pub failed_over_at: Option<Instant>,
    pub status: ServiceStatus,
    pub uptime: Uptime,
    /// For services without upstreams (heartbeats): the status reported
    /// from outside (a heartbeat is healthy, a stall is down).
    pub reported: Option<ServiceStatus>,
}

/// Engine-wide counters the failover status reports.
#[derive(Debug, Default)]
pub struct FailoverCounters {
    pub total: AtomicU64,
    pub auto: AtomicU64,
    pub manual: AtomicU64,
    pub recovery_us_sum: AtomicU64,
    pub recoveries: AtomicU64,
}

pub struct ServiceRt {
    pub cfg: ServiceConfig,
    /// Shared (`Arc`) so that a config reload can carry an unchanged
    /// upstream, with its health and counters, into the new service.
    pub upstreams: Vec<Arc<UpstreamRt>>,
    pub route: ArcSwap<Route>,
    /// Bumped on every route change: relays re-check their binding.
    pub route_tx: watch::Sender<u64>,
    /// Bumped on every probe result and route change: held clients re-check.
    pub changed_tx: watch::Sender<u64>,
    pub held: AtomicU64,
    pub active_conns: AtomicU64,
    pub switch_lock: tokio::sync::Mutex<()>,
    pub state: Mutex<ServiceState>,
    pub events: crate::events::EventBus,
    pub metrics: ProxyMetrics,
    pub counters: Arc<FailoverCounters>,
    pub drain_timeout: Duration,
    /// redis `fallback = "memory"` (proxy/src/fallback).
    pub fallback: Option<Arc<crate::fallback::Fallback>>,
}

/// What kind of switch, for events and bookkeeping.
#[derive(Debug, Clone)]
pub enum SwitchKind {
    Failover {
        trigger: Trigger,
        actor: String,
        reason: String,
        evidence: serde_json::Value,
    },
    Recover {
        trigger: Trigger,
        actor: String,
        reason: String,
    },
}

/// Locks a std mutex, recovering the data if a panic poisoned it: every
/// critical section here leaves the state consistent at each statement.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServiceRt {
    pub fn new(
        cfg: ServiceConfig,
        events: impl Into<crate::events::EventBus>,
        metrics: ProxyMetrics,
        counters: Arc<FailoverCounters>,
        drain_timeout: Duration,
    ) -> ServiceRt {
        let upstreams = cfg
            .upstreams
            .iter()
            .map(|u| {
                Arc::new(UpstreamRt {
                    metrics: metrics.for_upstream(&cfg.name, &u.name),
                    cfg: u.clone(),
                    health: Mutex::new(HealthState::default()),
                    active_conns: AtomicU64::new(0),
                    total_conns: AtomicU64::new(0),
                    inline: LatencyWindow::new(),
                    pool: WarmPool::new(),
                    quota: Arc::new(Mutex::new(None)),
                })
            })
            .collect::<Vec<_>>();
        let names: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        metrics.touch_service(&cfg.name, &names);
        if cfg.kind.is_http_proxied() {
            let queues = cfg.http.on_outage == crate::config::OnOutage::Queue
                || cfg
                    .http
                    .routes
                    .iter()
                    .any(|r| r.on_outage == crate::config::OnOutage::Queue);
            metrics.touch_http_service(&cfg.name, &names, queues);
        }
        let route = Route {
            active: cfg.configured_primary(),
            epoch: 0,
            fenced: vec![false; upstreams.len()],
            switching: false,
            drain: None,
        };
        ServiceRt {
            upstreams,
            route: ArcSwap::from_pointee(route),
            route_tx: watch::channel(0).0,
            changed_tx: watch::channel(0).0,
            held: AtomicU64::new(0),
            active_conns: AtomicU64::new(0),
            switch_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(ServiceState {
                last_switch: None,
                since: Utc::now(),
                down_since: None,
                failed_over_at: None,
                status: ServiceStatus::Unknown,
                uptime: Uptime::default(),
                reported: None,
            }),
            events: events.into(),
            metrics,
            counters,
            drain_timeout,
            fallback: (cfg.kind == Kind::Redis && cfg.fallback_memory)
                .then(|| Arc::new(crate::fallback::Fallback::new(cfg.fallback_max_bytes))),
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            failure: self.cfg.health.failure_threshold,
            recovery: self.cfg.health.recovery_threshold,
        }
    }

    pub fn emit(&self, kind: EventKind) {
        // No subscriber is not an error: the data plane never waits for one.
        let _ = self.events.send(Event::new(Some(&self.cfg.name), kind));
    }

    pub(crate) fn notify_changed(&self) {
        self.changed_tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn notify_route(&self) {
        self.route_tx.send_modify(|v| *v = v.wrapping_add(1));
        self.notify_changed();
    }

    /// Whether `idx` may take a new connection now.
    pub fn usable(&self, route: &Route, idx: usize) -> bool {
        if route.switching || route.fenced.get(idx).copied().unwrap_or(true) {
            return false;
        }
        self.upstreams
            .get(idx)
            .is_some_and(|u| lock(&u.health).counters.health != UpstreamHealth::Down)
    }

    /// Records one probe (or a connect timeout, which counts as one), then
    /// re-evaluates the service.
    pub async fn on_probe(&self, idx: usize, outcome: ProbeOutcome) {
        let Some(up) = self.upstreams.get(idx) else {
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
        self.metrics
            .health_checks
            .with_label_values(&[self.name(), &up.cfg.name, result])
            .inc();
        self.metrics
            .probe_latency
            .with_label_values(&[self.name(), &up.cfg.name])
            .observe(outcome.latency.as_secs_f64());
        let transition = {
            let mut h = lock(&up.health);
            h.total += 1;
            if !outcome.ok {
                h.failed += 1;
                h.last_error = outcome.error.clone();
            } else {
                h.observed = outcome.role;
                h.slow = outcome.latency > self.cfg.health.latency_threshold
                    || outcome.degraded.is_some();
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
            failover::on_probe(&mut h.counters, outcome.ok, self.thresholds())
        };
        if let Some((old, new)) = transition {
            self.upstream_changed(idx, old, new, outcome.error.clone(), false);
        }
        if idx == self.route.load().active {
            let status = self.status();
            lock(&self.state)
                .uptime
                .record(Utc::now(), status != ServiceStatus::Down);
        }
        self.notify_changed();
        self.evaluate().await;
    }

    /// Passive evidence from real traffic: a refused or reset connect.
    pub async fn on_refused(&self, idx: usize, error: &std::io::Error) {
        let Some(up) = self.upstreams.get(idx) else {
            return;
        };
        self.metrics
            .passive_failures
            .with_label_values(&[self.name(), &up.cfg.name, "refused"])
            .inc();
        let message = format!("connect: {error}");
        let transition = {
            let mut h = lock(&up.health);
            h.last_error = Some(message.clone());
            failover::on_refused(&mut h.counters, self.thresholds())
        };
        if let Some((old, new)) = transition {
            self.upstream_changed(idx, old, new, Some(message), true);
        }
        self.notify_changed();
        self.evaluate().await;
    }

    /// Other evidence from real traffic (the HTTP gateway: a 502/503/504
    /// answer, a read timeout, a reset mid-request): one probe failure,
    /// counted in `continuity_passive_failures_total` as `timeout` or
    /// `http_error`.
    pub async fn on_passive_failure(
        &self,
        idx: usize,
        kind: FailureKind,
        waited: Duration,
        message: String,
    ) {
        if let Some(up) = self.upstreams.get(idx) {
            let reason = if kind == FailureKind::Timeout {
                "timeout"
            } else {
                "http_error"
            };
            self.metrics
                .passive_failures
                .with_label_values(&[self.name(), &up.cfg.name, reason])
                .inc();
        }
        self.on_probe(idx, ProbeOutcome::failed(waited, kind, message))
            .await;
    }

    /// A client connect that ran past `connect_timeout_ms`: one probe failure.
    pub async fn on_connect_timeout(&self, idx: usize, waited: Duration) {
        if let Some(up) = self.upstreams.get(idx) {
            self.metrics
                .passive_failures
                .with_label_values(&[self.name(), &up.cfg.name, "timeout"])
                .inc();
        }
        let outcome = ProbeOutcome::failed(
            waited,
            FailureKind::Timeout,
            format!(
                "client connect timed out after {} ms",
                self.cfg.health.connect_timeout.as_millis()
            ),
        );
        self.on_probe(idx, outcome).await;
    }

    fn upstream_changed(
        &self,
        idx: usize,
        old: UpstreamHealth,
        new: UpstreamHealth,
        error: Option<String>,
        passive: bool,
    ) {
        let Some(up) = self.upstreams.get(idx) else {
            return;
        };
        if idx == self.route.load().active && new == UpstreamHealth::Down {
            let mut st = lock(&self.state);
            st.down_since.get_or_insert_with(Instant::now);
        }
        tracing::info!(service = self.name(), upstream = %up.cfg.name, ?old, ?new, passive, error = ?error, "upstream health changed");
        self.emit(EventKind::UpstreamStateChanged {
            upstream: up.cfg.name.clone(),
            old,
            new,
            error,
            passive,
        });
    }

    /// The decision inputs, read from the current state.
    pub fn view(&self) -> View {
        let route = self.route.load();
        let in_hold_down = lock(&self.state)
            .last_switch
            .is_some_and(|t| t.elapsed() < self.cfg.health.hold_down);
        View {
            active: route.active,
            configured_primary: self.cfg.configured_primary(),
            failover: self.cfg.failover,
            failback: self.cfg.failback,
            on_failover: self.cfg.on_failover,
            redundancy: self.cfg.redundancy,
            in_hold_down,
            upstreams: self
                .upstreams
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let h = lock(&u.health);
                    UpView {
                        health: h.counters.health,
                        fenced: route.fenced.get(i).copied().unwrap_or(false),
                        role: u.cfg.role,
                        observed: h.observed,
                        consecutive_successes: h.counters.consecutive_successes,
                    }
                })
                .collect(),
        }
    }

    pub fn status(&self) -> ServiceStatus {
        if self.upstreams.is_empty() {
            return lock(&self.state).reported.unwrap_or(ServiceStatus::Unknown);
        }
        let view = self.view();
        let slow = self
            .upstreams
            .get(view.active)
            .is_some_and(|u| lock(&u.health).slow);
        match failover::service_status(&view, slow) {
            // Nothing usable, but clients are answered from memory (SPEC 3).
            ServiceStatus::Down if self.fallback.is_some() => ServiceStatus::Degraded,
            status => status,
        }
    }

    /// Re-evaluates after a signal: switches if the state machine says so.
    pub async fn evaluate(&self) {
        self.refresh_status();
        let Ok(_guard) = self.switch_lock.try_lock() else {
            return;
        };
        let view = self.view();
        let decision = failover::decide(&view, self.thresholds());
        let evidence = || self.evidence(&view);
        let result = match decision {
            Decision::Stay => return,
            Decision::Blocked(why) => {
                tracing::debug!(service = self.name(), why, "switch wanted but blocked");
                return;
            }
            Decision::Failover { to } => {
                let reason = format!(
                    "upstream {} is down",
                    self.upstream_name(view.active).unwrap_or("?")
                );
                self.switch(
                    to,
                    SwitchKind::Failover {
                        trigger: Trigger::Auto,
                        actor: "system".into(),
                        reason,
                        evidence: evidence(),
                    },
                )
                .await
            }
            Decision::FollowRole { to } => {
                let reason = format!(
                    "upstream {} was promoted outside continuity",
                    self.upstream_name(to).unwrap_or("?")
                );
                self.switch(
                    to,
                    SwitchKind::Failover {
                        trigger: Trigger::Auto,
                        actor: "system".into(),
                        reason,
                        evidence: evidence(),
                    },
                )
                .await
            }
            Decision::Failback { to } => {
                self.switch(
                    to,
                    SwitchKind::Recover {
                        trigger: Trigger::Auto,
                        actor: "system".into(),
                        reason: "failback = auto: configured primary healthy again".into(),
                    },
                )
                .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(service = self.name(), error = %e, "automatic switch failed");
        }
        self.refresh_status();
    }

    pub(crate) fn upstream_name(&self, idx: usize) -> Option<&str> {
        self.upstreams.get(idx).map(|u| u.cfg.name.as_str())
    }

    /// Probe results, errors and thresholds behind an automatic decision.
    fn evidence(&self, view: &View) -> serde_json::Value {
        let upstreams: Vec<_> = self
            .upstreams
            .iter()
            .zip(view.upstreams.iter())
            .map(|(u, v)| {
                let h = lock(&u.health);
                json!({
                    "upstream": u.cfg.name,
                    "health": v.health,
                    "fenced": v.fenced,
                    "observed_role": h.observed,
                    "consecutive_failures": h.counters.consecutive_failures,
                    "consecutive_successes": h.counters.consecutive_successes,
                    "last_error": h.last_error,
                    "recent_probes": h.history.iter().rev().take(5).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "upstreams": upstreams,
            "thresholds": {
                "failure_threshold": self.cfg.health.failure_threshold,
                "recovery_threshold": self.cfg.health.recovery_threshold,
                "timeout_ms": self.cfg.health.timeout.as_millis() as u64,
                "connect_timeout_ms": self.cfg.health.connect_timeout.as_millis() as u64,
                "hold_down_seconds": self.cfg.health.hold_down.as_secs_f64(),
            },
        })
    }

    /// A status reported from outside for a service without upstreams.
    pub fn report(&self, status: ServiceStatus) {
        lock(&self.state).reported = Some(status);
        let now = Utc::now();
        lock(&self.state)
            .uptime
            .record(now, status != ServiceStatus::Down);
        self.refresh_status();
    }

    /// Recomputes the service status and emits a change event.
    pub fn refresh_status(&self) {
        let new = self.status();
        let old = {
            let mut st = lock(&self.state);
            std::mem::replace(&mut st.status, new)
        };
        if old != new {
            self.emit(EventKind::ServiceStatusChanged { old, new });
        }
    }

    /// Moves traffic to upstream `to`. Caller holds `switch_lock`.
    pub async fn switch(&self, to: usize, kind: SwitchKind) -> Result<(), CommandError> {
        let old = self.route.load_full();
        if self.upstream_name(to).is_none() {
            return Err(CommandError::NotFound(format!("no upstream #{to}")));
        }
        if old.active == to && !old.fenced.get(to).copied().unwrap_or(false) {
            return Ok(());
        }
        let started = Instant::now();
        // Hold new clients while we promote.
        self.route.store(Arc::new(Route {
            switching: true,
            ..(*old).clone()
        }));
        self.notify_changed();
        let promoted = match self.promote_if_needed(to).await {
            Ok(p) => p,
            Err(message) => {
                self.route.store(old.clone());
                self.notify_route();
                self.emit(EventKind::FailoverBlocked {
                    reason: message.clone(),
                });
                return Err(CommandError::Conflict(message));
            }
        };
        let mut fenced = old.fenced.clone();
        let is_failover = matches!(kind, SwitchKind::Failover { .. });
        if let Some(f) = fenced.get_mut(to) {
            *f = false;
        }
        if is_failover {
            if let Some(f) = fenced.get_mut(old.active) {
                *f = true;
            }
            if promoted {
                if let Some(u) = self.upstreams.get(old.active) {
                    lock(&u.health).diverged = true;
                }
            }
        }
        let drain = (!is_failover).then(|| (old.active, Instant::now() + self.drain_timeout));
        let new_epoch = old.epoch + 1;
        let closed = self
            .upstreams
            .get(old.active)
            .map(|u| u.active_conns.load(Ordering::Relaxed))
            .unwrap_or(0);
        self.route.store(Arc::new(Route {
            active: to,
            epoch: new_epoch,
            fenced,
            switching: false,
            drain,
        }));
        self.notify_route();
        if !is_failover && self.cfg.on_failover == OnFailover::Promote {
            self.demote_after_recover(old.active, to).await;
        }
        self.finish_switch(&old, to, new_epoch, kind, promoted, closed, started);
        Ok(())
    }

    /// Bookkeeping and the event after a switch whose new route (epoch
    /// `new_epoch`, active `to`) is stored; `old` is the route before it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_switch(
        &self,
        old: &Route,
        to: usize,
        new_epoch: u64,
        kind: SwitchKind,
        promoted: bool,
        closed: u64,
        started: Instant,
    ) {
        let is_failover = matches!(kind, SwitchKind::Failover { .. });
        let from_name = self.upstream_name(old.active).map(str::to_string);
        let to_name = self.upstream_name(to).unwrap_or("?").to_string();
        let recovery = {
            let mut st = lock(&self.state);
            st.last_switch = Some(Instant::now());
            st.since = Utc::now();
            let down = st.down_since.take();
            if is_failover {
                st.failed_over_at.get_or_insert_with(Instant::now);
            }
            let in_failover_for = if is_failover {
                None
            } else {
                st.failed_over_at.take().map(|t| t.elapsed())
            };
            (down.map(|d| d.elapsed()), in_failover_for)
        };
        let switch_ms = started.elapsed().as_millis();
        tracing::warn!(service = self.name(), from = ?from_name, to = %to_name, epoch = new_epoch, promoted, switch_ms, "switched upstream");
        match kind {
            SwitchKind::Failover {
                trigger,
                actor,
                reason,
                evidence,
            } => {
                self.count_failover(trigger);
                if let Some(d) = recovery.0 {
                    self.record_recovery(d);
                }
                self.emit(EventKind::FailoverActivated {
                    from: from_name,
                    to: to_name,
                    old_epoch: old.epoch,
                    new_epoch,
                    trigger,
                    actor,
                    reason,
                    promoted,
                    evidence,
                    closed_connections: closed,
                });
            }
            SwitchKind::Recover {
                trigger,
                actor,
                reason,
            } => {
                self.emit(EventKind::RecoveryCompleted {
                    from: from_name,
                    to: to_name,
                    old_epoch: old.epoch,
                    new_epoch,
                    trigger,
                    actor,
                    reason,
                    recovery_seconds: recovery.1.map(|d| d.as_secs_f64()).unwrap_or(0.0),
                });
            }
        }
        self.refresh_status();
    }

    fn count_failover(&self, trigger: Trigger) {
        self.metrics
            .failovers
            .with_label_values(&[self.name(), trigger.as_str()])
            .inc();
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        match trigger {
            Trigger::Auto => self.counters.auto.fetch_add(1, Ordering::Relaxed),
            Trigger::Manual => self.counters.manual.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn record_recovery(&self, d: Duration) {
        self.metrics
            .recovery_seconds
            .with_label_values(&[self.name()])
            .observe(d.as_secs_f64());
        self.counters
            .recovery_us_sum
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.counters.recoveries.fetch_add(1, Ordering::Relaxed);
    }

    /// With `on_failover = "promote"`, makes `to` writable unless a probe
    /// already sees it as primary. Returns whether a promotion was sent.
    async fn promote_if_needed(&self, to: usize) -> Result<bool, String> {
        if self.cfg.on_failover != OnFailover::Promote {
            return Ok(false);
        }
        let Some(up) = self.upstreams.get(to) else {
            return Err(format!("no upstream #{to}"));
        };
        if lock(&up.health).observed == Some(ObservedRole::Primary) {
            return Ok(false);
        }
        match health::promote(&self.cfg, &up.cfg).await {
            Ok(()) => {
                lock(&up.health).observed = Some(ObservedRole::Primary);
                Ok(true)
            }
            Err(e) => Err(format!("promotion of {} failed: {e}", up.cfg.name)),
        }
    }

    /// After a recover in promote mode the upstream we leave is demoted so
    /// there are not two writable primaries: redis replicates from the new
    /// active; postgres cannot be demoted online, so it is fenced and
    /// marked diverged until it is rebuilt as a standby.
    async fn demote_after_recover(&self, left: usize, to: usize) {
        let (Some(old), Some(new)) = (self.upstreams.get(left), self.upstreams.get(to)) else {
            return;
        };
        match self.cfg.kind {
            Kind::Redis => {
                let target = new.cfg.target();
                let Some((host, port)) = target
                    .rsplit_once(':')
                    .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
                else {
                    return;
                };
                if let Err(e) =
                    health::redis::replicate_from(&self.cfg, &old.cfg, &host, port).await
                {
                    tracing::warn!(service = self.name(), upstream = %old.cfg.name, error = %e, "could not demote the old redis primary");
                }
            }
            Kind::Postgres => {
                lock(&old.health).diverged = true;
                let mut route = (*self.route.load_full()).clone();
                if let Some(f) = route.fenced.get_mut(left) {
                    *f = true;
                }
                self.route.store(Arc::new(route));
                self.notify_route();
            }
            _ => {}
        }
    }
}
