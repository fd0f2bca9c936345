//! pingora's [`ProxyHttp`] filled in with the service's failover state:
//! the hooks in the order pingora calls them. The larger decisions live
//! beside it (`admit.rs`, `failure.rs`, `outage.rs`, `retry.rs`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::respond::{header, path_and_query};
use super::retry::retryable;
use super::{Ctx, Evidence, Gateway, InFlight, MAX_ATTEMPTS};
use crate::config::OnOutage;
use crate::gateway::access::{self, Outcome};
use crate::health::FailureKind;
use crate::protocol::http1::retry_after as parse_retry_after;
use crate::upstream::runtime::lock;

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
        self.admit(session, ctx).await
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
        self.answer_failure(session, e, ctx).await
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
