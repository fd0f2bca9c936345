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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
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

    /// Kinds served by the HTTP gateway (proxy/src/gateway).
    pub fn is_http_proxied(self) -> bool {
        matches!(self, Kind::Http | Kind::Elasticsearch)
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
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
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
    /// How long an upstream that accepts connections but answers no probe
    /// (busy: a long script, `DEBUG SLEEP`, a heavy checkpoint) is given
    /// before it counts as down; refused, reset and timed-out connects are
    /// not graced. Zero: no grace.
    pub busy_grace: Duration,
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
            busy_grace: Duration::from_millis(3000),
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
    /// `http`/`elasticsearch`/`websocket`: CA and client certificate (mTLS).
    pub tls: UpstreamTls,
}

/// TLS material of an HTTP upstream, paths resolved (`ca_file`, and
/// `client_cert`/`client_key` for mTLS). Without `ca_file` the system's
/// trust store (rustls-native-certs) is used.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

/// What an HTTP route does with a request while no upstream is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOutage {
    /// Hold it up to `buffer_timeout_ms`, then 503 with `Retry-After`.
    Hold,
    /// Store it durably, answer 202 with a queue id, deliver it later.
    Queue,
    /// Answer 503 with `Retry-After` at once.
    Fail,
}

impl OnOutage {
    pub const NAMES: &'static [&'static str] = &["hold", "queue", "fail"];

    pub fn as_str(self) -> &'static str {
        match self {
            OnOutage::Hold => "hold",
            OnOutage::Queue => "queue",
            OnOutage::Fail => "fail",
        }
    }

    pub fn parse(s: &str) -> Option<OnOutage> {
        match s {
            "hold" => Some(OnOutage::Hold),
            "queue" => Some(OnOutage::Queue),
            "fail" => Some(OnOutage::Fail),
            _ => None,
        }
    }
}

/// Which requests of an HTTP service get an access-log line
/// (`access_log = "all" | "errors" | "off"`). The request metrics count
/// every request whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// Every request (the default).
    All,
    /// Only the requests that did not go normally: a 5xx, an outcome other
    /// than `proxied`, or more than one attempt (HAProxy's
    /// `option dontlog-normal`).
    Errors,
    /// None.
    Off,
}

impl AccessLog {
    pub const NAMES: &'static [&'static str] = &["all", "errors", "off"];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessLog::All => "all",
            AccessLog::Errors => "errors",
            AccessLog::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<AccessLog> {
        match s {
            "all" => Some(AccessLog::All),
            "errors" => Some(AccessLog::Errors),
            "off" => Some(AccessLog::Off),
            _ => None,
        }
    }
}

/// `[[service.route]]`: a per-path override for an HTTP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub path_prefix: String,
    /// The route's own, else the service's.
    pub on_outage: OnOutage,
}

/// `queue_max_bytes` of an HTTP service that does not set it: 1 GiB.
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// `max_retry_after_seconds` of an HTTP service that does not set it: 1 h.
pub const DEFAULT_MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Settings of a `kind = "http"` service's gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// The service's `on_outage`; routes may override it.
    pub on_outage: OnOutage,
    /// Longest prefix wins.
    pub routes: Vec<RouteConfig>,
    /// Largest request body accepted (413 past it); default 10 MiB.
    pub max_body_bytes: u64,
    /// Most requests queued at once (503 past it); default 1000.
    pub queue_max_depth: u32,
    /// Most request-body bytes queued at once, on disk (503 past it);
    /// default 1 GiB.
    pub queue_max_bytes: u64,
    /// Longest wait an upstream's `Retry-After` can impose (longer ones are
    /// cut to it); default 1 h.
    pub max_retry_after: std::time::Duration,
    /// Most client connections (sockets) open at once on the gateway's
    /// listener; past it a new one gets 503 (plain text) and is closed.
    /// Default 1024.
    pub max_client_connections: u32,
    /// HTTPS listener certificate and key, both or neither.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// Which requests get an access-log line; default all.
    pub access_log: AccessLog,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            on_outage: OnOutage::Hold,
            routes: Vec::new(),
            max_body_bytes: 10 * 1024 * 1024,
            queue_max_depth: 1000,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            max_client_connections: 1024,
            tls_cert: None,
            tls_key: None,
            access_log: AccessLog::All,
        }
    }
}

impl HttpSettings {
    /// The route whose prefix is the longest match of `path`, if any.
    pub fn route_for(&self, path: &str) -> Option<&RouteConfig> {
        self.route_index(path).and_then(|i| self.routes.get(i))
    }

    /// The index in `routes` of the longest prefix matching `path`.
    pub fn route_index(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.path_prefix))
            .max_by_key(|(_, r)| r.path_prefix.len())
            .map(|(i, _)| i)
    }

    /// What to do with a request for `path` during an outage.
    pub fn on_outage_for(&self, path: &str) -> OnOutage {
        self.route_for(path).map_or(self.on_outage, |r| r.on_outage)
    }
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
            .field("tls", &self.tls)
            .finish()
    }
}

impl UpstreamConfig {
    /// Where to connect: the address, or host:port taken from the URL.
    pub fn target(&self) -> String {
        if let Some(a) = &self.address {
            return a.clone();
        }
        match self.http_target() {
            Some(t) => t.host_port(),
            None => self.url.clone().unwrap_or_default(),
        }
    }

    /// The parsed `url` of an HTTP upstream.
    pub fn http_target(&self) -> Option<HttpTarget> {
        self.url.as_deref().and_then(HttpTarget::parse)
    }
}

