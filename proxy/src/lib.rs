//! continuity-proxy: the data plane.
//!
//! Clients connect to a service's listener; their bytes flow to the
//! service's active upstream. Probes and passive evidence from real traffic
//! drive a small failover state machine per service; a switch is one atomic
//! swap of the service's routing snapshot, bumps the epoch, fences the old
//! upstream and closes the client connections still bound to it.
//!
//! The crate knows nothing of HTTP APIs: the control plane talks to it
//! only through [`Engine`] (`snapshot()`, `apply()`, `subscribe()`).

// No unwrap on anything a network or a user can influence; tests may.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod fallback;
pub mod gateway;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod snapshot;
pub mod upstream;

pub use engine::{Command, CommandOutcome, Engine, ReloadReport, ServiceChange};
pub use error::{CommandError, ProxyError};
