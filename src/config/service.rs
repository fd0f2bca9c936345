//! Validation of `[[service]]` entries and their upstreams, including the
//! checks across services: unique service names, upstream names unique in
//! the whole config, and no two listeners on the same address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use continuity_proxy::config::{AccessLog, OnOutage, RouteConfig, UpstreamTls};
use continuity_proxy::config::{
    Category, Failback, FailoverMode, HealthSettings, HttpSettings, Kind, OnFailover, Redundancy,
    Role, ServiceConfig, UpstreamConfig,
};
use continuity_proxy::config::{
    DEFAULT_FALLBACK_MAX_OUTPUT_BYTES, DEFAULT_FALLBACK_MAX_REPLY_BYTES, DEFAULT_MAX_CONNECTING,
};

use super::lines::KeyPath;
use super::raw::{RawService, RawUpstream};
use super::validate::{host_port, http_url, socket_addr, unknown_value, Ctx};

/// A redis service's fallback while no upstream is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    Memory,
}

/// Service keys that `ServiceConfig` does not carry (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceExtras {
    /// redis: `fallback = "memory"`.
    pub fallback: Option<Fallback>,
    /// redis: memory fallback size limit; default 64 MiB.
    pub fallback_max_bytes: u64,
    /// http: largest request body accepted; default 10 MiB.
    pub max_body_bytes: u64,
    /// http: most requests queued with `on_outage = "queue"`; default 1000.
    pub queue_max_depth: u32,
    /// http: most request-body bytes queued; default 1 GiB.
    pub queue_max_bytes: u64,
    /// http: cap on an upstream's `Retry-After`; default 1 h.
    pub max_retry_after: Duration,
    /// http: HTTPS listener certificate and key (resolved).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// http: default hold.
    pub on_outage: OnOutage,
    /// http: which requests get an access-log line; default all.
    pub access_log: AccessLog,
    pub routes: Vec<RouteConfig>,
    /// By upstream name; only upstreams that set any of the keys.
    pub upstream_tls: BTreeMap<String, UpstreamTls>,
}

impl Default for ServiceExtras {
    fn default() -> Self {
        ServiceExtras {
            fallback: None,
            fallback_max_bytes: 64 * 1024 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            queue_max_depth: 1000,
            queue_max_bytes: continuity_proxy::config::DEFAULT_QUEUE_MAX_BYTES,
            max_retry_after: continuity_proxy::config::DEFAULT_MAX_RETRY_AFTER,
            tls_cert: None,
            tls_key: None,
            on_outage: OnOutage::Hold,
            access_log: AccessLog::All,
            routes: Vec::new(),
            upstream_tls: BTreeMap::new(),
        }
    }
}

const HTTP_KINDS: &[Kind] = &[Kind::Http, Kind::Elasticsearch];
/// `max_connections` of an L4 service (redis, postgres, neo4j, tcp,
/// websocket) that does not set it.
pub const DEFAULT_L4_MAX_CONNECTIONS: u32 = 1024;
/// `max_client_connections` of an HTTP service that does not set it.
pub const DEFAULT_HTTP_MAX_CLIENT_CONNECTIONS: u32 = 1024;
const PATH_KINDS: &[Kind] = &[Kind::Http, Kind::Elasticsearch, Kind::Websocket];
/// Kinds whose clients the L4 listener connects to their upstream.
const L4_KINDS: &[Kind] = &[
    Kind::Redis,
    Kind::Postgres,
    Kind::Neo4j,
    Kind::Tcp,
    Kind::Websocket,
];
const CREDENTIAL_KINDS: &[Kind] = &[Kind::Redis, Kind::Postgres, Kind::Neo4j];
const DATABASE_KINDS: &[Kind] = &[Kind::Postgres, Kind::Neo4j];

