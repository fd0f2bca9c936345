//! Everything observable that happens in the data plane, as one enum on a
//! broadcast bus. The control plane subscribes to turn events into
//! WebSocket messages and metrics; the data plane never waits for a
//! subscriber (a lagging one loses events and is told so).
//!
//! The audit recorder does not read the broadcast: an [`EventBus`] made by
//! [`audited_bus`] also hands every auditable event (a state change, a
//! switch, a blocked switch: see [`EventKind::audit_route`]) to a queue of
//! its own, the [`AuditQueue`], which per-request observer events never
//! enter and which never drops anything (docs/audit.md, "Engine events").
//! Held clients refused after `buffer_timeout_ms` are not queued one by
//! one: they are counted per service, and the recorder takes one
//! [`HoldSummary`] per service per interval.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::snapshot::{FailoverState, ServiceStatus, UpstreamHealth};

/// What caused a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Auto,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Auto => "auto",
            Trigger::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// An upstream crossed a threshold (or passive evidence marked it down).
    UpstreamStateChanged {
        upstream: String,
        old: UpstreamHealth,
        new: UpstreamHealth,
        /// Probe or passive evidence that caused the change.
        error: Option<String>,
        passive: bool,
    },
    ServiceStatusChanged {
        old: ServiceStatus,
        new: ServiceStatus,
    },
    /// Traffic moved away from `from` to `to`.
    FailoverActivated {
        from: Option<String>,
        to: String,
        old_epoch: u64,
        new_epoch: u64,
        trigger: Trigger,
        actor: String,
        reason: String,
        promoted: bool,
        /// Probe results, errors and thresholds behind an automatic switch.
        evidence: serde_json::Value,
        closed_connections: u64,
    },
    /// Traffic moved back to the configured primary.
    RecoveryCompleted {
        from: Option<String>,
        to: String,
        old_epoch: u64,
        new_epoch: u64,
        trigger: Trigger,
        actor: String,
        reason: String,
        recovery_seconds: f64,
    },
    /// A switch was wanted but could not happen (no usable upstream,
    /// promotion failed, hold-down).
    FailoverBlocked { reason: String },
    FailoverStateChanged {
        old: FailoverState,
        new: FailoverState,
    },
    EmergencyDeclared {
        enabled: bool,
        actor: String,
        reason: String,
    },
    /// A redis service with `fallback = "memory"` had no usable upstream and
    /// began serving clients from memory (docs/fallback.md).
    FallbackActivated { fallback: String, reason: String },
    /// The memory fallback's journal was replayed to `upstream` (`failed`:
    /// writes Redis refused; `expired`: keys sent as `DEL` because their TTL
    /// ran out); new clients go to Redis again.
    FallbackDeactivated {
        fallback: String,
        upstream: String,
        replayed: u64,
        expired: u64,
        failed: u64,
        replay_ms: u64,
        fallback_seconds: f64,
    },
    /// A held client waited `buffer_timeout_ms` and was refused.
    HoldTimedOut { waited_ms: u64 },
    /// A statement in the request path took at least the service's
    /// `slow_query_ms` (`observe`). `statement` has its literals
    /// masked; `command_kind` is `simple_query`, `extended_query`,
    /// `function_call` (postgres), `command` (redis) or `run` (bolt).
    SlowQuery {
        upstream: String,
        statement: String,
        duration_ms: f64,
        command_kind: String,
    },
    /// A Bolt FAILURE answered a statement that looks like a write
    /// (CREATE, MERGE, SET, DELETE, REMOVE), or the COMMIT of a
    /// transaction that ran one. `code` is Neo4j's (`Neo.ClientError...`).
    Neo4jWriteFailure {
        upstream: String,
        statement: String,
        code: String,
    },
    /// Real traffic got an error answer that speaks of the upstream rather
    /// than the statement: a SQLSTATE of class 08, 28, 53, 57, 58, XX or
    /// 25006; a redis LOADING, READONLY, MASTERDOWN, OOM, NOAUTH, ...; a
    /// Neo4j transient, database, security or cluster error. At most a few
    /// per connection.
    UpstreamError {
        upstream: String,
        code: String,
        message: String,
    },
    /// The request-path observer of one connection met bytes it does not
    /// understand and stopped timing that connection (its bytes still flow).
    ProtocolError { upstream: String, reason: String },
    /// This engine's compare-and-swap wrote a new agreed route for the
    /// service (`[cluster]`, docs/cluster.md): `revision` is the etcd
    /// revision of the write, `evidence` which engines saw what. Every
    /// engine then audits applying it as a `FailoverActivated` (or
    /// `RecoveryCompleted`) with the same epoch and revision.
    ClusterDecision {
        node_id: String,
        revision: i64,
        from: String,
        to: String,
        epoch: u64,
        trigger: String,
        actor: String,
        reason: String,
        evidence: serde_json::Value,
    },
    /// This engine's etcd session came up or was lost (`[cluster]`).
    ClusterConnection {
        node_id: String,
        connected: bool,
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub service: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn new(service: Option<&str>, kind: EventKind) -> Event {
        Event {
            at: Utc::now(),
            service: service.map(str::to_string),
            kind,
        }
    }
}

