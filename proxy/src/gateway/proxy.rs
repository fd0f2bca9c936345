//! The gateway's request path: pingora's [`ProxyHttp`] filled in with the
//! service's failover state (the same [`ServiceRt`] the L4 listener uses),
//! SPEC 3's hold / queue / fail outage handling, retries with exponential
//! backoff and jitter for requests that may be repeated, and 429 quota
//! handling that never counts against an upstream's health.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use rand::Rng;

use super::access::{self, Outcome};
use super::queue::NewRequest;
use super::Shared;
use crate::config::OnOutage;
use crate::events::EventKind;
use crate::health::FailureKind;
use crate::upstream::runtime::{lock, ServiceRt};

/// Most upstream attempts for one request (the first one included).
pub const MAX_ATTEMPTS: u32 = 4;
/// First retry delay on the same upstream; doubles per attempt (full jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Hop-by-hop headers (RFC 9110 7.6.1), never stored in the queue.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A request's failed first attempt on the lean path (`h1.rs`), for the
/// pingora session that takes the connection over: its retry count, backoff
/// and metrics go on from there, so `MAX_ATTEMPTS` bounds both together.
#[derive(Debug, Clone, Copy)]
pub struct Prior {
    pub attempts: u32,
    /// The upstream that failed (a retry to it waits a backoff first).
    pub failed: Option<usize>,
    /// `continuity_http_retries_total`'s reason.
    pub reason: &'static str,
}

impl Prior {
    pub fn failed(idx: usize, reason: &'static str) -> Prior {
        Prior {
            attempts: 1,
            failed: Some(idx),
            reason,
        }
    }
}

pub struct Gateway {
    pub svc: Arc<ServiceRt>,
    pub shared: Arc<Shared>,
}

/// Passive evidence waiting to be reported (filters that are not async
/// record it here; the next async hook reports it).
#[derive(Debug)]
enum Evidence {
    Refused,
    ConnectTimeout(Duration),
    Failed(FailureKind, String),
}

/// One in-flight request: counted in the engine's open count (the drain
/// waits for it), and in the service's active count and
/// `continuity_proxy_active_connections` gauge (for HTTP services, requests
/// in flight), which `max_connections` bounds.
pub(super) struct InFlight {
    open: Arc<std::sync::atomic::AtomicU64>,
    svc: Arc<ServiceRt>,
    gauge: prometheus::IntGauge,
}

impl InFlight {
    pub(super) fn new(shared: &Shared, svc: &Arc<ServiceRt>) -> InFlight {
        shared.open.fetch_add(1, Ordering::SeqCst);
        svc.active_conns.fetch_add(1, Ordering::SeqCst);
        shared.active.inc();
        InFlight {
            open: shared.open.clone(),
            svc: svc.clone(),
            gauge: shared.active.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.svc.active_conns.fetch_sub(1, Ordering::SeqCst);
        self.gauge.dec();
    }
}

pub struct Ctx {
    _in_flight: InFlight,
    start: Instant,
    /// Index of the matching `[[service.route]]`; `None`: the service's own.
    route: Option<usize>,
    outage: OnOutage,
    /// Idempotent method, or an `Idempotency-Key` header.
    retry_safe: bool,
    attempts: u32,
    idx: Option<usize>,
    /// The upstream of the previous failed attempt.
    failed: Option<usize>,
    evidence: Option<(usize, Evidence)>,
    /// A connection to an upstream was made: request bytes may have left.
    reached: bool,
    upstream_start: Option<Instant>,
    upstream_ms: Option<f64>,
    status: u16,
    outcome: Outcome,
    queue_id: Option<String>,
    body_bytes: u64,
    /// Why the request got no upstream (for the answer).
    no_upstream: bool,
    /// A 429 answered locally: seconds to tell the client.
    quota_retry_after: Option<u64>,
    retry_reason: Option<&'static str>,
}

impl Gateway {
    /// The active upstream, when it may take a request now. As at L4,
    /// traffic only ever goes to the route's active upstream: a failure
    /// seen here is reported (`report`), and the failover state machine
    /// decides whether to switch (`failover = "auto"`, hold-down, fencing,
    /// promotion); a secondary is never used behind its back.
    fn active(&self) -> Option<usize> {
        let route = self.svc.route.load();
        self.svc
            .usable(&route, route.active)
            .then_some(route.active)
    }

