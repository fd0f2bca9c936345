//! Turns data-plane events into audit entries (SPEC 7): automatic and
//! manual switches with their evidence, upstream state changes, blocked
//! switches and refused held clients.
//!
//! The recorder subscribes before the engine's first probe
//! (`Engine::start_subscribed`). If it ever lags behind the bus, the
//! number of events it lost is itself audited: never silently ignored.

use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::{FailoverState, UpstreamHealth};
use serde_json::json;
use tokio::sync::broadcast;

use crate::audit::{Action, AuditLog, NewEntry, Severity};

/// The audit entry for one event, or `None` for events the audit log does
/// not keep (service status changes are derived from upstream changes).
pub fn entry_for(event: &Event) -> Option<NewEntry> {
    let service = event.service.clone();
    let entry = match &event.kind {
        EventKind::UpstreamStateChanged {
            upstream,
            old,
            new,
            error,
            passive,
        } => NewEntry::new(
            Action::HealthCheck,
            if *new == UpstreamHealth::Down {
                Severity::Error
            } else {
                Severity::Info
            },
            "system",
            json!({ "upstream": upstream, "old": old, "new": new, "error": error, "passive": passive }),
        ),
        EventKind::FailoverActivated {
            from,
            to,
            old_epoch,
            new_epoch,
            trigger,
            actor,
            reason,
            promoted,
            evidence,
            closed_connections,
        } => NewEntry::new(
            Action::FailoverActivated,
            Severity::Warning,
            actor.clone(),
            json!({
                "from": from, "to": to, "old_epoch": old_epoch, "new_epoch": new_epoch,
                "trigger": trigger, "reason": reason, "promoted": promoted,
                "closed_connections": closed_connections, "evidence": evidence,
            }),
        ),
        EventKind::RecoveryCompleted {
            from,
            to,
            old_epoch,
            new_epoch,
            trigger,
            actor,
            reason,
            recovery_seconds,
        } => NewEntry::new(
            Action::FailoverRecovered,
            Severity::Info,
            actor.clone(),
            json!({
                "from": from, "to": to, "old_epoch": old_epoch, "new_epoch": new_epoch,
                "trigger": trigger, "reason": reason, "in_failover_seconds": recovery_seconds,
            }),
        ),
        // Redis memory fallback (docs/fallback.md): audited as a switch to
        // and back from memory, `details.fallback = "memory"`.
        EventKind::FallbackActivated { fallback, reason } => NewEntry::new(
            Action::FailoverActivated,
            Severity::Warning,
            "system",
            json!({ "fallback": fallback, "trigger": "auto", "reason": reason }),
        ),
        EventKind::FallbackDeactivated {
            fallback,
            upstream,
            replayed,
            expired,
            failed,
            replay_ms,
            fallback_seconds,
        } => NewEntry::new(
            Action::FailoverRecovered,
            if *failed > 0 {
                Severity::Warning
            } else {
                Severity::Info
            },
            "system",
            json!({
                "fallback": fallback, "to": upstream, "trigger": "auto",
                "reason": "journal replayed to the recovered upstream",
                "replayed": replayed, "expired": expired, "failed": failed,
                "replay_ms": replay_ms, "in_failover_seconds": fallback_seconds,
            }),
        ),
        EventKind::FailoverBlocked { reason } => NewEntry::new(
            Action::DiagnosticEvent,
            Severity::Error,
            "system",
            json!({ "event": "failover_blocked", "reason": reason }),
        ),
        EventKind::FailoverStateChanged { old, new } => NewEntry::new(
            Action::DiagnosticEvent,
            match new {
                FailoverState::Emergency => Severity::Critical,
                FailoverState::Failover => Severity::Warning,
                _ => Severity::Info,
            },
            "system",
            json!({ "event": "failover_state_changed", "old": old, "new": new }),
        ),
        EventKind::HoldTimedOut { waited_ms } => NewEntry::new(
            Action::DiagnosticEvent,
            Severity::Warning,
            "system",
            json!({ "event": "hold_timed_out", "waited_ms": waited_ms }),
        ),
        // Written by the operator's POST itself (manual_intervention).
        EventKind::EmergencyDeclared { .. } | EventKind::ServiceStatusChanged { .. } => {
            return None
        }
        // Request-path observations: the diagnostics engine keeps them
        // (a write failure is audited as the alert it escalates to).
        EventKind::SlowQuery { .. }
        | EventKind::Neo4jWriteFailure { .. }
        | EventKind::UpstreamError { .. }
        | EventKind::ProtocolError { .. } => return None,
    };
    Some(match service {
        Some(s) => entry.service(s),
        None => entry,
    })
}

/// Runs until the bus closes: every event that maps to an entry is
/// appended (and fsynced) in order.
pub async fn run(audit: AuditLog, mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Some(entry) = entry_for(&event) {
                    if let Err(e) = audit.append(entry).await {
                        tracing::error!(error = %e, "audit append failed");
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::error!(missed, "audit recorder lagged behind the event bus");
                let entry = NewEntry::new(
                    Action::DiagnosticEvent,
                    Severity::Critical,
                    "system",
                    json!({ "event": "audit_recorder_lagged", "missed_events": missed }),
                );
                if let Err(e) = audit.append(entry).await {
                    tracing::error!(error = %e, "audit append failed");
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
