//! Validation of the top-level keys and of `[control]`, `[health]`,
//! `[audit]`, `[alerts]` and `[cluster]`, plus the value checks shared with
//! the services. Each check records a problem and goes on with a default, so
//! that one run lists every problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use continuity_control::config::{ControlConfig, TokenConfig, TokenRole};
use continuity_proxy::config::HealthSettings;

use super::lines::KeyPath;
use super::raw::{RawAlerts, RawAudit, RawCluster, RawControl, RawHealth, RawToken};
use super::{AlertsConfig, AuditConfig, ClusterConfig, Found};

/// The default `[audit] mask_patterns`: US social security numbers.
pub const SSN_PATTERN: &str = r"\d{3}-\d{2}-\d{4}";

/// What validation needs besides the raw values.
pub struct Ctx<'a> {
    pub found: &'a mut Vec<Found>,
    /// The config file's directory: relative paths resolve against it.
    pub base: PathBuf,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    pub fn problem(&mut self, at: &KeyPath, message: impl Into<String>) {
        self.found.push(Found::key(at.clone(), message));
    }

    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve(&self.base, p)
    }

    /// A required string: missing or blank is a problem.
    pub fn required<'v>(&mut self, at: &KeyPath, v: Option<&'v str>) -> Option<&'v str> {
        match v {
            None => {
                self.problem(at, "required key is missing");
                None
            }
            Some(s) if s.trim().is_empty() => {
                self.problem(at, "must not be empty");
                None
            }
            Some(s) => Some(s),
        }
    }

    /// One of a fixed set of names.
    pub fn choice<T>(
        &mut self,
        at: &KeyPath,
        v: Option<&str>,
        parse: impl Fn(&str) -> Option<T>,
        names: &[&str],
        default: T,
    ) -> T {
        match v {
            None => default,
            Some(s) => parse(s).unwrap_or_else(|| {
                self.problem(at, unknown_value(s, names));
                default
            }),
        }
    }

    /// An integer in `min..=u32::MAX`.
    pub fn int(&mut self, at: &KeyPath, v: Option<u64>, min: u64, default: u32) -> u32 {
        match v {
            None => default,
            Some(n) if n < min => {
                self.problem(at, format!("must be at least {min}, got {n}"));
                default
            }
            Some(n) => u32::try_from(n).unwrap_or_else(|_| {
                self.problem(at, format!("must be at most {}, got {n}", u32::MAX));
                default
            }),
        }
    }

    /// Milliseconds; `min` is 1 for timeouts and intervals.
    pub fn millis(
        &mut self,
        at: &KeyPath,
        v: Option<u64>,
        min: u64,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(n) if n < min => {
                self.problem(at, format!("must be at least {min}, got {n}"));
                default
            }
            Some(n) => Duration::from_millis(n),
        }
    }

    /// Seconds as a number > 0, fractions allowed, at most a year (tokio
    /// adds an interval to an `Instant` without a check: 1e19 s panics).
    pub fn seconds(&mut self, at: &KeyPath, v: Option<f64>, default: Duration) -> Duration {
        const MAX: f64 = 365.0 * 24.0 * 3600.0;
        match v {
            None => default,
            Some(s) if s.is_finite() && s > MAX => {
                self.problem(at, format!("must be at most {MAX} (a year), got {s}"));
                default
            }
            Some(s) if s.is_finite() && s > 0.0 => {
                Duration::try_from_secs_f64(s).unwrap_or_else(|_| {
                    self.problem(at, format!("`{s}` is too large"));
                    default
                })
            }
            Some(s) => {
                self.problem(at, format!("must be a number of seconds > 0, got {s}"));
                default
            }
        }
    }

    /// Two keys that only make sense together, such as `tls_cert`/`tls_key`.
    pub fn pair(
        &mut self,
        at: &KeyPath,
        (a, va): (&str, Option<&str>),
        (b, vb): (&str, Option<&str>),
    ) -> (Option<PathBuf>, Option<PathBuf>) {
        match (va, vb) {
            (Some(_), None) => self.problem(
                &at.key(a),
                format!("`{a}` is set without `{b}`: set both or neither"),
            ),
            (None, Some(_)) => self.problem(
                &at.key(b),
                format!("`{b}` is set without `{a}`: set both or neither"),
            ),
            _ => {}
        }
        (
            va.map(|p| self.file(&at.key(a), p)),
            vb.map(|p| self.file(&at.key(b), p)),
        )
    }

    /// A file the engine will read (certificates, keys): resolved, and it
    /// must exist, so that `check` catches a missing one before `run`.
    pub fn file(&mut self, at: &KeyPath, p: &str) -> PathBuf {
        let path = self.resolve(p);
        if !path.is_file() {
            self.problem(at, format!("file `{}` does not exist", path.display()));
        }
        path
    }
}

