//! The file as written: `deny_unknown_fields` structs whose fields are all
//! `Option`, so that "missing" is decided by validation, and [`collect`], which
//! deserializes a subtree, records each serde error with its key path, removes
//! the offending key and retries, so that every unknown key and every wrong
//! type is reported, not just the first.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Value;

use super::lines::{KeyPath, Seg};
use super::Found;

/// The top level; sections are kept as values and read one by one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoot {
    pub data_dir: Option<String>,
    pub drain_timeout_ms: Option<u64>,
    pub control: Option<Value>,
    pub health: Option<Value>,
    pub audit: Option<Value>,
    pub alerts: Option<Value>,
    pub cluster: Option<Value>,
    pub service: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub metrics_public: Option<bool>,
    pub cors_origins: Option<Vec<String>>,
    pub auth_failures_per_minute: Option<u64>,
    pub max_connections: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub token: Option<Vec<RawToken>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: Option<String>,
    pub role: Option<String>,
    pub sha256: Option<String>,
    /// Names an environment variable holding the digest (instead of `sha256`).
    pub sha256_env: Option<String>,
}

/// `[health]`, and the same flat keys repeated in a `[[service]]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub check_interval_seconds: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub latency_threshold_ms: Option<u64>,
    pub failure_threshold: Option<u64>,
    pub recovery_threshold: Option<u64>,
    pub hold_down_seconds: Option<u64>,
    pub busy_grace_ms: Option<u64>,
    pub snapshot_retention_hours: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub dir: Option<String>,
    pub retention_days: Option<u64>,
    pub mask_patterns: Option<Vec<String>>,
    pub signing_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub webhook_url: Option<String>,
    pub liaison_webhook_url: Option<String>,
    pub rule: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub etcd_endpoints: Option<Vec<String>>,
    pub cluster_name: Option<String>,
    pub node_id: Option<String>,
    pub lease_ttl_seconds: Option<u64>,
    pub quorum: Option<u64>,
}

/// One `[[service]]`. `flatten` cannot be combined with `deny_unknown_fields`,
/// so the per-service health keys are repeated here.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub category: Option<String>,
    pub listen: Option<String>,
    pub redundancy: Option<String>,
    pub failover: Option<String>,
    pub failback: Option<String>,
    pub on_failover: Option<String>,
    pub buffer_timeout_ms: Option<u64>,
    pub warm_connections: Option<u64>,
    pub slow_query_ms: Option<u64>,
    pub fallback: Option<String>,
    pub fallback_max_bytes: Option<u64>,
    pub fallback_max_reply_bytes: Option<u64>,
    pub fallback_max_output_bytes: Option<u64>,
    pub reattach_idle: Option<bool>,
    pub multiplex: Option<bool>,
    pub multiplex_connections: Option<u64>,
    pub max_connecting: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_client_connections: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub queue_max_depth: Option<u64>,
    pub queue_max_bytes: Option<u64>,
    pub max_retry_after_seconds: Option<u64>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub health_path: Option<String>,
    pub on_outage: Option<String>,
    pub access_log: Option<String>,
    pub stall_after_seconds: Option<f64>,
    pub route: Option<Vec<RawRoute>>,
    pub upstreams: Option<Vec<RawUpstream>>,
    // The flat [health] keys, overriding [health] for this service.
    pub check_interval_seconds: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub latency_threshold_ms: Option<u64>,
    pub failure_threshold: Option<u64>,
    pub recovery_threshold: Option<u64>,
    pub hold_down_seconds: Option<u64>,
    pub busy_grace_ms: Option<u64>,
    pub snapshot_retention_hours: Option<u64>,
}