    fn any_usable(&self) -> bool {
        self.active().is_some()
    }

    /// Waits until the active upstream is usable or `deadline` passes.
    async fn wait_usable(&self, deadline: Instant) -> bool {
        let mut changed = self.svc.changed_tx.subscribe();
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            if self.any_usable() {
                return true;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return false; },
                _ = tokio::time::sleep_until(deadline.into()) => return self.any_usable(),
                _ = shutdown.changed() => return false,
            }
        }
    }

    /// Reports passive evidence to the failover state machine.
    async fn report(&self, ctx: &mut Ctx) {
        let Some((idx, ev)) = ctx.evidence.take() else {
            return;
        };
        match ev {
            Evidence::Refused => {
                let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                self.svc.on_refused(idx, &e).await;
            }
            Evidence::ConnectTimeout(waited) => self.svc.on_connect_timeout(idx, waited).await,
            Evidence::Failed(kind, message) => {
                let waited = ctx.upstream_start.map_or(Duration::ZERO, |t| t.elapsed());
                self.svc
                    .on_passive_failure(idx, kind, waited, message)
                    .await;
            }
        }
    }

    fn retry_after_secs(&self) -> u64 {
        self.svc.cfg.health.check_interval.as_secs().clamp(1, 60)
    }

    fn deadline(&self, ctx: &Ctx) -> Instant {
        ctx.start + self.svc.cfg.buffer_timeout
    }

    /// 503 with `Retry-After`, the protocol's own "no upstream" answer.
    async fn unavailable(&self, session: &mut Session, ctx: &mut Ctx) {
        let secs = self.retry_after_secs();
        let body = serde_json::json!({"error": {
            "code": "unavailable",
            "message": format!("continuity: no upstream available for {}", self.svc.name()),
        }});
        ctx.status = 503;
        respond(session, 503, &[("retry-after", secs.to_string())], &body).await;
    }

    /// Reads the whole request body (after `prior`, what was already read),
    /// bounded by `max_body_bytes`; `None` when it is too large.
    async fn read_body(
        &self,
        session: &mut Session,
        prior: Option<Bytes>,
    ) -> Result<Option<Vec<u8>>> {
        let max = self.svc.cfg.http.max_body_bytes;
        let mut body = prior.map(|b| b.to_vec()).unwrap_or_default();
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > max {
                return Ok(None);
            }
        }
        Ok(Some(body))
    }

    /// Stores the request durably and answers 202 with its queue location.
    async fn enqueue(&self, session: &mut Session, ctx: &mut Ctx, prior: Option<Bytes>) {
        let Some(queue) = self.shared.queue.clone() else {
            ctx.outcome = Outcome::Failed;
            return self.unavailable(session, ctx).await;
        };
        let body = match self.read_body(session, prior).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                ctx.outcome = Outcome::Rejected;
                ctx.status = 413;
                return too_large(session, self.svc.cfg.http.max_body_bytes).await;
            }
            Err(_) => {
                ctx.outcome = Outcome::Failed;
                ctx.status = 400;
                return;
            }
        };
        ctx.body_bytes = body.len() as u64;
        let req = session.req_header();
        let headers = req
            .headers
            .iter()
            .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && n.as_str() != "content-length")
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let new = NewRequest {
            service: self.svc.name().to_string(),
            method: req.method.as_str().to_string(),
            path: path_and_query(req),
            headers,
            body,
        };
        let (max_depth, max_bytes) = (
            self.svc.cfg.http.queue_max_depth,
            self.svc.cfg.http.queue_max_bytes,
        );
        let q = queue.clone();
        let stored =
            tokio::task::spawn_blocking(move || q.enqueue_bounded(new, max_depth, max_bytes)).await;
        match stored {
            Ok(Ok(entry)) => {
                self.shared.wake.notify_one();
                self.shared.update_queue_metrics();
                let location = format!("/api/ops/queue/{}", entry.id);
                let body = serde_json::json!({
                    "id": entry.id, "state": "queued", "location": location,
                });
                ctx.status = 202;
                ctx.outcome = Outcome::Queued;
                ctx.queue_id = Some(entry.id);
                respond(session, 202, &[("location", location)], &body).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(service = self.svc.name(), error = %e, "request not queued");
                ctx.outcome = Outcome::Rejected;
                let secs = self.retry_after_secs();
                let body =
                    serde_json::json!({"error": {"code": "queue_full", "message": e.to_string()}});
                ctx.status = 503;
                respond(session, 503, &[("retry-after", secs.to_string())], &body).await;
            }
            Err(e) => {
                tracing::error!(service = self.svc.name(), error = %e, "queue task failed");
                ctx.outcome = Outcome::Failed;
                self.unavailable(session, ctx).await;
            }
        }
    }

    /// Full-jitter exponential backoff before retrying the same upstream.
    fn backoff(attempt: u32) -> Duration {
        let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(10));
        let cap = exp.min(BACKOFF_CAP);
        let ms = rand::thread_rng().gen_range(0..=cap.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

/// Writes a small JSON answer with extra headers.
async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(&str, String)],
    body: &serde_json::Value,
) {
    // An answer given before the request body was read: the unread body
    // would be taken for the next request, so this connection ends here.
    if !session.as_mut().is_body_done() {
        session.set_keepalive(None);
    }
    let text = Bytes::from(body.to_string());
    let Ok(mut resp) = ResponseHeader::build(status, Some(4)) else {
        return;
    };
    let _ = resp.insert_header("content-type", "application/json");
    let _ = resp.insert_header("content-length", text.len().to_string());
    for (n, v) in headers {
        let _ = resp.insert_header(n.to_string(), v.as_str());
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(text), true).await;
    }
}

