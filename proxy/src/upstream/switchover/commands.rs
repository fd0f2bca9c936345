//! The operator commands behind a planned switch: which upstream to leave
//! or return to, the checks (active pool, usable target, resynchronised
//! old primary), then [`ServiceRt::planned_switch`].

use tokio::time::Instant;

use serde_json::json;

use crate::error::CommandError;
use crate::health::{self, ObservedRole};
use crate::upstream::probe;
use crate::upstream::resync;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, SwitchKind};
use crate::upstream::switch::switch;
use crate::upstream::switchover::{planned_switch, SwitchReport};

/// `POST /api/ops/redundancy/failover/{pool}`: planned switchover away from
/// `from` (which must be active) to `to` or the best usable other upstream.
pub(crate) async fn failover_pool(
    svc: &ServiceRt,
    from: usize,
    to: Option<usize>,
    actor: String,
    reason: String,
) -> Result<SwitchReport, CommandError> {
    let _guard = svc.switch_lock.lock().await;
    let route = svc.route.load_full();
    let name = |i: usize| svc.upstream_name(i).unwrap_or("?").to_string();
    if route.active != from {
        return Err(CommandError::Conflict(format!(
            "{} is not the active upstream of {} (the active one is {})",
            name(from),
            svc.name(),
            name(route.active)
        )));
    }
    let view = svc.view();
    let to = match to {
        Some(t) if t == from => {
            return Err(CommandError::Conflict(format!(
                "cannot switch {} over to itself",
                name(from)
            )))
        }
        Some(t) if view.upstreams.get(t).is_some_and(|u| u.usable()) => t,
        Some(t) => {
            return Err(CommandError::Conflict(format!(
                "{} is not usable (down or fenced)",
                name(t)
            )))
        }
        None => crate::upstream::failover::best_other(&view, from).ok_or_else(|| {
            CommandError::Conflict(format!(
                "service {} has no usable upstream other than {}",
                svc.name(),
                name(from)
            ))
        })?,
    };
    let evidence = json!({ "requested_by": actor });
    planned_switch(
        svc,
        to,
        SwitchKind::Failover {
            trigger: crate::events::Trigger::Manual,
            actor,
            reason,
            evidence,
        },
    )
    .await
}

/// `POST /api/ops/redundancy/failback/{pool}` and `recover`: planned switch
/// back to `to`, which must answer a probe and, if a promotion left it
/// behind, be a caught-up replica of the active upstream (409
/// `not_resynced` otherwise).
pub(crate) async fn failback_pool(
    svc: &ServiceRt,
    to: usize,
    actor: String,
    reason: String,
) -> Result<SwitchReport, CommandError> {
    let _guard = svc.switch_lock.lock().await;
    let route = svc.route.load_full();
    let Some(up) = svc.upstreams.get(to) else {
        return Err(CommandError::NotFound(format!("no upstream #{to}")));
    };
    if route.active == to && !route.fenced.get(to).copied().unwrap_or(false) {
        return Ok(SwitchReport::default());
    }
    let outcome = health::run_probe(&svc.cfg, &up.cfg).await;
    let (ok, error) = (outcome.ok, outcome.error.clone());
    probe::record_locked(svc, to, outcome);
    if !ok {
        return Err(CommandError::Conflict(format!(
            "{} is not usable: {}",
            up.cfg.name,
            error.unwrap_or_else(|| "probe failed".into())
        )));
    }
    if lock(&up.health).diverged {
        match resync::verify(svc, to).await {
            resync::ResyncState::Resynced => {}
            resync::ResyncState::NeedsRebuild(m) | resync::ResyncState::Pending(m) => {
                return Err(CommandError::NotResynced(format!(
                    "{} was left behind by a promotion and is not a caught-up replica of the active upstream: {m}",
                    up.cfg.name
                )))
            }
        }
    }
    let trigger = crate::events::Trigger::Manual;
    let kind = if to == svc.cfg.configured_primary() {
        SwitchKind::Recover {
            trigger,
            actor,
            reason,
        }
    } else {
        let evidence = json!({ "requested_by": actor });
        SwitchKind::Failover {
            trigger,
            actor,
            reason,
            evidence,
        }
    };
    // A target that is still a primary of its own (route mode, or a
    // promotion outside continuity) has nothing to catch up with.
    if lock(&up.health).observed == Some(ObservedRole::Primary) {
        let started = Instant::now();
        switch(svc, to, kind).await?;
        return Ok(SwitchReport {
            pause: started.elapsed(),
            position: None,
        });
    }
    planned_switch(svc, to, kind).await
}
