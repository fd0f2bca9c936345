//! Switch execution: move a service's traffic to another upstream in one
//! route swap (epoch + 1, the old upstream fenced on a failover, drained
//! on a recover), promoting the target first when `on_failover =
//! "promote"`, then the bookkeeping every switch shares ([`finish`]):
//! hold-down start, counters, recovery time, and the event.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use crate::config::{Kind, OnFailover};
use crate::error::CommandError;
use crate::events::{EventKind, Trigger};
use crate::health::{self, ObservedRole};
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, Route, SwitchKind};

/// A switch whose new route is stored, for [`finish`].
pub(crate) struct Switched<'a> {
    /// The route before the switch.
    pub old: &'a Route,
    /// The new active upstream.
    pub to: usize,
    pub new_epoch: u64,
    pub kind: SwitchKind,
    /// Whether continuity promoted the target.
    pub promoted: bool,
    /// Client connections closed by the switch.
    pub closed: u64,
    /// When the switch began (new clients held from then).
    pub started: tokio::time::Instant,
}

/// Moves traffic to upstream `to`. Caller holds `switch_lock`.
pub(crate) async fn switch(
    svc: &ServiceRt,
    to: usize,
    kind: SwitchKind,
) -> Result<(), CommandError> {
    let old = svc.route.load_full();
    if svc.upstream_name(to).is_none() {
        return Err(CommandError::NotFound(format!("no upstream #{to}")));
    }
    if old.active == to && !old.fenced.get(to).copied().unwrap_or(false) {
        return Ok(());
    }
    let started = tokio::time::Instant::now();
    // Hold new clients while we promote.
    svc.route.store(std::sync::Arc::new(Route {
        switching: true,
        ..(*old).clone()
    }));
    svc.notify_changed();
    let promoted = match promote_if_needed(svc, to).await {
        Ok(p) => p,
        Err(message) => {
            svc.set_route((*old).clone());
            svc.emit(EventKind::FailoverBlocked {
                reason: message.clone(),
            });
            return Err(CommandError::Conflict(message));
        }
    };
    let mut fenced = old.fenced.clone();
    let is_failover = kind.is_failover();
    if let Some(f) = fenced.get_mut(to) {
        *f = false;
    }
    if is_failover {
        if let Some(f) = fenced.get_mut(old.active) {
            *f = true;
        }
        if promoted {
            if let Some(u) = svc.upstreams.get(old.active) {
                lock(&u.health).diverged = true;
            }
        }
    }
    let drain = (!is_failover).then(|| (old.active, std::time::Instant::now() + svc.drain_timeout));
    let new_epoch = old.epoch + 1;
    let closed = svc
        .upstreams
        .get(old.active)
        .map(|u| u.active_conns.load(Ordering::Relaxed))
        .unwrap_or(0);
    svc.set_route(Route {
        active: to,
        epoch: new_epoch,
        fenced,
        switching: false,
        drain,
    });
    if !is_failover && svc.cfg.on_failover == OnFailover::Promote {
        demote_after_recover(svc, old.active, to).await;
    }
    finish(
        svc,
        Switched {
            old: &old,
            to,
            new_epoch,
            kind,
            promoted,
            closed,
            started,
        },
    );
    Ok(())
}

/// Adopts a route agreed by the cluster (crate::cluster): `to` active at
/// `epoch` with `fenced`, no promotion (the engine that decided made it).
/// Caller holds `switch_lock`. Returns whether the route changed; when
/// the active upstream moved, with the same bookkeeping and event as
/// [`switch`].
pub(crate) fn adopt(
    svc: &ServiceRt,
    to: usize,
    epoch: u64,
    fenced: Vec<bool>,
    kind: SwitchKind,
) -> bool {
    let old = svc.route.load_full();
    let moved = old.active != to;
    let closed = svc
        .upstreams
        .get(old.active)
        .map(|u| u.active_conns.load(Ordering::Relaxed))
        .unwrap_or(0);
    // Left behind by a promotion: the old active upstream, when the route
    // fences it (a planned Redis switchover demotes it instead). The new
    // active one is the primary now, whatever an earlier move said.
    let fenced_old = fenced.get(old.active).copied().unwrap_or(false);
    if moved && kind.is_failover() && svc.cfg.on_failover == OnFailover::Promote && fenced_old {
        if let Some(u) = svc.upstreams.get(old.active) {
            lock(&u.health).diverged = true;
        }
    }
    if moved {
        if let Some(u) = svc.upstreams.get(to) {
            lock(&u.health).diverged = false;
        }
    }
    svc.set_route(Route {
        active: to,
        epoch,
        fenced,
        switching: false,
        drain: None,
    });
    if moved {
        finish(
            svc,
            Switched {
                old: &old,
                to,
                new_epoch: epoch,
                kind,
                promoted: false,
                closed,
                started: tokio::time::Instant::now(),
            },
        );
    }
    true
}

