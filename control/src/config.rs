//! The control plane's typed configuration (`[control]` and its tokens),
//! built and validated by the binary.

use std::net::SocketAddr;
use std::path::PathBuf;

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
        }
    }
}
