//! The reply side of a multiplexed upstream connection (upstream.rs):
//! where each reply ends, and which client each byte of a read goes to.

use std::sync::Arc;
use std::time::Instant;

use super::upstream::Mux;
use super::{pgwire, Sink};
use crate::listener::relay::{read_now, Buffer};
use crate::protocol::resp::stream::Replies as RespReplies;
use crate::upstream::runtime::ServiceRt;

/// Where the replies of a connection end: one per RESP reply, or one per
/// PostgreSQL ReadyForQuery (with its transaction status).
pub(super) enum Replies {
    Redis(RespReplies),
    Postgres(pgwire::Replies),
}

impl Replies {
    /// Consumes from `rest` up to the end of one reply (`Some`, with the
    /// transaction status for PostgreSQL) or all of it (`None`).
    fn next(&mut self, rest: &mut &[u8]) -> Result<Option<Option<u8>>, ()> {
        match self {
            Replies::Redis(r) => r.next(rest).map(|c| c.map(|_| None)).map_err(|_| ()),
            Replies::Postgres(p) => p.next(rest).map(|c| c.map(Some)),
        }
    }
}

/// Bytes of one read for one client, from `start`: replies completed in
/// them (`done`, their commands' `bytes`) and the transaction status the
/// last one ended with.
struct Run {
    sink: Arc<Sink>,
    start: usize,
    done: usize,
    bytes: usize,
    status: Option<u8>,
}

impl Run {
    fn hand_over(&self, data: &[u8], svc: &ServiceRt, idx: usize) {
        self.sink
            .deliver(data, self.done, self.bytes, Some((svc, idx)), self.status);
    }
}

/// One read of replies, each byte handed to the client whose command is
/// at the front of the queue (or a private connection's owner), in order;
/// a client's consecutive replies go out in one write. An error: what the
/// upstream sent cannot be matched to the commands (a protocol error, or
/// a reply nobody asked for); `false`: nothing was read (`read_now`).
///
/// One clock read and one lock per reply at most. A read that completes
/// one reply records its response time in the shared histogram directly;
/// one that completes more records them in `response` (this connection's
/// own histogram, flushed to the shared one once per read): no shared
/// atomic is touched per reply, and a flush (which walks every bucket) is
/// paid only where it saves work.
pub(super) fn read_replies(
    mux: &Mux,
    svc: &ServiceRt,
    idx: usize,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    replies: &mut Replies,
    response: &prometheus::local::LocalHistogram,
) -> Result<bool, &'static str> {
    let mut buf = Buffer::take();
    let n = match read_now(rd, &mut buf.0) {
        Some(Ok(0)) => return Err("upstream closed"),
        Some(Ok(n)) => n,
        None => return Ok(false),
        Some(Err(_)) => return Err("read failed"),
    };
    let chunk = buf.0.get(..n).unwrap_or_default();
    let Some(up) = svc.upstreams.get(idx) else {
        return Err("upstream gone");
    };
    up.metrics.bytes_down.inc_by(n as u64);
    let now = Instant::now();
    let mut rest = chunk;
    // The run of bytes for one client not yet handed over.
    let mut run: Option<Run> = None;
    // Replies answered at the same time since `sent`: recorded together.
    let mut timed: Option<(Instant, usize)> = None;
    // The first reply's response time, recorded at the end if it stays
    // the only one.
    let mut first: Option<f64> = None;
    let mut local = false;
    while !rest.is_empty() {
        let at = n - rest.len();
        let complete = replies
            .next(&mut rest)
            .map_err(|()| "upstream protocol error")?;
        // Whose bytes these are, and what a complete reply answers.
        let (other, answered) = {
            let mut g = mux.lock();
            let inner = &mut *g;
            let Some(sink) = inner.fifo.front().map(|s| &s.sink).or(inner.owner.as_ref()) else {
                return Err("a reply nobody asked for");
            };
            let other = match &run {
                Some(r) if Arc::ptr_eq(&r.sink, sink) => None,
                _ => Some(sink.clone()),
            };
            let mut answered = None;
            if let Some(st) = complete {
                // Other clients' statements follow on a shared connection:
                // one that is left inside a transaction (what sql.rs lets
                // share cannot open one) is closed, and the server rolls it
                // back.
                if !mux.private && matches!(st, Some(b'T' | b'E')) {
                    return Err("a statement left the shared connection inside a transaction");
                }
                if let Some(slot) = inner.fifo.front_mut() {
                    slot.count = slot.count.saturating_sub(1);
                    let sent = slot.sent;
                    let bytes = if slot.count == 0 {
                        inner.fifo.pop_front().map_or(0, |s| s.bytes)
                    } else {
                        0
                    };
                    answered = Some((sent, bytes));
                }
            }
            (other, answered)
        };
        let mut r = match (run.take(), other) {
            (Some(r), None) => r,
            (prev, Some(sink)) => {
                if let Some(p) = prev {
                    p.hand_over(chunk.get(p.start..at).unwrap_or_default(), svc, idx);
                }
                Run {
                    sink,
                    start: at,
                    done: 0,
                    bytes: 0,
                    status: None,
                }
            }
            // `other` is `None` only when a run is going on.
            (None, None) => return Err("a reply nobody asked for"),
        };
        if let Some(st) = complete {
            if let Some((sent, bytes)) = answered {
                let d = now.saturating_duration_since(sent).as_secs_f64();
                if local {
                    response.observe(d);
                } else if let Some(f) = first.take() {
                    response.observe(f);
                    response.observe(d);
                    local = true;
                } else {
                    first = Some(d);
                }
                timed = match timed {
                    Some((t, k)) if t == sent => Some((t, k + 1)),
                    other => {
                        if let Some((t, k)) = other {
                            up.inline.record_n(now.saturating_duration_since(t), k);
                        }
                        Some((sent, 1))
                    }
                };
                r.done += 1;
                r.bytes += bytes;
            }
            r.status = st.or(r.status);
        }
        run = Some(r);
    }
    if let Some(r) = run {
        r.hand_over(chunk.get(r.start..).unwrap_or_default(), svc, idx);
    }
    if let Some((t, k)) = timed {
        up.inline.record_n(now.saturating_duration_since(t), k);
    }
    if let Some(f) = first {
        up.metrics.response.observe(f);
    } else if local {
        response.flush();
    }
    Ok(true)
}
