//! The engine handle: owns every service's runtime state, runs the probe
//! loops and listeners, and is the one door ([`Engine::apply`]) through
//! which anything outside the data plane changes it.
//!
//! Layout: the shared state behind the handle (`shared`), one handler per
//! command (`dispatch`), the probe and state loops (`probe`), the engine
//! state derivation (`state`), the snapshot projection (`project`),
//! starting a service generation (`spawn`, `slot`), and live reload
//! (`reload/`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};

use crate::cluster::Cluster;
use crate::config::EngineConfig;
use crate::error::{CommandError, ProxyError};
use crate::events::{self, Event};
use crate::gateway::queue::QueueStore;
use crate::metrics::ProxyMetrics;
use crate::snapshot::{EngineSnapshot, FailoverState, ServiceStatus};
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, FailoverCounters, Route};
use crate::workers::Workers;

mod command;
mod dispatch;
mod probe;
mod project;
pub(crate) mod reload;
mod shared;
mod slot;
mod spawn;
mod state;

pub use command::{Command, CommandOutcome};
pub use reload::{ReloadReport, ServiceChange};

use shared::Shared;

/// How long an L4 thread still serves its connections after the engine's
/// force-close (they end within milliseconds of it).
const L4_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// L4 threads: one per core (`CONTINUITY_L4_THREADS` overrides, 1-64; any
/// other value is reported and ignored).
fn l4_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    match std::env::var("CONTINUITY_L4_THREADS") {
        Err(_) => cores,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                tracing::warn!(
                    value = %v,
                    threads = cores,
                    "CONTINUITY_L4_THREADS must be a number from 1 to 64; using one thread per core"
                );
                cores
            }
        },
    }
}

/// Starts the cluster session, and releases the start hold of the
/// coordinated services once it has read the agreed routes, or after one
/// lease TTL without etcd (then they serve their configured routes,
/// degraded, until a session applies the agreed ones).
fn join_cluster(
    shared: &Arc<Shared>,
    c: Arc<Cluster>,
    requests: tokio::sync::mpsc::UnboundedReceiver<crate::cluster::Request>,
) {
    let host: Arc<dyn crate::cluster::Host> = shared.clone();
    let session = tokio::spawn(crate::cluster::run(
        host,
        c.clone(),
        requests,
        shared.shutdown_tx.subscribe(),
    ));
    let release = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut synced = c.synced.subscribe();
            let wait = c.cfg.lease_ttl.max(Duration::from_secs(1));
            if tokio::time::timeout(wait, synced.wait_for(|s| *s))
                .await
                .is_ok()
            {
                return;
            }
            let saved = c.saved_routes();
            tracing::warn!(
                waited_ms = wait.as_millis() as u64,
                saved = saved.len(),
                "cluster: etcd not reached; serving the agreed routes saved by the last run (else the configured ones) until it is"
            );
            for svc in shared.services.load().iter() {
                if *c.synced.borrow() {
                    return;
                }
                match saved.get(svc.name()) {
                    Some(route) if route.phase == crate::cluster::doc::Phase::Serving => {
                        crate::cluster::adopt(svc, route, 0, &c.cfg.node_id).await;
                    }
                    _ => {
                        let _guard = svc.switch_lock.lock().await;
                        let r = svc.route.load_full();
                        if r.switching {
                            svc.set_route(Route {
                                switching: false,
                                ..(*r).clone()
                            });
                        }
                    }
                }
            }
        })
    };
    lock(&shared.tasks).extend([session, release]);
}

