//! One structured access-log line per gateway request (tracing target
//! `continuity::access`), with secrets masked, and the request metrics.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use pingora::proxy::Session;
use serde::Serialize;

use super::Shared;
use crate::config::AccessLog;

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

/// The client's side of a request, as logged.
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query as sent (masked here).
    pub path: &'a str,
    pub version: &'a str,
    /// The client's address (`-` when unknown).
    pub client: &'a str,
}

impl<'a> Request<'a> {
    /// A pingora session's request; `path` and `client` keep the text.
    pub fn of_session(
        session: &'a Session,
        path: &'a mut String,
        client: &'a mut String,
    ) -> Request<'a> {
        let req = session.req_header();
        *path = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string());
        *client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(|| "-".to_string(), SocketAddr::to_string);
        Request {
            method: req.method.as_str(),
            path,
            version: match req.version {
                http::Version::HTTP_09 => "HTTP/0.9",
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            },
            client,
        }
    }
}

/// The access log's tracing target (`RUST_LOG=info,continuity::access=off`
/// turns it off).
pub const TARGET: &str = "continuity::access";

/// Where formatted access lines go, when the binary installs one.
/// `write_line` runs on the gateway's threads, inside the request path:
/// it must be quick and must not itself record an access line.
pub trait AccessSink: Send + Sync {
    fn write_line(&self, line: &[u8]);
}

struct Sink {
    out: Box<dyn AccessSink>,
    json: bool,
}

/// The process's access-line sink, a global on purpose (like tracing's
/// global subscriber, whose output it stands in for). Safe because:
/// - it is written once, by the binary at start ([`install_sink`]; a
///   second call is ignored), before any gateway serves, and only read
///   afterwards (`OnceLock`: no lock on the request path);
/// - it holds no per-service or per-generation state, only where lines go
///   and in which format, so every gateway of every generation (and every
///   engine of a process, as in tests) may share it;
/// - unset (unit tests, embedders), lines go through `tracing::info!`.
static SINK: OnceLock<Sink> = OnceLock::new();

// Per-thread scratch buffers, so that formatting a line allocates nothing.
// Safe because each is borrowed only inside one synchronous call of
// `record` (no `.await` while borrowed, so no other task on the thread can
// reach it), and nothing called while `LINE` is borrowed records an access
// line: the sink's `write_line` must not log to `continuity::access` itself
// (it would find `LINE` borrowed and panic). They carry nothing from one
// line to the next but capacity and the cached second.
thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    /// The current second, formatted (`2026-11-28T05:06:29`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Access lines are formatted here, in the same layout as the engine's
/// other log lines (tracing-subscriber's full text format, or its JSON
/// format with `json`), and handed to `out` whole. tracing's own formatter
/// visits each of the 15 fields through `dyn Debug`; at 50k requests/s that
/// was a tenth of the gateway's CPU (BENCHMARKS.md). Without a sink (unit
/// tests, embedders), lines go through `tracing::info!`. The filter is
/// tracing's either way. Only the first call has an effect.
pub fn install_sink(out: Box<dyn AccessSink>, json: bool) {
    let _ = SINK.set(Sink { out, json });
}

struct Fields<'a> {
    service: &'a str,
    route: &'a str,
    req: &'a Request<'a>,
    line: &'a Line<'a>,
}

impl Fields<'_> {
    fn text(&self, b: &mut String) {
        timestamp(b);
        b.push_str("  INFO continuity::access: http request service=");
        quoted(b, self.service);
        b.push_str(" route=");
        quoted(b, self.route);
        b.push_str(" client=");
        b.push_str(self.req.client);
        b.push_str(" method=");
        quoted(b, self.req.method);
        let _ = write!(b, " path={} version=", mask_path(self.req.path));
        quoted(b, self.req.version);
        let l = self.line;
        let _ = write!(b, " status={} outcome=", l.status);
        quoted(b, l.outcome.as_str());
        b.push_str(" upstream=");
        quoted(b, l.upstream.unwrap_or("-"));
        let _ = write!(b, " attempts={} duration_ms=", l.attempts);
        millis(b, l.duration);
        b.push_str(" upstream_ms=");
        millis(b, ms_duration(l.upstream_ms));
        let _ = write!(b, " request_body_bytes={} queue_id=", l.body_bytes);
        quoted(b, l.queue_id.unwrap_or("-"));
        b.push_str(" error=");
        quoted(b, l.error.as_deref().unwrap_or("-"));
        b.push('\n');
    }

    fn json(&self, b: &mut String) {
        let l = self.line;
        b.push_str("{\"timestamp\":\"");
        timestamp(b);
        b.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"http request\",\"service\":");
        json_str(b, self.service);
        b.push_str(",\"route\":");
        json_str(b, self.route);
        b.push_str(",\"client\":");
        json_str(b, self.req.client);
        b.push_str(",\"method\":");
        json_str(b, self.req.method);
        b.push_str(",\"path\":");
        json_str(b, &mask_path(self.req.path));
        b.push_str(",\"version\":");
        json_str(b, self.req.version);
        let _ = write!(b, ",\"status\":{},\"outcome\":", l.status);
        json_str(b, l.outcome.as_str());
        b.push_str(",\"upstream\":");
        json_str(b, l.upstream.unwrap_or("-"));
        let _ = write!(b, ",\"attempts\":{},\"duration_ms\":", l.attempts);
        millis(b, l.duration);
        b.push_str(",\"upstream_ms\":");
        millis(b, ms_duration(l.upstream_ms));
        let _ = write!(b, ",\"request_body_bytes\":{},\"queue_id\":", l.body_bytes);
        json_str(b, l.queue_id.unwrap_or("-"));
        b.push_str(",\"error\":");
        json_str(b, l.error.as_deref().unwrap_or("-"));
        b.push_str("},\"target\":\"continuity::access\"}\n");
    }
}