/// Bus capacity: enough for bursts; slower subscribers see `Lagged`.
pub const EVENT_CAPACITY: usize = 4096;

/// How an event reaches the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRoute {
    /// Queued for the recorder, which writes one entry for it.
    Entry,
    /// Counted into the service's [`HoldSummary`] of the interval.
    HoldSummary,
    /// Not audited by the recorder (request-path observations, or what
    /// the control plane audits itself: an operator's emergency).
    None,
}

impl EventKind {
    /// Which events the audit recorder keeps, and how. Kept in step with
    /// `continuity_control::recorder::entry_for` (a test there checks it).
    pub fn audit_route(&self) -> AuditRoute {
        match self {
            EventKind::UpstreamStateChanged { .. }
            | EventKind::FailoverActivated { .. }
            | EventKind::RecoveryCompleted { .. }
            | EventKind::FailoverBlocked { .. }
            | EventKind::FailoverStateChanged { .. }
            | EventKind::FallbackActivated { .. }
            | EventKind::FallbackDeactivated { .. }
            | EventKind::ClusterDecision { .. }
            | EventKind::ClusterConnection { .. } => AuditRoute::Entry,
            EventKind::HoldTimedOut { .. } => AuditRoute::HoldSummary,
            EventKind::ServiceStatusChanged { .. }
            | EventKind::EmergencyDeclared { .. }
            | EventKind::SlowQuery { .. }
            | EventKind::Neo4jWriteFailure { .. }
            | EventKind::UpstreamError { .. }
            | EventKind::ProtocolError { .. } => AuditRoute::None,
        }
    }
}

/// Most distinct client addresses one [`HoldSummary`] names.
pub const HOLD_SAMPLE: usize = 8;

/// Held clients of one service refused after `buffer_timeout_ms`, since
/// the recorder last took the summaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldSummary {
    pub service: String,
    /// Held clients refused.
    pub count: u64,
    /// When the first and the last of them were refused.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// The longest any of them waited (ms).
    pub max_waited_ms: u64,
    /// Up to [`HOLD_SAMPLE`] distinct client IP addresses, first seen first
    /// (clients refused by the HTTP gateway are counted, not named).
    pub clients_sample: Vec<String>,
}

/// The audit side of an [`EventBus`].
struct AuditTap {
    tx: mpsc::UnboundedSender<Event>,
    holds: Mutex<BTreeMap<String, HoldSummary>>,
    /// Events queued and not yet taken by the recorder.
    pending: AtomicU64,
    /// `continuity_audit_queue_depth` (the recorder registers it).
    depth: Option<prometheus::IntGauge>,
}

/// Log a warning each time this many more events wait for the recorder.
const BACKLOG_WARN_STEP: u64 = 10_000;