/// The data plane's handle. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
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
            if let Some((l, local)) = spawn::bind(svc).await? {
                listen_addrs.push((svc.name.clone(), local));
                listeners.push((svc.name.clone(), l));
            }
        }
        let queue = match &config.data_dir {
            Some(dir) => Some(
                QueueStore::open(&dir.join("http-queue"))
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
        let force_close_tx = watch::channel(false).0;
        let l4 = Workers::start(
            "l4",
            l4_threads(),
            &force_close_tx.subscribe(),
            L4_DRAIN_GRACE,
        )
        .map_err(ProxyError::Internal)?;
        let probes = Workers::start("probe", 1, &force_close_tx.subscribe(), Duration::ZERO)
            .map_err(ProxyError::Internal)?;
        let cluster = match config.cluster.clone() {
            Some(cfg) => {
                let saved = config
                    .data_dir
                    .as_ref()
                    .map(|d| d.join("cluster-routes.json"));
                Some(Cluster::new(cfg, registry, saved).map_err(ProxyError::Internal)?)
            }
            None => None,
        };
        if cluster.is_some() {
            // Hold new clients of coordinated services until the agreed
            // routes are read (or the first session fails: see below).
            for svc in services.iter().filter(|s| crate::cluster::coordinated(s)) {
                let r = svc.route.load_full();
                svc.route.store(Arc::new(Route {
                    switching: true,
                    ..(*r).clone()
                }));
            }
        }
        let shared = Arc::new(Shared {
            services: ArcSwap::from_pointee(services.clone()),
            slots: Mutex::new(Vec::new()),
            config: Mutex::new(config),
            metrics,
            reload_lock: tokio::sync::Mutex::new(()),
            prepared: Mutex::new(Vec::new()),
            events,
            counters,
            emergency: AtomicBool::new(false),
            state: Mutex::new(FailoverState::Normal),
            shutdown_tx: watch::channel(false).0,
            force_close_tx,
            open_connections: Arc::new(AtomicU64::new(0)),
            listen_addrs: Mutex::new(listen_addrs),
            tasks: Mutex::new(Vec::new()),
            queue,
            l4: Arc::new(l4),
            probes: Arc::new(probes),
            cluster: cluster.as_ref().map(|(c, _)| c.clone()),
        });
        let first_subscriber = shared.events.subscribe();
        let mut slots = Vec::new();
        for svc in services {
            let l = listeners
                .iter()
                .position(|(n, _)| *n == svc.cfg.name)
                .map(|i| listeners.swap_remove(i).1);
            let fallback = spawn::new_fallback(&svc.cfg);
            slots.push(spawn::spawn_service(&shared, svc, l, fallback));
        }
        *lock(&shared.slots) = slots;
        let watcher = tokio::spawn(probe::state_watch(shared.clone()));
        lock(&shared.tasks).push(watcher);
        if let Some((c, requests)) = cluster {
            join_cluster(&shared, c, requests);
        }
        Ok((Engine { shared }, first_subscriber))
    }

    /// The cluster as this engine knows it (`GET /api/ops/cluster`);
    /// `enabled: false` without `[cluster]`.
    pub fn cluster(&self) -> crate::snapshot::ClusterSnapshot {
        match &self.shared.cluster {
            Some(c) => c.snapshot(&self.shared.services.load()),
            None => crate::snapshot::ClusterSnapshot::disabled(),
        }
    }

    /// The HTTP gateway's queue, when the engine has a data dir.
    pub fn queue(&self) -> Option<&QueueStore> {
        self.shared.queue.as_ref()
    }

    /// `continuity_connections_refused_total{listener}`, for listeners
    /// outside the data plane (the control plane's is `control`).
    pub fn connections_refused(&self, listener: &str) -> prometheus::IntCounter {
        self.shared
            .metrics
            .connections_refused
            .with_label_values(&[listener])
    }

    /// Every event from now on (lagging subscribers see `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Addresses the listeners actually bound (port 0 resolved), by service.
    pub fn listen_addrs(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.shared.listen_addrs).clone()
    }

    /// Applies one command. The work runs in its own task, so a caller that
    /// stops waiting (a timed-out HTTP request) never leaves a switch half done.
    pub async fn apply(&self, cmd: Command) -> Result<CommandOutcome, CommandError> {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // A reload step waits for a running reload to finish.
            let _serial = match cmd.is_reload_step() {
                true => Some(shared.reload_lock.lock().await),
                false => None,
            };
            dispatch::dispatch(&shared, cmd).await
        })
        .await
        .unwrap_or_else(|e| Err(CommandError::Conflict(format!("command failed: {e}"))))
    }

    /// Applies a new data-plane config without a restart: the diff of the
    /// running and the new config, as `AddService`, `RemoveService` and
    /// `ReplaceService` commands through the same dispatcher as
    /// [`Engine::apply`]. Refused (nothing applied) when a new listener
    /// cannot bind or the engine is stopping. The report lists each step.
    pub async fn reconfigure(&self, new: EngineConfig) -> Result<ReloadReport, CommandError> {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let _serial = shared.reload_lock.lock().await;
            reload::apply::reconfigure(&shared, new).await
        })
        .await
        .unwrap_or_else(|e| Err(CommandError::Conflict(format!("reload failed: {e}"))))
    }

    /// Reports the status of a service that has no upstreams to probe (a
    /// `heartbeat` service: healthy while it beats, down once stalled).
    /// Services with upstreams are judged by their probes only.
    /// This is `Command::ReportStatus` through [`Engine::apply`].
    pub async fn report_status(
        &self,
        service: &str,
        status: ServiceStatus,
    ) -> Result<(), CommandError> {
        let cmd = Command::ReportStatus {
            service: service.to_string(),
            status,
        };
        self.apply(cmd).await.map(|_| ())
    }

    /// The whole data plane now: every service, its upstreams, the engine
    /// state and the failover counters.
    pub fn snapshot(&self) -> EngineSnapshot {
        project::engine_snapshot(&self.shared)
    }

    /// Stops accepting, lets open connections finish for up to `drain`, then
    /// closes the rest.
    pub async fn shutdown(&self, drain: Duration) {
        let shared = &self.shared;
        let _ = shared.shutdown_tx.send(true);
        for slot in lock(&shared.slots).iter_mut() {
            slot.stop.send_replace(true);
            slot.listener = None;
        }
        let open = || shared.open_connections.load(Ordering::SeqCst);
        let deadline = Instant::now() + drain;
        while open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = open();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain timeout: closing remaining connections"
            );
        }
        let _ = shared.force_close_tx.send(true);
        let tasks = std::mem::take(&mut *lock(&shared.tasks));
        for t in tasks {
            t.abort();
        }
        // Give relays a moment to observe the close.
        let until = Instant::now() + Duration::from_millis(500);
        while open() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