fn kinds(list: &[Kind]) -> String {
    list.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates all services; returns the typed ones and their extras.
pub fn services(
    ctx: &mut Ctx<'_>,
    raws: Vec<RawService>,
    global: &HealthSettings,
    default_redundancy: Redundancy,
    control_listen: SocketAddr,
) -> (Vec<ServiceConfig>, BTreeMap<String, ServiceExtras>) {
    let mut out = Vec::new();
    let mut extras = BTreeMap::new();
    let mut names: Vec<(String, KeyPath)> = Vec::new();
    let mut upstream_names: Vec<(String, KeyPath)> = Vec::new();
    let mut listeners: Vec<(SocketAddr, String)> =
        vec![(control_listen, "control.listen".to_string())];
    for (i, raw) in raws.into_iter().enumerate() {
        let at = KeyPath::root().key("service").index(i);
        if let Some(name) = raw.name.as_deref() {
            if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
                ctx.problem(
                    &at.key("name"),
                    format!("duplicate service name `{name}` (also {first})"),
                );
            }
            names.push((name.to_string(), at.key("name")));
        }
        for (j, u) in raw.upstreams.iter().flatten().enumerate() {
            let Some(name) = u.name.as_deref() else {
                continue;
            };
            let up_at = at.key("upstreams").index(j).key("name");
            if let Some((_, first)) = upstream_names.iter().find(|(n, _)| n == name) {
                ctx.problem(
                    &up_at,
                    format!("duplicate upstream name `{name}`: upstream names are unique across the whole config (also {first})"),
                );
            }
            upstream_names.push((name.to_string(), up_at));
        }
        if let Some(listen) = raw.listen.as_deref().and_then(|l| socket_addr(l).ok()) {
            if let Some((_, other)) = listeners.iter().find(|(a, _)| clashes(*a, listen)) {
                ctx.problem(
                    &at.key("listen"),
                    format!("`{listen}` is already used by {other}"),
                );
            }
            listeners.push((listen, at.key("listen").to_string()));
        }
        if let Some((svc, extra)) = service(ctx, &at, raw, global, default_redundancy) {
            extras.insert(svc.name.clone(), extra);
            out.push(svc);
        }
    }
    (out, extras)
}

/// Two listeners that cannot both bind: same port, and the same IP or a
/// wildcard covering the other (`[::]` is dual-stack, so it covers IPv4 too).
/// Port 0 (any free port) never clashes.
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

fn valid_name(ctx: &mut Ctx<'_>, at: &KeyPath, v: Option<&str>) -> Option<String> {
    let name = ctx.required(at, v)?;
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Some(name.to_string())
    } else {
        ctx.problem(at, format!("`{name}` may contain only letters, digits, '-', '_' and '.' (it appears in URLs and metric labels)"));
        None
    }
}

/// A key that only some kinds take.
fn only_for(ctx: &mut Ctx<'_>, at: &KeyPath, set: bool, kind: Kind, allowed: &[Kind]) {
    if set && !allowed.contains(&kind) {
        ctx.problem(
            at,
            format!("applies only to kinds {}, not {kind}", kinds(allowed)),
        );
    }
}

