//! The configuration file (SPEC 2): TOML -> `deny_unknown_fields` raw structs
//! ([`raw`]) -> environment overrides ([`env`], where they are documented) ->
//! validation that collects every problem ([`validate`], [`service`]) -> the
//! typed configs of the data plane and the control plane.
//!
//! A TOML syntax error reports the first error with line:column; otherwise
//! every problem is listed with its key path (`service[1].upstreams[0].address`)
//! and the line of that key. Relative paths resolve against the directory of
//! the config file. `config/continuity.toml` is the commented reference.

mod env;
mod lines;
mod raw;
pub mod service;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_env;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use continuity_control::config::ControlConfig;
use continuity_proxy::config::EngineConfig;

use lines::{KeyPath, LineIndex};
use raw::{RawAlerts, RawAudit, RawCluster, RawControl, RawHealth, RawRoot, RawService};

pub use service::ServiceExtras;

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (as given).
    pub path: PathBuf,
    /// `data_dir`, resolved against the config file's directory.
    pub data_dir: PathBuf,
    pub drain_timeout: Duration,
    pub engine: EngineConfig,
    pub control: ControlConfig,
    pub audit: AuditConfig,
    pub alerts: AlertsConfig,
    pub cluster: Option<ClusterConfig>,
    /// Service keys the typed `ServiceConfig` does not carry, by service name.
    pub extra: BTreeMap<String, ServiceExtras>,
}

/// `[audit]` (SPEC 7).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Resolved: under `data_dir` unless absolute.
    pub dir: PathBuf,
    pub retention_days: u32,
    /// Each compiles with the `regex` crate.
    pub mask_patterns: Vec<String>,
    /// Resolved against the config file's directory.
    pub signing_key: Option<PathBuf>,
}

/// `[alerts]` (SPEC 9).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlertsConfig {
    pub webhook_url: Option<String>,
    pub liaison_webhook_url: Option<String>,
    /// `[[alerts.rule]]` tables, kept raw until the alerting engine reads them.
    pub rules: Vec<toml::Value>,
}

/// `[cluster]`: coordination of many engines through etcd (opt-in); the
/// engine's own type, which it runs with.
pub use continuity_proxy::config::ClusterConfig;

/// One problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path (`service[1].upstreams[0].address`), `env NAME` for an
    /// environment variable, or empty for the file as a whole.
    pub path: String,
    /// 1-based line of the key (or of the table that lacks it) in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    /// `FILE:LINE: key.path: message`, the form `continuity check` prints.
    pub fn render(&self, file: &Path) -> String {
        let mut out = file.display().to_string();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        if !self.path.is_empty() {
            out.push_str(&format!(": {}", self.path));
        }
        out.push_str(&format!(": {}", self.message));
        out
    }
}

/// Every problem of a config that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The config file.
    pub file: PathBuf,
    /// In file order; environment problems first.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    /// One line per problem, `FILE:LINE: key.path: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&p.render(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a problem is, before lines are looked up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum At {
    Key(KeyPath),
    Env(&'static str),
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Key(p) => p.fmt(f),
            At::Env(name) => write!(f, "env {name}"),
        }
    }
}

/// A problem as the stages find it.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub at: At,
    pub message: String,
}

impl Found {
    pub fn key(at: KeyPath, message: impl Into<String>) -> Found {
        Found {
            at: At::Key(at),
            message: message.into(),
        }
    }

    pub fn env(name: &'static str, message: impl Into<String>) -> Found {
        Found {
            at: At::Env(name),
            message: message.into(),
        }
    }
}

/// Reads and validates the config at `path`, with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with the environment given as a function, for tests.
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse_with_env(&src, path, env),
        Err(e) => Err(ConfigErrors {
            file: path.to_path_buf(),
            problems: vec![Problem {
                path: String::new(),
                line: None,
                message: format!("cannot read the config file: {e}"),
            }],
        }),
    }
}

