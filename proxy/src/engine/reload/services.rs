//! The handlers of the three reload commands: `AddService`,
//! `RemoveService` and `ReplaceService`. A reload applies them one by one
//! (engine/reload/apply.rs) after binding every new listener; a listener
//! prepared that way is taken from [`Shared::prepared`], otherwise the
//! handler binds it itself.

use std::sync::Arc;
use std::time::Instant;

use crate::config::ServiceConfig;
use crate::engine::reload::carry::carry_over;
use crate::engine::reload::retire::retire;
use crate::engine::reload::ReloadReport;
use crate::engine::shared::Shared;
use crate::engine::slot::Prepared;
use crate::engine::spawn::{bind, dup, new_fallback, spawn_service};
use crate::error::CommandError;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;

fn fresh(shared: &Shared, cfg: ServiceConfig) -> ServiceRt {
    let drain = lock(&shared.config).drain_timeout;
    ServiceRt::new(
        cfg,
        shared.events.clone(),
        shared.metrics.clone(),
        shared.counters.clone(),
        drain,
    )
}

/// The listener prepared for `name` by the reload, if any.
fn prepared(shared: &Shared, name: &str) -> Option<Prepared> {
    let mut p = lock(&shared.prepared);
    let i = p.iter().position(|(n, _)| n == name)?;
    Some(p.swap_remove(i).1)
}

/// Publishes the slots' services as the running set.
fn publish(shared: &Shared, slots: &[crate::engine::slot::Slot]) {
    shared
        .services
        .store(Arc::new(slots.iter().map(|s| s.svc.clone()).collect()));
}

/// Lets the retired generation's open relays follow the running service.
fn retire_later(shared: &Arc<Shared>, svc: Arc<ServiceRt>) {
    let until = Instant::now() + lock(&shared.config).drain_timeout;
    tokio::spawn(retire(shared.clone(), svc, until));
}

/// `Command::AddService`: a new service with its listener, probes and
/// accept loop.
pub(crate) async fn add(
    shared: &Arc<Shared>,
    cfg: ServiceConfig,
) -> Result<ReloadReport, CommandError> {
    let name = cfg.name.clone();
    if lock(&shared.slots).iter().any(|s| s.svc.cfg.name == name) {
        return Err(CommandError::Conflict(format!("service {name} exists")));
    }
    let bound = match prepared(shared, &name) {
        Some(Prepared::Bound(b)) => Some(b),
        _ => bind(&cfg)
            .await
            .map_err(|e| CommandError::Conflict(e.to_string()))?,
    };
    if let Some((_, local)) = &bound {
        lock(&shared.listen_addrs).push((name.clone(), *local));
    }
    let fallback = new_fallback(&cfg);
    lock(&shared.config).services.push(cfg.clone());
    let svc = Arc::new(fresh(shared, cfg));
    {
        let mut slots = lock(&shared.slots);
        slots.push(spawn_service(shared, svc, bound.map(|(b, _)| b), fallback));
        publish(shared, &slots);
    }
    Ok(ReloadReport {
        added_services: vec![name],
        ..ReloadReport::default()
    })
}

/// `Command::RemoveService`: stops its probes and accept loop; its open
/// relays drain.
pub(crate) fn remove(shared: &Arc<Shared>, name: String) -> Result<ReloadReport, CommandError> {
    let slot = {
        let mut slots = lock(&shared.slots);
        let Some(i) = slots.iter().position(|s| s.svc.cfg.name == name) else {
            return Err(CommandError::NotFound(format!("no service named {name}")));
        };
        let slot = slots.remove(i);
        publish(shared, &slots);
        slot
    };
    slot.stop.send_replace(true);
    lock(&shared.listen_addrs).retain(|(n, _)| *n != name);
    lock(&shared.config).services.retain(|s| s.name != name);
    retire_later(shared, slot.svc);
    Ok(ReloadReport {
        removed_services: vec![name],
        ..ReloadReport::default()
    })
}

/// `Command::ReplaceService`: the next generation of a service (same name
/// and listener), carrying over unchanged upstreams, the route and the
/// memory fallback (engine/reload/carry.rs).
pub(crate) fn replace(
    shared: &Arc<Shared>,
    cfg: ServiceConfig,
) -> Result<ReloadReport, CommandError> {
    let name = cfg.name.clone();
    let accept = match prepared(shared, &name) {
        Some(Prepared::Dup(l)) => Some(l),
        _ => {
            let slots = lock(&shared.slots);
            let l = slots.iter().find(|s| s.svc.cfg.name == name);
            match l.and_then(|s| s.listener.as_ref()) {
                Some(std) => Some(dup(std).map_err(|e| {
                    CommandError::Conflict(format!("{name}: cannot reuse listener: {e}"))
                })?),
                None => None,
            }
        }
    };
    let mut svc = fresh(shared, cfg.clone());
    let (change, prev) = {
        let mut slots = lock(&shared.slots);
        let Some(slot) = slots.iter_mut().find(|s| s.svc.cfg.name == name) else {
            return Err(CommandError::NotFound(format!("no service named {name}")));
        };
        let fallback = match &slot.fallback {
            Some(fb) if slot.svc.cfg.fallback_max_bytes == cfg.fallback_max_bytes => {
                new_fallback(&cfg).map(|_| fb.clone())
            }
            _ => new_fallback(&cfg),
        };
        let change = carry_over(&slot.svc, &mut svc);
        let b = slot.listener.take().zip(accept);
        let next = spawn_service(shared, Arc::new(svc), b, fallback);
        let prev = std::mem::replace(slot, next);
        publish(shared, &slots);
        (change, prev)
    };
    prev.stop.send_replace(true);
    {
        let mut config = lock(&shared.config);
        if let Some(s) = config.services.iter_mut().find(|s| s.name == name) {
            *s = cfg;
        }
    }
    retire_later(shared, prev.svc);
    Ok(ReloadReport {
        changed_services: vec![change],
        ..ReloadReport::default()
    })
}
