//! Control-plane metric names and handles, and the `/metrics` exposition.
//!
//! The registry is passed in (never a global) and shared with the data
//! plane, which registers its own families into it; one scrape encodes
//! both. The gauges here describe engine state, so rather than being
//! pushed on every change they are refreshed from one
//! [`EngineSnapshot`] at scrape time: a scrape is then always internally
//! consistent, and services removed by a reload disappear from it.

use std::sync::Mutex;

use continuity_proxy::snapshot::{EngineSnapshot, ServiceStatus, UpstreamHealth};
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric name the control plane exports, in one place.
pub mod names {
    pub const AUTH_FAILURES_TOTAL: &str = "continuity_auth_failures_total";
    pub const SERVICE_UP: &str = "continuity_service_up";
    pub const UPTIME_RATIO: &str = "continuity_uptime_ratio";
    pub const FAILOVER_STATE: &str = "continuity_failover_state";
    pub const UPSTREAM_UP: &str = "continuity_upstream_up";
    pub const HELD_CONNECTIONS: &str = "continuity_held_connections";
    pub const SERVICE_EPOCH: &str = "continuity_service_epoch";
    /// Always 1; carries the service's `kind` and SLA `category` as labels.
    pub const SERVICE_INFO: &str = "continuity_service_info";
    pub const SERVICE_IN_FAILOVER: &str = "continuity_service_in_failover";
}

/// Label values of `continuity_auth_failures_total{reason}`.
pub mod auth_reason {
    pub const MISSING_TOKEN: &str = "missing_token";
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Every reason; each has its series at 0 from the start.
    pub const ALL: [&str; 3] = [MISSING_TOKEN, INVALID_TOKEN, RATE_LIMITED];
}

/// The exposition content type (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug)]
pub struct ControlMetrics {
    pub auth_failures: IntCounterVec,
    service_up: IntGaugeVec,
    uptime_ratio: GaugeVec,
    failover_state: IntGauge,
    upstream_up: IntGaugeVec,
    held_connections: IntGaugeVec,
    service_epoch: IntGaugeVec,
    service_info: IntGaugeVec,
    service_in_failover: IntGaugeVec,
    /// Serialises reset+refresh+gather so that concurrent scrapes never
    /// see each other's half-refreshed gauges.
    scrape: Mutex<()>,
}

