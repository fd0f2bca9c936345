//! The engine handle: owns every service's runtime state, runs the probe
//! loops and listeners, and is the one door (`apply`) through which the
//! control plane changes anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::config::EngineConfig;
use crate::error::ProxyError;
use crate::events::Event;
use crate::snapshot::{EngineSnapshot, ServiceSnapshot};

/// The closed set of mutations an operator (or a config reload) can cause.
#[derive(Debug, Clone)]
pub enum Command {
    /// Switch `service` to its best usable other upstream.
    Trigger {
        service: String,
        actor: String,
        reason: String,
    },
    /// Switch `service` back to its configured primary.
    Recover {
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
}

#[derive(Debug, Clone)]
pub enum CommandOutcome {
    Service(Box<ServiceSnapshot>),
    Engine(Box<EngineSnapshot>),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotResynced(String),
    #[error("the switch did not complete within {0:?}")]
    Timeout(Duration),
}

/// Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {}

impl Engine {
    /// Binds every listener (failing with [`ProxyError::Bind`] naming the
    /// service) and starts probes and accept loops on the current runtime.
    pub async fn start(
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Result<Engine, ProxyError> {
        let _ = (config, registry);
        todo!()
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        todo!()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        todo!()
    }

    pub async fn apply(&self, cmd: Command) -> Result<CommandOutcome, CommandError> {
        let _ = cmd;
        todo!()
    }

    /// Stops accepting, lets open connections finish for up to `drain`, then
    /// closes the rest.
    pub async fn shutdown(&self, drain: Duration) {
        let _ = drain;
        todo!()
    }

    /// Addresses the listeners actually bound (port 0 resolved), by service.
    pub fn listen_addrs(&self) -> Vec<(String, std::net::SocketAddr)> {
        todo!()
    }
}
