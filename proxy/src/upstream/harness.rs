//! A builder harness that runs one service's failover state machine in
//! process: a real [`ServiceRt`] with no sockets, fed probe outcomes and
//! passive evidence by hand, under tokio's paused clock, so hold-down,
//! thresholds, epochs and fencing are tested in milliseconds and without
//! sleeps (linkerd's `consecutive_failures` tests do the same).
//!
//! Services are `on_failover = "route"` unless a test says otherwise (a
//! route switch needs no upstream connection); a promote-mode test marks
//! its target as an observed primary first, so nothing is sent.
//!
//! ```ignore
//! let h = Harness::builder().upstreams(3).failure_threshold(2).build();
//! h.up_all().await;
//! h.fail(0, 2).await;
//! assert_eq!(h.active(), 1);
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::config::{
    Failback, FailoverMode, Kind, OnFailover, Role, ServiceConfig, UpstreamConfig,
};
use crate::events::{self, Event, EventKind};
use crate::health::{FailureKind, ObservedRole, ProbeOutcome};
use crate::metrics::ProxyMetrics;
use crate::snapshot::UpstreamHealth;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, FailoverCounters};

/// Builds a [`Harness`]: a redis service with `n` upstreams (the first the
/// configured primary) on addresses nothing listens on.
pub(crate) struct Builder {
    cfg: ServiceConfig,
}

impl Builder {
    pub fn upstreams(mut self, n: usize) -> Builder {
        self.cfg.upstreams = (0..n)
            .map(|i| {
                let role = if i == 0 {
                    Role::Primary
                } else {
                    Role::Secondary
                };
                UpstreamConfig::at(&format!("u{i}"), &format!("127.0.0.1:{}", 9 + i), role)
            })
            .collect();
        self
    }

    pub fn busy_grace(mut self, d: Duration) -> Builder {
        self.cfg.health.busy_grace = d;
        self
    }

    pub fn failure_threshold(mut self, n: u32) -> Builder {
        self.cfg.health.failure_threshold = n;
        self
    }

    pub fn recovery_threshold(mut self, n: u32) -> Builder {
        self.cfg.health.recovery_threshold = n;
        self
    }

    pub fn hold_down(mut self, d: Duration) -> Builder {
        self.cfg.health.hold_down = d;
        self
    }

    pub fn failover(mut self, mode: FailoverMode) -> Builder {
        self.cfg.failover = mode;
        self
    }

    pub fn failback(mut self, mode: Failback) -> Builder {
        self.cfg.failback = mode;
        self
    }

    pub fn on_failover(mut self, mode: OnFailover) -> Builder {
        self.cfg.on_failover = mode;
        self
    }

    pub fn build(self) -> Harness {
        let bus = events::bus();
        let events = bus.subscribe();
        let svc = ServiceRt::new(
            self.cfg,
            bus,
            ProxyMetrics::new(&prometheus::Registry::new()),
            Arc::new(FailoverCounters::default()),
            Duration::from_secs(1),
        );
        Harness {
            svc: Arc::new(svc),
            events,
        }
    }
}

/// One service's runtime, driven by hand.
pub(crate) struct Harness {
    pub svc: Arc<ServiceRt>,
    events: broadcast::Receiver<Event>,
}

impl Harness {
    pub fn builder() -> Builder {
        let mut cfg = ServiceConfig::new("cache", Kind::Redis, Vec::new());
        cfg.health.failure_threshold = 3;
        cfg.health.recovery_threshold = 2;
        cfg.health.hold_down = Duration::ZERO;
        Builder { cfg }.upstreams(2)
    }

    /// `n` good probes of upstream `idx`.
    pub async fn ok(&self, idx: usize, n: u32) {
        for _ in 0..n {
            let outcome = ProbeOutcome::success(Duration::from_millis(1), None);
            self.svc.on_probe(idx, outcome).await;
        }
    }

    /// One good probe that sees upstream `idx` in `role`.
    pub async fn ok_as(&self, idx: usize, role: ObservedRole) {
        let outcome = ProbeOutcome::success(Duration::from_millis(1), Some(role));
        self.svc.on_probe(idx, outcome).await;
    }

    /// `n` failed probes of upstream `idx`.
    pub async fn fail(&self, idx: usize, n: u32) {
        for _ in 0..n {
            let outcome =
                ProbeOutcome::failed(Duration::from_millis(1), FailureKind::Timeout, "timed out");
            self.svc.on_probe(idx, outcome).await;
        }
    }

    /// One probe of `idx` that connected and got no answer within `took`
    /// (busy or hung); the clock moves on by `took` first.
    pub async fn unanswered(&self, idx: usize, took: Duration) {
        tokio::time::advance(took).await;
        let outcome = ProbeOutcome::failed(took, FailureKind::Unanswered, "no answer");
        self.svc.on_probe(idx, outcome).await;
    }

    /// One good probe of `idx` that saw it busy (redis `-BUSY`).
    pub async fn busy(&self, idx: usize) {
        let outcome = ProbeOutcome::probed(
            Duration::from_millis(1),
            crate::health::Probed::degraded("BUSY (busy: counted as alive)"),
        );
        self.svc.on_probe(idx, outcome).await;
    }

    /// Passive evidence: a client's connect to `idx` was refused.
    pub async fn refused(&self, idx: usize) {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        self.svc.on_refused(idx, &e).await;
    }

    /// One good probe of every upstream: all judged up.
    pub async fn up_all(&self) {
        for i in 0..self.svc.upstreams.len() {
            self.ok(i, 1).await;
        }
    }

    pub fn active(&self) -> usize {
        self.svc.route.load().active
    }

    pub fn epoch(&self) -> u64 {
        self.svc.route.load().epoch
    }

    pub fn fenced(&self, idx: usize) -> bool {
        self.svc.route.load().fenced[idx]
    }

    pub fn health(&self, idx: usize) -> UpstreamHealth {
        lock(&self.svc.upstreams[idx].health).counters.health
    }

    /// The switch events (failovers and recoveries) emitted so far, as
    /// (old epoch, new epoch).
    pub fn switches(&mut self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            match ev.kind {
                EventKind::FailoverActivated {
                    old_epoch,
                    new_epoch,
                    ..
                }
                | EventKind::RecoveryCompleted {
                    old_epoch,
                    new_epoch,
                    ..
                } => out.push((old_epoch, new_epoch)),
                _ => {}
            }
        }
        out
    }
}
