//! The control plane's typed configuration (`[control]` and its tokens),
//! built and validated by the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a token may do (SPEC 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    /// GETs and WebSockets.
    Viewer,
    /// Also operator POSTs.
    Operator,
    /// Heartbeats only.
    Reporter,
}

impl TokenRole {
    pub const NAMES: &'static [&'static str] = &["viewer", "operator", "reporter"];

    pub fn parse(s: &str) -> Option<TokenRole> {
        match s {
            "viewer" => Some(TokenRole::Viewer),
            "operator" => Some(TokenRole::Operator),
            "reporter" => Some(TokenRole::Reporter),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Viewer => "viewer",
            TokenRole::Operator => "operator",
            TokenRole::Reporter => "reporter",
        }
    }
}

/// One `[[control.token]]`: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// Becomes `actor` in the audit log.
    pub name: String,
    pub role: TokenRole,
    /// The 32-byte SHA-256 digest of the bearer token.
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub metrics_public: bool,
    pub cors_origins: Vec<String>,
    pub auth_failures_per_minute: u32,
    pub tokens: Vec<TokenConfig>,
    /// Connection limits and timeouts of the control listener.
    pub limits: ConnLimits,
}

/// `[control] max_connections`, `header_read_timeout_ms`, `idle_timeout_ms`
/// (docs/data-plane.md, "Connection limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once (upgraded WebSockets included); past
    /// it a new connection is closed at once and counted.
    pub max_connections: u32,
    /// A request head must be whole this long after its first byte (and,
    /// on a keep-alive HTTP/1 connection, the next one must come within it).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte either way for
    /// this long is closed (not an upgraded WebSocket).
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            tls_cert: None,
            tls_key: None,
            metrics_public: false,
            cors_origins: Vec::new(),
            auth_failures_per_minute: 10,
            tokens: Vec::new(),
            limits: ConnLimits::default(),
        }
    }
}
