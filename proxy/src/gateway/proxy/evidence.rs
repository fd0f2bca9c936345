//! Passive evidence: what a request saw of an upstream (refused, timed
//! out, failed), recorded by pingora's sync hooks and reported to the
//! failover state machine by the next async one.

use std::time::Duration;

use super::{Ctx, Gateway};
use crate::health::FailureKind;

/// Passive evidence waiting to be reported (filters that are not async
/// record it here; the next async hook reports it).
#[derive(Debug)]
pub(super) enum Evidence {
    Refused,
    ConnectTimeout(Duration),
    Failed(FailureKind, String),
}

impl Gateway {
    /// Reports passive evidence to the failover state machine.
    pub(super) async fn report(&self, ctx: &mut Ctx) {
        let Some((idx, ev)) = ctx.evidence.take() else {
            return;
        };
        match ev {
            Evidence::Refused => {
                let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                self.svc.on_refused(idx, &e).await;
            }
            Evidence::ConnectTimeout(waited) => self.svc.on_connect_timeout(idx, waited).await,
            Evidence::Failed(kind, message) => {
                let waited = ctx.upstream_start.map_or(Duration::ZERO, |t| t.elapsed());
                self.svc
                    .on_passive_failure(idx, kind, waited, message)
                    .await;
            }
        }
    }
}
