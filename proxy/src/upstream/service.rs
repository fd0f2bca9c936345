//! [`ServiceRt`], the run-time state of one service, and the reads derived
//! from it: the decision [`View`], the service status, whether an upstream
//! may take a connection. Everything that *changes* it lives in its own
//! module and goes through here for events and notifications:
//! probe accounting (upstream/probe.rs), the automatic decision
//! (upstream/evaluate.rs), switches (upstream/switch.rs and
//! upstream/switchover/), warm pools (upstream/pool.rs).
//!
//! The hot path reads [`Route`] through an `ArcSwap` (no lock). Mutable
//! health lives behind short `std::sync::Mutex`es never held across an
//! await. Switches are serialised by an async mutex per service; automatic
//! evaluation only `try_lock`s it, because whoever holds it re-evaluates
//! after the next probe anyway.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::Utc;
use tokio::sync::watch;

use crate::config::{Kind, OnOutage, ServiceConfig};
use crate::events::{Event, EventBus, EventKind};
use crate::metrics::ProxyMetrics;
use crate::snapshot::{ServiceStatus, UpstreamHealth};
use crate::upstream::failover::{self, Thresholds, UpView, View};
use crate::upstream::state::{
    lock, Coordination, FailoverCounters, Route, ServiceState, UpstreamRt,
};

/// One generation of a running service (a reload builds the next one).
pub struct ServiceRt {
    pub cfg: ServiceConfig,
    /// Shared (`Arc`) so that a config reload can carry an unchanged
    /// upstream, with its health and counters, into the new service.
    pub upstreams: Vec<Arc<UpstreamRt>>,
    /// Stored only by the switch code (upstream/switch.rs,
    /// upstream/switchover/), a reload's carry-over of a new generation
    /// and the mirror of a retired one (engine/reload/).
    pub route: ArcSwap<Route>,
    /// Bumped on every route change: relays re-check their binding.
    pub route_tx: watch::Sender<u64>,
    /// Bumped on every probe result and route change: held clients re-check.
    pub changed_tx: watch::Sender<u64>,
    pub held: AtomicU64,
    pub active_conns: AtomicU64,
    pub switch_lock: tokio::sync::Mutex<()>,
    pub state: Mutex<ServiceState>,
    pub events: EventBus,
    pub metrics: ProxyMetrics,
    pub counters: Arc<FailoverCounters>,
    pub drain_timeout: Duration,
    /// Set when the engine's `[cluster]` decides for this service
    /// (engine/spawn.rs); unset, this engine decides alone.
    pub coordination: std::sync::OnceLock<Arc<Coordination>>,
}

impl ServiceRt {
    /// A service on its own: an event bus, metrics registry and failover
    /// counters of its own, a 1 s drain (unit tests of the data plane).
    #[cfg(test)]
    pub(crate) fn detached(cfg: ServiceConfig) -> Arc<ServiceRt> {
        Arc::new(ServiceRt::new(
            cfg,
            tokio::sync::broadcast::channel(64).0,
            ProxyMetrics::new(&prometheus::Registry::new()),
            Arc::new(FailoverCounters::default()),
            Duration::from_secs(1),
        ))
    }

    pub fn new(
        cfg: ServiceConfig,
        events: impl Into<EventBus>,
        metrics: ProxyMetrics,
        counters: Arc<FailoverCounters>,
        drain_timeout: Duration,
    ) -> ServiceRt {
        let upstreams = cfg
            .upstreams
            .iter()
            .map(|u| {
                let m = metrics.for_upstream(&cfg.name, &u.name);
                Arc::new(UpstreamRt::new(u.clone(), m, cfg.max_connecting))
            })
            .collect::<Vec<_>>();
        let names: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        metrics.touch_service(&cfg.name, &names);
        if cfg.reattach_idle {
            for outcome in ["reattached", "ineligible", "failed"] {
                metrics.reattached.with_label_values(&[&cfg.name, outcome]);
            }
        }
        if cfg.kind.is_http_proxied() {
            let queues = cfg.http.on_outage == OnOutage::Queue
                || cfg
                    .http
                    .routes
                    .iter()
                    .any(|r| r.on_outage == OnOutage::Queue);
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
            state: Mutex::new(ServiceState::default()),
            events: events.into(),
            metrics,
            counters,
            drain_timeout,
            coordination: std::sync::OnceLock::new(),
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn thresholds(&self) -> Thresholds {
        Thresholds {
            failure: self.cfg.health.failure_threshold,
            recovery: self.cfg.health.recovery_threshold,
        }
    }

    /// A redis service with `fallback = "memory"`: with nothing usable its
    /// clients are answered from memory (proxy/src/fallback), so it is
    /// degraded rather than down.
    pub fn has_memory_fallback(&self) -> bool {
        self.cfg.kind == Kind::Redis && self.cfg.fallback_memory
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

    /// Stores a new route and wakes relays and held clients.
    pub(crate) fn set_route(&self, route: Route) {
        self.route.store(Arc::new(route));
        self.notify_route();
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

    pub(crate) fn upstream_name(&self, idx: usize) -> Option<&str> {
        self.upstreams.get(idx).map(|u| u.cfg.name.as_str())
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
            ServiceStatus::Down if self.has_memory_fallback() => ServiceStatus::Degraded,
            status => status,
        }
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

    /// A status reported from outside for a service without upstreams
    /// (`Command::ReportStatus`, a heartbeat).
    pub(crate) fn report(&self, status: ServiceStatus) {
        {
            let mut st = lock(&self.state);
            st.reported = Some(status);
            st.uptime.record(Utc::now(), status != ServiceStatus::Down);
        }
        self.refresh_status();
    }
}