impl AuditTap {
    fn queue(&self, event: &Event) {
        // Counted before it is sent, so the recorder never takes more than
        // was counted.
        let n = self
            .pending
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if let Some(g) = &self.depth {
            g.inc();
        }
        if let Err(mpsc::error::SendError(ev)) = self.tx.send(event.clone()) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            if let Some(g) = &self.depth {
                g.dec();
            }
            // Only after the recorder has stopped (shutdown): say so, never
            // drop in silence.
            tracing::error!(event = ?ev, "audit queue closed: event NOT audited");
            return;
        }
        if n.is_multiple_of(BACKLOG_WARN_STEP) {
            tracing::warn!(
                queued = n,
                "audit recorder is behind: auditable events are waiting"
            );
        }
    }

    fn note_hold(&self, at: DateTime<Utc>, service: &str, client: Option<IpAddr>, waited_ms: u64) {
        // Poisoning cannot leave a summary half-updated in a way that
        // matters: at worst one count is missing from it.
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let h = match holds.get_mut(service) {
            Some(h) => h,
            None => holds.entry(service.to_string()).or_insert(HoldSummary {
                service: service.to_string(),
                count: 0,
                first_at: at,
                last_at: at,
                max_waited_ms: 0,
                clients_sample: Vec::new(),
            }),
        };
        h.count += 1;
        h.last_at = h.last_at.max(at);
        h.first_at = h.first_at.min(at);
        h.max_waited_ms = h.max_waited_ms.max(waited_ms);
        if let Some(ip) = client {
            let ip = ip.to_canonical().to_string();
            if h.clients_sample.len() < HOLD_SAMPLE && !h.clients_sample.contains(&ip) {
                h.clients_sample.push(ip);
            }
        }
    }
}

/// The engine's event bus: the broadcast every subscriber reads, plus (when
/// made by [`audited_bus`]) the audit recorder's own queue. Cheap to clone;
/// every clone is the same bus. Sending never waits.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    audit: Option<Arc<AuditTap>>,
}

impl From<broadcast::Sender<Event>> for EventBus {
    /// A bus without an audit queue (tests, and engines without a recorder).
    fn from(tx: broadcast::Sender<Event>) -> EventBus {
        EventBus { tx, audit: None }
    }
}

impl EventBus {
    /// Hands an auditable event to the audit queue (or counts a held
    /// client into its summary), then broadcasts it. Returns how many
    /// subscribers the broadcast reached (0 is no error: the data plane
    /// never waits for a subscriber).
    pub fn send(&self, event: Event) -> usize {
        self.audit(&event, None);
        self.tx.send(event).unwrap_or(0)
    }

    /// A held client was refused after waiting `waited_ms`: counted, with
    /// its address, into the service's hold-timeout summary, and broadcast
    /// as [`EventKind::HoldTimedOut`].
    pub fn hold_timed_out(&self, service: &str, client: Option<IpAddr>, waited_ms: u64) {
        let event = Event::new(Some(service), EventKind::HoldTimedOut { waited_ms });
        self.audit(&event, client);
        // No subscriber is not an error: the data plane never waits for one.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    fn audit(&self, event: &Event, client: Option<IpAddr>) {
        let Some(tap) = &self.audit else {
            return;
        };
        match event.kind.audit_route() {
            AuditRoute::Entry => tap.queue(event),
            AuditRoute::HoldSummary => {
                let waited_ms = match event.kind {
                    EventKind::HoldTimedOut { waited_ms } => waited_ms,
                    _ => 0,
                };
                let service = event.service.as_deref().unwrap_or("");
                tap.note_hold(event.at, service, client, waited_ms);
            }
            AuditRoute::None => {}
        }
    }
}

/// The receiving end of the audit recorder's queue. Unbounded by design:
/// producers are synchronous data-plane code that must neither block a
/// runtime thread nor drop an auditable action, and what enters it is
/// paced by probes, switches and operators (never by clients: held clients
/// are summarised before it, observer events never enter it). Its depth is
/// `continuity_audit_queue_depth`.
pub struct AuditQueue {
    rx: mpsc::UnboundedReceiver<Event>,
    tap: Arc<AuditTap>,
}

impl AuditQueue {
    /// Waits for at least one event, then takes up to `limit` of those
    /// queued, in order. 0: the queue is closed and empty.
    pub async fn recv_many(&mut self, buf: &mut Vec<Event>, limit: usize) -> usize {
        let n = self.rx.recv_many(buf, limit).await;
        self.tap.pending.fetch_sub(n as u64, Ordering::Relaxed);
        if let Some(g) = &self.tap.depth {
            g.sub(n as i64);
        }
        n
    }

