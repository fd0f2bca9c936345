//! Pre-connected idle connections (the design's redundancy manager, `hot`).
//!
//! A `hot` service keeps `warm_connections` TCP connections open to each
//! standby upstream (not active, not fenced, judged up). When traffic moves
//! to one of them, the first new clients are handed a pooled connection
//! instead of connecting, so they skip the TCP (and any slow accept or
//! relay) setup. `warm` keeps none and connects on failover; `cold` neither
//! pools nor probes its standby.
//!
//! A pooled connection is handed out only if it still looks healthy: a
//! non-blocking 1-byte read must find nothing to read (`WouldBlock`). EOF
//! means the upstream closed it, data means it said something unprompted;
//! either way it is dropped. Idle connections are recycled after
//! [`MAX_IDLE`] (postgres closes a connection that sends no startup message
//! within `authentication_timeout`, 60 s by default).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::runtime::{lock, Route, ServiceRt};
use crate::config::Redundancy;
use crate::snapshot::{PoolState, UpstreamHealth};

/// An idle pooled connection older than this is closed and replaced.
pub const MAX_IDLE: Duration = Duration::from_secs(30);
/// The keeper re-checks the pools at least this often.
const KEEPER_TICK: Duration = Duration::from_millis(500);

/// Idle pre-connected connections to one upstream.
#[derive(Debug, Default)]
pub struct WarmPool {
    idle: Mutex<VecDeque<(TcpStream, Instant)>>,
    /// Mirror of `idle.len()`, so the hot path skips the lock when empty.
    len: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Whether an idle connection is still open and silent.
fn healthy(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // Ok(0): closed by the upstream; Ok(_): unexpected data.
        Ok(_) => false,
    }
}

