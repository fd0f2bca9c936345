//! The answer to a gateway request that could not be proxied: the status
//! from pingora's error, a queue route storing it instead, or the
//! gateway's own JSON error.

use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorSource, ErrorType};

use super::respond::{respond, too_large};
use super::{Ctx, Gateway};
use crate::config::OnOutage;
use crate::gateway::access::Outcome;

impl Gateway {
    pub(super) async fn answer_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
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
}