impl ControlMetrics {
    /// Creates the control families and registers them into `registry`.
    /// Fails if a name is already registered there (two `AppState`s on
    /// one registry, or the data plane exporting the same name).
    pub fn register(registry: &Registry) -> Result<ControlMetrics, prometheus::Error> {
        let m = ControlMetrics {
            auth_failures: IntCounterVec::new(
                Opts::new(
                    names::AUTH_FAILURES_TOTAL,
                    "Failed control-plane authentications, by reason (missing_token, invalid_token, rate_limited).",
                ),
                &["reason"],
            )?,
            service_up: IntGaugeVec::new(
                Opts::new(
                    names::SERVICE_UP,
                    "1 when the service has a usable upstream (status healthy or degraded), else 0.",
                ),
                &["service"],
            )?,
            uptime_ratio: GaugeVec::new(
                Opts::new(
                    names::UPTIME_RATIO,
                    "Share of the last 24 hours the service was up (0 to 1).",
                ),
                &["service"],
            )?,
            failover_state: IntGauge::new(
                names::FAILOVER_STATE,
                "Engine failover state: 0 normal, 1 degraded, 2 failover, 3 emergency.",
            )?,
            upstream_up: IntGaugeVec::new(
                Opts::new(
                    names::UPSTREAM_UP,
                    "1 when the upstream is up by its probe thresholds, else 0 (down or not yet probed).",
                ),
                &["service", "upstream"],
            )?,
            held_connections: IntGaugeVec::new(
                Opts::new(
                    names::HELD_CONNECTIONS,
                    "Client connections currently held while the service has no usable upstream.",
                ),
                &["service"],
            )?,
            service_epoch: IntGaugeVec::new(
                Opts::new(
                    names::SERVICE_EPOCH,
                    "Failover epoch of the service: 0 at start, +1 per switch.",
                ),
                &["service"],
            )?,
            service_info: IntGaugeVec::new(
                Opts::new(
                    names::SERVICE_INFO,
                    "Always 1: the service's kind and SLA category, for alert rules and dashboards to join on.",
                ),
                &["service", "kind", "category"],
            )?,
            service_in_failover: IntGaugeVec::new(
                Opts::new(
                    names::SERVICE_IN_FAILOVER,
                    "1 while the service is served by an upstream other than its configured primary, else 0.",
                ),
                &["service"],
            )?,
            scrape: Mutex::new(()),
        };
        // Every reason's series at 0 from the start: Prometheus' increase()
        // does not count the event that creates a series.
        for reason in auth_reason::ALL {
            m.auth_failures.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.service_up.clone()))?;
        registry.register(Box::new(m.uptime_ratio.clone()))?;
        registry.register(Box::new(m.failover_state.clone()))?;
        registry.register(Box::new(m.upstream_up.clone()))?;
        registry.register(Box::new(m.held_connections.clone()))?;
        registry.register(Box::new(m.service_epoch.clone()))?;
        registry.register(Box::new(m.service_info.clone()))?;
        registry.register(Box::new(m.service_in_failover.clone()))?;
        Ok(m)
    }

    /// Sets the state gauges from `snap`, dropping series of services and
    /// upstreams that no longer exist.
    fn refresh(&self, snap: &EngineSnapshot) {
        self.service_up.reset();
        self.uptime_ratio.reset();
        self.upstream_up.reset();
        self.held_connections.reset();
        self.service_epoch.reset();
        self.service_info.reset();
        self.service_in_failover.reset();
        self.failover_state.set(snap.failover_state.as_gauge());
        for s in &snap.services {
            let svc = [s.name.as_str()];
            let up = matches!(s.status, ServiceStatus::Healthy | ServiceStatus::Degraded);
            self.service_up.with_label_values(&svc).set(i64::from(up));
            self.uptime_ratio
                .with_label_values(&svc)
                .set((s.uptime_percent_24h / 100.0).clamp(0.0, 1.0));
            self.held_connections
                .with_label_values(&svc)
                .set(saturating_i64(s.held_connections));
            self.service_epoch
                .with_label_values(&svc)
                .set(saturating_i64(s.epoch));
            self.service_info
                .with_label_values(&[s.name.as_str(), s.kind.as_str(), s.category.as_str()])
                .set(1);
            self.service_in_failover
                .with_label_values(&svc)
                .set(i64::from(s.in_failover));
            for u in &s.upstreams {
                let up = u.health == UpstreamHealth::Up;
                self.upstream_up
                    .with_label_values(&[s.name.as_str(), u.name.as_str()])
                    .set(i64::from(up));
            }
        }
    }

    /// Refreshes the state gauges from `snap` and encodes everything in
    /// `registry` (control and data plane) in the text format.
    pub fn render(
        &self,
        snap: &EngineSnapshot,
        registry: &Registry,
    ) -> Result<String, prometheus::Error> {
        let _one_scrape_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(snap);
        let families = registry.gather();
        let mut buf = Vec::new();
        TextEncoder::new().encode(&families, &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{engine_snapshot, service};
    use continuity_proxy::config::Kind;
    use continuity_proxy::snapshot::FailoverState;

    /// Pipes `text` through `promtool check metrics` when it is installed
    /// (required when `CI=true`).
    pub(crate) fn promtool_check(text: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "promtool is required in CI: {e}"
                );
                eprintln!("promtool not found ({e}); skipping the lint");
                return;
            }
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n---\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn exposition_has_help_and_passes_promtool() {
        let registry = Registry::new();
        let m = ControlMetrics::register(&registry).expect("register");
        m.auth_failures
            .with_label_values(&[auth_reason::INVALID_TOKEN])
            .inc();
        let mut snap = engine_snapshot(vec![
            service("redis", Kind::Redis, ServiceStatus::Degraded),
            service("pg", Kind::Postgres, ServiceStatus::Down),
        ]);
        snap.failover_state = FailoverState::Emergency;
        snap.services[0].epoch = 3;
        snap.services[0].held_connections = 2;
        snap.services[1].upstreams[0].health = UpstreamHealth::Down;
        snap.services[1].category = continuity_proxy::config::Category::Federal;
        snap.services[1].in_failover = true;
        let text = m.render(&snap, &registry).expect("render");
        for name in [
            names::AUTH_FAILURES_TOTAL,
            names::SERVICE_UP,
            names::UPTIME_RATIO,
            names::FAILOVER_STATE,
            names::UPSTREAM_UP,
            names::HELD_CONNECTIONS,
            names::SERVICE_EPOCH,
            names::SERVICE_INFO,
            names::SERVICE_IN_FAILOVER,
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "HELP for {name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "TYPE for {name}");
        }
        assert!(text.contains("continuity_failover_state 3\n"));
        // Every reason from the start, at 0 until its first failure.
        assert!(text.contains("continuity_auth_failures_total{reason=\"invalid_token\"} 1\n"));
        assert!(text.contains("continuity_auth_failures_total{reason=\"missing_token\"} 0\n"));
        assert!(text.contains("continuity_auth_failures_total{reason=\"rate_limited\"} 0\n"));
        assert!(text.contains("continuity_service_up{service=\"redis\"} 1\n"));
        assert!(text.contains("continuity_service_up{service=\"pg\"} 0\n"));
        assert!(text.contains("continuity_uptime_ratio{service=\"redis\"} 0.995\n"));
        assert!(text.contains("continuity_service_epoch{service=\"redis\"} 3\n"));
        assert!(text.contains("continuity_held_connections{service=\"redis\"} 2\n"));
        assert!(text.contains("continuity_upstream_up{service=\"pg\",upstream=\"pg-primary\"} 0\n"));
        // The SLA class and kind, for alert rules and dashboards to join on.
        assert!(text.contains(
            "continuity_service_info{category=\"core\",kind=\"redis\",service=\"redis\"} 1\n"
        ));
        assert!(text.contains(
            "continuity_service_info{category=\"federal\",kind=\"postgres\",service=\"pg\"} 1\n"
        ));
        assert!(text.contains("continuity_service_in_failover{service=\"redis\"} 0\n"));
        assert!(text.contains("continuity_service_in_failover{service=\"pg\"} 1\n"));
        promtool_check(&text);

        // A service removed (config reload) leaves no stale series.
        snap.services.truncate(1);
        let text = m.render(&snap, &registry).expect("render");
        assert!(!text.contains("service=\"pg\""));
        promtool_check(&text);
    }

    #[test]
    fn registering_twice_on_one_registry_fails() {
        let registry = Registry::new();
        let _m = ControlMetrics::register(&registry).expect("first");
        assert!(ControlMetrics::register(&registry).is_err());
    }
}
