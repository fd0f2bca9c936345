//! The retired generation of a reloaded or removed service: its open
//! relays follow the running service of the same name until they end.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::shared::Shared;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::Route;

/// Keeps a retired generation's open relays in step with the running
/// service of the same name until the last one ends: its route mirrors the
/// running route for shared upstreams; removed or changed upstreams are
/// fenced, and the one that was active drains until `until`.
pub(crate) async fn retire(shared: Arc<Shared>, old: Arc<ServiceRt>, until: Instant) {
    let mut shutdown = shared.shutdown_tx.subscribe();
    let start = old.route.load_full();
    let mut epoch = start.epoch;
    let mut published: Option<Mirror> = None;
    let mut current: Option<Arc<ServiceRt>> = None;
    let mut rx: Option<watch::Receiver<u64>> = None;
    loop {
        let now = shared
            .services
            .load()
            .iter()
            .find(|s| s.cfg.name == old.cfg.name)
            .cloned();
        let same = match (&now, &current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => rx.is_some() || published.is_some(),
            _ => false,
        };
        if !same {
            rx = now.as_ref().map(|s| s.route_tx.subscribe());
            current = now;
        }
        let view = mirror(&old, current.as_deref(), start.active, until);
        if published.as_ref() != Some(&view) {
            epoch += 1;
            old.set_route(Route {
                active: view.0,
                epoch,
                fenced: view.1.clone(),
                switching: false,
                drain: view.2,
            });
            published = Some(view);
        }
        if old.active_conns.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::select! {
            _ = async {
                match rx.as_mut() {
                    Some(r) => { let _ = r.changed().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A retired generation's (active, fenced, drain), indices into its upstreams.
type Mirror = (usize, Vec<bool>, Option<(usize, Instant)>);

/// The retired generation's (active, fenced, drain), indices into `old`.
/// `active == old.upstreams.len()` means none of its upstreams is active.
fn mirror(
    old: &ServiceRt,
    current: Option<&ServiceRt>,
    old_active: usize,
    until: Instant,
) -> Mirror {
    let n = old.upstreams.len();
    let route = current.map(|c| c.route.load_full());
    let shared = |j: usize| {
        let u = old.upstreams.get(j)?;
        current?.upstreams.iter().position(|x| Arc::ptr_eq(x, u))
    };
    let mut active = n;
    let mut fenced = vec![true; n];
    let mut drain = None;
    for (j, f) in fenced.iter_mut().enumerate() {
        if let (Some(k), Some(r)) = (shared(j), &route) {
            *f = r.fenced.get(k).copied().unwrap_or(true);
            if r.active == k {
                active = j;
            }
            if let Some((d, t)) = r.drain {
                if d == k {
                    drain = Some((j, t));
                }
            }
        }
    }
    if shared(old_active).is_none() && Instant::now() < until {
        drain = Some((old_active, until));
    }
    (active, fenced, drain)
}
