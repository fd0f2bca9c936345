//! The entry points the serving layers (listener, gateway, the engine's
//! probe loop) call on a [`ServiceRt`]: a probe result and passive
//! evidence from real traffic. Each delegates to probe accounting
//! (upstream/probe.rs), which re-evaluates the service. The state types
//! are re-exported here for the serving layers.

use std::time::Duration;

use crate::health::{FailureKind, ProbeOutcome};
use crate::upstream::probe;

pub use crate::upstream::service::ServiceRt;
pub use crate::upstream::state::{lock, Route};

impl ServiceRt {
    /// Records one probe result, then re-evaluates the service.
    pub async fn on_probe(&self, idx: usize, outcome: ProbeOutcome) {
        probe::on_probe(self, idx, outcome).await;
    }

    /// A refused or reset client connect: the upstream is down at once.
    pub async fn on_refused(&self, idx: usize, error: &std::io::Error) {
        probe::on_refused(self, idx, error).await;
    }

    /// A failed request seen by the HTTP gateway: one probe failure.
    pub async fn on_passive_failure(
        &self,
        idx: usize,
        kind: FailureKind,
        waited: Duration,
        message: String,
    ) {
        probe::on_passive_failure(self, idx, kind, waited, message).await;
    }

    /// A client connect that ran past `connect_timeout_ms`: one probe failure.
    pub async fn on_connect_timeout(&self, idx: usize, waited: Duration) {
        probe::on_connect_timeout(self, idx, waited).await;
    }
}
