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
//!
//! # Public API
//!
//! - [`Engine`], the handle: `start*`, `apply(`[`Command`]`)` answering a
//!   [`CommandOutcome`] or a [`CommandError`], `reconfigure` (a config
//!   reload, answering a [`ReloadReport`]), `report_status`, `snapshot`,
//!   `subscribe`, `shutdown`.
//! - [`snapshot`]: the serialisable state the control plane answers with
//!   (the cluster's too: `Engine::cluster`).
//! - [`events`]: the event stream and the audit recorder's queue.
//! - [`config`]: the typed data-plane config.
//! - [`ProxyError`]: why the engine could not start.
//! - [`health`]: the probes, usable on their own (`run_probe`).
//! - [`protocol`]: the wire codecs.
//! - [`install_sink`] and [`AccessSink`]: where the HTTP gateway's access
//!   lines go.
//!
//! Everything else (upstream runtime, listener, fallback, metrics, the
//! engine's internals) is crate-private.
//!
//! # Layers
//!
//! Dependencies point down, never up, and no module imports one that
//! imports it back (`proxy/tests/layers.rs`):
//!
//! 1. `config`, `error`, `metrics`
//! 2. `protocol` (codecs)
//! 3. `health`, `upstream`, `cluster` (etcd coordination), and the state
//!    types `snapshot`, `events`
//! 4. `listener`, `observe`, `fallback`, `gateway` (serving)
//! 5. `engine` (with `engine/reload/` under it)

// No unwrap on anything a network or a user can influence; tests may.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub(crate) mod cluster;
pub mod config;
mod engine;
pub mod error;
pub mod events;
pub(crate) mod fallback;
pub(crate) mod gateway;
pub mod health;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod observe;
pub mod protocol;
pub mod snapshot;
pub(crate) mod upstream;
pub(crate) mod workers;

pub use engine::{Command, CommandOutcome, Engine, ReloadReport, ServiceChange};
pub use error::{CommandError, ProxyError};
/// Where the HTTP gateway's access lines go (`[logging]`): the binary
/// installs its writer once at start.
pub use gateway::access::{install_sink, AccessSink};
