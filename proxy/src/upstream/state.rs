//! The plain state types of a service at run time: its [`Route`] (where
//! traffic goes, read lock-free), each upstream's [`UpstreamRt`] and
//! [`HealthState`], the service-level [`ServiceState`], and the
//! engine-wide [`FailoverCounters`]. No behaviour beyond construction.
//!
//! Times that drive decisions (hold-down, recovery time) are
//! `tokio::time::Instant`, so the state machine runs under a paused clock
//! in tests (upstream/harness.rs) and behaves the same at run time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::UpstreamConfig;
use crate::events::Trigger;
use crate::health::ObservedRole;
use crate::metrics::UpstreamMetrics;
use crate::snapshot::{ProbeRecord, ServiceStatus};
use crate::upstream::failover::Counters;
use crate::upstream::latency::LatencyWindow;
use crate::upstream::uptime::Uptime;
use crate::upstream::warm::WarmPool;

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
    /// When the first of the unanswered probes in a row (it accepts
    /// connections, answers nothing) was sent; `busy_grace_ms` runs from it.
    pub silent_since: Option<tokio::time::Instant>,
}

/// One upstream of a running service. Shared (`Arc`) so that a reload
/// carries an unchanged upstream, with its health and counters, into the
/// next generation of the service.
pub struct UpstreamRt {
    pub cfg: UpstreamConfig,
    pub health: Mutex<HealthState>,
    pub active_conns: AtomicU64,
    pub total_conns: AtomicU64,
    pub inline: LatencyWindow,
    pub metrics: UpstreamMetrics,
    /// Pre-connected idle connections (`redundancy = "hot"`, upstream/warm.rs).
    pub pool: WarmPool,
    /// HTTP: no request before this instant (a 429's Retry-After). The
    /// gateway's `Shared::quota` holds the same cell; snapshots read it.
    pub quota: Arc<Mutex<Option<Instant>>>,
    /// Turns to connect: the service's `max_connecting` client connects to
    /// this upstream in progress at once (listener/mod.rs).
    pub connecting: tokio::sync::Semaphore,
    /// When a client connect to it last succeeded, in ns since `origin` + 1
    /// (0: never): a connect that timed out while others succeeded met a
    /// full listen backlog (listener/mod.rs).
    connected: AtomicU64,
    origin: Instant,
}

impl UpstreamRt {
    /// A client connect to it succeeded now.
    pub fn connected_now(&self) {
        let t = self.origin.elapsed().as_nanos() as u64 + 1;
        self.connected.fetch_max(t, Ordering::Relaxed);
    }

    /// A client connect to it succeeded after `started - window`.
    pub fn connected_since(&self, started: Instant, window: Duration) -> bool {
        let last = self.connected.load(Ordering::Relaxed);
        let from = started
            .saturating_duration_since(self.origin)
            .saturating_sub(window)
            .as_nanos() as u64;
        last != 0 && last > from
    }

    pub fn new(cfg: UpstreamConfig, metrics: UpstreamMetrics, max_connecting: usize) -> UpstreamRt {
        UpstreamRt {
            connecting: tokio::sync::Semaphore::new(max_connecting.max(1)),
            connected: AtomicU64::new(0),
            origin: Instant::now(),
            metrics,
            cfg,
            health: Mutex::new(HealthState::default()),
            active_conns: AtomicU64::new(0),
            total_conns: AtomicU64::new(0),
            inline: LatencyWindow::new(),
            pool: WarmPool::new(),
            quota: Arc::new(Mutex::new(None)),
        }
    }
}

/// Service-level mutable state.
#[derive(Debug)]
pub struct ServiceState {
    /// The last switch, for the hold-down.
    pub last_switch: Option<tokio::time::Instant>,
    pub since: DateTime<Utc>,
    /// When the active upstream was first seen down (for recovery time).
    pub down_since: Option<tokio::time::Instant>,
    /// When the service left its configured primary.
    pub failed_over_at: Option<tokio::time::Instant>,
    pub status: ServiceStatus,
    pub uptime: Uptime,
    /// For services without upstreams (heartbeats): the status reported
    /// from outside (a heartbeat is healthy, a stall is down).
    pub reported: Option<ServiceStatus>,
}

impl Default for ServiceState {
    fn default() -> Self {
        ServiceState {
            last_switch: None,
            since: Utc::now(),
            down_since: None,
            failed_over_at: None,
            status: ServiceStatus::Unknown,
            uptime: Uptime::default(),
            reported: None,
        }
    }
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

impl SwitchKind {
    pub fn is_failover(&self) -> bool {
        matches!(self, SwitchKind::Failover { .. })
    }
}

/// The link from a coordinated service to its engine's cluster session
/// (crate::cluster): with it set, the automatic decision is the cluster's,
/// and a health change only wakes the session (upstream/evaluate.rs).
#[derive(Debug, Default)]
pub struct Coordination {
    pub changed: tokio::sync::Notify,
}

/// Locks a std mutex, recovering the data if a panic poisoned it: every
/// critical section here leaves the state consistent at each statement.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
