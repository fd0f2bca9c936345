//! Live reconfiguration (SPEC 1: SIGHUP and `POST /api/ops/config/reload`).
//!
//! [`diff`] turns (running config, new config) into [`ReloadStep`]s, and
//! [`Engine::reconfigure`] applies them: every new listener is bound first
//! (a failure refuses the whole reload, nothing applied), then services are
//! added, removed or replaced. A replaced service is a new [`ServiceRt`]
//! that shares, by name, the unchanged upstreams (health, counters, latency)
//! and carries the route (same active upstream by name, fenced set, epoch)
//! and the service state. Each generation of a service has its own stop
//! switch; the old one stops its probes and accept loop, and a `retire`
//! task keeps its open relays in step with the running service: relays on
//! an unchanged upstream are kept (and still closed by a later failover),
//! relays on a removed or changed upstream close after `drain_timeout`.
//! docs/reload.md has the rules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::{EngineConfig, ServiceConfig};
use crate::engine::{probe_loop, CommandError, Engine};
use crate::error::ProxyError;
use crate::listener;

mod retire;
use crate::upstream::runtime::{lock, Route, ServiceRt};
use retire::retire;

/// One running generation of a service: its stop switch (probes, accept
/// loop, held clients) and the listening socket it shares with the next.
pub struct Slot {
    pub svc: Arc<ServiceRt>,
    pub stop: watch::Sender<bool>,
    pub listener: Option<std::net::TcpListener>,
}

/// A bound listener: the socket kept by the engine and the accept loop's
/// duplicate of it.
pub(crate) type Bound = (std::net::TcpListener, tokio::net::TcpListener);

/// Binds `svc`'s listener if it is an L4-proxied service with `listen`.
pub(crate) async fn bind(svc: &ServiceConfig) -> Result<Option<(Bound, SocketAddr)>, ProxyError> {
    let proxied = svc.kind.is_l4_proxied() || svc.kind.is_http_proxied();
    let (Some(addr), true) = (svc.listen, proxied) else {
        return Ok(None);
    };
    if svc.kind.is_http_proxied() {
        crate::gateway::check(svc).map_err(|message| ProxyError::Config {
            service: svc.name.clone(),
            message,
        })?;
    }
    let err = |source: std::io::Error| ProxyError::Bind {
        service: svc.name.clone(),
        addr,
        source,
    };
    let l = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().unwrap_or(addr);
    let std = l.into_std().map_err(err)?;
    let accept = dup(&std).map_err(err)?;
    Ok(Some(((std, accept), local)))
}

/// A second handle on the same listening socket (the kernel backlog is
/// shared, so no client is lost while accept loops change hands).
fn dup(l: &std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(l.try_clone()?)
}

/// Starts `svc`'s probes and, with a listener, its accept loop.
pub(crate) fn spawn_service(engine: &Engine, svc: Arc<ServiceRt>, bound: Option<Bound>) -> Slot {
    let stop = watch::channel(false).0;
    let mut tasks = Vec::new();
    for idx in 0..svc.upstreams.len() {
        tasks.push(tokio::spawn(probe_loop(
            engine.clone(),
            svc.clone(),
            idx,
            stop.subscribe(),
        )));
    }
    let listener = bound.map(|(std, accept)| {
        if svc.cfg.kind.is_http_proxied() {
            drop(accept);
            let started = crate::gateway::start(crate::gateway::GatewayParams {
                svc: svc.clone(),
                listener: &std,
                stop: stop.subscribe(),
                queue: engine.inner.queue.clone(),
                access_log: true,
                open: engine.inner.open_connections.clone(),
            });
            match started {
                Ok(t) => tasks.extend(t),
                Err(e) => {
                    tracing::error!(service = svc.name(), error = %e, "HTTP gateway not started")
                }
            }
            return std;
        }
        tasks.push(tokio::spawn(listener::accept_loop(
            svc.clone(),
            accept,
            listener::Signals {
                shutdown: stop.subscribe(),
                force_close: engine.inner.force_close_tx.subscribe(),
                open: engine.inner.open_connections.clone(),
            },
        )));
        std
    });
    let mut all = lock(&engine.inner.tasks);
    all.retain(|t| !t.is_finished());
    all.extend(tasks);
    Slot {
        svc,
        stop,
        listener,
    }
}

/// What a reload does to one service.
#[derive(Debug, Clone)]
pub enum ReloadStep {
    Add(ServiceConfig),
    Remove(String),
    /// Same name and listener, other settings or upstreams.
    Replace(ServiceConfig),
}