    /// Refuses further events (each is then logged as not audited); those
    /// already queued can still be received.
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// The hold-timeout summaries gathered since the last call, by service
    /// name; the counts start again from zero.
    pub fn take_hold_summaries(&self) -> Vec<HoldSummary> {
        let mut holds = self.tap.holds.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *holds).into_values().collect()
    }

    /// Events waiting in the queue.
    pub fn pending(&self) -> u64 {
        self.tap.pending.load(Ordering::Relaxed)
    }

    /// The `continuity_audit_queue_depth` gauge, for the registry.
    pub fn depth_gauge(&self) -> Option<prometheus::IntGauge> {
        self.tap.depth.clone()
    }
}

/// The name of the audit queue's depth gauge.
pub const AUDIT_QUEUE_DEPTH: &str = "continuity_audit_queue_depth";

/// A bus without an audit queue.
pub fn bus() -> EventBus {
    broadcast::channel(EVENT_CAPACITY).0.into()
}

/// A bus whose auditable events also go to the returned [`AuditQueue`].
pub fn audited_bus() -> (EventBus, AuditQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = prometheus::IntGauge::new(
        AUDIT_QUEUE_DEPTH,
        "Auditable engine events waiting for the audit recorder.",
    )
    .ok();
    let tap = Arc::new(AuditTap {
        tx,
        holds: Mutex::new(BTreeMap::new()),
        pending: AtomicU64::new(0),
        depth,
    });
    let bus = EventBus {
        tx: broadcast::channel(EVENT_CAPACITY).0,
        audit: Some(tap.clone()),
    };
    (bus, AuditQueue { rx, tap })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(service: &str, kind: EventKind) -> Event {
        Event::new(Some(service), kind)
    }

    #[tokio::test]
    async fn only_auditable_events_are_queued_and_holds_are_summarised() {
        let (bus, mut q) = audited_bus();
        for i in 0..10_000u64 {
            let _ = bus.send(ev(
                "redis",
                EventKind::SlowQuery {
                    upstream: "a".into(),
                    statement: "GET".into(),
                    duration_ms: 1.0,
                    command_kind: "command".into(),
                },
            ));
            let ip: IpAddr = format!("10.0.{}.{}", i / 250, i % 250).parse().unwrap();
            bus.hold_timed_out("redis", Some(ip), i);
        }
        let _ = bus.send(ev(
            "pg",
            EventKind::FailoverBlocked {
                reason: "no usable upstream".into(),
            },
        ));
        bus.hold_timed_out("pg", None, 5);
        let _ = bus.send(ev("pg", EventKind::HoldTimedOut { waited_ms: 7 }));
        assert_eq!(q.pending(), 1);
        assert_eq!(q.depth_gauge().map(|g| g.get()), Some(1));
        let mut got = Vec::new();
        assert_eq!(q.recv_many(&mut got, 100).await, 1);
        assert!(matches!(got[0].kind, EventKind::FailoverBlocked { .. }));
        assert_eq!(q.pending(), 0);

        let s = q.take_hold_summaries();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].service.as_str(), s[0].count), ("pg", 2));
        assert_eq!(s[0].max_waited_ms, 7);
        assert!(s[0].clients_sample.is_empty());
        assert_eq!((s[1].service.as_str(), s[1].count), ("redis", 10_000));
        assert_eq!(s[1].max_waited_ms, 9_999);
        assert_eq!(s[1].clients_sample.len(), HOLD_SAMPLE);
        assert_eq!(s[1].clients_sample[0], "10.0.0.0");
        assert!(s[1].first_at <= s[1].last_at);
        assert!(q.take_hold_summaries().is_empty());
    }

    #[tokio::test]
    async fn a_closed_queue_still_yields_what_it_held() {
        let (bus, mut q) = audited_bus();
        let _ = bus.send(ev(
            "redis",
            EventKind::FailoverBlocked { reason: "x".into() },
        ));
        q.close();
        let _ = bus.send(ev(
            "redis",
            EventKind::FailoverBlocked {
                reason: "late".into(),
            },
        ));
        let mut got = Vec::new();
        assert_eq!(q.recv_many(&mut got, 10).await, 1);
        assert_eq!(q.recv_many(&mut got, 10).await, 0);
    }

    #[test]
    fn a_plain_bus_has_no_audit_queue() {
        let bus = bus();
        let mut sub = bus.subscribe();
        let _ = bus.send(ev("redis", EventKind::HoldTimedOut { waited_ms: 1 }));
        assert!(sub.try_recv().is_ok());
    }
}
