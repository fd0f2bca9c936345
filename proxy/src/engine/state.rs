//! The engine-wide failover state (SPEC 3), derived from every service's
//! status: `emergency`, `failover`, `degraded` or `normal`.

use std::sync::Arc;

use crate::config::Category;
use crate::snapshot::{FailoverState, ServiceStatus};
use crate::upstream::service::ServiceRt;

/// SPEC 3 engine state. `from_memory(s)`: whether `s` is answering its
/// clients from the memory fallback.
pub(crate) fn engine_state(
    services: &[Arc<ServiceRt>],
    declared: bool,
    from_memory: impl Fn(&ServiceRt) -> bool,
) -> FailoverState {
    let mut down = 0;
    let mut core_down = false;
    let mut serving_elsewhere = false;
    let mut degraded = false;
    for s in services {
        let status = s.status();
        if s.upstreams.is_empty() {
            // A stalled heartbeat (ETL pipeline) is an `etl_stall` alert of
            // tier 3 (SPEC 9), not an engine emergency: it carries no traffic.
            continue;
        }
        let active = s.route.load().active;
        if status == ServiceStatus::Down {
            down += 1;
            if s.cfg.category == Category::Core {
                core_down = true;
            } else {
                degraded = true;
            }
        }
        if status == ServiceStatus::Degraded {
            degraded = true;
        }
        if from_memory(s) || (active != s.cfg.configured_primary() && status != ServiceStatus::Down)
        {
            serving_elsewhere = true;
        }
    }
    if declared || core_down || down >= 2 {
        FailoverState::Emergency
    } else if serving_elsewhere {
        FailoverState::Failover
    } else if degraded {
        FailoverState::Degraded
    } else {
        FailoverState::Normal
    }
}
