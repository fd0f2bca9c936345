//! Everything observable that happens in the data plane, as one enum on a
//! broadcast bus. The control plane subscribes to turn events into
//! WebSocket messages, audit entries and metrics; the data plane never
//! waits for a subscriber (a lagging one loses events and is told so).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

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
    /// `slow_query_ms` (`protocol::observe`). `statement` has its literals
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

pub fn bus() -> broadcast::Sender<Event> {
    broadcast::channel(EVENT_CAPACITY).0
}
