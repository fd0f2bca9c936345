//! The engine handle: owns every service's runtime state, runs the probe
//! loops and listeners, and is the one door (`apply`) through which the
//! control plane changes anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::Utc;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::config::{EngineConfig, Redundancy};
use crate::error::ProxyError;
use crate::events::{self, Event, EventKind, Trigger};
use crate::health;
use crate::health::ObservedRole;
use crate::metrics::ProxyMetrics;
use crate::reload::{self, Slot};
use crate::snapshot::{
    EngineSnapshot, FailoverMetrics, FailoverState, ServiceSnapshot, ServiceStatus, UpstreamHealth,
    UpstreamSnapshot,
};
use crate::upstream::failover;
use crate::upstream::latency::percentiles_of;
use crate::upstream::resync;
use crate::upstream::runtime::{lock, FailoverCounters, ServiceRt, SwitchKind};
use crate::upstream::switchover::{self, SwitchReport};

/// The closed set of mutations an operator (or a config reload) can cause.
#[derive(Debug, Clone)]
pub enum Command {
    /// Switch `service` to its best usable other upstream.
    Trigger {
        service: String,
        actor: String,
        reason: String,
    },
    /// Switch `service` back to its configured primary.
    Recover {
        service: String,
        actor: String,
        reason: String,
    },
    /// Zero-loss planned switchover away from the active upstream `pool`
    /// to `to` (an upstream name) or the best usable other upstream.
    Switchover {
        pool: String,
        to: Option<String>,
        actor: String,
        reason: String,
    },
    /// Zero-loss planned switch back to upstream `pool`.
    Failback {
        pool: String,
        actor: String,
        reason: String,
    },
    /// Resynchronise `service`'s diverged old primaries from the active one.
    Resync {
        service: String,
        actor: String,
        reason: String,
    },
    /// Declare (`enabled`) or clear an operator emergency.
    Emergency {
        enabled: bool,
        actor: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub enum CommandOutcome {
    Service(Box<ServiceSnapshot>),
    Engine(Box<EngineSnapshot>),
    /// A planned switchover: the service after it, and how long new
    /// clients were held (`pause_ms`; 0 for a no-op).
    Switched {
        service: Box<ServiceSnapshot>,
        pause_ms: u64,
        /// The replication position the target reached (offset or LSN).
        position: Option<String>,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotResynced(String),
    #[error("the switch did not complete within {0:?}")]
    Timeout(Duration),
}

/// Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The running services, read lock-free; replaced whole by a reload.
    pub services: ArcSwap<Vec<Arc<ServiceRt>>>,
    /// Each service's tasks' stop switch and listener (proxy/src/reload.rs).
    pub slots: Mutex<Vec<Slot>>,
    /// The config the running services were built from (what a reload diffs).
    pub config: Mutex<EngineConfig>,
    pub metrics: ProxyMetrics,
    /// Serialises reloads.
    pub reload_lock: tokio::sync::Mutex<()>,
    pub events: events::EventBus,
    pub counters: Arc<FailoverCounters>,
    pub emergency: AtomicBool,
    pub state: Mutex<FailoverState>,
    /// true: stop accepting; held clients give up.
    pub shutdown_tx: watch::Sender<bool>,
    /// true: close every remaining connection now.
    pub force_close_tx: watch::Sender<bool>,
    pub open_connections: Arc<AtomicU64>,
    pub listen_addrs: Mutex<Vec<(String, SocketAddr)>>,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The HTTP gateway's durable queue (`data_dir/http-queue`).
    pub queue: Option<crate::gateway::queue::QueueStore>,
}

impl Engine {
    /// Binds every listener (failing with [`ProxyError::Bind`] naming the
    /// service) and starts probes and accept loops on the current runtime.
    pub async fn start(
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Result<Engine, ProxyError> {
        Ok(Engine::start_subscribed(config, registry).await?.0)
    }

    /// Like [`Engine::start`], with a subscription taken before any probe
    /// runs, so a subscriber misses no event.
    pub async fn start_subscribed(
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Result<(Engine, broadcast::Receiver<Event>), ProxyError> {
        Engine::start_on(events::bus(), config, registry).await
    }

    /// Like [`Engine::start_subscribed`], plus the audit recorder's own
    /// queue of auditable events (proxy/src/events.rs), which fills from
    /// before the first probe and never drops one.
    pub async fn start_audited(
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Result<(Engine, broadcast::Receiver<Event>, events::AuditQueue), ProxyError> {
        let (bus, queue) = events::audited_bus();
        let (engine, rx) = Engine::start_on(bus, config, registry).await?;
        Ok((engine, rx, queue))
    }

    async fn start_on(
        events: events::EventBus,
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Result<(Engine, broadcast::Receiver<Event>), ProxyError> {
        let metrics = ProxyMetrics::new(registry);
        let counters = Arc::new(FailoverCounters::default());
        let mut listeners = Vec::new();
        let mut listen_addrs = Vec::new();
        for svc in &config.services {
            if let Some((l, local)) = reload::bind(svc).await? {
                listen_addrs.push((svc.name.clone(), local));
                listeners.push((svc.name.clone(), l));
            }
        }
        let queue = match &config.data_dir {
            Some(dir) => Some(
                crate::gateway::queue::QueueStore::open(&dir.join("http-queue"))
                    .map_err(|e| ProxyError::Internal(format!("HTTP queue: {e}")))?,
            ),
            None => None,
        };
        let services: Vec<Arc<ServiceRt>> = config
            .services
            .iter()
            .map(|s| {
                Arc::new(ServiceRt::new(
                    s.clone(),
                    events.clone(),
                    metrics.clone(),
                    counters.clone(),
                    config.drain_timeout,
                ))
            })
            .collect();
        let inner = Arc::new(Inner {
            services: ArcSwap::from_pointee(services.clone()),
            slots: Mutex::new(Vec::new()),
            config: Mutex::new(config),
            metrics,
            reload_lock: tokio::sync::Mutex::new(()),
            events,
            counters,
            emergency: AtomicBool::new(false),
            state: Mutex::new(FailoverState::Normal),
            shutdown_tx: watch::channel(false).0,
            force_close_tx: watch::channel(false).0,
            open_connections: Arc::new(AtomicU64::new(0)),
            listen_addrs: Mutex::new(listen_addrs),
            tasks: Mutex::new(Vec::new()),
            queue,
        });
        let engine = Engine { inner };
        let first_subscriber = engine.inner.events.subscribe();
        let mut slots = Vec::new();
        for svc in services {
            let l = listeners
                .iter()
                .position(|(n, _)| *n == svc.cfg.name)
                .map(|i| listeners.swap_remove(i).1);
            slots.push(reload::spawn_service(&engine, svc, l));
        }
        *lock(&engine.inner.slots) = slots;
        let watcher = tokio::spawn(state_watch(engine.clone()));
        lock(&engine.inner.tasks).push(watcher);
        Ok((engine, first_subscriber))
    }

    /// The HTTP gateway's queue, when the engine has a data dir.
    pub fn queue(&self) -> Option<&crate::gateway::queue::QueueStore> {
        self.inner.queue.as_ref()
    }

    /// `continuity_connections_refused_total{listener}`, for listeners
    /// outside the data plane (the control plane's is `control`).
    pub fn connections_refused(&self, listener: &str) -> prometheus::IntCounter {
        self.inner
            .metrics
            .connections_refused
            .with_label_values(&[listener])
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Addresses the listeners actually bound (port 0 resolved), by service.
    pub fn listen_addrs(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.inner.listen_addrs).clone()
    }

    fn find(&self, name: &str) -> Result<Arc<ServiceRt>, CommandError> {
        self.inner
            .services
            .load()
            .iter()
            .find(|s| s.cfg.name == name)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name}")))
    }

    /// The service owning upstream `pool`, and its index.
    fn find_pool(&self, pool: &str) -> Result<(Arc<ServiceRt>, usize), CommandError> {
        self.inner
            .services
            .load()
            .iter()
            .find_map(|s| {
                s.upstreams
                    .iter()
                    .position(|u| u.cfg.name == pool)
                    .map(|i| (s.clone(), i))
            })
            .ok_or_else(|| CommandError::NotFound(format!("no pool named {pool}")))
    }

    /// Applies one command. The work runs in its own task, so a caller that
    /// stops waiting (a timed-out HTTP request) never leaves a switch half done.
    pub async fn apply(&self, cmd: Command) -> Result<CommandOutcome, CommandError> {
        let engine = self.clone();
        tokio::spawn(async move { engine.apply_now(cmd).await })
            .await
            .unwrap_or_else(|e| Err(CommandError::Conflict(format!("command failed: {e}"))))
    }

    async fn apply_now(&self, cmd: Command) -> Result<CommandOutcome, CommandError> {
        match cmd {
            Command::Trigger {
                service,
                actor,
                reason,
            } => {
                let svc = self.find(&service)?.clone();
                trigger(&svc, actor, reason).await?;
                self.refresh_state();
                Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
            }
            Command::Recover {
                service,
                actor,
                reason,
            } => {
                let svc = self.find(&service)?.clone();
                recover(&svc, actor, reason).await?;
                self.refresh_state();
                Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
            }
            Command::Switchover {
                pool,
                to,
                actor,
                reason,
            } => {
                let (svc, from) = self.find_pool(&pool)?;
                let svc = svc.clone();
                let to = match to {
                    Some(name) => Some(
                        svc.upstreams
                            .iter()
                            .position(|u| u.cfg.name == name)
                            .ok_or_else(|| {
                                CommandError::NotFound(format!(
                                    "no pool named {name} in {}",
                                    svc.cfg.name
                                ))
                            })?,
                    ),
                    None => None,
                };
                let report = switchover::failover_pool(&svc, from, to, actor, reason).await;
                self.switched(&svc, report)
            }
            Command::Failback {
                pool,
                actor,
                reason,
            } => {
                let (svc, to) = self.find_pool(&pool)?;
                let svc = svc.clone();
                let report = switchover::failback_pool(&svc, to, actor, reason).await;
                self.switched(&svc, report)
            }
            Command::Resync { service, .. } => {
                let svc = self.find(&service)?.clone();
                resync::resync_service(&svc).await?;
                self.refresh_state();
                Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
            }
            Command::Emergency {
                enabled,
                actor,
                reason,
            } => {
                self.inner.emergency.store(enabled, Ordering::SeqCst);
                let _ = self.inner.events.send(Event::new(
                    None,
                    EventKind::EmergencyDeclared {
                        enabled,
                        actor,
                        reason,
                    },
                ));
                self.refresh_state();
                Ok(CommandOutcome::Engine(Box::new(self.snapshot())))
            }
        }
    }

    fn switched(
        &self,
        svc: &ServiceRt,
        report: Result<SwitchReport, CommandError>,
    ) -> Result<CommandOutcome, CommandError> {
        self.refresh_state();
        let report = report?;
        Ok(CommandOutcome::Switched {
            service: Box::new(service_snapshot(svc)),
            pause_ms: report.pause.as_millis() as u64,
            position: report.position,
        })
    }

    /// Reports the status of a service that has no upstreams to probe (a
    /// `heartbeat` service: healthy while it beats, down once stalled).
    /// Services with upstreams are judged by their probes only.
    pub fn report_status(&self, service: &str, status: ServiceStatus) -> Result<(), CommandError> {
        let svc = self.find(service)?;
        if !svc.upstreams.is_empty() {
            return Err(CommandError::Conflict(format!(
                "{service} is judged by its probes"
            )));
        }
        svc.report(status);
        self.refresh_state();
        Ok(())
    }

    /// Recomputes the engine state and emits a change event.
    pub(crate) fn refresh_state(&self) {
        let new = engine_state(
            &self.inner.services.load_full(),
            self.inner.emergency.load(Ordering::SeqCst),
        );
        let old = std::mem::replace(&mut *lock(&self.inner.state), new);
        if old != new {
            let _ = self.inner.events.send(Event::new(
                None,
                EventKind::FailoverStateChanged { old, new },
            ));
        }
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        let running = self.inner.services.load_full();
        let services: Vec<ServiceSnapshot> = running.iter().map(|s| service_snapshot(s)).collect();
        let c = &self.inner.counters;
        let recoveries = c.recoveries.load(Ordering::Relaxed);
        EngineSnapshot {
            failover_state: engine_state(&running, self.inner.emergency.load(Ordering::SeqCst)),
            emergency_declared: self.inner.emergency.load(Ordering::SeqCst),
            services,
            failover_metrics: FailoverMetrics {
                total_failovers: c.total.load(Ordering::Relaxed),
                auto_failovers: c.auto.load(Ordering::Relaxed),
                manual_failovers: c.manual.load(Ordering::Relaxed),
                avg_recovery_time_seconds: if recoveries == 0 {
                    0.0
                } else {
                    c.recovery_us_sum.load(Ordering::Relaxed) as f64
                        / 1_000_000.0
                        / recoveries as f64
                },
            },
            generated_at: Utc::now(),
        }
    }

    /// Stops accepting, lets open connections finish for up to `drain`, then
    /// closes the rest.
    pub async fn shutdown(&self, drain: Duration) {
        let _ = self.inner.shutdown_tx.send(true);
        for slot in lock(&self.inner.slots).iter_mut() {
            slot.stop.send_replace(true);
            slot.listener = None;
        }
        let deadline = Instant::now() + drain;
        while self.inner.open_connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.inner.open_connections.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain timeout: closing remaining connections"
            );
        }
        let _ = self.inner.force_close_tx.send(true);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            t.abort();
        }
        // Give relays a moment to observe the close.
        let until = Instant::now() + Duration::from_millis(500);
        while self.inner.open_connections.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Probes one upstream forever: the active upstream and the configured
/// primary at the full rate; other upstreams at the full rate in `hot`,
/// a quarter of it in `warm`, never in `cold`.
pub(crate) async fn probe_loop(
    engine: Engine,
    svc: Arc<ServiceRt>,
    idx: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(svc.cfg.health.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(up) = svc.upstreams.get(idx) else {
            return;
        };
        let active = svc.route.load().active == idx;
        let primary = svc.cfg.configured_primary() == idx;
        let due = active
            || primary
            || match svc.cfg.redundancy {
                Redundancy::Hot => true,
                Redundancy::Warm => n.is_multiple_of(4),
                Redundancy::Cold => false,
            };
        n = n.wrapping_add(1);
        if !due {
            continue;
        }
        let outcome = health::run_probe(&svc.cfg, &up.cfg).await;
        svc.on_probe(idx, outcome).await;
        // A diverged old primary seen as a replica: is it caught up with
        // the current active upstream yet? (`resync::verify` clears it.)
        let recheck = {
            let h = lock(&up.health);
            h.diverged && h.observed == Some(ObservedRole::Replica)
        };
        if recheck {
            resync::verify(&svc, idx).await;
        }
        engine.refresh_state();
    }
}

/// Keeps the engine state fresh when only passive signals changed it.
async fn state_watch(engine: Engine) {
    let mut rx = engine.inner.events.subscribe();
    loop {
        match rx.recv().await {
            Ok(Event {
                kind: EventKind::FailoverStateChanged { .. },
                ..
            }) => {}
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => engine.refresh_state(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn trigger(svc: &Arc<ServiceRt>, actor: String, reason: String) -> Result<(), CommandError> {
    let _guard = svc.switch_lock.lock().await;
    let active = svc.route.load().active;
    // A cold (never probed) candidate is probed once first.
    for (i, u) in svc.upstreams.iter().enumerate() {
        if i != active && lock(&u.health).counters.health == UpstreamHealth::Unknown {
            let outcome = health::run_probe(&svc.cfg, &u.cfg).await;
            record_probe_locked(svc, i, outcome);
        }
    }
    let view = svc.view();
    let Some(to) = failover::best_other(&view, active) else {
        return Err(CommandError::Conflict(format!(
            "service {} has no usable upstream other than {}",
            svc.cfg.name,
            svc.upstreams
                .get(active)
                .map(|u| u.cfg.name.as_str())
                .unwrap_or("?")
        )));
    };
    let evidence = serde_json::json!({ "requested_by": actor });
    svc.switch(
        to,
        SwitchKind::Failover {
            trigger: Trigger::Manual,
            actor,
            reason,
            evidence,
        },
    )
    .await
}

/// Back to the configured primary: a zero-loss planned switch when it is
/// a caught-up replica (`switchover::failback_pool`), 409 `not_resynced`
/// while a promotion has left it diverged.
async fn recover(svc: &Arc<ServiceRt>, actor: String, reason: String) -> Result<(), CommandError> {
    let target = svc.cfg.configured_primary();
    if svc.upstreams.get(target).is_none() {
        return Err(CommandError::NotFound("service has no upstreams".into()));
    }
    switchover::failback_pool(svc, target, actor, reason)
        .await
        .map(|_| ())
}

/// Records a probe taken while holding the switch lock (no re-evaluation).
pub(crate) fn record_probe_locked(svc: &ServiceRt, idx: usize, outcome: health::ProbeOutcome) {
    let Some(up) = svc.upstreams.get(idx) else {
        return;
    };
    let t = failover::Thresholds {
        failure: svc.cfg.health.failure_threshold,
        recovery: svc.cfg.health.recovery_threshold,
    };
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

/// SPEC 3 engine state.
fn engine_state(services: &[Arc<ServiceRt>], declared: bool) -> FailoverState {
    use crate::config::Category;
    let mut down = 0;
    let mut core_down = false;
    let mut serving_elsewhere = false;
    let mut degraded = false;
    for s in services {
        let status = s.status();
        if s.upstreams.is_empty() {
            // A stalled heartbeat (ETL pipeline) is an `etl_stall` alert of
            // tier 3 (SPEC 9), not an engine emergency: it carries no traffic.
            continue;
        }
        let active = s.route.load().active;
        if status == ServiceStatus::Down {
            down += 1;
            if s.cfg.category == Category::Core {
                core_down = true;
            } else {
                degraded = true;
            }
        }
        if status == ServiceStatus::Degraded {
            degraded = true;
        }
        let from_memory = s.fallback.as_ref().is_some_and(|f| f.engaged());
        if from_memory || (active != s.cfg.configured_primary() && status != ServiceStatus::Down) {
            serving_elsewhere = true;
        }
    }
    if declared || core_down || down >= 2 {
        FailoverState::Emergency
    } else if serving_elsewhere {
        FailoverState::Failover
    } else if degraded {
        FailoverState::Degraded
    } else {
        FailoverState::Normal
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
            let pool_state = s.pool_state(i, &route);
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
                inline_latency_ms: crate::snapshot::Percentiles {
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