pub fn unknown_value(v: &str, names: &[&str]) -> String {
    format!("unknown value `{v}`; expected one of: {}", names.join(", "))
}

pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// `host:port` (`[v6]:port` for IPv6) with a port in 1..=65535.
pub fn host_port(s: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return Err(format!("`{s}` is not host:port (IPv6 as [addr]:port)"));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not an IPv6 address"));
        }
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, port),
            _ => return Err(format!("`{s}` is not host:port")),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok {
        return Err(format!("`{s}` has no valid host before the port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{port}` is not a valid port (1-65535) in `{s}`")),
    }
}

/// An `http://` or `https://` URL with a host (and a valid port if given).
pub fn http_url(s: &str) -> Result<(), String> {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return Err(format!("`{s}` is not an http:// or https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = if hostport.starts_with('[') {
        hostport.contains("]:")
    } else {
        hostport.contains(':')
    };
    let checked = if has_port {
        host_port(hostport)
    } else {
        host_port(&format!("{hostport}:1"))
    };
    checked.map_err(|e| format!("`{s}` is not a valid URL: {e}"))
}

/// A listener address: an IP and a port (port 0 picks a free one).
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("`{s}` is not an IP:port socket address (e.g. 127.0.0.1:16379 or [::1]:16379)")
    })
}

pub fn data_dir(ctx: &mut Ctx<'_>, v: Option<&str>) -> PathBuf {
    let at = KeyPath::root().key("data_dir");
    match v {
        Some(s) if s.trim().is_empty() => {
            ctx.problem(&at, "must not be empty");
            ctx.resolve("data")
        }
        Some(s) => ctx.resolve(s),
        None => ctx.resolve("data"),
    }
}

pub fn drain_timeout(ctx: &mut Ctx<'_>, v: Option<u64>) -> Duration {
    let at = KeyPath::root().key("drain_timeout_ms");
    ctx.millis(&at, v, 1, Duration::from_millis(10_000))
}

pub fn control(ctx: &mut Ctx<'_>, raw: RawControl) -> ControlConfig {
    let at = KeyPath::root().key("control");
    let mut c = ControlConfig::default();
    if let Some(l) = raw.listen.as_deref() {
        match socket_addr(l) {
            Ok(a) => c.listen = a,
            Err(e) => ctx.problem(&at.key("listen"), e),
        }
    }
    (c.tls_cert, c.tls_key) = ctx.pair(
        &at,
        ("tls_cert", raw.tls_cert.as_deref()),
        ("tls_key", raw.tls_key.as_deref()),
    );
    c.metrics_public = raw.metrics_public.unwrap_or(false);
    let origins = raw.cors_origins.unwrap_or_default();
    for (i, o) in origins.iter().enumerate() {
        if o != "*" && http_url(o).is_err() {
            ctx.problem(
                &at.key("cors_origins").index(i),
                format!(
                    "`{o}` is not an origin (http://host[:port], https://host[:port] or \"*\")"
                ),
            );
        }
    }
    c.cors_origins = origins;
    c.auth_failures_per_minute = ctx.int(
        &at.key("auth_failures_per_minute"),
        raw.auth_failures_per_minute,
        1,
        c.auth_failures_per_minute,
    );
    c.limits.max_connections = ctx.int(
        &at.key("max_connections"),
        raw.max_connections,
        1,
        c.limits.max_connections,
    );
    c.limits.header_read_timeout = ctx.millis(
        &at.key("header_read_timeout_ms"),
        raw.header_read_timeout_ms,
        1,
        c.limits.header_read_timeout,
    );
    c.limits.idle_timeout = ctx.millis(
        &at.key("idle_timeout_ms"),
        raw.idle_timeout_ms,
        1,
        c.limits.idle_timeout,
    );
    for (i, t) in raw.token.unwrap_or_default().into_iter().enumerate() {
        let tp = at.key("token").index(i);
        let name = ctx.required(&tp.key("name"), t.name.as_deref());
        let role_at = tp.key("role");
        let role = match ctx.required(&role_at, t.role.as_deref()) {
            Some(r) => TokenRole::parse(r).or_else(|| {
                ctx.problem(&role_at, unknown_value(r, TokenRole::NAMES));
                None
            }),
            None => None,
        };
        let (sha_at, digest) = token_digest(ctx, &tp, &t);
        let sha = digest.and_then(|h| {
            sha256_hex(&h).or_else(|| {
                ctx.problem(
                    &sha_at,
                    "must be 64 hex characters, the SHA-256 of the token (see `continuity token new`)",
                );
                None
            })
        });
        if let Some(sha) = sha {
            if let Some(j) = c.tokens.iter().position(|t| t.sha256 == sha) {
                ctx.problem(&sha_at, format!("the same token as control.token[{j}]"));
            }
        }
        if let (Some(name), Some(role), Some(sha256)) = (name, role, sha) {
            c.tokens.push(TokenConfig {
                name: name.to_string(),
                role,
                sha256,
            });
        }
    }
    c
}

