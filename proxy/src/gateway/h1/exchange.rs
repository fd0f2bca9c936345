//! One request's exchange with the upstream: send the planned head and
//! body on the pinned (or pooled, or new) connection, read the answer,
//! apply the 429 and 5xx rules, relay it, and say how the connection goes
//! on ([`Done`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::log::LogLine;
use super::plan::Plan;
use super::pool::pool_take;
use super::relay::{json_answer, relay_body, rewrite_head, write_client, Side};
use super::upstream::{read_head, read_small_body, still_open, HeadError};
use super::{Conn, Lean, Pinned};
use crate::gateway::access::Outcome;
use crate::gateway::peers::{PeerTemplate, READ_TIMEOUT};
use crate::gateway::proxy::{self as gw, Prior};
use crate::health::FailureKind;
use crate::protocol::http1::Framing;
use crate::upstream::runtime::lock;

/// How an exchange ended.
pub(super) enum Done {
    KeepAlive,
    Close,
    /// Give the connection, with the request still buffered, to pingora.
    HandOver,
    /// The same, after a failed attempt that pingora's count goes on from.
    Retry(Prior),
}

impl Lean {
    /// Sends the planned request and relays the response.
    pub(super) async fn exchange(
        &self,
        c: &mut Conn,
        plan: &Plan,
        stop: &watch::Receiver<bool>,
    ) -> Done {
        let start = Instant::now();
        let Some(tpl) = self.shared.peers.get(plan.idx) else {
            return Done::HandOver;
        };
        let Some(up) = self.svc.upstreams.get(plan.idx) else {
            return Done::HandOver;
        };
        let mut log = LogLine {
            plan,
            status: 0,
            outcome: Outcome::Proxied,
            upstream_ms: None,
            error: None,
            start,
            reported: false,
        };
        // An idle pinned connection that the upstream closed, or one to an
        // upstream that is no longer the active one, is replaced.
        if let Some(p) = &mut c.up {
            if p.idx != plan.idx || !still_open(p) {
                c.up = None;
            }
        }
        if c.up.is_none() {
            c.up = pool_take(plan.idx);
        }
        let reused = c.up.is_some();
        if c.up.is_none() {
            match self.connect(tpl, plan.idx).await {
                Ok(stream) => {
                    c.up = Some(Pinned {
                        idx: plan.idx,
                        stream,
                        buf: BytesMut::with_capacity(16 * 1024),
                    })
                }
                Err(()) => {
                    // Nothing reached the upstream: pingora may take it anywhere.
                    return Done::Retry(Prior::failed(plan.idx, "connect"));
                }
            }
        }
        let Some(p) = c.up.as_mut() else {
            return Done::HandOver;
        };
        up.total_conns.fetch_add(1, Ordering::Relaxed);
        let body = &c.buf[plan.head_len..plan.head_len + plan.body_len];
        c.out.extend_from_slice(body);
        let sent_at = Instant::now();
        let write = tokio::time::timeout(READ_TIMEOUT, p.stream.write_all(&c.out)).await;
        if !matches!(write, Ok(Ok(()))) {
            c.up = None;
            if reused {
                // The upstream closed it while idle: nothing was taken.
                return Done::HandOver;
            }
            return self
                .upstream_failed(c, plan, &mut log, FailureKind::Io, "write", sent_at)
                .await;
        }
        // The response head (1xx interim answers are relayed and skipped).
        let head = loop {
            match read_head(p).await {
                Ok(h) if h.status == 101 => {
                    // Switching protocols without having been asked to.
                    c.up = None;
                    let e = HeadError {
                        kind: FailureKind::Protocol,
                        what: "unsolicited 101",
                    };
                    return self
                        .upstream_failed(c, plan, &mut log, e.kind, e.what, sent_at)
                        .await;
                }
                Ok(h) if (100..200).contains(&h.status) => {
                    if !write_client(&mut c.client, &p.buf[..h.len]).await {
                        c.up = None;
                        return Done::Close;
                    }
                    p.buf.advance(h.len);
                }
                Ok(h) => break h,
                Err(e) => {
                    let fresh = p.buf.is_empty();
                    c.up = None;
                    if reused && fresh && e.kind != FailureKind::Timeout && plan.retry_safe {
                        // Closed while idle, before any answer.
                        return Done::HandOver;
                    }
                    return self
                        .upstream_failed(c, plan, &mut log, e.kind, e.what, sent_at)
                        .await;
                }
            }
        };
        let waited = sent_at.elapsed();
        log.upstream_ms = Some(waited.as_secs_f64() * 1000.0);
        up.metrics.response.observe(waited.as_secs_f64());
        up.inline.record(waited);
        log.status = head.status;
        if head.status == 429 {
            // Quota, not ill health (proxy/ does the same).
            // Capped: an upstream's 2^64-1 seconds overflows an Instant.
            let wait = head
                .retry_after
                .map(|w| w.min(self.svc.cfg.http.max_retry_after));
            if let (Some(wait), Some(q)) = (wait, self.shared.quota.get(plan.idx)) {
                *lock(q) = Instant::now().checked_add(wait);
                if plan.retry_safe
                    && start.elapsed().saturating_add(wait) <= self.svc.cfg.buffer_timeout
                {
                    c.up = None;
                    return Done::Retry(Prior {
                        attempts: 1,
                        failed: None,
                        reason: "rate_limited",
                    });
                }
            }
            log.outcome = Outcome::RateLimited;
        } else if gw::retryable(head.status) {
            let message = format!("HTTP {} from upstream", head.status);
            self.svc
                .on_passive_failure(plan.idx, FailureKind::Protocol, waited, message)
                .await;
            log.reported = true;
            if plan.retry_safe {
                c.up = None;
                return Done::Retry(Prior::failed(plan.idx, "http_5xx"));
            }
        }
        let framing = if plan.head_only || head.status == 204 || head.status == 304 {
            Framing::Empty
        } else {
            head.framing
        };
        // A small answer is read whole before any of it is relayed, so that
        // an upstream dying mid-answer (killed between its head and its
        // body) still leaves the request free to be repeated elsewhere.
        if let Err(e) = read_small_body(p, head.len, framing).await {
            c.up = None;
            return self
                .upstream_failed(c, plan, &mut log, e.kind, e.what, sent_at)
                .await;
        }
        // The head: relayed as is when it can be, else rewritten.
        let client_close = plan.close || *stop.borrow() || framing == Framing::UntilClose;
        c.out.clear();
        if head.rewrite || client_close {
            rewrite_head(&p.buf[..head.len], client_close, &mut c.out);
        } else {
            c.out.extend_from_slice(&p.buf[..head.len]);
        }
        p.buf.advance(head.len);
        let relayed = relay_body(&mut c.client, p, framing, &mut c.out).await;
        match relayed {
            Ok(()) => {}
            Err(Side::Client) => {
                log.outcome = Outcome::Failed;
                log.error = Some("downstream write");
                self.record(c, &log);
                c.up = None;
                return Done::Close;
            }
            Err(Side::Upstream(kind)) => {
                // Mid-response: the client's answer is cut; the upstream
                // is reported (a reset or a stall counts against it).
                if !log.reported {
                    let message = "upstream failed mid-response".to_string();
                    self.svc
                        .on_passive_failure(plan.idx, kind, sent_at.elapsed(), message)
                        .await;
                }
                log.outcome = Outcome::Failed;
                log.error = Some("upstream read");
                self.record(c, &log);
                c.up = None;
                return Done::Close;
            }
        }
        if !head.reusable || framing == Framing::UntilClose {
            c.up = None;
        }
        self.record(c, &log);
        if client_close {
            Done::Close
        } else {
            Done::KeepAlive
        }
    }

