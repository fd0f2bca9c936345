//! The typed, already validated configuration the data plane runs on.
//!
//! The binary (`src/config`) turns the TOML file into these types and has
//! already checked every invariant documented here, so the data plane never
//! re-validates: a `ServiceConfig` always has a unique name, at least one
//! upstream for proxied kinds, and addresses of the form `host:port`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The protocol a service speaks, which decides its probe and its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Redis,
    Postgres,
    Neo4j,
    Tcp,
    Http,
    Elasticsearch,
    Websocket,
    Heartbeat,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Redis,
        Kind::Postgres,
        Kind::Neo4j,
        Kind::Tcp,
        Kind::Http,
        Kind::Elasticsearch,
        Kind::Websocket,
        Kind::Heartbeat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::Neo4j => "neo4j",
            Kind::Tcp => "tcp",
            Kind::Http => "http",
            Kind::Elasticsearch => "elasticsearch",
            Kind::Websocket => "websocket",
            Kind::Heartbeat => "heartbeat",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Kinds whose upstreams are given by `address = "host:port"`.
    pub fn uses_address(self) -> bool {
        matches!(
            self,
            Kind::Redis | Kind::Postgres | Kind::Neo4j | Kind::Tcp | Kind::Websocket
        )
    }

    /// Kinds the L4 proxy can carry today.
    pub fn is_l4_proxied(self) -> bool {
        matches!(self, Kind::Redis | Kind::Postgres | Kind::Neo4j | Kind::Tcp)
    }

    /// Default slow-query threshold (SPEC 2).
    pub fn default_slow_query(self) -> Duration {
        match self {
            Kind::Postgres => Duration::from_millis(500),
            _ => Duration::from_millis(100),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! str_enum {
    ($name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(Category { Core => "core", Federal => "federal", Vendor => "vendor", Internal => "internal" });
str_enum!(Redundancy { Hot => "hot", Warm => "warm", Cold => "cold" });
str_enum!(FailoverMode { Auto => "auto", Manual => "manual" });
str_enum!(Failback { Manual => "manual", Auto => "auto" });
str_enum!(OnFailover { Route => "route", Promote => "promote" });
str_enum!(Role { Primary => "primary", Secondary => "secondary" });

/// Health-check settings: `[health]`, overridable per service.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub check_interval: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub latency_threshold: Duration,
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub hold_down: Duration,
    pub snapshot_retention_hours: u32,
}

impl Default for HealthSettings {
    /// The design's `HealthConfig` defaults (SPEC 2).
    fn default() -> Self {
        HealthSettings {
            check_interval: Duration::from_secs(30),
            timeout: Duration::from_millis(2000),
            connect_timeout: Duration::from_millis(1000),
            latency_threshold: Duration::from_millis(1000),
            failure_threshold: 3,
            recovery_threshold: 2,
            hold_down: Duration::from_secs(10),
            snapshot_retention_hours: 24,
        }
    }
}

/// One upstream of a service.
#[derive(Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Unique across the whole config.
    pub name: String,
    /// `host:port` for address-based kinds.
    pub address: Option<String>,
    /// Base URL for `http` and `elasticsearch`.
    pub url: Option<String>,
    pub role: Role,
    /// Probe (and promotion) credentials: postgres user/database, redis AUTH.
    pub user: Option<String>,
    pub database: Option<String>,
    /// Resolved from `password_env` (or a `REDIS_SECONDARY_URL`); never logged.
    pub password: Option<String>,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("url", &self.url)
            .field("role", &self.role)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl UpstreamConfig {
    /// Where to connect: the address, or host:port taken from the URL.
    pub fn target(&self) -> String {
        if let Some(a) = &self.address {
            return a.clone();
        }
        self.url.clone().unwrap_or_default()
    }
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub kind: Kind,
    pub category: Category,
    pub listen: Option<std::net::SocketAddr>,
    pub redundancy: Redundancy,
    pub failover: FailoverMode,
    pub failback: Failback,
    pub on_failover: OnFailover,
    pub buffer_timeout: Duration,
    pub health: HealthSettings,
    pub warm_connections: u32,
    pub slow_query: Duration,
    pub max_connections: Option<u32>,
    pub health_path: Option<String>,
    pub stall_after: Option<Duration>,
    pub upstreams: Vec<UpstreamConfig>,
    /// redis `fallback = "memory"`: serve from memory while no upstream is
    /// usable (docs/fallback.md).
    pub fallback_memory: bool,
    /// redis `fallback_max_bytes`: bound of the memory fallback.
    pub fallback_max_bytes: u64,
}

impl ServiceConfig {
    /// A service with defaults everywhere, for tests and builders.
    pub fn new(name: &str, kind: Kind, upstreams: Vec<UpstreamConfig>) -> ServiceConfig {
        ServiceConfig {
            name: name.to_string(),
            kind,
            category: Category::Core,
            listen: None,
            redundancy: Redundancy::Hot,
            failover: FailoverMode::Auto,
            failback: Failback::Manual,
            on_failover: OnFailover::Route,
            buffer_timeout: Duration::from_millis(5000),
            health: HealthSettings::default(),
            warm_connections: 2,
            slow_query: kind.default_slow_query(),
            max_connections: None,
            health_path: None,
            stall_after: None,
            upstreams,
            fallback_memory: false,
            fallback_max_bytes: 64 * 1024 * 1024,
        }
    }

    /// The configured primary: the first upstream with role primary, else the first.
    pub fn configured_primary(&self) -> usize {
        self.upstreams
            .iter()
            .position(|u| u.role == Role::Primary)
            .unwrap_or(0)
    }
}

/// Everything the data plane needs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub services: Vec<ServiceConfig>,
    pub drain_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            services: Vec::new(),
            drain_timeout: Duration::from_millis(10_000),
        }
    }
}

impl UpstreamConfig {
    /// An address-based upstream, for tests and builders.
    pub fn at(name: &str, address: &str, role: Role) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_string(),
            address: Some(address.to_string()),
            url: None,
            role,
            user: None,
            database: None,
            password: None,
        }
    }
}