/// A token's digest text: `sha256`, or the environment variable that
/// `sha256_env` names (exactly one of the two), with the key to blame.
fn token_digest(ctx: &mut Ctx<'_>, tp: &KeyPath, t: &RawToken) -> (KeyPath, Option<String>) {
    match (t.sha256.as_deref(), t.sha256_env.as_deref()) {
        (Some(_), Some(_)) => {
            ctx.problem(
                &tp.key("sha256_env"),
                "set `sha256` or `sha256_env`, not both",
            );
            (tp.key("sha256"), None)
        }
        (None, Some(var)) => {
            let at = tp.key("sha256_env");
            let value = ctx.required(&at, Some(var)).and_then(|var| {
                let value = (ctx.env)(var)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty());
                if value.is_none() {
                    ctx.problem(&at, format!("environment variable `{var}` is not set"));
                }
                value
            });
            (at, value)
        }
        (sha, None) => {
            let at = tp.key("sha256");
            let value = ctx.required(&at, sha).map(str::to_string);
            (at, value)
        }
    }
}

fn sha256_hex(h: &str) -> Option<[u8; 32]> {
    if h.len() != 64 {
        return None;
    }
    let bytes = hex::decode(h.to_ascii_lowercase()).ok()?;
    bytes.try_into().ok()
}

/// `[health]` (or a service's overrides) on top of `base`.
pub fn health(
    ctx: &mut Ctx<'_>,
    at: &KeyPath,
    raw: &RawHealth,
    base: &HealthSettings,
) -> HealthSettings {
    HealthSettings {
        check_interval: ctx.seconds(
            &at.key("check_interval_seconds"),
            raw.check_interval_seconds,
            base.check_interval,
        ),
        timeout: ctx.millis(&at.key("timeout_ms"), raw.timeout_ms, 1, base.timeout),
        connect_timeout: ctx.millis(
            &at.key("connect_timeout_ms"),
            raw.connect_timeout_ms,
            1,
            base.connect_timeout,
        ),
        latency_threshold: ctx.millis(
            &at.key("latency_threshold_ms"),
            raw.latency_threshold_ms,
            1,
            base.latency_threshold,
        ),
        failure_threshold: ctx.int(
            &at.key("failure_threshold"),
            raw.failure_threshold,
            1,
            base.failure_threshold,
        ),
        recovery_threshold: ctx.int(
            &at.key("recovery_threshold"),
            raw.recovery_threshold,
            1,
            base.recovery_threshold,
        ),
        hold_down: match raw.hold_down_seconds {
            Some(s) => Duration::from_secs(s),
            None => base.hold_down,
        },
        busy_grace: ctx.millis(
            &at.key("busy_grace_ms"),
            raw.busy_grace_ms,
            0,
            base.busy_grace,
        ),
        snapshot_retention_hours: ctx.int(
            &at.key("snapshot_retention_hours"),
            raw.snapshot_retention_hours,
            1,
            base.snapshot_retention_hours,
        ),
    }
}