fn ms_duration(ms: Option<f64>) -> Duration {
    Duration::from_secs_f64(ms.unwrap_or(0.0).max(0.0) / 1000.0)
}

/// `d` in milliseconds with microsecond precision (`0.213`, `12.004`).
fn millis(b: &mut String, d: Duration) {
    let us = d.as_micros();
    let _ = write!(b, "{}.{:03}", us / 1000, us % 1000);
}

/// UTC, RFC 3339 with microseconds, as tracing-subscriber writes it.
fn timestamp(b: &mut String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *cached = secs;
            text.clear();
            if let Some(t) = chrono::DateTime::from_timestamp(secs as i64, 0) {
                let _ = write!(text, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
            }
        }
        b.push_str(text);
    });
    let _ = write!(b, ".{:06}Z", now.subsec_micros());
}

/// A string as tracing's `Debug` writes it (quoted, escaped when needed).
fn quoted(b: &mut String, s: &str) {
    if s.bytes()
        .all(|c| c >= 0x20 && c != b'"' && c != b'\\' && c < 0x7f)
    {
        b.push('"');
        b.push_str(s);
        b.push('"');
    } else {
        let _ = write!(b, "{s:?}");
    }
}

fn json_str(b: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(j) => b.push_str(&j),
        Err(_) => b.push_str("\"\""),
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

/// Whether `access_log` wants this request's line: `errors` keeps only the
/// requests that did not go normally (a 5xx, an outcome other than
/// `proxied`, a retry), as HAProxy's `option dontlog-normal`.
fn logged(mode: AccessLog, line: &Line<'_>) -> bool {
    match mode {
        AccessLog::All => true,
        AccessLog::Off => false,
        AccessLog::Errors => {
            line.status >= 500 || line.outcome != Outcome::Proxied || line.attempts > 1
        }
    }
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
pub fn mask_path(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret(k) => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    Cow::Owned(format!("{path}?{}", masked.join("&")))
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

pub fn record(shared: &Shared, service: &str, req: &Request<'_>, line: &Line<'_>) {
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
    if !logged(shared.access_log, line) || !tracing::enabled!(target: TARGET, tracing::Level::INFO)
    {
        return;
    }
    if let Some(sink) = SINK.get() {
        LINE.with_borrow_mut(|buf| {
            buf.clear();
            let fields = Fields {
                service,
                route,
                req,
                line,
            };
            if sink.json {
                fields.json(buf);
            } else {
                fields.text(buf);
            }
            sink.out.write_line(buf.as_bytes());
        });
        return;
    }
    tracing::info!(
        target: TARGET,
        service,
        route,
        client = %req.client,
        method = req.method,
        path = %mask_path(req.path),
        version = req.version,
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
    use super::*;

    fn sample(b: &mut String, json: bool) {
        let req = Request {
            method: "GET",
            path: "/plates?plate=A\"B&token=s3cr3t",
            version: "HTTP/1.1",
            client: "127.0.0.1:5000",
        };
        let line = Line {
            route: None,
            status: 200,
            outcome: Outcome::Proxied,
            upstream: Some("lpr-a"),
            attempts: 1,
            duration: Duration::from_micros(1234),
            upstream_ms: Some(0.5),
            body_bytes: 0,
            queue_id: None,
            error: Some("say \"hi\"".to_string()),
        };
        let f = Fields {
            service: "lpr",
            route: "/",
            req: &req,
            line: &line,
        };
        if json {
            f.json(b);
        } else {
            f.text(b);
        }
    }

    #[test]
    fn text_lines_have_tracings_layout_and_mask_secrets() {
        let mut b = String::new();
        sample(&mut b, false);
        let (ts, rest) = b.split_once("  INFO ").expect("level");
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.len() == 27,
            "{ts}"
        );
        assert_eq!(
            rest,
            "continuity::access: http request service=\"lpr\" route=\"/\" client=127.0.0.1:5000 \
             method=\"GET\" path=/plates?plate=A\"B&token=*** version=\"HTTP/1.1\" status=200 \
             outcome=\"proxied\" upstream=\"lpr-a\" attempts=1 duration_ms=1.234 upstream_ms=0.500 \
             request_body_bytes=0 queue_id=\"-\" error=\"say \\\"hi\\\"\"\n"
        );
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut b = String::new();
        sample(&mut b, true);
        assert!(b.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(b.trim_end()).expect("json");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "continuity::access");
        let f = &v["fields"];
        assert_eq!(f["message"], "http request");
        assert_eq!(f["path"], "/plates?plate=A\"B&token=***");
        assert_eq!(f["status"], 200);
        assert_eq!(f["duration_ms"], 1.234);
        assert_eq!(f["error"], "say \"hi\"");
        assert_eq!(f["client"], "127.0.0.1:5000");
        assert!(!b.contains("s3cr3t"));
    }

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
