//! The rule table (`docs/diagnostics.md`): every failure-bearing engine
//! event, every failed probe and every error real traffic met becomes a
//! [`Diagnosis`] with a category, a severity and a class.
//!
//! Category: network-level failures (refused, reset, DNS, unreachable,
//! timeout, TLS) are `network` whoever the service is; everything else
//! belongs to the service's domain: `federal` or `vendor` by its category,
//! else `database` for redis, postgres, neo4j and elasticsearch, `network`
//! for tcp, `internal` for the rest. Auth failures, SQLSTATEs and the error
//! replies of the database protocols are `database`.

use continuity_proxy::config::{Category, Kind};
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::{FailoverState, ProbeRecord, ServiceStatus, UpstreamHealth};

use super::model::{DiagCategory as C, DiagSeverity as S, Diagnosis};

/// What the classifier knows of the service an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInfo {
    pub kind: Kind,
    pub category: Category,
}

/// The category of anything that is not network-level.
pub fn domain(svc: Option<ServiceInfo>) -> C {
    let Some(s) = svc else { return C::Internal };
    match (s.category, s.kind) {
        (Category::Federal, _) => C::Federal,
        (Category::Vendor, _) => C::Vendor,
        (_, Kind::Redis | Kind::Postgres | Kind::Neo4j | Kind::Elasticsearch) => C::Database,
        (_, Kind::Tcp) => C::Network,
        _ => C::Internal,
    }
}

fn is_database(svc: Option<ServiceInfo>) -> bool {
    svc.is_some_and(|s| {
        matches!(
            s.kind,
            Kind::Redis | Kind::Postgres | Kind::Neo4j | Kind::Elasticsearch
        )
    })
}

/// Category and class of an error text (a probe's or passive evidence's).
pub fn classify_error(text: &str, svc: Option<ServiceInfo>) -> (C, String) {
    let lower = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if let Some(code) = sqlstate(text) {
        return (C::Database, sqlstate_class(code).to_string());
    }
    if let Some(word) = text.split("server replied: ").nth(1) {
        let code = word.split_whitespace().next().unwrap_or_default();
        return (C::Database, redis_class(code));
    }
    if has(&[
        "authentication",
        "auth failed",
        "noauth",
        "wrongpass",
        "invalid password",
        "unauthorized",
        "permission denied",
    ]) {
        let cat = if is_database(svc) {
            C::Database
        } else {
            domain(svc)
        };
        return (cat, "auth_failed".into());
    }
    let network: &[(&[&str], &str)] = &[
        (&["refused"], "connection_refused"),
        (
            &[
                "reset",
                "broken pipe",
                "aborted",
                "unexpected eof",
                "early eof",
            ],
            "connection_reset",
        ),
        (
            &[
                "lookup address",
                "name or service not known",
                "name resolution",
                "no such host",
                "nodename nor servname",
                "dns",
            ],
            "dns_failure",
        ),
        (&["unreachable", "no route to host"], "network_unreachable"),
        (&["timed out", "timeout", "deadline"], "timeout"),
        (&["tls", "certificate"], "tls_error"),
    ];
    for (needles, class) in network {
        if has(needles) {
            return (C::Network, (*class).to_string());
        }
    }
    if let Some(status) = http_status(&lower) {
        let class = if status >= 500 {
            "http_5xx"
        } else {
            "http_4xx"
        };
        return (domain(svc), class.into());
    }
    if has(&["protocol", "bolt", "unexpected", "not a "]) {
        return (domain(svc), "protocol_error".into());
    }
    (domain(svc), "unclassified".into())
}

/// `XXXXX` of a `(SQLSTATE XXXXX)` in an error text.
fn sqlstate(text: &str) -> Option<&str> {
    let at = text.find("SQLSTATE ")? + "SQLSTATE ".len();
    let code = text.get(at..at + 5)?;
    code.bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        .then_some(code)
}

fn sqlstate_class(code: &str) -> String {
    if code.starts_with("28") {
        "auth_failed".into()
    } else {
        format!("sqlstate_{code}")
    }
}