/// The steps from `old` to `new`, by service name. A changed `listen` or
/// kind is a remove then an add; a changed `drain_timeout` replaces all.
pub fn diff(old: &EngineConfig, new: &EngineConfig) -> Vec<ReloadStep> {
    let mut steps = Vec::new();
    for o in &old.services {
        match new.services.iter().find(|n| n.name == o.name) {
            None => steps.push(ReloadStep::Remove(o.name.clone())),
            Some(n) if n.listen != o.listen || n.kind != o.kind => {
                steps.push(ReloadStep::Remove(o.name.clone()));
                steps.push(ReloadStep::Add(n.clone()));
            }
            Some(n) if n != o || new.drain_timeout != old.drain_timeout => {
                steps.push(ReloadStep::Replace(n.clone()))
            }
            Some(_) => {}
        }
    }
    for n in &new.services {
        if !old.services.iter().any(|o| o.name == n.name) {
            steps.push(ReloadStep::Add(n.clone()));
        }
    }
    steps
}

/// What a reload changed (for the answer and the audit entry).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReloadReport {
    pub added_services: Vec<String>,
    pub removed_services: Vec<String>,
    pub changed_services: Vec<ServiceChange>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        self.added_services.is_empty()
            && self.removed_services.is_empty()
            && self.changed_services.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceChange {
    pub service: String,
    /// Settings other than the upstream list changed.
    pub settings_changed: bool,
    pub added_upstreams: Vec<String>,
    pub removed_upstreams: Vec<String>,
    /// Same name, other address or settings: a new upstream for new clients.
    pub changed_upstreams: Vec<String>,
    /// Untouched: its open connections are kept.
    pub kept_upstreams: Vec<String>,
}

impl Engine {
    /// Applies a new data-plane config without a restart. Refused (nothing
    /// applied) when a new listener cannot bind or the engine is stopping.
    pub async fn reconfigure(&self, new: EngineConfig) -> Result<ReloadReport, CommandError> {
        let engine = self.clone();
        tokio::spawn(async move { engine.reconfigure_now(new).await })
            .await
            .unwrap_or_else(|e| Err(CommandError::Conflict(format!("reload failed: {e}"))))
    }

    async fn reconfigure_now(&self, new: EngineConfig) -> Result<ReloadReport, CommandError> {
        let inner = &self.inner;
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
                        let svc = Arc::new(fresh(cfg));
                        slots.push(spawn_service(self, svc, b.map(|(b, _)| b)));
                        report.added_services.push(name);
                    }
                    ReloadStep::Replace(cfg) => {
                        let Some(i) = slots.iter().position(|s| s.svc.cfg.name == cfg.name) else {
                            continue;
                        };
                        let Some(slot) = slots.get_mut(i) else {
                            continue;
                        };
                        let mut svc = fresh(cfg);
                        report
                            .changed_services
                            .push(carry_over(&slot.svc, &mut svc));
                        let accept = take(&mut dups, &slot.svc.cfg.name);
                        let b = slot.listener.take().zip(accept);
                        let next = spawn_service(self, Arc::new(svc), b);
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
            tokio::spawn(retire(self.clone(), svc, until));
        }
        self.refresh_state();
        tracing::info!(?report, "config reloaded");
        Ok(report)
    }
}

fn take<T>(v: &mut Vec<(String, T)>, name: &str) -> Option<T> {
    let i = v.iter().position(|(n, _)| n == name)?;
    Some(v.swap_remove(i).1)
}

/// Moves into `fresh` what survives a reload of `old`: unchanged upstreams
/// (shared), the route by upstream name, the service state, the fallback.
fn carry_over(old: &ServiceRt, fresh: &mut ServiceRt) -> ServiceChange {
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
    if fresh.fallback.is_some() && old.cfg.fallback_max_bytes == fresh.cfg.fallback_max_bytes {
        if let Some(fb) = &old.fallback {
            fresh.fallback = Some(fb.clone());
        }
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Kind, Role, UpstreamConfig};

    fn svc(name: &str, ups: &[(&str, &str)]) -> ServiceConfig {
        let ups = ups
            .iter()
            .map(|(n, a)| UpstreamConfig::at(n, a, Role::Primary))
            .collect();
        ServiceConfig::new(name, Kind::Redis, ups)
    }

    fn cfg(services: Vec<ServiceConfig>) -> EngineConfig {
        EngineConfig {
            services,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn diff_by_name() {
        let a = svc("a", &[("a1", "127.0.0.1:1")]);
        let b = svc("b", &[("b1", "127.0.0.1:2")]);
        let b2 = svc("b", &[("b1", "127.0.0.1:3")]);
        let c = svc("c", &[("c1", "127.0.0.1:4")]);
        let steps = diff(&cfg(vec![a.clone(), b]), &cfg(vec![b2, c]));
        let names: Vec<String> = steps
            .iter()
            .map(|s| match s {
                ReloadStep::Add(c) => format!("+{}", c.name),
                ReloadStep::Remove(n) => format!("-{n}"),
                ReloadStep::Replace(c) => format!("~{}", c.name),
            })
            .collect();
        assert_eq!(names, ["-a", "~b", "+c"]);
        assert!(diff(&cfg(vec![a.clone()]), &cfg(vec![a])).is_empty());
    }
}
