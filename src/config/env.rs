//! Environment overrides: the one place they are defined.
//!
//! | variable | sets | value |
//! |---|---|---|
//! | `OPS_HEALTH_CHECK_INTERVAL` | `[health] check_interval_seconds` | seconds > 0, fractions allowed |
//! | `OPS_FAILOVER_THRESHOLD` | `[health] failure_threshold` | integer >= 1 |
//! | `OPS_REDUNDANCY_MODE` | the default `redundancy` of services | `hot`, `warm` or `cold` |
//! | `OPS_ALERT_WEBHOOK_URL` | `[alerts] webhook_url` | `http://` or `https://` URL |
//! | `NEO4J_SECONDARY_URI` | the secondary upstream of every `neo4j` service | `bolt://host:port`, `neo4j://host:port` or `host:port` (port default 7687) |
//! | `REDIS_SECONDARY_URL` | the secondary upstream of every `redis` service | `redis://[[user]:password@]host:port[/db]` (port default 6379) |
//!
//! The environment beats the file: these set the *global* values. A key
//! repeated inside a `[[service]]` still overrides the global for that
//! service (per-service keys override globals), so `OPS_FAILOVER_THRESHOLD=5`
//! changes every service that does not set its own `failure_threshold`.
//!
//! `NEO4J_SECONDARY_URI` / `REDIS_SECONDARY_URL` replace the address (and, for
//! redis, the password: it beats `password_env`) of the first upstream with
//! `role = "secondary"` of every service of that kind; a service without one
//! gets a new upstream named `<service>-secondary` with role secondary.
//!
//! A variable set to an empty string counts as unset (compose files often
//! pass `${VAR:-}`). A bad value is a problem whose path is `env NAME`.

use continuity_proxy::config::Redundancy;

use super::raw::{RawAlerts, RawHealth, RawService, RawUpstream};
use super::validate::{host_port, http_url};
use super::Found;

pub const HEALTH_CHECK_INTERVAL: &str = "OPS_HEALTH_CHECK_INTERVAL";
pub const FAILOVER_THRESHOLD: &str = "OPS_FAILOVER_THRESHOLD";
pub const REDUNDANCY_MODE: &str = "OPS_REDUNDANCY_MODE";
pub const ALERT_WEBHOOK_URL: &str = "OPS_ALERT_WEBHOOK_URL";
pub const NEO4J_SECONDARY_URI: &str = "NEO4J_SECONDARY_URI";
pub const REDIS_SECONDARY_URL: &str = "REDIS_SECONDARY_URL";

fn get(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Applies the global overrides to the raw `[health]` and `[alerts]`, and
/// returns the default redundancy (`OPS_REDUNDANCY_MODE`, else hot).
pub fn apply_globals(
    health: &mut RawHealth,
    alerts: &mut RawAlerts,
    env: &dyn Fn(&str) -> Option<String>,
    found: &mut Vec<Found>,
) -> Redundancy {
    if let Some(v) = get(env, HEALTH_CHECK_INTERVAL) {
        match v.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
                health.check_interval_seconds = Some(secs);
            }
            _ => found.push(Found::env(
                HEALTH_CHECK_INTERVAL,
                format!("`{v}` is not a number of seconds > 0 (e.g. 30 or 0.5)"),
            )),
        }
    }
    if let Some(v) = get(env, FAILOVER_THRESHOLD) {
        match v.parse::<u32>() {
            Ok(n) if n >= 1 => health.failure_threshold = Some(u64::from(n)),
            _ => found.push(Found::env(
                FAILOVER_THRESHOLD,
                format!("`{v}` is not an integer >= 1"),
            )),
        }
    }
    if let Some(v) = get(env, ALERT_WEBHOOK_URL) {
        match http_url(&v) {
            Ok(()) => alerts.webhook_url = Some(v),
            Err(e) => found.push(Found::env(ALERT_WEBHOOK_URL, e)),
        }
    }
    match get(env, REDUNDANCY_MODE) {
        None => Redundancy::Hot,
        Some(v) => Redundancy::parse(&v).unwrap_or_else(|| {
            found.push(Found::env(
                REDUNDANCY_MODE,
                format!(
                    "unknown value `{v}`; expected one of: {}",
                    Redundancy::NAMES.join(", ")
                ),
            ));
            Redundancy::Hot
        }),
    }
}

