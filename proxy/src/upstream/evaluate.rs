//! The automatic decision: after every signal, read the service's
//! [`View`], ask the state machine ([`failover::decide`]) and, when it
//! says so, switch with the evidence behind the decision. A service
//! coordinated by a `[cluster]` is not switched here: the signal goes to
//! the cluster session instead (crate::cluster).

use serde_json::json;

use crate::events::Trigger;
use crate::upstream::failover::{self, Decision, View};
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, SwitchKind};
use crate::upstream::switch::switch;

/// Re-evaluates after a signal: switches if the state machine says so.
pub(crate) async fn evaluate(svc: &ServiceRt) {
    svc.refresh_status();
    if let Some(link) = svc.coordination.get() {
        // In a cluster only the cluster moves the service: tell the
        // session, which publishes this engine's view (crate::cluster).
        link.changed.notify_one();
        return;
    }
    let Ok(_guard) = svc.switch_lock.try_lock() else {
        return;
    };
    let view = svc.view();
    let decision = failover::decide(&view, svc.thresholds());
    let auto = |reason: String| SwitchKind::Failover {
        trigger: Trigger::Auto,
        actor: "system".into(),
        reason,
        evidence: evidence(svc, &view),
    };
    let result = match decision {
        Decision::Stay => return,
        Decision::Blocked(why) => {
            tracing::debug!(service = svc.name(), why, "switch wanted but blocked");
            return;
        }
        Decision::Failover { to } => {
            let reason = format!(
                "upstream {} is down",
                svc.upstream_name(view.active).unwrap_or("?")
            );
            switch(svc, to, auto(reason)).await
        }
        Decision::FollowRole { to } => {
            let reason = format!(
                "upstream {} was promoted outside continuity",
                svc.upstream_name(to).unwrap_or("?")
            );
            switch(svc, to, auto(reason)).await
        }
        Decision::Failback { to } => {
            let kind = SwitchKind::Recover {
                trigger: Trigger::Auto,
                actor: "system".into(),
                reason: "failback = auto: configured primary healthy again".into(),
            };
            switch(svc, to, kind).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(service = svc.name(), error = %e, "automatic switch failed");
    }
    svc.refresh_status();
}

/// Probe results, errors and thresholds behind an automatic decision.
fn evidence(svc: &ServiceRt, view: &View) -> serde_json::Value {
    let upstreams: Vec<_> = svc
        .upstreams
        .iter()
        .zip(view.upstreams.iter())
        .map(|(u, v)| {
            let h = lock(&u.health);
            json!({
                "upstream": u.cfg.name,
                "health": v.health,
                "fenced": v.fenced,
                "observed_role": h.observed,
                "consecutive_failures": h.counters.consecutive_failures,
                "consecutive_successes": h.counters.consecutive_successes,
                "last_error": h.last_error,
                "recent_probes": h.history.iter().rev().take(5).collect::<Vec<_>>(),
            })
        })
        .collect();
    let h = &svc.cfg.health;
    json!({
        "upstreams": upstreams,
        "thresholds": {
            "failure_threshold": h.failure_threshold,
            "recovery_threshold": h.recovery_threshold,
            "timeout_ms": h.timeout.as_millis() as u64,
            "connect_timeout_ms": h.connect_timeout.as_millis() as u64,
            "hold_down_seconds": h.hold_down.as_secs_f64(),
        },
    })
}
