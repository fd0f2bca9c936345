//! One structured access-log line per gateway request (tracing target
//! `continuity::access`), with secrets masked, and the request metrics.

use std::time::Duration;

use pingora::proxy::Session;
use serde::Serialize;

use super::Shared;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent to an upstream; the status is the upstream's.
    Proxied,
    /// Stored durably in the queue (202).
    Queued,
    /// Held for `buffer_timeout_ms` and no upstream came back (503).
    HeldTimeout,
    /// Refused by the gateway: too large, smuggling, queue full.
    Rejected,
    /// No upstream and `on_outage = "fail"`, or the upstream failed.
    Failed,
    /// 429 from the upstream's quota.
    RateLimited,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Proxied => "proxied",
            Outcome::Queued => "queued",
            Outcome::HeldTimeout => "held_timeout",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

pub struct Line<'a> {
    /// Index of the `[[service.route]]`, `None` for the service's own.
    pub route: Option<usize>,
    pub status: u16,
    pub outcome: Outcome,
    pub upstream: Option<&'a str>,
    pub attempts: u32,
    pub duration: Duration,
    pub upstream_ms: Option<f64>,
    pub body_bytes: u64,
    pub queue_id: Option<&'a str>,
    pub error: Option<String>,
}

/// Query parameter names whose values never reach a log.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "key",
    "api_key",
    "apikey",
    "auth",
    "signature",
    "sig",
    "session",
    "ssn",
    "client_secret",
];

/// `path?query` with the values of secret-looking parameters replaced by `***`.
pub fn mask_path(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret(k) => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", masked.join("&"))
}

fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_PARAMS.contains(&n.as_str())
        || n.ends_with("_token")
        || n.ends_with("password")
        || n.ends_with("secret")
}

fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Per route (the service's own last): the label, and the handles of the
/// series nearly every request touches, resolved once.
pub struct RouteMetrics {
    pub label: String,
    duration: prometheus::Histogram,
    proxied_2xx: prometheus::IntCounter,
}

impl RouteMetrics {
    pub fn for_service(
        m: &crate::metrics::HttpMetrics,
        service: &str,
        prefixes: &[&str],
    ) -> Vec<RouteMetrics> {
        prefixes
            .iter()
            .copied()
            .chain(std::iter::once("/"))
            .map(|label| RouteMetrics {
                label: label.to_string(),
                duration: m.duration.with_label_values(&[service, label]),
                proxied_2xx: m.requests.with_label_values(&[
                    service,
                    label,
                    Outcome::Proxied.as_str(),
                    "2xx",
                ]),
            })
            .collect()
    }
}

pub fn record(shared: &Shared, service: &str, session: &Session, line: &Line<'_>) {
    let Some(rm) = line
        .route
        .and_then(|i| shared.routes.get(i))
        .or_else(|| shared.routes.last())
    else {
        return;
    };
    let route = rm.label.as_str();
    let class = class(line.status);
    if line.outcome == Outcome::Proxied && class == "2xx" {
        rm.proxied_2xx.inc();
    } else {
        shared
            .metrics
            .requests
            .with_label_values(&[service, route, line.outcome.as_str(), class])
            .inc();
    }
    rm.duration.observe(line.duration.as_secs_f64());
    if !shared.access_log {
        return;
    }
    let req = session.req_header();
    let path = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string());
    let client = session
        .client_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        target: "continuity::access",
        service,
        route,
        client = %client,
        method = %req.method,
        path = %mask_path(&path),
        version = ?req.version,
        status = line.status,
        outcome = line.outcome.as_str(),
        upstream = line.upstream.unwrap_or("-"),
        attempts = line.attempts,
        duration_ms = line.duration.as_secs_f64() * 1000.0,
        upstream_ms = line.upstream_ms.unwrap_or(0.0),
        request_body_bytes = line.body_bytes,
        queue_id = line.queue_id.unwrap_or("-"),
        error = line.error.as_deref().unwrap_or("-"),
        "http request"
    );
}

#[cfg(test)]
mod tests {
    use super::mask_path;

    #[test]
    fn masks_secret_parameters() {
        assert_eq!(mask_path("/a/b"), "/a/b");
        assert_eq!(
            mask_path("/q?plate=ABC123&token=s3cr3t&api_key=k&x=1"),
            "/q?plate=ABC123&token=***&api_key=***&x=1"
        );
        assert_eq!(
            mask_path("/q?Access_Token=t&db_password=p"),
            "/q?Access_Token=***&db_password=***"
        );
        assert_eq!(mask_path("/q?flag"), "/q?flag");
    }
}
