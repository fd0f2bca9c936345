//! The closed set of commands that change the data plane, and what a
//! command answers. Every mutation an operator, a config reload or a
//! heartbeat causes is one [`Command`] through [`Engine::apply`](crate::Engine::apply),
//! with exactly one handler (engine/dispatch.rs).

use crate::config::ServiceConfig;
use crate::engine::reload::ReloadReport;
use crate::snapshot::{EngineSnapshot, ServiceSnapshot, ServiceStatus};

/// The closed set of mutations an operator (or a config reload) can cause.
#[derive(Debug, Clone)]
pub enum Command {
    /// Switch `service` to its best usable other upstream. In a
    /// `[cluster]`, for every engine (crate::cluster); `force`: on this
    /// engine alone, even while etcd is unreachable (audited as such).
    Trigger {
        service: String,
        actor: String,
        reason: String,
        force: bool,
    },
    /// Switch `service` back to its configured primary (`force` as for
    /// [`Command::Trigger`]).
    Recover {
        service: String,
        actor: String,
        reason: String,
        force: bool,
    },
    /// Zero-loss planned switchover away from the active upstream `pool`
    /// to `to` (an upstream name) or the best usable other upstream.
    Switchover {
        pool: String,
        to: Option<String>,
        actor: String,
        reason: String,
    },
    /// Zero-loss planned switch back to upstream `pool`.
    Failback {
        pool: String,
        actor: String,
        reason: String,
    },
    /// Resynchronise `service`'s diverged old primaries from the active one.
    Resync {
        service: String,
        actor: String,
        reason: String,
    },
    /// Declare (`enabled`) or clear an operator emergency.
    Emergency {
        enabled: bool,
        actor: String,
        reason: String,
    },
    /// The status of a service without upstreams (a `heartbeat`: healthy
    /// while it beats, down once stalled). Refused for a service with
    /// upstreams: those are judged by their probes only.
    ReportStatus {
        service: String,
        status: ServiceStatus,
    },
    /// Reload step: start a new service (listener, probes, accept loop).
    AddService { config: Box<ServiceConfig> },
    /// Reload step: stop a service; its open connections drain.
    RemoveService { name: String },
    /// Reload step: the next generation of a service of the same name and
    /// listener, keeping its unchanged upstreams and its route.
    ReplaceService { config: Box<ServiceConfig> },
}

impl Command {
    /// Whether this is one step of a config reload (serialised with reloads).
    pub fn is_reload_step(&self) -> bool {
        matches!(
            self,
            Command::AddService { .. }
                | Command::RemoveService { .. }
                | Command::ReplaceService { .. }
        )
    }
}

/// What an applied command answers.
#[derive(Debug, Clone)]
pub enum CommandOutcome {
    Service(Box<ServiceSnapshot>),
    Engine(Box<EngineSnapshot>),
    /// A planned switchover: the service after it, and how long new
    /// clients were held (`pause_ms`; 0 for a no-op).
    Switched {
        service: Box<ServiceSnapshot>,
        pause_ms: u64,
        /// The replication position the target reached (offset or LSN).
        position: Option<String>,
    },
    /// A reload step: what it added, removed or changed.
    Reloaded(Box<ReloadReport>),
}