fn service(
    ctx: &mut Ctx<'_>,
    at: &KeyPath,
    raw: RawService,
    global: &HealthSettings,
    default_redundancy: Redundancy,
) -> Option<(ServiceConfig, ServiceExtras)> {
    let name = valid_name(ctx, &at.key("name"), raw.name.as_deref());
    let kind_at = at.key("kind");
    let kind = match ctx.required(&kind_at, raw.kind.as_deref()) {
        Some(k) => Kind::parse(k).or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            ctx.problem(&kind_at, unknown_value(k, &names));
            None
        }),
        None => None,
    };
    let category = ctx.choice(
        &at.key("category"),
        raw.category.as_deref(),
        Category::parse,
        Category::NAMES,
        Category::Core,
    );
    let redundancy = ctx.choice(
        &at.key("redundancy"),
        raw.redundancy.as_deref(),
        Redundancy::parse,
        Redundancy::NAMES,
        default_redundancy,
    );
    let failover = ctx.choice(
        &at.key("failover"),
        raw.failover.as_deref(),
        FailoverMode::parse,
        FailoverMode::NAMES,
        FailoverMode::Auto,
    );
    let failback = ctx.choice(
        &at.key("failback"),
        raw.failback.as_deref(),
        Failback::parse,
        Failback::NAMES,
        Failback::Manual,
    );
    let on_failover = ctx.choice(
        &at.key("on_failover"),
        raw.on_failover.as_deref(),
        OnFailover::parse,
        OnFailover::NAMES,
        OnFailover::Route,
    );
    let listen = match raw.listen.as_deref().map(socket_addr) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            ctx.problem(&at.key("listen"), e);
            None
        }
        None => None,
    };
    let buffer_timeout = ctx.millis(
        &at.key("buffer_timeout_ms"),
        raw.buffer_timeout_ms,
        1,
        Duration::from_millis(5000),
    );
    let health = super::validate::health(ctx, at, &raw.health(), global);
    let warm_connections = ctx.int(&at.key("warm_connections"), raw.warm_connections, 0, 2);
    let max_connections = raw
        .max_connections
        .map(|m| ctx.int(&at.key("max_connections"), Some(m), 1, 1));
    let mut extra = extras(ctx, at, &raw);
    if let Some(p) = raw.health_path.as_deref().filter(|p| !p.starts_with('/')) {
        ctx.problem(&at.key("health_path"), format!("`{p}` must start with '/'"));
    }
    let stall_after = raw.stall_after_seconds.map(|s| {
        ctx.seconds(
            &at.key("stall_after_seconds"),
            Some(s),
            Duration::from_secs(1),
        )
    });

    // Everything below depends on the kind.
    let kind = kind?;
    let multiplex_connections = multiplex_connections(ctx, at, &raw, kind);
    let max_connecting = match raw.max_connecting {
        Some(n) if !(1..=MAX_CONNECTING).contains(&n) => {
            ctx.problem(
                &at.key("max_connecting"),
                format!("must be from 1 to {MAX_CONNECTING}, got {n}"),
            );
            DEFAULT_MAX_CONNECTING
        }
        Some(n) => n as usize,
        None => DEFAULT_MAX_CONNECTING,
    };
    kind_specific_keys(ctx, at, &raw, kind);
    // L4 listeners get a cap by default; for HTTP kinds `max_connections`
    // bounds requests in flight (none by default) and
    // `max_client_connections` the sockets.
    let max_connections =
        max_connections.or(kind.is_l4_proxied().then_some(DEFAULT_L4_MAX_CONNECTIONS));
    let max_client_connections = ctx.int(
        &at.key("max_client_connections"),
        raw.max_client_connections,
        1,
        DEFAULT_HTTP_MAX_CLIENT_CONNECTIONS,
    );
    let raw_upstreams = raw.upstreams.unwrap_or_default();
    if kind == Kind::Heartbeat {
        if stall_after.is_none() {
            ctx.problem(
                &at.key("stall_after_seconds"),
                "required for kind heartbeat (silence longer than this is an ETL stall)",
            );
        }
        if !raw_upstreams.is_empty() {
            ctx.problem(&at.key("upstreams"), "a heartbeat service has no upstreams (its pipeline reports to POST /api/ops/heartbeat/{name})");
        }
        if raw.listen.is_some() {
            ctx.problem(&at.key("listen"), "a heartbeat service has no listener");
        }
    } else if raw_upstreams.is_empty() {
        let msg = if raw.listen.is_some() {
            "a service with `listen` needs at least one upstream to proxy to"
        } else {
            "at least one upstream is required (a service without `listen` is monitored only)"
        };
        ctx.problem(&at.key("upstreams"), msg);
    }
    let mut upstreams = Vec::new();
    let mut primary: Option<usize> = None;
    for (j, u) in raw_upstreams.into_iter().enumerate() {
        let uat = at.key("upstreams").index(j);
        if let Some((up, tls)) = upstream(ctx, &uat, u, kind) {
            if up.role == Role::Primary {
                match primary {
                    Some(p) => ctx.problem(
                        &uat.key("role"),
                        format!("only one upstream may be primary (also upstreams[{p}])"),
                    ),
                    None => primary = Some(j),
                }
            }
            if tls != UpstreamTls::default() {
                extra.upstream_tls.insert(up.name.clone(), tls);
            }
            upstreams.push(up);
        }
    }
    let health_path = raw.health_path.or_else(|| match kind {
        Kind::Http | Kind::Websocket => Some("/".to_string()),
        Kind::Elasticsearch => Some("/_cluster/health".to_string()),
        _ => None,
    });
    // 0 turns request-path observation off for the service (no parsing at all).
    let slow_query = ctx.millis(
        &at.key("slow_query_ms"),
        raw.slow_query_ms,
        0,
        kind.default_slow_query(),
    );
    // The memory fallback's reply bounds (docs/fallback.md).
    let fallback_max_reply_bytes = u64::from(ctx.int(
        &at.key("fallback_max_reply_bytes"),
        raw.fallback_max_reply_bytes,
        1,
        DEFAULT_FALLBACK_MAX_REPLY_BYTES as u32,
    ));
    let fallback_max_output_bytes = u64::from(ctx.int(
        &at.key("fallback_max_output_bytes"),
        raw.fallback_max_output_bytes,
        1,
        DEFAULT_FALLBACK_MAX_OUTPUT_BYTES as u32,
    ));
    let svc = ServiceConfig {
        name: name?,
        kind,
        category,
        listen,
        redundancy,
        failover,
        failback,
        on_failover,
        buffer_timeout,
        health,
        warm_connections,
        slow_query,
        max_connections,
        health_path,
        stall_after,
        upstreams,
        // The memory fallback runs in the data plane (proxy/src/fallback).
        fallback_memory: kind == Kind::Redis && extra.fallback == Some(Fallback::Memory),
        fallback_max_bytes: extra.fallback_max_bytes,
        fallback_max_reply_bytes,
        fallback_max_output_bytes,
        // A multiplexed client has no upstream connection of its own to
        // re-attach: between commands it is on none (docs/multiplex.md).
        reattach_idle: kind == Kind::Redis
            && raw.reattach_idle.unwrap_or(true)
            && !raw.multiplex.unwrap_or(false),
        multiplex: matches!(kind, Kind::Redis | Kind::Postgres) && raw.multiplex.unwrap_or(false),
        multiplex_connections,
        max_connecting,
        http: HttpSettings {
            on_outage: extra.on_outage,
            routes: extra.routes.clone(),
            max_body_bytes: extra.max_body_bytes,
            queue_max_depth: extra.queue_max_depth,
            queue_max_bytes: extra.queue_max_bytes,
            max_retry_after: extra.max_retry_after,
            max_client_connections,
            tls_cert: extra.tls_cert.clone(),
            tls_key: extra.tls_key.clone(),
            access_log: extra.access_log,
        },
    };
    Some((svc, extra))
}