/// An `http://` or `https://` upstream URL, split for connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub tls: bool,
    /// Host name or IP (IPv6 without brackets); also the SNI name.
    pub host: String,
    pub port: u16,
    /// Path prefix prepended to every proxied path, without a trailing '/'
    /// (empty for none).
    pub base_path: String,
}

impl HttpTarget {
    /// Parses `http[s]://host[:port][/base]`; `None` when it is not one.
    pub fn parse(url: &str) -> Option<HttpTarget> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return None;
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        Some(HttpTarget {
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port`, with brackets around an IPv6 host.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod target_tests {
    use super::HttpTarget;

    #[test]
    fn parses_urls() {
        let t = HttpTarget::parse("https://ndex-a.example/api/").expect("url");
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.base_path.as_str()),
            (true, "ndex-a.example", 443, "/api")
        );
        let t = HttpTarget::parse("http://127.0.0.1:8080").expect("url");
        assert_eq!((t.port, t.base_path.as_str()), (8080, ""));
        assert_eq!(t.host_port(), "127.0.0.1:8080");
        let t = HttpTarget::parse("http://[::1]:9/x?y").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.base_path.as_str()),
            ("::1", 9, "/x")
        );
        assert_eq!(t.host_port(), "[::1]:9");
        assert!(HttpTarget::parse("ftp://x").is_none());
        assert!(HttpTarget::parse("http://:80").is_none());
        assert!(HttpTarget::parse("http://h:99999").is_none());
    }
}

/// `fallback_max_reply_bytes` of a redis service that does not set it: 8 MiB.
pub const DEFAULT_FALLBACK_MAX_REPLY_BYTES: u64 = 8 * 1024 * 1024;
/// `fallback_max_output_bytes` of a redis service that does not set it: 8 MiB.
pub const DEFAULT_FALLBACK_MAX_OUTPUT_BYTES: u64 = 8 * 1024 * 1024;

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
    /// redis `fallback_max_reply_bytes`: largest reply the memory fallback
    /// builds for one command (`-ERR` past it, unbuilt); default 8 MiB.
    pub fallback_max_reply_bytes: u64,
    /// redis `fallback_max_output_bytes`: replies one fallback connection
    /// may have waiting to be written before it stops running and reading
    /// its commands (back-pressure); default 8 MiB.
    pub fallback_max_output_bytes: u64,
    /// redis `reattach_idle` (default true): at a failover, an idle client
    /// connection moves to the new upstream with its session replayed
    /// instead of being closed (docs/clients.md).
    pub reattach_idle: bool,
    /// redis and postgres `multiplex` (default false): client commands
    /// share one upstream connection, pipelined, instead of one each
    /// (PostgreSQL transactions: a connection of the client's own until
    /// they end; listener/mux, docs/multiplex.md). Implies no
    /// `reattach_idle`.
    pub multiplex: bool,
    /// How many shared connections a multiplexed service keeps (redis
    /// default 1, postgres 4): each client's command goes to the one with
    /// the fewest waiting.
    pub multiplex_connections: usize,
    /// Client connects to one upstream in progress at once (L4 services);
    /// the others wait their turn. Held clients meeting an upstream that
    /// comes back would otherwise overflow its listen backlog, and the
    /// connects the kernel drops would count as failures of an upstream
    /// that is up (listener/mod.rs, `connect_turn`).
    pub max_connecting: usize,
    /// `kind = "http"`: the gateway's settings (defaults for other kinds).
    pub http: HttpSettings,
}

/// `max_connecting` of a service that does not set it: below the listen
/// backlog of Redis (511 by default) and of PostgreSQL (twice its
/// `max_connections`, 200 by default).
pub const DEFAULT_MAX_CONNECTING: usize = 64;

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
            fallback_max_reply_bytes: DEFAULT_FALLBACK_MAX_REPLY_BYTES,
            fallback_max_output_bytes: DEFAULT_FALLBACK_MAX_OUTPUT_BYTES,
            reattach_idle: kind == Kind::Redis,
            multiplex: false,
            multiplex_connections: 1,
            max_connecting: DEFAULT_MAX_CONNECTING,
            http: HttpSettings::default(),
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
    /// Where embedded stores live (the HTTP queue under `http-queue/`);
    /// `None`: no queue (`on_outage = "queue"` answers 503).
    pub data_dir: Option<std::path::PathBuf>,
    /// `[cluster]`: coordinate failover with other engines through etcd
    /// (crate::cluster); `None`: this engine decides alone.
    pub cluster: Option<ClusterConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            services: Vec::new(),
            drain_timeout: Duration::from_millis(10_000),
            data_dir: None,
            cluster: None,
        }
    }
}

/// `[cluster]`: coordination of many engines through etcd (opt-in;
/// docs/cluster.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `http://host:port` or `host:port`.
    pub etcd_endpoints: Vec<String>,
    /// Engines with the same name coordinate (the etcd key prefix).
    pub cluster_name: String,
    /// This engine's name in the cluster; unique among its members.
    pub node_id: String,
    /// TTL of this engine's etcd lease: its membership, its views and its
    /// leaderships end this long after it stops renewing them.
    pub lease_ttl: Duration,
    /// Engines that must see the active upstream down before the leader
    /// fails over; `None`: a majority of the engines publishing a view.
    pub quorum: Option<u32>,
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
            tls: UpstreamTls::default(),
        }
    }

    /// A URL-based upstream (`http`, `elasticsearch`), for tests and builders.
    pub fn url(name: &str, url: &str, role: Role) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_string(),
            address: None,
            url: Some(url.to_string()),
            role,
            user: None,
            database: None,
            password: None,
            tls: UpstreamTls::default(),
        }
    }
}