async fn too_large(session: &mut Session, max: u64) {
    session.set_keepalive(None);
    let body = serde_json::json!({"error": {
        "code": "payload_too_large",
        "message": format!("request body over max_body_bytes ({max})"),
    }});
    respond(session, 413, &[("connection", "close".to_string())], &body).await;
}

/// Reads and drops a small request body (64 KiB, 1 s at most) before a
/// refusal, so that the client reads the answer instead of a reset (an
/// HTTP/2 stream or a socket closed with unread data); a larger or slower
/// body is left, and the connection ends after the answer.
async fn discard_small_body(session: &mut Session) {
    const MAX: usize = 64 * 1024;
    let drain = async {
        let mut seen = 0;
        while seen <= MAX && !session.as_mut().is_body_done() {
            match session.read_request_body().await {
                Ok(Some(chunk)) => seen += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

fn path_and_query(req: &RequestHeader) -> String {
    req.uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string())
}

/// Whether a raw HTTP/1 header block has a field `name` (lowercase).
fn has_header(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':')
    })
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Seconds from a `Retry-After`: the HTTP/1 codec's reading of it. Not
/// capped: every user caps it at the service's `max_retry_after_seconds`
/// before adding it to an `Instant`.
pub use crate::protocol::http1::retry_after as parse_retry_after;

pub(super) fn retryable(status: u16) -> bool {
    matches!(status, 502..=504)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: InFlight::new(&self.shared, &self.svc),
            start: Instant::now(),
            route: None,
            outage: self.svc.cfg.http.on_outage,
            retry_safe: false,
            attempts: 0,
            idx: None,
            failed: None,
            evidence: None,
            reached: false,
            upstream_start: None,
            upstream_ms: None,
            status: 0,
            outcome: Outcome::Proxied,
            queue_id: None,
            body_bytes: 0,
            no_upstream: false,
            quota_retry_after: None,
            retry_reason: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let prior = {
                let mut handed = lock(&self.shared.handed);
                if handed.is_empty() {
                    None
                } else {
                    handed.remove(addr)
                }
            };
            if let Some(p) = prior {
                ctx.attempts = p.attempts;
                ctx.failed = p.failed;
                ctx.retry_reason = Some(p.reason);
            }
        }
        let req = session.req_header();
        // Request smuggling: a message with both framings is refused, and
        // the connection closed (RFC 9112 6.1 allows either; we refuse).
        // pingora drops Content-Length when both are present, so look at the
        // raw header too.
        let both = req.headers.contains_key("transfer-encoding")
            && (req.headers.contains_key("content-length")
                || session
                    .as_ref()
                    .as_http1()
                    .is_some_and(|h1| has_header(&h1.get_headers_raw_bytes(), b"content-length")));
        if both {
            ctx.outcome = Outcome::Rejected;
            ctx.status = 400;
            session.set_keepalive(None);
            let body = serde_json::json!({"error": {"code": "bad_request",
                "message": "both Content-Length and Transfer-Encoding: refused (request smuggling)"}});
            respond(session, 400, &[("connection", "close".to_string())], &body).await;
            return Ok(true);
        }
        // A way out of the upstream's base path (issue 12): refused before
        // it is proxied or queued.
        if let Err(why) = super::path::check(&path_and_query(req)) {
            ctx.outcome = Outcome::Rejected;
            ctx.status = 400;
            discard_small_body(session).await;
            let body = serde_json::json!({"error": {"code": "bad_request", "message": why}});
            respond(session, 400, &[], &body).await;
            return Ok(true);
        }
        if let Some(limit) = self.svc.cfg.max_connections {
            // This request is counted already.
            if self.svc.active_conns.load(Ordering::SeqCst) > u64::from(limit) {
                ctx.outcome = Outcome::Rejected;
                ctx.status = 503;
                let secs = self.retry_after_secs();
                let body = serde_json::json!({"error": {"code": "overloaded",
                    "message": format!("continuity: {} has {limit} requests in flight (max_connections)", self.svc.name())}});
                respond(session, 503, &[("retry-after", secs.to_string())], &body).await;
                return Ok(true);
            }
        }
        let max = self.svc.cfg.http.max_body_bytes;
        let declared = header(req, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            ctx.outcome = Outcome::Rejected;
            ctx.status = 413;
            too_large(session, max).await;
            return Ok(true);
        }
        let http = &self.svc.cfg.http;
        ctx.route = http.route_index(req.uri.path());
        if let Some(r) = ctx.route.and_then(|i| http.routes.get(i)) {
            ctx.outage = r.on_outage;
        }
        ctx.retry_safe = req.method.is_idempotent() || req.headers.contains_key("idempotency-key");
        if self.any_usable() {
            return Ok(false);
        }
        match ctx.outage {
            OnOutage::Fail => {
                ctx.outcome = Outcome::Failed;
                self.unavailable(session, ctx).await;
                Ok(true)
            }
            OnOutage::Queue => {
                self.enqueue(session, ctx, None).await;
                Ok(true)
            }
            OnOutage::Hold => {
                self.svc.held.fetch_add(1, Ordering::Relaxed);
                self.svc
                    .metrics
                    .held
                    .with_label_values(&[self.svc.name()])
                    .inc();
                let ok = self.wait_usable(self.deadline(ctx)).await;
                self.svc.held.fetch_sub(1, Ordering::Relaxed);
                if ok {
                    return Ok(false);
                }
                self.svc
                    .metrics
                    .hold_timeouts
                    .with_label_values(&[self.svc.name()])
                    .inc();
                self.svc.emit(EventKind::HoldTimedOut {
                    waited_ms: ctx.start.elapsed().as_millis() as u64,
                });
                ctx.outcome = Outcome::HeldTimeout;
                self.unavailable(session, ctx).await;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.svc.cfg.http.max_body_bytes {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_body_bytes",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.report(ctx).await;
        let deadline = self.deadline(ctx);
        let idx = loop {
            if let Some(i) = self.active() {
                break i;
            }
            // Nothing usable between attempts: hold (queue and hold routes)
            // until an upstream is back, within buffer_timeout_ms.
            if ctx.outage == OnOutage::Fail || !self.wait_usable(deadline).await {
                ctx.no_upstream = true;
                return Error::e_explain(ErrorType::HTTPStatus(503), "no upstream available");
            }
        };
        let Some(tpl) = self.shared.peers.get(idx) else {
            return Error::e_explain(ErrorType::InternalError, "upstream index out of range");
        };
        if ctx.attempts > 0 {
            if let (Some(up), Some(reason)) = (
                self.svc.upstreams.get(ctx.failed.unwrap_or(idx)),
                ctx.retry_reason,
            ) {
                self.shared
                    .metrics
                    .retries
                    .with_label_values(&[self.svc.name(), &up.cfg.name, reason])
                    .inc();
            }
            if ctx.failed == Some(idx) {
                tokio::time::sleep(Self::backoff(ctx.attempts)).await;
            }
        }
        // A 429's Retry-After is honoured: wait it out when the request may
        // be repeated and the wait fits the hold budget, else answer 429
        // here without touching the upstream.
        let quota = *lock(&self.shared.quota[idx]);
        if let Some(until) = quota.filter(|u| *u > Instant::now()) {
            let wait = until - Instant::now();
            if ctx.retry_safe
                && Instant::now()
                    .checked_add(wait)
                    .is_some_and(|t| t <= deadline)
            {
                tokio::time::sleep(wait).await;
            } else {
                ctx.quota_retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
                return Error::e_explain(
                    ErrorType::HTTPStatus(429),
                    "upstream quota exhausted (Retry-After)",
                );
            }
        }
        let addr = tpl.address().await.map_err(|e| {
            Error::because(
                ErrorType::ConnectNoRoute,
                format!("resolving {}", tpl.target.host),
                e,
            )
        })?;
        ctx.idx = Some(idx);
        ctx.attempts += 1;
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(tpl.peer(addr)))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.reached = true;
        if let Some(up) = ctx.idx.and_then(|i| self.svc.upstreams.get(i)) {
            if let Some(t) = ctx.upstream_start {
                up.metrics.connect.observe(t.elapsed().as_secs_f64());
            }
            up.total_conns.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(tpl) = ctx.idx.and_then(|i| self.shared.peers.get(i)) else {
            return Ok(());
        };
        if !tpl.target.base_path.is_empty() {
            // request_filter refused a dot segment already; never join one.
            let path = tpl
                .upstream_path(&path_and_query(upstream_request))
                .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e))?;
            let uri = path
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream path", e))?;
            upstream_request.set_uri(uri);
        }
        upstream_request.insert_header("host", tpl.authority.as_str())?;
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let xff = match header(session.req_header(), "x-forwarded-for") {
                Some(prev) => format!("{prev}, {}", addr.ip()),
                None => addr.ip().to_string(),
            };
            upstream_request.insert_header("x-forwarded-for", xff)?;
        }
        let proto = if self.shared.tls_listener {
            "https"
        } else {
            "http"
        };
        upstream_request.insert_header("x-forwarded-proto", proto)?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // A connection the lean path handed over for a passing reason goes
        // back to it: closed after this answer, the client reconnects there.
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            if self.shared.recycle_now(addr, &self.svc) {
                session.set_keepalive(None);
                resp.insert_header("connection", "close")?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.status = status;
        let Some(idx) = ctx.idx else {
            return Ok(());
        };
        if let (Some(up), Some(t)) = (self.svc.upstreams.get(idx), ctx.upstream_start) {
            let d = t.elapsed();
            ctx.upstream_ms = Some(d.as_secs_f64() * 1000.0);
            up.metrics.response.observe(d.as_secs_f64());
            up.inline.record(d);
        }
        let more = ctx.attempts < MAX_ATTEMPTS;
        if status == 429 {
            // Quota, not ill health: remember it, never count it.
            let wait = resp
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
                .map(|w| w.min(self.svc.cfg.http.max_retry_after));
            if let (Some(wait), Some(q)) = (wait, self.shared.quota.get(idx)) {
                let until = Instant::now().checked_add(wait);
                *lock(q) = until;
                if ctx.retry_safe && more && until.is_some_and(|t| t <= self.deadline(ctx)) {
                    ctx.retry_reason = Some("rate_limited");
                    let mut e = Error::explain(
                        ErrorType::HTTPStatus(429),
                        "upstream 429, retrying after Retry-After",
                    );
                    e.set_retry(true);
                    return Err(e);
                }
            }
            ctx.outcome = Outcome::RateLimited;
            return Ok(());
        }
        if retryable(status) {
            ctx.evidence = Some((
                idx,
                Evidence::Failed(
                    FailureKind::Protocol,
                    format!("HTTP {status} from upstream"),
                ),
            ));
            ctx.failed = Some(idx);
            if ctx.retry_safe && more {
                ctx.retry_reason = Some("http_5xx");
                let mut e = Error::explain(ErrorType::HTTPStatus(status), "upstream 5xx, retrying");
                e.set_retry(true);
                return Err(e);
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(idx) = ctx.idx else {
            return e;
        };
        let waited = ctx.upstream_start.map_or(Duration::ZERO, |t| t.elapsed());
        let ev = match e.etype() {
            ErrorType::ConnectRefused => Evidence::Refused,
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
                Evidence::ConnectTimeout(waited)
            }
            ErrorType::ConnectNoRoute => {
                if let Some(t) = self.shared.peers.get(idx) {
                    t.forget_address();
                }
                Evidence::Failed(FailureKind::Io, format!("connect: {e}"))
            }
            _ => Evidence::Failed(FailureKind::Protocol, format!("connect: {e}")),
        };
        ctx.evidence = Some((idx, ev));
        ctx.failed = Some(idx);
        ctx.retry_reason = Some("connect");
        // No byte reached the upstream: any request may go elsewhere.
        e.set_retry(ctx.attempts < MAX_ATTEMPTS);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let from_upstream = *e.esource() == ErrorSource::Upstream;
        if let (Some(idx), true) = (ctx.idx, from_upstream) {
            if ctx.evidence.is_none() && !matches!(e.etype(), ErrorType::HTTPStatus(_)) {
                let kind = match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailureKind::Timeout,
                    _ => FailureKind::Io,
                };
                ctx.evidence = Some((
                    idx,
                    Evidence::Failed(kind, format!("upstream: {}", e.etype().as_str())),
                ));
                ctx.failed = Some(idx);
                ctx.retry_reason.get_or_insert("upstream_error");
            }
        }
        // Bytes may have reached the upstream: repeat only what is safe to
        // repeat, and only with the whole body still at hand.
        let may = ctx.retry_safe
            && !session.as_ref().retry_buffer_truncated()
            && ctx.attempts < MAX_ATTEMPTS
            && (from_upstream || matches!(e.etype(), ErrorType::HTTPStatus(_)));
        e.set_retry(may);
        e
    }

    /// A client that goes away mid-request is not an error of ours (the
    /// access log still records it).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        *e.esource() == ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        self.report(ctx).await;
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            _ if *e.esource() == ErrorSource::Upstream => {
                if matches!(
                    e.etype(),
                    ErrorType::ReadTimedout | ErrorType::ConnectTimedout
                ) {
                    504
                } else {
                    502
                }
            }
            _ if *e.esource() == ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            _ => 500,
        };
        // Nothing reached an upstream (or the request may be repeated): a
        // queue route stores it rather than fail it.
        let connect_only = matches!(
            e.etype(),
            ErrorType::ConnectRefused
                | ErrorType::ConnectTimedout
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::TLSHandshakeFailure
                | ErrorType::TLSHandshakeTimedout
        );
        let storable = ctx.no_upstream || connect_only || (!ctx.reached || ctx.retry_safe);
        if ctx.outage == OnOutage::Queue
            && storable
            && session.response_written().is_none()
            && code != 413
            && code != 429
            && (ctx.no_upstream || code >= 500)
            && !session.as_ref().retry_buffer_truncated()
        {
            let prior = session.as_ref().get_retry_buffer();
            self.enqueue(session, ctx, prior).await;
            return FailToProxy {
                error_code: ctx.status,
                can_reuse_downstream: false,
            };
        }
        if code == 0 || session.response_written().is_some() {
            ctx.outcome = Outcome::Failed;
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        match code {
            413 => {
                ctx.outcome = Outcome::Rejected;
                ctx.status = 413;
                too_large(session, self.svc.cfg.http.max_body_bytes).await;
            }
            429 => {
                ctx.outcome = Outcome::RateLimited;
                ctx.status = 429;
                let secs = ctx.quota_retry_after.unwrap_or(1);
                let body = serde_json::json!({"error": {"code": "rate_limited",
                    "message": "upstream quota exhausted; retry after Retry-After"}});
                respond(session, 429, &[("retry-after", secs.to_string())], &body).await;
            }
            503 if ctx.no_upstream => {
                ctx.outcome = if ctx.outage == OnOutage::Fail {
                    Outcome::Failed
                } else {
                    Outcome::HeldTimeout
                };
                self.unavailable(session, ctx).await;
            }
            c => {
                ctx.outcome = Outcome::Failed;
                ctx.status = c;
                let body = serde_json::json!({"error": {"code": "upstream_error",
                    "message": format!("continuity: upstream failed: {}", e.etype().as_str())}});
                let extra: Vec<(&str, String)> = if c == 503 || c == 502 || c == 504 {
                    vec![("retry-after", self.retry_after_secs().to_string())]
                } else {
                    Vec::new()
                };
                respond(session, c, &extra, &body).await;
            }
        }
        FailToProxy {
            error_code: ctx.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.report(ctx).await;
        if ctx.status == 0 {
            ctx.status = session.response_written().map_or(0, |r| r.status.as_u16());
        }
        if e.is_some() && ctx.outcome == Outcome::Proxied && ctx.status == 0 {
            ctx.outcome = Outcome::Failed;
        }
        let upstream = ctx
            .idx
            .and_then(|i| self.svc.upstreams.get(i))
            .map(|u| u.cfg.name.as_str());
        let (mut path, mut client) = (String::new(), String::new());
        access::record(
            &self.shared,
            self.svc.name(),
            &access::Request::of_session(session, &mut path, &mut client),
            &access::Line {
                route: ctx.route,
                status: ctx.status,
                outcome: ctx.outcome,
                upstream,
                attempts: ctx.attempts,
                duration: ctx.start.elapsed(),
                upstream_ms: ctx.upstream_ms,
                body_bytes: ctx.body_bytes,
                queue_id: ctx.queue_id.as_deref(),
                error: e.map(|e| e.etype().as_str().to_string()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_lookup() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(has_header(raw, b"content-length"));
        assert!(has_header(raw, b"transfer-encoding"));
        assert!(!has_header(raw, b"content-type"));
        assert!(!has_header(
            b"GET /content-length: HTTP/1.1\r\n\r\n",
            b"content-length"
        ));
        assert!(!has_header(
            b"GET / HTTP/1.1\r\nContent-Lengthy: 1\r\n\r\n",
            b"content-length"
        ));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 0..20 {
            assert!(Gateway::backoff(attempt) <= BACKOFF_CAP);
        }
        let max1 = (0..200)
            .map(|_| Gateway::backoff(1))
            .max()
            .unwrap_or_default();
        assert!(max1 <= BACKOFF_BASE * 2);
    }
}