/// The keys kept in [`ServiceExtras`].
fn extras(ctx: &mut Ctx<'_>, at: &KeyPath, raw: &RawService) -> ServiceExtras {
    let mut extra = ServiceExtras {
        fallback_max_bytes: raw.fallback_max_bytes.unwrap_or(64 * 1024 * 1024),
        max_body_bytes: raw.max_body_bytes.unwrap_or(10 * 1024 * 1024),
        ..ServiceExtras::default()
    };
    for (key, v) in [
        ("fallback_max_bytes", raw.fallback_max_bytes),
        ("max_body_bytes", raw.max_body_bytes),
    ] {
        if v == Some(0) {
            ctx.problem(&at.key(key), "must be at least 1, got 0");
        }
    }
    extra.queue_max_depth = ctx.int(&at.key("queue_max_depth"), raw.queue_max_depth, 1, 1000);
    if raw.queue_max_bytes == Some(0) {
        ctx.problem(&at.key("queue_max_bytes"), "must be at least 1, got 0");
    }
    extra.queue_max_bytes = raw
        .queue_max_bytes
        .filter(|n| *n > 0)
        .unwrap_or(continuity_proxy::config::DEFAULT_QUEUE_MAX_BYTES);
    let max_retry_after = ctx.int(
        &at.key("max_retry_after_seconds"),
        raw.max_retry_after_seconds,
        1,
        3600,
    );
    extra.max_retry_after = Duration::from_secs(u64::from(max_retry_after));
    (extra.tls_cert, extra.tls_key) = ctx.pair(
        at,
        ("tls_cert", raw.tls_cert.as_deref()),
        ("tls_key", raw.tls_key.as_deref()),
    );
    extra.on_outage = ctx.choice(
        &at.key("on_outage"),
        raw.on_outage.as_deref(),
        OnOutage::parse,
        OnOutage::NAMES,
        OnOutage::Hold,
    );
    extra.access_log = ctx.choice(
        &at.key("access_log"),
        raw.access_log.as_deref(),
        AccessLog::parse,
        AccessLog::NAMES,
        AccessLog::All,
    );
    if let Some(f) = raw.fallback.as_deref() {
        extra.fallback = ctx.choice(
            &at.key("fallback"),
            Some(f),
            |s| (s == "memory").then_some(Some(Fallback::Memory)),
            &["memory"],
            None,
        );
    }
    for (r, route) in raw.route.iter().flatten().enumerate() {
        let rat = at.key("route").index(r);
        let prefix = ctx.required(&rat.key("path_prefix"), route.path_prefix.as_deref());
        if let Some(p) = prefix.filter(|p| !p.starts_with('/')) {
            ctx.problem(
                &rat.key("path_prefix"),
                format!("`{p}` must start with '/'"),
            );
        }
        let on_outage = ctx.choice(
            &rat.key("on_outage"),
            route.on_outage.as_deref(),
            OnOutage::parse,
            OnOutage::NAMES,
            extra.on_outage,
        );
        if let Some(p) = prefix {
            extra.routes.push(RouteConfig {
                path_prefix: p.to_string(),
                on_outage,
            });
        }
    }
    extra
}

