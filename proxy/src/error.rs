//! The data plane's error type, classified by whose fault it is.

use std::net::SocketAddr;

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
    /// The upstream failed (refused, reset, timed out).
    #[error("upstream {upstream}: {message}")]
    Upstream { upstream: String, message: String },
    /// The client sent something we cannot accept.
    #[error("client: {0}")]
    Client(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Whether retrying the same operation elsewhere is safe (pingora-error's
    /// `retry` flag): only upstream connect failures, before any byte moved.
    pub fn retry_safe(&self) -> bool {
        matches!(self, ProxyError::Upstream { .. })
    }
}
