//! Turns data-plane events into audit entries (SPEC 7): automatic and
//! manual switches with their evidence, upstream state changes, blocked
//! switches, and per-interval summaries of refused held clients.
//!
//! The recorder reads a queue of its own ([`AuditQueue`],
//! proxy/src/events.rs), filled from before the engine's first probe
//! (`Engine::start_audited`). Per-request observer events never enter it,
//! and it never drops an event, so a flood of clients cannot push a
//! failover out of the log. Held clients refused after `buffer_timeout_ms`
//! are not one entry each: every [`HOLD_SUMMARY_INTERVAL`] the recorder
//! writes one `hold_timeouts` entry per service that refused any, with the
//! count, first and last time and a sample of client addresses.
//!
//! Entries are appended in batches: whatever is queued (up to
//! [`MAX_BATCH`]) is handed to the writer at once, which commits it with one
//! fsync (group commit), so the recorder keeps up with bursts.

use std::time::Duration;

use continuity_proxy::events::{AuditQueue, Event, EventKind, HoldSummary};
use continuity_proxy::snapshot::{FailoverState, UpstreamHealth};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit::{Action, AuditLog, NewEntry, Severity};

/// How often held clients refused are summarised: at most one
/// `hold_timeouts` entry per service per interval.
pub const HOLD_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Most events taken from the queue (and appended together) at once.
pub const MAX_BATCH: usize = 1024;

/// The audit entry for one event, or `None` for events the recorder does
/// not write one for: service status changes (derived from upstream
/// changes), an operator's emergency (written by the POST itself),
/// request-path observations, and held clients refused (summarised:
/// [`hold_entry`]). `Some` exactly for the events the engine queues for the
/// recorder ([`EventKind::audit_route`]).
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
        // [cluster] (docs/cluster.md): the decision, on the engine whose
        // compare-and-swap landed; applying it is each engine's
        // FailoverActivated/RecoveryCompleted with the same epoch.
        EventKind::ClusterDecision {
            node_id,
            revision,
            from,
            to,
            epoch,
            trigger,
            actor,
            reason,
            evidence,
        } => NewEntry::new(
            Action::DiagnosticEvent,
            Severity::Warning,
            actor.clone(),
            json!({
                "event": "cluster_decision", "node_id": node_id, "revision": revision,
                "from": from, "to": to, "epoch": epoch, "trigger": trigger,
                "reason": reason, "evidence": evidence,
            }),
        ),
        EventKind::ClusterConnection {
            node_id,
            connected,
            reason,
        } => NewEntry::new(
            Action::DiagnosticEvent,
            if *connected {
                Severity::Info
            } else {
                Severity::Warning
            },
            "system",
            json!({ "event": "cluster_connection", "node_id": node_id, "connected": connected, "reason": reason }),
        ),
        // Summarised per interval: see `hold_entry`.
        EventKind::HoldTimedOut { .. } => return None,
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

/// The `hold_timeouts` entry of one service's summary over `interval`.
pub fn hold_entry(s: &HoldSummary, interval: Duration) -> NewEntry {
    let entry = NewEntry::new(
        Action::DiagnosticEvent,
        Severity::Warning,
        "system",
        json!({
            "event": "hold_timeouts",
            "count": s.count,
            "first_at": s.first_at,
            "last_at": s.last_at,
            "max_waited_ms": s.max_waited_ms,
            "clients_sample": s.clients_sample,
            "interval_seconds": interval.as_secs_f64(),
        }),
    );
    if s.service.is_empty() {
        entry
    } else {
        entry.service(s.service.clone())
    }
}

/// The running recorder task.
pub struct Recorder {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Starts the recorder, registering `continuity_audit_queue_depth`.
pub fn spawn(audit: AuditLog, queue: AuditQueue, registry: &prometheus::Registry) -> Recorder {
    if let Some(gauge) = queue.depth_gauge() {
        if let Err(e) = registry.register(Box::new(gauge)) {
            tracing::warn!(error = %e, "cannot register the audit queue depth gauge");
        }
    }
    spawn_with_interval(audit, queue, HOLD_SUMMARY_INTERVAL)
}

/// [`spawn`] with another summary interval, and no metric (tests).
pub fn spawn_with_interval(audit: AuditLog, queue: AuditQueue, interval: Duration) -> Recorder {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(audit, queue, stopped, interval));
    Recorder {
        stop: Some(stop),
        task,
    }
}

