//! The data plane's errors: [`ProxyError`] for starting the engine (the
//! binary maps it to an exit code) and [`CommandError`] for a refused
//! [`Command`](crate::Command) (the control plane maps it to an HTTP status).
//!
//! A failure on the request path (refused, timed out, reset) is not an
//! error value here: it is classified by [`crate::health::FailureKind`],
//! shared by the L4 path, the probes and the gateway.

use std::net::SocketAddr;
use std::time::Duration;

/// Why the engine could not start (or a service could not be added).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not bind (the binary exits 64 on this).
    #[error("service {service}: cannot listen on {addr}: {source}")]
    Bind {
        service: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A service setting that only fails when used (a certificate file
    /// that does not parse, say); the binary exits 64 on this too.
    #[error("service {service}: {message}")]
    Config { service: String, message: String },
    #[error("internal: {0}")]
    Internal(String),
}

/// Why a command was refused; nothing was changed unless the variant says
/// otherwise. The control plane answers 404, 409, 409 `not_resynced` and
/// 504 for them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// No service or upstream of that name.
    #[error("{0}")]
    NotFound(String),
    /// The command conflicts with the current state (no usable target, a
    /// bind that failed, a switch that was aborted).
    #[error("{0}")]
    Conflict(String),
    /// The target was left behind by a promotion and is not a caught-up
    /// replica of the active upstream.
    #[error("{0}")]
    NotResynced(String),
    #[error("the switch did not complete within {0:?}")]
    Timeout(Duration),
}