/// Applies `NEO4J_SECONDARY_URI` and `REDIS_SECONDARY_URL` to the services.
pub fn apply_secondaries(
    services: &mut [RawService],
    env: &dyn Fn(&str) -> Option<String>,
    found: &mut Vec<Found>,
) {
    if let Some(v) = get(env, NEO4J_SECONDARY_URI) {
        match parse_neo4j_uri(&v) {
            Ok(address) => set_secondary(services, "neo4j", address, None),
            Err(e) => found.push(Found::env(NEO4J_SECONDARY_URI, e)),
        }
    }
    if let Some(v) = get(env, REDIS_SECONDARY_URL) {
        match parse_redis_url(&v) {
            Ok(r) => set_secondary(services, "redis", r.address, Some((r.user, r.password))),
            Err(e) => found.push(Found::env(REDIS_SECONDARY_URL, e)),
        }
    }
}

type Credentials = (Option<String>, Option<String>);

fn set_secondary(
    services: &mut [RawService],
    kind: &str,
    address: String,
    credentials: Option<Credentials>,
) {
    for svc in services.iter_mut() {
        if svc.kind.as_deref() != Some(kind) {
            continue;
        }
        let upstreams = svc.upstreams.get_or_insert_with(Vec::new);
        let existing = upstreams
            .iter_mut()
            .find(|u| u.role.as_deref() == Some("secondary"));
        let upstream = match existing {
            Some(u) => u,
            None => {
                let Some(name) = svc.name.as_deref() else {
                    // The missing name is reported by validation.
                    continue;
                };
                upstreams.push(RawUpstream {
                    name: Some(format!("{name}-secondary")),
                    role: Some("secondary".to_string()),
                    ..RawUpstream::default()
                });
                let last = upstreams.len() - 1;
                &mut upstreams[last]
            }
        };
        upstream.address = Some(address.clone());
        upstream.url = None;
        if let Some((user, password)) = &credentials {
            if user.is_some() {
                upstream.user = user.clone();
            }
            if password.is_some() {
                upstream.password = password.clone();
            }
        }
    }
}

/// `bolt://host:port`, `neo4j://host:port` or `host:port` -> `host:port`.
pub fn parse_neo4j_uri(v: &str) -> Result<String, String> {
    let rest = ["bolt://", "neo4j://"]
        .iter()
        .find_map(|scheme| v.strip_prefix(scheme))
        .unwrap_or(v);
    if rest.contains("://") {
        return Err(format!(
            "`{v}`: expected bolt://host:port, neo4j://host:port or host:port"
        ));
    }
    let hostport = rest.trim_end_matches('/');
    let address = with_default_port(hostport, 7687);
    host_port(&address).map_err(|e| format!("`{v}`: {e}"))?;
    Ok(address)
}

/// A parsed `REDIS_SECONDARY_URL`.
#[derive(Debug, PartialEq)]
pub struct RedisUrl {
    pub address: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `redis://[[user]:password@]host:port[/db]`.
pub fn parse_redis_url(v: &str) -> Result<RedisUrl, String> {
    let Some(rest) = v.strip_prefix("redis://") else {
        return Err("expected redis://[:password@]host:port".to_string());
    };
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let hostport = match hostpart.split_once('/') {
        Some((hp, db)) if db.is_empty() || db.chars().all(|c| c.is_ascii_digit()) => hp,
        Some(_) => return Err("expected redis://[:password@]host:port[/db]".to_string()),
        None => hostpart,
    };
    let address = with_default_port(hostport, 6379);
    host_port(&address).map_err(|e| format!("redis URL: {e}"))?;
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pw)) => (
                Some(percent_decode(user)).filter(|s| !s.is_empty()),
                Some(percent_decode(pw)),
            ),
            None => (None, Some(percent_decode(u))),
        },
    };
    Ok(RedisUrl {
        address,
        user,
        password,
    })
}

/// `host` -> `host:port`; `host:port` and `[v6]:port` unchanged.
fn with_default_port(hostport: &str, port: u16) -> String {
    let has_port = if hostport.starts_with('[') {
        hostport.contains("]:")
    } else {
        hostport.contains(':')
    };
    if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:{port}")
    }
}

/// `%40` -> `@` in URL user info; a malformed escape is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