/// Bookkeeping and the event after a switch whose new route is stored.
pub(crate) fn finish(svc: &ServiceRt, s: Switched<'_>) {
    let is_failover = s.kind.is_failover();
    let from_name = svc.upstream_name(s.old.active).map(str::to_string);
    let to_name = svc.upstream_name(s.to).unwrap_or("?").to_string();
    let (down_for, in_failover_for) = {
        let now = tokio::time::Instant::now();
        let mut st = lock(&svc.state);
        st.last_switch = Some(now);
        st.since = Utc::now();
        let down = st.down_since.take();
        if is_failover {
            st.failed_over_at.get_or_insert(now);
        }
        let in_failover_for = if is_failover {
            None
        } else {
            st.failed_over_at.take().map(|t| t.elapsed())
        };
        (down.map(|d| d.elapsed()), in_failover_for)
    };
    let switch_ms = s.started.elapsed().as_millis();
    tracing::warn!(service = svc.name(), from = ?from_name, to = %to_name, epoch = s.new_epoch, promoted = s.promoted, switch_ms, "switched upstream");
    match s.kind {
        SwitchKind::Failover {
            trigger,
            actor,
            reason,
            evidence,
        } => {
            count_failover(svc, trigger);
            if let Some(d) = down_for {
                record_recovery(svc, d);
            }
            svc.emit(EventKind::FailoverActivated {
                from: from_name,
                to: to_name,
                old_epoch: s.old.epoch,
                new_epoch: s.new_epoch,
                trigger,
                actor,
                reason,
                promoted: s.promoted,
                evidence,
                closed_connections: s.closed,
            });
        }
        SwitchKind::Recover {
            trigger,
            actor,
            reason,
        } => {
            svc.emit(EventKind::RecoveryCompleted {
                from: from_name,
                to: to_name,
                old_epoch: s.old.epoch,
                new_epoch: s.new_epoch,
                trigger,
                actor,
                reason,
                recovery_seconds: in_failover_for.map(|d| d.as_secs_f64()).unwrap_or(0.0),
            });
        }
    }
    svc.refresh_status();
}

fn count_failover(svc: &ServiceRt, trigger: Trigger) {
    svc.metrics
        .failovers
        .with_label_values(&[svc.name(), trigger.as_str()])
        .inc();
    svc.counters.total.fetch_add(1, Ordering::Relaxed);
    match trigger {
        Trigger::Auto => svc.counters.auto.fetch_add(1, Ordering::Relaxed),
        Trigger::Manual => svc.counters.manual.fetch_add(1, Ordering::Relaxed),
    };
}

fn record_recovery(svc: &ServiceRt, d: Duration) {
    svc.metrics
        .recovery_seconds
        .with_label_values(&[svc.name()])
        .observe(d.as_secs_f64());
    svc.counters
        .recovery_us_sum
        .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    svc.counters.recoveries.fetch_add(1, Ordering::Relaxed);
}

/// With `on_failover = "promote"`, makes `to` writable unless a probe
/// already sees it as primary. Returns whether a promotion was sent.
async fn promote_if_needed(svc: &ServiceRt, to: usize) -> Result<bool, String> {
    if svc.cfg.on_failover != OnFailover::Promote {
        return Ok(false);
    }
    let Some(up) = svc.upstreams.get(to) else {
        return Err(format!("no upstream #{to}"));
    };
    if lock(&up.health).observed == Some(ObservedRole::Primary) {
        return Ok(false);
    }
    match health::promote(&svc.cfg, &up.cfg).await {
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
async fn demote_after_recover(svc: &ServiceRt, left: usize, to: usize) {
    let (Some(old), Some(new)) = (svc.upstreams.get(left), svc.upstreams.get(to)) else {
        return;
    };
    match svc.cfg.kind {
        Kind::Redis => {
            let target = new.cfg.target();
            let Some((host, port)) = target
                .rsplit_once(':')
                .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
            else {
                return;
            };
            if let Err(e) = health::redis::replicate_from(&svc.cfg, &old.cfg, &host, port).await {
                tracing::warn!(service = svc.name(), upstream = %old.cfg.name, error = %e, "could not demote the old redis primary");
            }
        }
        Kind::Postgres => {
            lock(&old.health).diverged = true;
            fence(svc, left);
        }
        _ => {}
    }
}

/// Fences upstream `idx` in the current route (no epoch change).
pub(crate) fn fence(svc: &ServiceRt, idx: usize) {
    let mut route = (*svc.route.load_full()).clone();
    if let Some(f) = route.fenced.get_mut(idx) {
        *f = true;
    }
    svc.set_route(route);
}

/// Unfences upstream `idx` in the current route (no epoch change): a
/// resynchronised old primary. Returns whether it was fenced.
pub(crate) fn unfence(svc: &ServiceRt, idx: usize) -> bool {
    let mut route = (*svc.route.load_full()).clone();
    let was_fenced = route.fenced.get(idx).copied().unwrap_or(false);
    if let Some(f) = route.fenced.get_mut(idx) {
        *f = false;
    }
    svc.set_route(route);
    was_fenced
}
