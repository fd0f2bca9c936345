//! The access lines of the lean path (`access.rs` formats and counts them).

use std::time::Instant;

use super::plan::{Plan, Refused};
use super::{Conn, Lean};
use crate::gateway::access::{self, Outcome};

pub(super) struct LogLine<'a> {
    pub(super) plan: &'a Plan,
    pub(super) status: u16,
    pub(super) outcome: Outcome,
    pub(super) upstream_ms: Option<f64>,
    pub(super) error: Option<&'static str>,
    pub(super) start: Instant,
    /// This request's failure is reported as passive evidence already: a
    /// 5xx whose body then fails to arrive is one failure, not two.
    pub(super) reported: bool,
}

impl Lean {
    pub(super) fn record(&self, c: &Conn, l: &LogLine<'_>) {
        let text = |r: &std::ops::Range<usize>| buf_text(&c.buf, r);
        let upstream = self
            .svc
            .upstreams
            .get(l.plan.idx)
            .map(|u| u.cfg.name.as_str());
        access::record(
            &self.shared,
            self.svc.name(),
            &access::Request {
                method: text(&l.plan.method),
                path: text(&l.plan.path),
                version: "HTTP/1.1",
                client: &c.client_text,
            },
            &access::Line {
                route: l.plan.route,
                status: l.status,
                outcome: l.outcome,
                upstream,
                attempts: 1,
                duration: l.start.elapsed(),
                upstream_ms: l.upstream_ms,
                body_bytes: l.plan.body_len as u64,
                queue_id: None,
                error: l.error.map(str::to_string),
            },
        );
    }

    /// The access line (and the request count) of a refused request: no
    /// upstream, no attempt, and the body left unread.
    pub(super) fn record_refused(&self, c: &Conn, r: &Refused, start: Instant) {
        access::record(
            &self.shared,
            self.svc.name(),
            &access::Request {
                method: buf_text(&c.buf, &r.method),
                path: buf_text(&c.buf, &r.path),
                version: "HTTP/1.1",
                client: &c.client_text,
            },
            &access::Line {
                route: r.route,
                status: 400,
                outcome: Outcome::Rejected,
                upstream: None,
                attempts: 0,
                duration: start.elapsed(),
                upstream_ms: None,
                body_bytes: 0,
                queue_id: None,
                error: Some(r.why.to_string()),
            },
        );
    }
}

/// The text at `r` in `buf`, `-` when it is not there or not UTF-8.
fn buf_text<'a>(buf: &'a [u8], r: &std::ops::Range<usize>) -> &'a str {
    buf.get(r.clone())
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("-")
}
