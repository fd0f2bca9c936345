//! Pre-connected idle connections (the design's redundancy manager, `hot`).
//!
//! A `hot` service keeps `warm_connections` TCP connections open to each
//! standby upstream (not active, not fenced, judged up). When traffic moves
//! to one of them, the first new clients are handed a pooled connection
//! instead of connecting, so they skip the TCP (and any slow accept or
//! relay) setup. `warm` keeps none and connects on failover; `cold` neither
//! pools nor probes its standby.
//!
//! The keeper that fills them, the take on a new client's connect, and
//! the pool state the snapshot shows. The pool itself is
//! `WarmPool` (upstream/warm.rs).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Redundancy;
use crate::snapshot::{PoolState, UpstreamHealth};
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, Route};

/// The keeper re-checks the pools at least this often.
const KEEPER_TICK: Duration = Duration::from_millis(500);

/// Aborts the keeper when the accept loop that started it ends or is dropped.
pub struct KeeperGuard(pub JoinHandle<()>);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether this service keeps pre-connected standby connections.
pub fn pools_enabled(svc: &ServiceRt) -> bool {
    // Only a service that proxies clients has a use for ready connections.
    svc.cfg.redundancy == Redundancy::Hot
        && svc.cfg.warm_connections > 0
        && svc.cfg.listen.is_some()
        && svc.cfg.kind.is_l4_proxied()
}

/// For the connect step of a new client of upstream `idx`: a pooled
/// connection if one is ready (a hit), else `None` (a miss, counted
/// only where pools are kept).
pub fn take_pooled(svc: &ServiceRt, idx: usize) -> Option<TcpStream> {
    let up = svc.upstreams.get(idx)?;
    let found = up.pool.take();
    if pools_enabled(svc) {
        let result = if found.is_some() { "hit" } else { "miss" };
        if found.is_none() {
            up.pool.miss();
        }
        svc.metrics
            .pool_takes
            .with_label_values(&[svc.name(), &up.cfg.name, result])
            .inc();
    }
    found
}

/// Whether `idx` is a standby that should hold a pool now.
fn wants_pool(svc: &ServiceRt, route: &Route, idx: usize) -> bool {
    pools_enabled(svc)
        && route.active != idx
        && !route.fenced.get(idx).copied().unwrap_or(true)
        && svc
            .upstreams
            .get(idx)
            .is_some_and(|u| lock(&u.health).counters.health == UpstreamHealth::Up)
}

/// One pass: tops up the pool of every standby of a `hot` service to
/// `warm_connections`, recycles stale ones, and closes the pools of
/// upstreams that should not have one (down, fenced, or not `hot`).
/// The active upstream's pool is left for new clients to drain.
pub async fn refill_pools(svc: &ServiceRt) {
    let route = svc.route.load_full();
    let want = svc.cfg.warm_connections as usize;
    for (i, up) in svc.upstreams.iter().enumerate() {
        if i == route.active {
            continue;
        }
        if !wants_pool(svc, &route, i) {
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
        let timeout = svc.cfg.health.connect_timeout;
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
                    tracing::debug!(service = svc.name(), upstream = %up.cfg.name, error = %e, "pool connect failed");
                }
                Ok(Err(_)) => {
                    tracing::debug!(service = svc.name(), upstream = %up.cfg.name, "pool connect timed out");
                }
                Err(e) => {
                    tracing::debug!(service = svc.name(), error = %e, "pool connect task failed");
                }
            }
        }
        // The route may have moved while we connected.
        if !wants_pool(svc, &svc.route.load(), i) && svc.route.load().active != i {
            up.pool.clear();
        }
    }
}

/// Keeps the pools filled until `stop` changes or the service is gone:
/// on every probe result or route change, and every 500 ms.
pub fn spawn_keeper(svc: &Arc<ServiceRt>, mut stop: watch::Receiver<bool>) -> KeeperGuard {
    let weak: Weak<ServiceRt> = Arc::downgrade(svc);
    let mut changed = svc.changed_tx.subscribe();
    KeeperGuard(tokio::spawn(async move {
        loop {
            {
                let Some(svc) = weak.upgrade() else { return };
                if !pools_enabled(&svc) {
                    return;
                }
                refill_pools(&svc).await;
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
pub fn pool_state(svc: &ServiceRt, idx: usize, route: &Route) -> PoolState {
    let Some(up) = svc.upstreams.get(idx) else {
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
    if svc.cfg.redundancy != Redundancy::Hot || route.fenced.get(idx).copied().unwrap_or(true) {
        return PoolState::Disconnected;
    }
    match health {
        // Monitored only (no listener) or warm_connections = 0: the
        // probes are its connection.
        UpstreamHealth::Up if !pools_enabled(svc) || !up.pool.is_empty() => PoolState::Connected,
        _ => PoolState::Connecting,
    }
}