fn redis_class(code: &str) -> String {
    match code {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => "auth_failed".into(),
        "ERR" => "redis_max_clients".into(),
        c => format!(
            "redis_{}",
            c.to_ascii_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(32)
                .collect::<String>()
        ),
    }
}

/// A 4xx/5xx status after `http` or `status` in a lower-cased text.
fn http_status(lower: &str) -> Option<u16> {
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).find_map(|w| match w {
        [k, n] if (k.starts_with("http") || *k == "status") && n.len() == 3 => {
            n.parse::<u16>().ok().filter(|s| (400..600).contains(s))
        }
        _ => None,
    })
}

/// Severity and class of an error answer real traffic met
/// (`EventKind::UpstreamError`): a SQLSTATE, a redis error code or a
/// Neo4j status code.
pub fn classify_upstream_code(code: &str) -> (S, String) {
    if let Some(rest) = code.strip_prefix("Neo.") {
        if rest.starts_with("ClientError.Security.") {
            return (S::Warning, "auth_failed".into());
        }
        let sev = if rest.starts_with("TransientError.") {
            S::Warning
        } else {
            S::Error
        };
        return (sev, neo4j_class(rest));
    }
    let b = code.as_bytes();
    let sqlstate = b.len() == 5
        && b.iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && (b.iter().take(2).all(u8::is_ascii_digit) || code.starts_with("XX"));
    if sqlstate {
        let sev = match code {
            c if c.starts_with("28") => S::Warning,
            "57014" => S::Warning,
            "53100" | "53200" => S::Critical,
            c if c.starts_with("XX") => S::Critical,
            _ => S::Error,
        };
        return (sev, sqlstate_class(code));
    }
    let sev = match code {
        "OOM" | "MISCONF" | "CLUSTERDOWN" => S::Critical,
        "LOADING" | "BUSY" | "TRYAGAIN" | "NOAUTH" | "WRONGPASS" | "NOPERM" => S::Warning,
        _ => S::Error,
    };
    (sev, redis_class(code))
}