/// Validates config text as if read from `path` (which anchors relative paths).
pub fn parse_with_env(
    src: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let table: toml::Table = match toml::from_str(src) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = e
                .span()
                .map(|s| lines::line_col_at(src, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            let at = match (line, col) {
                (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
                _ => String::new(),
            };
            return Err(ConfigErrors {
                file: path.to_path_buf(),
                problems: vec![Problem {
                    path: String::new(),
                    line,
                    message: format!("TOML syntax error{at}: {}", e.message()),
                }],
            });
        }
    };
    let mut found = Vec::new();
    let config = build(table, path, env, &mut found);
    if found.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors {
            file: path.to_path_buf(),
            problems: to_problems(found, &LineIndex::new(src)),
        })
    }
}

fn build(
    table: toml::Table,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    found: &mut Vec<Found>,
) -> Config {
    let root = KeyPath::root();
    let top: RawRoot = raw::collect(toml::Value::Table(table), &root, found);
    let control: RawControl = section(top.control, &root.key("control"), found);
    let mut health: RawHealth = section(top.health, &root.key("health"), found);
    let audit: RawAudit = section(top.audit, &root.key("audit"), found);
    let mut alerts: RawAlerts = section(top.alerts, &root.key("alerts"), found);
    let cluster: Option<RawCluster> = top
        .cluster
        .map(|v| raw::collect(v, &root.key("cluster"), found));
    let mut services: Vec<RawService> = top
        .service
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, v)| raw::collect(v, &root.key("service").index(i), found))
        .collect();

    let default_redundancy = env::apply_globals(&mut health, &mut alerts, env, found);
    env::apply_secondaries(&mut services, env, found);

    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut ctx = validate::Ctx { found, base, env };
    let data_dir = validate::data_dir(&mut ctx, top.data_dir.as_deref());
    let drain_timeout = validate::drain_timeout(&mut ctx, top.drain_timeout_ms);
    let control = validate::control(&mut ctx, control);
    let health = validate::health(&mut ctx, &root.key("health"), &health, &Default::default());
    let audit = validate::audit(&mut ctx, audit, &data_dir);
    let alerts = validate::alerts(&mut ctx, alerts);
    let cluster = cluster.map(|c| validate::cluster(&mut ctx, c));
    let (services, extra) = service::services(
        &mut ctx,
        services,
        &health,
        default_redundancy,
        control.listen,
    );
    Config {
        path: path.to_path_buf(),
        engine: EngineConfig {
            services,
            drain_timeout,
            data_dir: Some(data_dir.clone()),
            cluster: cluster.clone(),
        },
        data_dir,
        drain_timeout,
        control,
        audit,
        alerts,
        cluster,
        extra,
    }
}

fn section<T: serde::de::DeserializeOwned + Default>(
    value: Option<toml::Value>,
    at: &KeyPath,
    found: &mut Vec<Found>,
) -> T {
    value.map_or_else(T::default, |v| raw::collect(v, at, found))
}

/// Adds lines, drops problems inside a path already reported (a wrong
/// `upstreams[2]` need not also be missing its name), and sorts by line.
fn to_problems(found: Vec<Found>, index: &LineIndex<'_>) -> Vec<Problem> {
    let mut kept: Vec<Found> = Vec::new();
    for f in found {
        let covered = kept.iter().any(|k| match (&k.at, &f.at) {
            (At::Key(a), At::Key(b)) => b.starts_with(a),
            _ => false,
        });
        if !covered {
            kept.push(f);
        }
    }
    let mut problems: Vec<Problem> = kept
        .into_iter()
        .map(|f| Problem {
            line: match &f.at {
                At::Key(p) => index.line_of(p),
                At::Env(_) => None,
            },
            path: f.at.to_string(),
            message: f.message,
        })
        .collect();
    problems.sort_by_key(|p| p.line.unwrap_or(0));
    problems
}
