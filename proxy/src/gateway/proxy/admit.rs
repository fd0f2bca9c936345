//! A gateway request's fate before any upstream is chosen: request
//! smuggling and base-path escapes refused, `max_connections` and
//! `max_body_bytes` enforced, the route's outage policy found, and, with
//! no usable upstream, the request held, queued or failed (SPEC 3).

use std::sync::atomic::Ordering;

use pingora::proxy::Session;
use pingora::Result;

use super::respond::{discard_small_body, has_header, header, path_and_query, respond, too_large};
use super::{Ctx, Gateway};
use crate::config::OnOutage;
use crate::events::EventKind;
use crate::gateway::access::Outcome;
use crate::upstream::runtime::lock;

impl Gateway {
    pub(super) async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
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
        if let Err(why) = crate::gateway::path::check(&path_and_query(req)) {
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
}
