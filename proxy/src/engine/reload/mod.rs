//! Live reconfiguration (SPEC 1: SIGHUP and `POST /api/ops/config/reload`).
//!
//! [`diff`] turns (running config, new config) into [`ReloadStep`]s, each
//! one `Command` (`AddService`, `RemoveService`, `ReplaceService`), and
//! [`Engine::reconfigure`](crate::Engine::reconfigure) applies them
//! (`apply`): every new listener is bound first (a failure refuses the
//! whole reload, nothing applied), then each command goes through the
//! engine's dispatcher to its handler (`services`). A replaced service is
//! a new `ServiceRt` (`carry`) that shares, by name, the unchanged
//! upstreams (health, counters, latency) and carries the route (same
//! active upstream by name, fenced set, epoch) and the service state. Each generation of a service has its own stop
//! switch; the old one stops its probes and accept loop, and a `retire`
//! task keeps its open relays in step with the running service: relays on
//! an unchanged upstream are kept (and still closed by a later failover),
//! relays on a removed or changed upstream close after `drain_timeout`.
//! docs/reload.md has the rules.

use serde::Serialize;

use crate::config::{EngineConfig, ServiceConfig};

pub(crate) mod apply;
pub(crate) mod carry;
pub(crate) mod retire;
pub(crate) mod services;

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
    /// Adds the changes of one more step.
    pub(crate) fn join(&mut self, other: ReloadReport) {
        self.added_services.extend(other.added_services);
        self.removed_services.extend(other.removed_services);
        self.changed_services.extend(other.changed_services);
    }

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

    fn listening(name: &str, addr: std::net::SocketAddr) -> ServiceConfig {
        let mut s = svc(name, &[(&format!("{name}1"), "127.0.0.1:9")]);
        s.listen = Some(addr);
        s
    }

    /// A reload whose second new listener cannot bind applies nothing,
    /// not even the first; a good one applies each step as a command.
    #[tokio::test]
    async fn a_bind_failure_refuses_the_whole_reload() {
        let registry = prometheus::Registry::new();
        let engine = crate::Engine::start(cfg(vec![]), &registry).await.unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bad = cfg(vec![
            listening("a", free),
            listening("b", taken.local_addr().unwrap()),
        ]);
        let err = engine.reconfigure(bad).await.unwrap_err();
        assert!(err.to_string().contains("cannot listen"), "{err}");
        assert!(engine.snapshot().services.is_empty());
        assert!(engine.listen_addrs().is_empty());

        let good = cfg(vec![
            listening("a", free),
            svc("c", &[("c1", "127.0.0.1:9")]),
        ]);
        let report = engine.reconfigure(good).await.unwrap();
        assert_eq!(report.added_services, ["a", "c"]);
        let names: Vec<_> = engine
            .snapshot()
            .services
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "c"]);
        let report = engine.reconfigure(cfg(vec![])).await.unwrap();
        assert_eq!(report.removed_services, ["a", "c"]);
        assert!(engine.snapshot().services.is_empty());
        engine.shutdown(std::time::Duration::ZERO).await;
    }
}
