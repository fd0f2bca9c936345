//! Applying a reload: every new listener is bound first (a failure
//! refuses the whole reload, nothing applied), then services are added,
//! removed or replaced, and retired generations follow the running ones.

use std::sync::Arc;
use std::time::Instant;

use crate::config::{EngineConfig, ServiceConfig};
use crate::engine::reload::carry::carry_over;
use crate::engine::reload::retire::retire;
use crate::engine::reload::{diff, ReloadReport, ReloadStep};
use crate::engine::shared::Shared;
use crate::engine::spawn::{bind, dup, new_fallback, spawn_service};
use crate::error::CommandError;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;

/// Applies `new` (see the module docs of engine/reload/).
pub(crate) async fn reconfigure(
    shared: &Arc<Shared>,
    new: EngineConfig,
) -> Result<ReloadReport, CommandError> {
    let inner = shared;
    let _serial = inner.reload_lock.lock().await;
    if *inner.shutdown_tx.borrow() {
        return Err(CommandError::Conflict("the engine is shutting down".into()));
    }
    let old = lock(&inner.config).clone();
    let steps = diff(&old, &new);
    // Everything that can fail happens before anything changes.
    let mut bound = Vec::new();
    for step in &steps {
        if let ReloadStep::Add(cfg) = step {
            match bind(cfg).await {
                Ok(Some(b)) => bound.push((cfg.name.clone(), b)),
                Ok(None) => {}
                Err(e) => return Err(CommandError::Conflict(e.to_string())),
            }
        }
    }
    let mut dups = Vec::new();
    for step in &steps {
        if let ReloadStep::Replace(cfg) = step {
            let slots = lock(&inner.slots);
            let l = slots.iter().find(|s| s.svc.cfg.name == cfg.name);
            if let Some(std) = l.and_then(|s| s.listener.as_ref()) {
                let accept = dup(std).map_err(|e| {
                    CommandError::Conflict(format!("{}: cannot reuse listener: {e}", cfg.name))
                })?;
                dups.push((cfg.name.clone(), accept));
            }
        }
    }
    let mut report = ReloadReport::default();
    let mut retired = Vec::new();
    let fresh = |cfg: ServiceConfig| {
        ServiceRt::new(
            cfg,
            inner.events.clone(),
            inner.metrics.clone(),
            inner.counters.clone(),
            new.drain_timeout,
        )
    };
    {
        let mut slots = lock(&inner.slots);
        for step in steps {
            match step {
                ReloadStep::Remove(name) => {
                    if let Some(i) = slots.iter().position(|s| s.svc.cfg.name == name) {
                        let slot = slots.remove(i);
                        slot.stop.send_replace(true);
                        retired.push(slot.svc);
                        lock(&inner.listen_addrs).retain(|(n, _)| *n != name);
                        report.removed_services.push(name);
                    }
                }
                ReloadStep::Add(cfg) => {
                    let name = cfg.name.clone();
                    let b = take(&mut bound, &name);
                    if let Some((_, local)) = &b {
                        lock(&inner.listen_addrs).push((name.clone(), *local));
                    }
                    let fallback = new_fallback(&cfg);
                    let svc = Arc::new(fresh(cfg));
                    slots.push(spawn_service(shared, svc, b.map(|(b, _)| b), fallback));
                    report.added_services.push(name);
                }
                ReloadStep::Replace(cfg) => {
                    let Some(i) = slots.iter().position(|s| s.svc.cfg.name == cfg.name) else {
                        continue;
                    };
                    let Some(slot) = slots.get_mut(i) else {
                        continue;
                    };
                    let fallback = match &slot.fallback {
                        Some(fb) if slot.svc.cfg.fallback_max_bytes == cfg.fallback_max_bytes => {
                            new_fallback(&cfg).map(|_| fb.clone())
                        }
                        _ => new_fallback(&cfg),
                    };
                    let mut svc = fresh(cfg);
                    report
                        .changed_services
                        .push(carry_over(&slot.svc, &mut svc));
                    let accept = take(&mut dups, &slot.svc.cfg.name);
                    let b = slot.listener.take().zip(accept);
                    let next = spawn_service(shared, Arc::new(svc), b, fallback);
                    let prev = std::mem::replace(slot, next);
                    prev.stop.send_replace(true);
                    retired.push(prev.svc);
                }
            }
        }
        inner
            .services
            .store(Arc::new(slots.iter().map(|s| s.svc.clone()).collect()));
    }
    *lock(&inner.config) = new.clone();
    let until = Instant::now() + new.drain_timeout;
    for svc in retired {
        tokio::spawn(retire(shared.clone(), svc, until));
    }
    shared.refresh_state();
    tracing::info!(?report, "config reloaded");
    Ok(report)
}

fn take<T>(v: &mut Vec<(String, T)>, name: &str) -> Option<T> {
    let i = v.iter().position(|(n, _)| n == name)?;
    Some(v.swap_remove(i).1)
}