pub fn audit(ctx: &mut Ctx<'_>, raw: RawAudit, data_dir: &Path) -> AuditConfig {
    let at = KeyPath::root().key("audit");
    let dir = match raw.dir.as_deref() {
        Some(d) if d.trim().is_empty() => {
            ctx.problem(&at.key("dir"), "must not be empty");
            data_dir.join("audit")
        }
        Some(d) => resolve(data_dir, d),
        None => data_dir.join("audit"),
    };
    let retention_days = ctx.int(&at.key("retention_days"), raw.retention_days, 1, 365);
    let mask_patterns = raw
        .mask_patterns
        .unwrap_or_else(|| vec![SSN_PATTERN.to_string()]);
    for (i, p) in mask_patterns.iter().enumerate() {
        if let Err(e) = regex::Regex::new(p) {
            ctx.problem(
                &at.key("mask_patterns").index(i),
                format!("invalid regex `{p}`: {}", regex_error(&e)),
            );
        }
    }
    AuditConfig {
        dir,
        retention_days,
        mask_patterns,
        signing_key: raw
            .signing_key
            .as_deref()
            .map(|p| ctx.file(&at.key("signing_key"), p)),
    }
}

/// The one line of a regex error that says what is wrong.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or_else(|| text.lines().next().unwrap_or_default())
        .to_string()
}

pub fn alerts(ctx: &mut Ctx<'_>, raw: RawAlerts) -> AlertsConfig {
    let at = KeyPath::root().key("alerts");
    for (key, v) in [
        ("webhook_url", &raw.webhook_url),
        ("liaison_webhook_url", &raw.liaison_webhook_url),
    ] {
        if let Some(Err(e)) = v.as_deref().map(http_url) {
            ctx.problem(&at.key(key), e);
        }
    }
    let rules = raw.rule.unwrap_or_default();
    if let Err(problems) = continuity_control::alerts::parse_rules(&rules) {
        for p in problems {
            let (path, message) = rule_problem_path(&p);
            ctx.problem(&path, message);
        }
    }
    AlertsConfig {
        webhook_url: raw.webhook_url,
        liaison_webhook_url: raw.liaison_webhook_url,
        rules,
    }
}

/// Splits the alert engine's `alerts.rule[i].key: message` into a key path
/// (for the line number) and the message.
fn rule_problem_path(problem: &str) -> (KeyPath, String) {
    let Some((path, message)) = problem.split_once(": ") else {
        return (
            KeyPath::root().key("alerts").key("rule"),
            problem.to_string(),
        );
    };
    let mut at = KeyPath::root();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((name, rest)) => {
                at = at.key(name);
                if let Ok(i) = rest.trim_end_matches(']').parse::<usize>() {
                    at = at.index(i);
                }
            }
            None => at = at.key(part),
        }
    }
    (at, message.to_string())
}

pub fn cluster(ctx: &mut Ctx<'_>, raw: RawCluster) -> ClusterConfig {
    let at = KeyPath::root().key("cluster");
    let endpoints = raw.etcd_endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        ctx.problem(
            &at.key("etcd_endpoints"),
            "at least one etcd endpoint is required when [cluster] is present",
        );
    }
    for (i, e) in endpoints.iter().enumerate() {
        if http_url(e).is_err() && host_port(e).is_err() {
            ctx.problem(
                &at.key("etcd_endpoints").index(i),
                format!("`{e}` is neither host:port nor an http(s):// URL"),
            );
        }
    }
    let cluster_name = match raw.cluster_name.as_deref() {
        Some(n) => ctx
            .required(&at.key("cluster_name"), Some(n))
            .unwrap_or("continuity")
            .to_string(),
        None => "continuity".to_string(),
    };
    let node_id = match raw.node_id.as_deref() {
        Some(n) => ctx
            .required(&at.key("node_id"), Some(n))
            .unwrap_or("continuity")
            .to_string(),
        None => hostname(ctx.env),
    };
    let lease = ctx.int(&at.key("lease_ttl_seconds"), raw.lease_ttl_seconds, 1, 5);
    let quorum = raw
        .quorum
        .map(|q| ctx.int(&at.key("quorum"), Some(q), 1, 1));
    ClusterConfig {
        etcd_endpoints: endpoints,
        cluster_name,
        node_id,
        lease_ttl: Duration::from_secs(u64::from(lease)),
        quorum,
    }
}

/// The default `node_id`: `$HOSTNAME`, else `/etc/hostname`, else `continuity`.
fn hostname(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "continuity".to_string())
}