impl RawService {
    /// The per-service health overrides, as a `[health]` table.
    pub fn health(&self) -> RawHealth {
        RawHealth {
            check_interval_seconds: self.check_interval_seconds,
            timeout_ms: self.timeout_ms,
            connect_timeout_ms: self.connect_timeout_ms,
            latency_threshold_ms: self.latency_threshold_ms,
            failure_threshold: self.failure_threshold,
            recovery_threshold: self.recovery_threshold,
            hold_down_seconds: self.hold_down_seconds,
            busy_grace_ms: self.busy_grace_ms,
            snapshot_retention_hours: self.snapshot_retention_hours,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: Option<String>,
    pub on_outage: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Option<String>,
    pub address: Option<String>,
    pub url: Option<String>,
    pub role: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub password_env: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Set by `REDIS_SECONDARY_URL`; beats `password_env`.
    #[serde(skip)]
    pub password: Option<String>,
}

/// Deserializes `value` (found at `at`) into `T`, recording every serde error
/// as a problem. After an error the offending key is removed (an array
/// element is replaced by an empty value) and the rest is read again; a
/// subtree that cannot be repaired yields `T::default()`.
pub fn collect<T: DeserializeOwned + Default>(
    mut value: Value,
    at: &KeyPath,
    found: &mut Vec<Found>,
) -> T {
    let mut seen: Vec<(Vec<Seg>, usize)> = Vec::new();
    // Each round removes or replaces one node, so this bounds nothing real.
    for _ in 0..1000 {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return t,
            Err(err) => err,
        };
        let segs: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        let attempt = match seen.iter_mut().find(|(p, _)| *p == segs) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                let full = at.join(&KeyPath(segs.clone()));
                found.push(Found::key(full, clean_message(err.inner().message())));
                seen.push((segs.clone(), 0));
                0
            }
        };
        if !repair(&mut value, &segs, attempt) {
            return T::default();
        }
    }
    T::default()
}

/// Makes the node at `segs` stop failing: a table key is removed; an array
/// element is replaced by an empty table, then an empty string (an array of
/// strings), then removed.
fn repair(value: &mut Value, segs: &[Seg], attempt: usize) -> bool {
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        let next = match (seg, node) {
            (Seg::Key(k), Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node) {
        (Seg::Key(k), Value::Table(t)) => t.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            match attempt {
                0 => a[*i] = Value::Table(toml::Table::new()),
                1 => a[*i] = Value::String(String::new()),
                _ => {
                    a.remove(*i);
                }
            }
            true
        }
        _ => false,
    }
}

/// serde's wording, in TOML's terms.
pub fn clean_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg);
    let mut out = first
        .replace("unknown field", "unknown key")
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected f64", "expected a number");
    if let Some(pos) = out.find("expected struct ") {
        out.truncate(pos);
        out.push_str("expected a table");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_error_of_a_subtree() {
        let v: Value = toml::from_str(
            "name = 5\nbogus = 1\nupstreams = [ { name = \"a\", x = 1 }, \"s\", { name = \"b\" } ]\n",
        )
        .expect("parses");
        let mut found = Vec::new();
        let s: RawService = collect(v, &KeyPath::root().key("service").index(2), &mut found);
        let paths: Vec<String> = found.iter().map(|f| f.at.to_string()).collect();
        assert!(paths.contains(&"service[2].name".to_string()), "{paths:?}");
        assert!(paths.contains(&"service[2].bogus".to_string()), "{paths:?}");
        assert!(
            paths.contains(&"service[2].upstreams[0].x".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"service[2].upstreams[1]".to_string()),
            "{paths:?}"
        );
        assert_eq!(s.upstreams.map(|u| u.len()), Some(3));
    }

    #[test]
    fn repairs_arrays_of_strings() {
        let v: Value = toml::from_str("cors_origins = [\"a\", 5, \"c\"]\n").expect("parses");
        let mut found = Vec::new();
        let c: RawControl = collect(v, &KeyPath::root().key("control"), &mut found);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].at.to_string(), "control.cors_origins[1]");
        assert_eq!(c.cors_origins.map(|o| o.len()), Some(3));
    }
}