/// Keys that only some kinds take.
fn kind_specific_keys(ctx: &mut Ctx<'_>, at: &KeyPath, raw: &RawService, kind: Kind) {
    let redis: &[Kind] = &[Kind::Redis];
    let heartbeat: &[Kind] = &[Kind::Heartbeat];
    let keys: [(&str, bool, &[Kind]); 15] = [
        ("max_connecting", raw.max_connecting.is_some(), L4_KINDS),
        ("fallback", raw.fallback.is_some(), redis),
        (
            "fallback_max_bytes",
            raw.fallback_max_bytes.is_some(),
            redis,
        ),
        ("max_body_bytes", raw.max_body_bytes.is_some(), HTTP_KINDS),
        (
            "max_client_connections",
            raw.max_client_connections.is_some(),
            HTTP_KINDS,
        ),
        ("queue_max_depth", raw.queue_max_depth.is_some(), HTTP_KINDS),
        ("queue_max_bytes", raw.queue_max_bytes.is_some(), HTTP_KINDS),
        (
            "max_retry_after_seconds",
            raw.max_retry_after_seconds.is_some(),
            HTTP_KINDS,
        ),
        ("tls_cert", raw.tls_cert.is_some(), HTTP_KINDS),
        ("tls_key", raw.tls_key.is_some(), HTTP_KINDS),
        ("on_outage", raw.on_outage.is_some(), HTTP_KINDS),
        ("access_log", raw.access_log.is_some(), HTTP_KINDS),
        ("route", raw.route.is_some(), HTTP_KINDS),
        ("health_path", raw.health_path.is_some(), PATH_KINDS),
        (
            "stall_after_seconds",
            raw.stall_after_seconds.is_some(),
            heartbeat,
        ),
    ];
    for (key, set, allowed) in keys {
        only_for(ctx, &at.key(key), set, kind, allowed);
    }
    for (key, set) in [
        (
            "fallback_max_reply_bytes",
            raw.fallback_max_reply_bytes.is_some(),
        ),
        (
            "fallback_max_output_bytes",
            raw.fallback_max_output_bytes.is_some(),
        ),
        ("reattach_idle", raw.reattach_idle.is_some()),
    ] {
        only_for(ctx, &at.key(key), set, kind, redis);
    }
    only_for(
        ctx,
        &at.key("multiplex"),
        raw.multiplex.is_some(),
        kind,
        &[Kind::Redis, Kind::Postgres],
    );
    if raw.multiplex == Some(true) {
        if raw.fallback.as_deref() == Some("memory") {
            ctx.problem(
                &at.key("multiplex"),
                "cannot be combined with fallback = \"memory\" (docs/multiplex.md)",
            );
        }
        if raw.reattach_idle == Some(true) {
            ctx.problem(
                &at.key("multiplex"),
                "cannot be combined with reattach_idle = true: a multiplexed client \
                 is on no upstream connection between commands (docs/multiplex.md)",
            );
        }
    }
}