impl Recorder {
    /// Closes the queue, writes everything still in it and the pending
    /// hold-timeout summaries, and waits for that (at most `within`; then
    /// the task is stopped and the loss is logged). True: all written.
    pub async fn finish(mut self, within: Duration) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(within, &mut self.task).await {
            Ok(_) => true,
            Err(_) => {
                self.task.abort();
                tracing::error!(
                    within_ms = within.as_millis() as u64,
                    "audit recorder did not finish in time: queued events were NOT audited"
                );
                false
            }
        }
    }
}

/// Appends every entry (one batch, group-committed), logging failures.
async fn record(audit: &AuditLog, entries: Vec<NewEntry>) {
    if entries.is_empty() {
        return;
    }
    for r in audit.append_many(entries).await {
        if let Err(e) = r {
            tracing::error!(error = %e, "audit append failed");
        }
    }
}

fn summaries(queue: &AuditQueue, interval: Duration) -> Vec<NewEntry> {
    queue
        .take_hold_summaries()
        .iter()
        .map(|s| hold_entry(s, interval))
        .collect()
}

/// Runs until `stop` fires: each batch of
/// queued events is appended in order; every `interval` the hold-timeout
/// summaries are. On stop, the queue is closed and drained first.
async fn run(
    audit: AuditLog,
    mut queue: AuditQueue,
    mut stop: oneshot::Receiver<()>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Event> = Vec::with_capacity(MAX_BATCH);
    // A dropped `Recorder` is no stop signal: recording goes on.
    let mut stoppable = true;
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                let entries = batch.drain(..).filter_map(|e| entry_for(&e)).collect();
                record(&audit, entries).await;
            }
            _ = tick.tick() => record(&audit, summaries(&queue, interval)).await,
            r = &mut stop, if stoppable => match r {
                Ok(()) => {
                    queue.close();
                    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
                        let entries = batch.drain(..).filter_map(|e| entry_for(&e)).collect();
                        record(&audit, entries).await;
                    }
                    break;
                }
                Err(_) => stoppable = false,
            },
        }
    }
    record(&audit, summaries(&queue, interval)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditFilter, AuditSettings};
    use continuity_proxy::events::{audited_bus, AuditRoute, Trigger};
    use continuity_proxy::snapshot::ServiceStatus;

    fn every_kind() -> Vec<EventKind> {
        vec![
            EventKind::UpstreamStateChanged {
                upstream: "a".into(),
                old: UpstreamHealth::Up,
                new: UpstreamHealth::Down,
                error: None,
                passive: false,
            },
            EventKind::ServiceStatusChanged {
                old: ServiceStatus::Healthy,
                new: ServiceStatus::Down,
            },
            EventKind::FailoverActivated {
                from: Some("a".into()),
                to: "b".into(),
                old_epoch: 1,
                new_epoch: 2,
                trigger: Trigger::Auto,
                actor: "system".into(),
                reason: "down".into(),
                promoted: false,
                evidence: json!({}),
                closed_connections: 0,
            },
            EventKind::RecoveryCompleted {
                from: Some("b".into()),
                to: "a".into(),
                old_epoch: 2,
                new_epoch: 3,
                trigger: Trigger::Manual,
                actor: "ops".into(),
                reason: "back".into(),
                recovery_seconds: 1.0,
            },
            EventKind::FailoverBlocked { reason: "x".into() },
            EventKind::FailoverStateChanged {
                old: FailoverState::Normal,
                new: FailoverState::Failover,
            },
            EventKind::EmergencyDeclared {
                enabled: true,
                actor: "ops".into(),
                reason: "x".into(),
            },
            EventKind::FallbackActivated {
                fallback: "memory".into(),
                reason: "x".into(),
            },
            EventKind::FallbackDeactivated {
                fallback: "memory".into(),
                upstream: "a".into(),
                replayed: 1,
                expired: 0,
                failed: 0,
                replay_ms: 1,
                fallback_seconds: 1.0,
            },
            EventKind::HoldTimedOut { waited_ms: 1 },
            EventKind::SlowQuery {
                upstream: "a".into(),
                statement: "GET".into(),
                duration_ms: 1.0,
                command_kind: "command".into(),
            },
            EventKind::Neo4jWriteFailure {
                upstream: "a".into(),
                statement: "CREATE".into(),
                code: "Neo.x".into(),
            },
            EventKind::UpstreamError {
                upstream: "a".into(),
                code: "LOADING".into(),
                message: "x".into(),
            },
            EventKind::ProtocolError {
                upstream: "a".into(),
                reason: "x".into(),
            },
            EventKind::ClusterDecision {
                node_id: "n1".into(),
                revision: 7,
                from: "a".into(),
                to: "b".into(),
                epoch: 2,
                trigger: "auto".into(),
                actor: "system".into(),
                reason: "x".into(),
                evidence: json!({}),
            },
            EventKind::ClusterConnection {
                node_id: "n1".into(),
                connected: false,
                reason: Some("x".into()),
            },
        ]
    }

    #[test]
    fn the_queue_carries_exactly_the_events_that_become_entries() {
        for kind in every_kind() {
            let route = kind.audit_route();
            let ev = Event::new(Some("redis"), kind);
            assert_eq!(
                entry_for(&ev).is_some(),
                route == AuditRoute::Entry,
                "{ev:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_loses_no_auditable_event_and_summarises_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = AuditSettings {
            dir: tmp.path().to_path_buf(),
            ..AuditSettings::default()
        };
        let (log, _) = AuditLog::open(settings, &prometheus::Registry::new())
            .await
            .unwrap();
        let (bus, queue) = audited_bus();
        let recorder = spawn_with_interval(log.clone(), queue, Duration::from_millis(100));
        const HOLDS: u64 = 20_000;
        const STEP: u64 = 5;
        const SWITCHES: u64 = HOLDS / STEP;
        let producer = tokio::task::spawn_blocking(move || {
            for i in 0..HOLDS {
                bus.hold_timed_out("redis", Some([10, 0, 0, (i % 20) as u8].into()), i);
                let _ = bus.send(Event::new(
                    Some("redis"),
                    EventKind::SlowQuery {
                        upstream: "a".into(),
                        statement: "GET".into(),
                        duration_ms: 1.0,
                        command_kind: "command".into(),
                    },
                ));
                if i % STEP == 0 {
                    let _ = bus.send(Event::new(
                        Some("redis"),
                        EventKind::FailoverBlocked {
                            reason: format!("switch {}", i / STEP),
                        },
                    ));
                }
            }
        });
        producer.await.unwrap();
        assert!(recorder.finish(Duration::from_secs(60)).await);
        let all = log.query(&AuditFilter {
            action: None,
            severity: None,
            since: None,
            limit: Some(AuditFilter::MAX_LIMIT),
        });
        let mut blocked: Vec<String> = all
            .iter()
            .filter(|e| e["details"]["event"] == "failover_blocked")
            .map(|e| e["details"]["reason"].as_str().unwrap().to_string())
            .collect();
        blocked.reverse(); // the query is newest first
        let expected: Vec<String> = (0..SWITCHES).map(|i| format!("switch {i}")).collect();
        assert_eq!(blocked.len(), expected.len(), "every event");
        assert!(blocked == expected, "every event, in order");
        let holds: Vec<_> = all
            .iter()
            .filter(|e| e["details"]["event"] == "hold_timeouts")
            .collect();
        let counted: u64 = holds
            .iter()
            .map(|e| e["details"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, HOLDS);
        for h in &holds {
            assert_eq!(h["service"], "redis");
            let sample = h["details"]["clients_sample"].as_array().unwrap();
            assert!(!sample.is_empty() && sample.len() <= 8, "{h}");
        }
        assert_eq!(all.len(), SWITCHES as usize + holds.len());
        log.shutdown().await;
    }
}
