//! The engine's background loops: one probe loop per upstream (at the
//! rate its redundancy asks for; the probe itself runs on the engine's
//! probe thread, what its result triggers on the engine's runtime), and
//! the watcher that keeps the engine
//! state fresh when only passive signals changed a service.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::config::Redundancy;
use crate::engine::shared::Shared;
use crate::events::{Event, EventKind};
use crate::health::{self, ObservedRole};
use crate::upstream::resync;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;

/// Probes one upstream forever: the active upstream and the configured
/// primary at the full rate; other upstreams at the full rate in `hot`,
/// a quarter of it in `warm`, never in `cold`.
pub(crate) async fn probe_loop(
    shared: Arc<Shared>,
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
        // On the probe thread (crate::workers::Workers::run); in this task
        // if that thread is gone (the engine is stopping).
        let probe = {
            let (svc, target) = (svc.clone(), up.cfg.clone());
            move || async move { health::run_probe(&svc.cfg, &target).await }
        };
        let outcome = match shared.probes.run(probe).await {
            Some(outcome) => outcome,
            None => health::run_probe(&svc.cfg, &up.cfg).await,
        };
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
        shared.refresh_state();
    }
}

/// Keeps the engine state fresh when only passive signals changed it.
pub(crate) async fn state_watch(shared: Arc<Shared>) {
    let mut rx = shared.events.subscribe();
    loop {
        match rx.recv().await {
            Ok(Event {
                kind: EventKind::FailoverStateChanged { .. },
                ..
            }) => {}
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => shared.refresh_state(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
