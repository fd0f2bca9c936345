//! SPEC 3's outage handling on the gateway: whether the active upstream
//! may take a request, holding until it may (within `buffer_timeout_ms`),
//! the 503 of `on_outage = "fail"`, and storing a request durably for
//! `on_outage = "queue"` (202 with its queue location).

use std::time::Instant;

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Result;

use super::respond::path_and_query;
use super::respond::{respond, too_large};
use super::{Ctx, Gateway, HOP_BY_HOP};
use crate::gateway::access::Outcome;
use crate::gateway::queue::NewRequest;

impl Gateway {
    /// The active upstream, when it may take a request now. As at L4,
    /// traffic only ever goes to the route's active upstream: a failure
    /// seen here is reported (`report`), and the failover state machine
    /// decides whether to switch (`failover = "auto"`, hold-down, fencing,
    /// promotion); a secondary is never used behind its back.
    pub(super) fn active(&self) -> Option<usize> {
        let route = self.svc.route.load();
        self.svc
            .usable(&route, route.active)
            .then_some(route.active)
    }

    pub(super) fn any_usable(&self) -> bool {
        self.active().is_some()
    }

    /// Waits until the active upstream is usable or `deadline` passes.
    pub(super) async fn wait_usable(&self, deadline: Instant) -> bool {
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

    pub(super) fn retry_after_secs(&self) -> u64 {
        self.svc.cfg.health.check_interval.as_secs().clamp(1, 60)
    }

    pub(super) fn deadline(&self, ctx: &Ctx) -> Instant {
        ctx.start + self.svc.cfg.buffer_timeout
    }

    /// 503 with `Retry-After`, the protocol's own "no upstream" answer.
    pub(super) async fn unavailable(&self, session: &mut Session, ctx: &mut Ctx) {
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
    pub(super) async fn read_body(
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
    pub(super) async fn enqueue(&self, session: &mut Session, ctx: &mut Ctx, prior: Option<Bytes>) {
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
}
