//! The gateway's request path: pingora's
//! [`ProxyHttp`](pingora::proxy::ProxyHttp) filled in with the
//! service's failover state (the same [`ServiceRt`] the L4 listener uses),
//! SPEC 3's hold / queue / fail outage handling, retries with exponential
//! backoff and jitter for requests that may be repeated, and 429 quota
//! handling that never counts against an upstream's health.
//!
//! The parts: `hooks.rs` is the `ProxyHttp` implementation, pingora's
//! glue; `admit.rs` decides a request's fate before any upstream (smuggling,
//! paths, limits, the outage policy); `outage.rs` holds, queues or fails a
//! request while no upstream is usable; `retry.rs` is when and how soon a
//! request is repeated (429 windows are kept in `hooks.rs`, where pingora
//! picks the peer and reads the answer's head); `evidence.rs` reports what
//! a request saw of an upstream to the failover state machine; `failure.rs` answers a request that could not be proxied; `respond.rs`
//! writes the gateway's own answers.

mod admit;
mod evidence;
mod failure;
mod hooks;
mod inflight;
mod outage;
mod respond;
mod retry;

use std::time::Instant;

use super::access::Outcome;
use super::Shared;
use crate::config::OnOutage;
use crate::upstream::runtime::ServiceRt;
use evidence::Evidence;
pub(super) use inflight::InFlight;
pub(super) use retry::retryable;
pub use retry::MAX_ATTEMPTS;
use std::sync::Arc;

/// Seconds from a `Retry-After`: the HTTP/1 codec's reading of it. Not
/// capped: every user caps it at the service's `max_retry_after_seconds`
/// before adding it to an `Instant`.
pub use crate::protocol::http1::retry_after as parse_retry_after;

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

/// A request's failed first attempt on the lean path (`h1/`), for the
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
