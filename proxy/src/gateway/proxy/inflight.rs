//! The in-flight count of one gateway request, held for its whole life.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::gateway::Shared;
use crate::upstream::runtime::ServiceRt;

/// One in-flight request: counted in the engine's open count (the drain
/// waits for it), and in the service's active count and
/// `continuity_proxy_active_connections` gauge (for HTTP services, requests
/// in flight), which `max_connections` bounds.
pub(in crate::gateway) struct InFlight {
    open: Arc<std::sync::atomic::AtomicU64>,
    svc: Arc<ServiceRt>,
    gauge: prometheus::IntGauge,
}

impl InFlight {
    pub(in crate::gateway) fn new(shared: &Shared, svc: &Arc<ServiceRt>) -> InFlight {
        shared.open.fetch_add(1, Ordering::SeqCst);
        svc.active_conns.fetch_add(1, Ordering::SeqCst);
        shared.active.inc();
        InFlight {
            open: shared.open.clone(),
            svc: svc.clone(),
            gauge: shared.active.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.svc.active_conns.fetch_sub(1, Ordering::SeqCst);
        self.gauge.dec();
    }
}
