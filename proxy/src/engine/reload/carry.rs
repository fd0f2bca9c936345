//! What a replaced service keeps from its previous generation: unchanged
//! upstreams (shared, with their health and counters), the route by
//! upstream name (same active, fenced set, epoch), the service state.

use std::sync::Arc;

use crate::config::ServiceConfig;
use crate::engine::reload::ServiceChange;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, Route};

/// Moves into `fresh` what survives a reload of `old`: unchanged upstreams
/// (shared), the route by upstream name, the service state.
pub(crate) fn carry_over(old: &ServiceRt, fresh: &mut ServiceRt) -> ServiceChange {
    let mut change = ServiceChange {
        service: fresh.cfg.name.clone(),
        settings_changed: ServiceConfig {
            upstreams: Vec::new(),
            ..old.cfg.clone()
        } != ServiceConfig {
            upstreams: Vec::new(),
            ..fresh.cfg.clone()
        },
        ..ServiceChange::default()
    };
    for u in fresh.upstreams.iter_mut() {
        match old.upstreams.iter().find(|o| o.cfg.name == u.cfg.name) {
            Some(o) if o.cfg == u.cfg => {
                change.kept_upstreams.push(u.cfg.name.clone());
                *u = o.clone();
            }
            Some(_) => change.changed_upstreams.push(u.cfg.name.clone()),
            None => change.added_upstreams.push(u.cfg.name.clone()),
        }
    }
    for o in &old.upstreams {
        if !fresh.upstreams.iter().any(|u| u.cfg.name == o.cfg.name) {
            change.removed_upstreams.push(o.cfg.name.clone());
        }
    }
    let route = old.route.load_full();
    let by_name = |name: Option<&str>| {
        name.and_then(|n| fresh.upstreams.iter().position(|u| u.cfg.name == n))
    };
    let kept_active = by_name(old.upstream_name(route.active));
    let active = kept_active.unwrap_or_else(|| fresh.cfg.configured_primary());
    let fenced = fresh
        .upstreams
        .iter()
        .map(|u| {
            old.upstreams
                .iter()
                .position(|o| o.cfg.name == u.cfg.name)
                .and_then(|j| route.fenced.get(j).copied())
                .unwrap_or(false)
        })
        .collect();
    fresh.route.store(Arc::new(Route {
        active,
        epoch: route.epoch + u64::from(kept_active.is_none()),
        fenced,
        switching: false,
        drain: None,
    }));
    {
        let mut o = lock(&old.state);
        let mut f = lock(&fresh.state);
        f.last_switch = o.last_switch;
        f.since = o.since;
        f.down_since = o.down_since;
        f.failed_over_at = o.failed_over_at;
        f.status = o.status;
        f.reported = o.reported;
        f.uptime = std::mem::take(&mut o.uptime);
    }
    change
}