/// `neo4j_not_a_leader` from `ClientError.Cluster.NotALeader`.
fn neo4j_class(rest: &str) -> String {
    let last: Vec<char> = rest
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(40)
        .collect();
    let mut out = String::from("neo4j_");
    for (i, &c) in last.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| last.get(p));
        let next = last.get(i + 1);
        let boundary = c.is_ascii_uppercase()
            && prev.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(char::is_ascii_lowercase))
            });
        if boundary {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn diagnosis(
    category: C,
    severity: S,
    class: impl Into<String>,
    upstream: Option<&str>,
    message: String,
) -> Option<Diagnosis> {
    Some(Diagnosis {
        category,
        severity,
        class: class.into(),
        upstream: upstream.map(str::to_string),
        message,
    })
}

/// A failed probe seen in an upstream's history.
pub fn classify_probe(upstream: &str, probe: &ProbeRecord, svc: Option<ServiceInfo>) -> Diagnosis {
    let error = probe.error.as_deref().unwrap_or("probe failed");
    let (category, class) = classify_error(error, svc);
    Diagnosis {
        category,
        severity: S::Warning,
        class,
        upstream: Some(upstream.to_string()),
        message: format!("probe of {upstream} failed: {error}"),
    }
}

/// The diagnosis of one engine event, or `None` for events that are not
/// failures (and for slow queries, which have their own record).
pub fn classify(event: &Event, svc: Option<ServiceInfo>) -> Option<Diagnosis> {
    let service = event.service.as_deref().unwrap_or("engine");
    let core = svc.is_some_and(|s| s.category == Category::Core);
    match &event.kind {
        EventKind::UpstreamStateChanged {
            upstream,
            old,
            new,
            error,
            passive,
        } => match (old, new) {
            (_, UpstreamHealth::Down) => {
                let text = error.as_deref().unwrap_or("marked down");
                let (category, class) = classify_error(text, svc);
                let how = if *passive {
                    " (seen by real traffic)"
                } else {
                    ""
                };
                let message = format!("upstream {upstream} is down{how}: {text}");
                diagnosis(category, S::Error, class, Some(upstream), message)
            }
            (UpstreamHealth::Down, UpstreamHealth::Up) => {
                let message = format!("upstream {upstream} is up again");
                diagnosis(domain(svc), S::Info, "recovered", Some(upstream), message)
            }
            _ => None,
        },
        EventKind::ServiceStatusChanged { old, new } => match new {
            ServiceStatus::Down => {
                let sev = if core { S::Critical } else { S::Error };
                let message = format!("service {service} is down: no usable upstream");
                diagnosis(domain(svc), sev, "service_down", None, message)
            }
            ServiceStatus::Degraded => {
                let message = format!("service {service} is degraded");
                diagnosis(domain(svc), S::Warning, "service_degraded", None, message)
            }
            ServiceStatus::Healthy if *old != ServiceStatus::Unknown => {
                let message = format!("service {service} is healthy again");
                diagnosis(domain(svc), S::Info, "service_recovered", None, message)
            }
            _ => None,
        },
        EventKind::FailoverActivated {
            from, to, reason, ..
        } => {
            let from = from.as_deref().unwrap_or("?");
            let message = format!("failover of {service} from {from} to {to}: {reason}");
            diagnosis(
                domain(svc),
                S::Warning,
                "failover_activated",
                Some(to),
                message,
            )
        }
        EventKind::RecoveryCompleted { to, reason, .. } => {
            let message = format!("{service} recovered to {to}: {reason}");
            diagnosis(
                domain(svc),
                S::Info,
                "failover_recovered",
                Some(to),
                message,
            )
        }
        EventKind::FailoverBlocked { reason } => {
            let message = format!("failover of {service} blocked: {reason}");
            diagnosis(domain(svc), S::Critical, "failover_blocked", None, message)
        }
        EventKind::FailoverStateChanged { new, .. } if *new == FailoverState::Emergency => {
            let message = "engine state is emergency".to_string();
            diagnosis(C::Internal, S::Critical, "emergency", None, message)
        }
        // Audited and published as switches (recorder.rs, bridge.rs).
        EventKind::FailoverStateChanged { .. }
        | EventKind::FallbackActivated { .. }
        | EventKind::FallbackDeactivated { .. }
        | EventKind::ClusterDecision { .. }
        | EventKind::ClusterConnection { .. } => None,
        EventKind::EmergencyDeclared {
            enabled,
            actor,
            reason,
        } => {
            let (sev, class, verb) = if *enabled {
                (S::Critical, "emergency_declared", "declared")
            } else {
                (S::Info, "emergency_cleared", "cleared")
            };
            let message = format!("emergency {verb} by {actor}: {reason}");
            diagnosis(C::Internal, sev, class, None, message)
        }
        EventKind::HoldTimedOut { waited_ms } => {
            let message = format!(
                "a client of {service} was refused after waiting {waited_ms} ms for an upstream"
            );
            diagnosis(domain(svc), S::Error, "hold_timeout", None, message)
        }
        EventKind::SlowQuery { .. } => None,
        EventKind::Neo4jWriteFailure {
            upstream,
            statement,
            code,
        } => {
            let message = format!("write failed on {upstream} ({code}): {statement}");
            diagnosis(
                C::Database,
                S::Critical,
                "neo4j_write_failure",
                Some(upstream),
                message,
            )
        }
        EventKind::UpstreamError {
            upstream,
            code,
            message,
        } => {
            let (sev, class) = classify_upstream_code(code);
            let message = format!("{upstream} answered {code}: {message}");
            diagnosis(C::Database, sev, class, Some(upstream), message)
        }
        EventKind::ProtocolError { upstream, reason } => {
            let message = format!("stopped timing one connection to {upstream}: {reason}");
            diagnosis(
                C::Internal,
                S::Info,
                "observer_stopped",
                Some(upstream),
                message,
            )
        }
    }
}