/// How many shared connections a multiplexed service keeps: 1 for redis
/// (one batch per write; BENCHMARKS.md), 4 for postgres (a server
/// connection runs one statement at a time), 1 to 64.
fn multiplex_connections(ctx: &mut Ctx<'_>, at: &KeyPath, raw: &RawService, kind: Kind) -> usize {
    let key = at.key("multiplex_connections");
    let default = if kind == Kind::Postgres { 4 } else { 1 };
    let Some(n) = raw.multiplex_connections else {
        return default;
    };
    if raw.multiplex != Some(true) {
        ctx.problem(
            &key,
            "applies only with multiplex = true (docs/multiplex.md)",
        );
        return default;
    }
    if !(1..=MAX_MULTIPLEX_CONNECTIONS).contains(&n) {
        ctx.problem(
            &key,
            format!("must be from 1 to {MAX_MULTIPLEX_CONNECTIONS}, got {n}"),
        );
        return default;
    }
    n as usize
}

/// The most connects to one upstream `max_connecting` may allow at once.
const MAX_CONNECTING: u64 = 65_535;

/// The most shared connections a multiplexed service may keep per thread
/// (listener/mux: a connection's lane is part of its registry key).
const MAX_MULTIPLEX_CONNECTIONS: u64 = 64;

fn upstream(
    ctx: &mut Ctx<'_>,
    at: &KeyPath,
    u: RawUpstream,
    kind: Kind,
) -> Option<(UpstreamConfig, UpstreamTls)> {
    let name = valid_name(ctx, &at.key("name"), u.name.as_deref());
    let role_at = at.key("role");
    let role = match ctx.required(&role_at, u.role.as_deref()) {
        Some(r) => Role::parse(r).or_else(|| {
            ctx.problem(&role_at, unknown_value(r, Role::NAMES));
            None
        }),
        None => None,
    };
    if kind.uses_address() {
        if u.url.is_some() {
            ctx.problem(
                &at.key("url"),
                format!("kind {kind} upstreams take `address = \"host:port\"`, not `url`"),
            );
        }
        if let Some(a) = ctx.required(&at.key("address"), u.address.as_deref()) {
            if let Err(e) = host_port(a) {
                ctx.problem(&at.key("address"), e);
            }
        }
    } else if HTTP_KINDS.contains(&kind) {
        if u.address.is_some() {
            ctx.problem(
                &at.key("address"),
                format!("kind {kind} upstreams take `url`, not `address`"),
            );
        }
        if let Some(url) = ctx.required(&at.key("url"), u.url.as_deref()) {
            if let Err(e) = http_url(url) {
                ctx.problem(&at.key("url"), e);
            }
        }
    }
    only_for(
        ctx,
        &at.key("user"),
        u.user.is_some(),
        kind,
        CREDENTIAL_KINDS,
    );
    only_for(
        ctx,
        &at.key("password_env"),
        u.password_env.is_some(),
        kind,
        CREDENTIAL_KINDS,
    );
    only_for(
        ctx,
        &at.key("database"),
        u.database.is_some(),
        kind,
        DATABASE_KINDS,
    );
    for (key, v) in [
        ("ca_file", &u.ca_file),
        ("client_cert", &u.client_cert),
        ("client_key", &u.client_key),
    ] {
        only_for(ctx, &at.key(key), v.is_some(), kind, PATH_KINDS);
    }
    // A password from REDIS_SECONDARY_URL beats `password_env`.
    let mut password = u.password.clone();
    if let Some(var) = u.password_env.as_deref() {
        if let Some(var) = ctx.required(&at.key("password_env"), Some(var)) {
            if password.is_none() {
                password = (ctx.env)(var);
                if password.is_none() {
                    ctx.problem(
                        &at.key("password_env"),
                        format!("environment variable `{var}` is not set"),
                    );
                }
            }
        }
    }
    let (client_cert, client_key) = ctx.pair(
        at,
        ("client_cert", u.client_cert.as_deref()),
        ("client_key", u.client_key.as_deref()),
    );
    let tls = UpstreamTls {
        ca_file: u
            .ca_file
            .as_deref()
            .map(|p| ctx.file(&at.key("ca_file"), p)),
        client_cert,
        client_key,
    };
    let up = UpstreamConfig {
        name: name?,
        address: u.address,
        url: u.url,
        role: role?,
        user: u.user,
        database: u.database,
        password,
        tls: tls.clone(),
    };
    Some((up, tls))
}