    /// A new upstream connection; a failure is reported as passive evidence.
    async fn connect(&self, tpl: &PeerTemplate, idx: usize) -> Result<TcpStream, ()> {
        let t = Instant::now();
        let addr = match tpl.address().await {
            Ok(a) => a,
            Err(e) => {
                tpl.forget_address();
                let msg = format!("resolving {}: {e}", tpl.target.host);
                self.svc
                    .on_passive_failure(idx, FailureKind::Io, t.elapsed(), msg)
                    .await;
                return Err(());
            }
        };
        match tokio::time::timeout(tpl.connect_timeout(), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                if let Some(up) = self.svc.upstreams.get(idx) {
                    up.metrics.connect.observe(t.elapsed().as_secs_f64());
                }
                Ok(s)
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                self.svc.on_refused(idx, &e).await;
                Err(())
            }
            Ok(Err(e)) => {
                let msg = format!("connect: {e}");
                self.svc
                    .on_passive_failure(idx, FailureKind::Io, t.elapsed(), msg)
                    .await;
                Err(())
            }
            Err(_) => {
                self.svc.on_connect_timeout(idx, t.elapsed()).await;
                Err(())
            }
        }
    }

    /// The upstream failed before any byte of its answer reached the client.
    /// A request that may be repeated goes to pingora (which retries it,
    /// holds or queues it); one that may not is answered 502/504 here.
    async fn upstream_failed(
        &self,
        c: &mut Conn,
        plan: &Plan,
        log: &mut LogLine<'_>,
        kind: FailureKind,
        what: &'static str,
        sent_at: Instant,
    ) -> Done {
        if !log.reported {
            let message = format!("upstream {what} failed");
            self.svc
                .on_passive_failure(plan.idx, kind, sent_at.elapsed(), message)
                .await;
        }
        if plan.retry_safe {
            return Done::Retry(Prior::failed(plan.idx, "upstream_error"));
        }
        let status = if kind == FailureKind::Timeout {
            504
        } else {
            502
        };
        log.status = status;
        log.outcome = Outcome::Failed;
        log.error = Some(what);
        let body = serde_json::json!({"error": {"code": "upstream_error",
            "message": format!("continuity: upstream failed: {what}")}});
        let secs = self.svc.cfg.health.check_interval.as_secs().clamp(1, 60);
        let answer = json_answer(status, Some(secs), &body);
        let _ = write_client(&mut c.client, &answer).await;
        self.record(c, log);
        Done::Close
    }
}
