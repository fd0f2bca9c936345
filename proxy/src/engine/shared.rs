//! The state every part of the engine shares behind its handle: the
//! running services (read lock-free), their slots, the config they were
//! built from, the event bus and the engine-wide signals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, Host};
use crate::config::EngineConfig;
use crate::engine::slot::{Prepared, Slot};
use crate::engine::state::engine_state;
use crate::error::CommandError;
use crate::events::{Event, EventBus, EventKind};
use crate::gateway::queue::QueueStore;
use crate::metrics::ProxyMetrics;
use crate::snapshot::FailoverState;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, FailoverCounters};
use crate::workers::Workers;

pub(crate) struct Shared {
    /// The running services, read lock-free; replaced whole by a reload.
    pub services: ArcSwap<Vec<Arc<ServiceRt>>>,
    /// Each service's tasks' stop switch and listener (engine/slot.rs).
    pub slots: Mutex<Vec<Slot>>,
    /// The config the running services were built from (what a reload diffs).
    pub config: Mutex<EngineConfig>,
    pub metrics: ProxyMetrics,
    /// Serialises reloads and the reload commands.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Listeners a reload bound before applying its steps, by service.
    pub prepared: Mutex<Vec<(String, Prepared)>>,
    pub events: EventBus,
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
    pub queue: Option<QueueStore>,
    /// The threads every L4 service's connections are served on, one per
    /// core (crate::workers); they end after `force_close_tx`.
    pub l4: Arc<Workers>,
    /// The thread the periodic health probes run on (engine/probe.rs,
    /// [`Workers::run`]); it ends after `force_close_tx`.
    pub probes: Arc<Workers>,
    /// `[cluster]`: this engine's membership (crate::cluster).
    pub cluster: Option<Arc<Cluster>>,
}

impl Host for Shared {
    fn services(&self) -> Arc<Vec<Arc<ServiceRt>>> {
        self.services.load_full()
    }

    fn refresh_state(&self) {
        Shared::refresh_state(self);
    }

    fn emit(&self, service: Option<&str>, kind: EventKind) {
        let _ = self.events.send(Event::new(service, kind));
    }
}

impl Shared {
    pub fn find(&self, name: &str) -> Result<Arc<ServiceRt>, CommandError> {
        self.services
            .load()
            .iter()
            .find(|s| s.cfg.name == name)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name}")))
    }

    /// The service owning upstream `pool`, and its index.
    pub fn find_pool(&self, pool: &str) -> Result<(Arc<ServiceRt>, usize), CommandError> {
        self.services
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

    /// The engine state now.
    pub fn current_state(&self) -> FailoverState {
        let running = self.services.load_full();
        let from_memory: Vec<String> = lock(&self.slots)
            .iter()
            .filter(|s| s.fallback.as_ref().is_some_and(|f| f.engaged()))
            .map(|s| s.svc.cfg.name.clone())
            .collect();
        let state = engine_state(&running, self.emergency.load(Ordering::SeqCst), |s| {
            from_memory.contains(&s.cfg.name)
        });
        // Cut off from its cluster, an engine serves its last agreed
        // routes and decides nothing: degraded (docs/cluster.md).
        let cut_off = self.cluster.as_ref().is_some_and(|c| !c.connected());
        if cut_off && state == FailoverState::Normal {
            FailoverState::Degraded
        } else {
            state
        }
    }

    /// Recomputes the engine state and emits a change event.
    pub fn refresh_state(&self) {
        let new = self.current_state();
        let old = std::mem::replace(&mut *lock(&self.state), new);
        if old != new {
            let _ = self.events.send(Event::new(
                None,
                EventKind::FailoverStateChanged { old, new },
            ));
        }
    }
}