impl WarmPool {
    pub fn new() -> WarmPool {
        WarmPool::default()
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients served from the pool.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Clients of a `hot` service that found the pool empty and connected.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// A healthy, not too old idle connection, oldest first; dead or stale
    /// ones met on the way are dropped. Counts a hit when one is returned.
    pub fn take(&self) -> Option<TcpStream> {
        if self.is_empty() {
            return None;
        }
        let mut idle = lock(&self.idle);
        let found = loop {
            let Some((stream, since)) = idle.pop_front() else {
                break None;
            };
            if since.elapsed() < MAX_IDLE && healthy(&stream) {
                break Some(stream);
            }
        };
        self.len.store(idle.len(), Ordering::Relaxed);
        drop(idle);
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn put(&self, stream: TcpStream) {
        let mut idle = lock(&self.idle);
        idle.push_back((stream, Instant::now()));
        self.len.store(idle.len(), Ordering::Relaxed);
    }

    /// Drops dead and stale connections; returns how many are left.
    pub fn prune(&self) -> usize {
        let mut idle = lock(&self.idle);
        idle.retain(|(s, since)| since.elapsed() < MAX_IDLE && healthy(s));
        self.len.store(idle.len(), Ordering::Relaxed);
        idle.len()
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        let mut idle = lock(&self.idle);
        idle.clear();
        self.len.store(0, Ordering::Relaxed);
    }
}

/// Aborts the keeper when the accept loop that started it ends or is dropped.
pub struct KeeperGuard(pub JoinHandle<()>);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServiceRt {
    /// Whether this service keeps pre-connected standby connections.
    pub fn pools_enabled(&self) -> bool {
        // Only a service that proxies clients has a use for ready connections.
        self.cfg.redundancy == Redundancy::Hot
            && self.cfg.warm_connections > 0
            && self.cfg.listen.is_some()
            && self.cfg.kind.is_l4_proxied()
    }

    /// For the connect step of a new client of upstream `idx`: a pooled
    /// connection if one is ready (a hit), else `None` (a miss, counted
    /// only where pools are kept).
    pub fn take_pooled(&self, idx: usize) -> Option<TcpStream> {
        let up = self.upstreams.get(idx)?;
        let found = up.pool.take();
        if self.pools_enabled() {
            let result = if found.is_some() { "hit" } else { "miss" };
            if found.is_none() {
                up.pool.miss();
            }
            self.metrics
                .pool_takes
                .with_label_values(&[self.name(), &up.cfg.name, result])
                .inc();
        }
        found
    }

    /// Whether `idx` is a standby that should hold a pool now.
    fn wants_pool(&self, route: &Route, idx: usize) -> bool {
        self.pools_enabled()
            && route.active != idx
            && !route.fenced.get(idx).copied().unwrap_or(true)
            && self
                .upstreams
                .get(idx)
                .is_some_and(|u| lock(&u.health).counters.health == UpstreamHealth::Up)
    }

    /// One pass: tops up the pool of every standby of a `hot` service to
    /// `warm_connections`, recycles stale ones, and closes the pools of
    /// upstreams that should not have one (down, fenced, or not `hot`).
    /// The active upstream's pool is left for new clients to drain.
    pub async fn refill_pools(&self) {
        let route = self.route.load_full();
        let want = self.cfg.warm_connections as usize;
        for (i, up) in self.upstreams.iter().enumerate() {
            if i == route.active {
                continue;
            }
            if !self.wants_pool(&route, i) {
                if !up.pool.is_empty() {
                    up.pool.clear();
                }
                continue;
            }
            let have = up.pool.prune();
            if have >= want {
                continue;
            }
            let target = up.cfg.target();
            let timeout = self.cfg.health.connect_timeout;
            let mut connects = tokio::task::JoinSet::new();
            for _ in have..want {
                let target = target.clone();
                connects.spawn(async move {
                    tokio::time::timeout(timeout, TcpStream::connect(target)).await
                });
            }
            while let Some(joined) = connects.join_next().await {
                match joined {
                    Ok(Ok(Ok(stream))) => {
                        let _ = stream.set_nodelay(true);
                        up.pool.put(stream);
                    }
                    Ok(Ok(Err(e))) => {
                        tracing::debug!(service = self.name(), upstream = %up.cfg.name, error = %e, "pool connect failed");
                    }
                    Ok(Err(_)) => {
                        tracing::debug!(service = self.name(), upstream = %up.cfg.name, "pool connect timed out");
                    }
                    Err(e) => {
                        tracing::debug!(service = self.name(), error = %e, "pool connect task failed");
                    }
                }
            }
            // The route may have moved while we connected.
            if !self.wants_pool(&self.route.load(), i) && self.route.load().active != i {
                up.pool.clear();
            }
        }
    }

    /// Keeps the pools filled until `stop` changes or the service is gone:
    /// on every probe result or route change, and every 500 ms.
    pub fn spawn_pool_keeper(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> KeeperGuard {
        let weak: Weak<ServiceRt> = Arc::downgrade(self);
        let mut changed = self.changed_tx.subscribe();
        KeeperGuard(tokio::spawn(async move {
            loop {
                {
                    let Some(svc) = weak.upgrade() else { return };
                    if !svc.pools_enabled() {
                        return;
                    }
                    svc.refill_pools().await;
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(KEEPER_TICK) => {}
                    _ = stop.changed() => return,
                }
            }
        }))
    }

    /// Pool state of upstream `idx` (SPEC 4 `redundancy/status`):
    /// - `draining`: the upstream left by a recover still has connections
    ///   inside its drain period;
    /// - `failed`: probes judge it down;
    /// - active: `connected` when up, `connecting` before the first verdict;
    /// - a `hot` standby: `connected` with ready pooled connections (or,
    ///   with `warm_connections = 0`, when probes see it up), `connecting`
    ///   while the first probe is pending or the pool fills, `disconnected`
    ///   when fenced;
    /// - a `warm` or `cold` standby: `disconnected` (it connects on failover).
    pub fn pool_state(&self, idx: usize, route: &Route) -> PoolState {
        let Some(up) = self.upstreams.get(idx) else {
            return PoolState::Disconnected;
        };
        let draining = route
            .drain
            .is_some_and(|(d, until)| d == idx && Instant::now() < until)
            && up.active_conns.load(Ordering::Relaxed) > 0;
        if draining {
            return PoolState::Draining;
        }
        let health = lock(&up.health).counters.health;
        if health == UpstreamHealth::Down {
            return PoolState::Failed;
        }
        if route.active == idx {
            return match health {
                UpstreamHealth::Up => PoolState::Connected,
                _ => PoolState::Connecting,
            };
        }
        if self.cfg.redundancy != Redundancy::Hot || route.fenced.get(idx).copied().unwrap_or(true)
        {
            return PoolState::Disconnected;
        }
        match health {
            // Monitored only (no listener) or warm_connections = 0: the
            // probes are its connection.
            UpstreamHealth::Up if !self.pools_enabled() || !up.pool.is_empty() => {
                PoolState::Connected
            }
            _ => PoolState::Connecting,
        }
    }
}
