//! Watches the bytes a relay copies, without touching them, to time each
//! statement in the request path and to notice upstream errors that real
//! traffic sees (issue #4): PostgreSQL (simple and extended query), RESP
//! (commands, pipelined) and Bolt (RUN to the end of its result stream).
//!
//! Rules the relay relies on:
//! - bytes are only read: never delayed beyond the parse, never altered;
//! - per-connection memory is bounded (a few small buffers; statement text
//!   is kept up to [`TEXT_CAP`] bytes, pipelines up to a fixed depth);
//! - nothing here panics on any input; anything not understood (a
//!   protocol feature we do not model, garbage, TLS) switches this
//!   connection's observer off for good, and the relay goes on untouched;
//! - the fast path allocates nothing: buffers are reused, and a statement
//!   is normalized (allocating) only once it is known to be slow.
//!
//! Both relay directions feed one [`Tap`]. They run in the same task
//! (`try_join!`), so its mutex is never contended; an `AtomicBool` lets a
//! stopped observer cost one load per chunk.

mod bolt;
pub mod normalize;
mod pg;
mod resp;
pub mod session;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Kind;
use crate::events::EventKind;
use session::Session;

/// Statement text kept per pending statement (raw, before masking).
pub const TEXT_CAP: usize = 4096;
/// Upstream-error findings one connection may report (a replica answering
/// every write with READONLY must not flood the event bus).
const ERROR_BUDGET: u8 = 4;

/// What an observer noticed.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// A statement that took at least the service's `slow_query_ms`.
    SlowQuery {
        statement: String,
        duration: Duration,
        command_kind: &'static str,
    },
    /// A Bolt FAILURE answering a statement that looks like a write.
    WriteFailure { statement: String, code: String },
    /// An error answer that says the upstream (not the statement) is in
    /// trouble: SQLSTATE 08/53/57/58/XX/28/25006, redis LOADING/READONLY/...,
    /// Neo4j transient, database and security errors.
    UpstreamError { code: String, message: String },
    /// The observer met bytes it does not understand and stopped.
    Stopped { reason: &'static str },
}

impl Finding {
    /// The engine event this finding becomes, for a connection to `upstream`.
    pub fn into_event(self, upstream: &str) -> EventKind {
        let upstream = upstream.to_string();
        match self {
            Finding::SlowQuery {
                statement,
                duration,
                command_kind,
            } => EventKind::SlowQuery {
                upstream,
                statement,
                duration_ms: duration.as_secs_f64() * 1000.0,
                command_kind: command_kind.to_string(),
            },
            Finding::WriteFailure { statement, code } => EventKind::Neo4jWriteFailure {
                upstream,
                statement,
                code,
            },
            Finding::UpstreamError { code, message } => EventKind::UpstreamError {
                upstream,
                code,
                message,
            },
            Finding::Stopped { reason } => {
                tracing::debug!(%upstream, reason, "statement observer stopped");
                EventKind::ProtocolError {
                    upstream,
                    reason: reason.to_string(),
                }
            }
        }
    }
}

/// Why a parser gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Expected and harmless (TLS, subscribe mode, replication): silent.
    Quiet,
    /// Bytes we do not understand: reported once.
    Confused(&'static str),
}

/// Per-chunk context handed to the parsers.
pub(crate) struct Out {
    pub now: Instant,
    slow: Duration,
    pub findings: Vec<Finding>,
}

impl Out {
    pub fn new(now: Instant, slow: Duration) -> Out {
        Out {
            now,
            slow,
            findings: Vec::new(),
        }
    }

    /// Records a finished statement if it was slow; `statement` runs only then.
    pub fn timed(
        &mut self,
        start: Instant,
        command_kind: &'static str,
        statement: impl FnOnce() -> String,
    ) {
        let duration = self.now.saturating_duration_since(start);
        if duration >= self.slow {
            self.findings.push(Finding::SlowQuery {
                statement: statement(),
                duration,
                command_kind,
            });
        }
    }

    pub fn upstream_error(&mut self, code: &[u8], message: &[u8]) {
        let text = |b: &[u8]| normalize::truncate(String::from_utf8_lossy(b).into_owned());
        self.findings.push(Finding::UpstreamError {
            code: text(code),
            message: text(message.get(..message.len().min(256)).unwrap_or_default()),
        });
    }
}

/// A FIFO of pending statements whose text buffers are recycled, so that
/// steady traffic allocates nothing.
pub(crate) struct Pending<T> {
    queue: VecDeque<(T, Vec<u8>)>,
    free: Vec<Vec<u8>>,
    max: usize,
}

impl<T> Pending<T> {
    pub fn new(max: usize) -> Self {
        Pending {
            queue: VecDeque::new(),
            free: Vec::new(),
            max,
        }
    }

    /// A cleared buffer to fill before [`Pending::push`].
    pub fn buffer(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    pub fn push(&mut self, item: T, text: Vec<u8>) -> Result<(), Stop> {
        if self.queue.len() >= self.max {
            return Err(Stop::Confused("pipeline deeper than the observer follows"));
        }
        self.queue.push_back((item, text));
        Ok(())
    }

    pub fn pop(&mut self) -> Option<(T, Vec<u8>)> {
        self.queue.pop_front()
    }

    /// Gives a buffer back for reuse (a few are kept).
    pub fn recycle(&mut self, mut text: Vec<u8>) {
        if self.free.len() < 4 && text.capacity() > 0 && text.capacity() <= 2 * TEXT_CAP {
            text.clear();
            self.free.push(text);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Appends to `buf` without letting it grow past `cap`.
pub(crate) fn capture(buf: &mut Vec<u8>, data: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
}

enum Proto {
    Pg(Box<pg::Pg>),
    Resp(Box<resp::Resp>),
    Bolt(Box<bolt::Bolt>),
    Off,
}

struct Inner {
    proto: Proto,
    errors_left: u8,
}

/// One connection's observer, fed by both relay directions.
pub struct Tap {
    off: AtomicBool,
    slow: Duration,
    /// `false`: kept only to follow a Redis session (`slow_query_ms = 0`),
    /// nothing is reported.
    report: bool,
    inner: Mutex<Inner>,
}

impl Tap {
    /// An observer for a service of `kind` with slow-query threshold `slow`;
    /// `None` for kinds without one, or when `slow` is zero (observation off).
    pub fn new(kind: Kind, slow: Duration) -> Option<Tap> {
        if slow.is_zero() {
            return None;
        }
        let proto = match kind {
            Kind::Postgres => Proto::Pg(Box::default()),
            Kind::Redis => Proto::Resp(Box::default()),
            Kind::Neo4j => Proto::Bolt(Box::default()),
            _ => return None,
        };
        Some(Tap {
            off: AtomicBool::new(false),
            slow,
            report: true,
            inner: Mutex::new(Inner {
                proto,
                errors_left: ERROR_BUDGET,
            }),
        })
    }

    /// A Redis observer that also follows the connection's session, so that
    /// it can be re-attached to another upstream ([`Tap::take_session`]);
    /// it goes on from `session`, what the connection had set before. With
    /// `slow` zero it follows the session and reports nothing.
    pub fn redis_session(slow: Duration, session: Session) -> Tap {
        let mut resp = Box::<resp::Resp>::default();
        resp.session = session;
        Tap {
            off: AtomicBool::new(false),
            slow: if slow.is_zero() { Duration::MAX } else { slow },
            report: !slow.is_zero(),
            inner: Mutex::new(Inner {
                proto: Proto::Resp(resp),
                errors_left: ERROR_BUDGET,
            }),
        }
    }

    /// The session of an idle Redis connection, to replay on a new upstream;
    /// why not, if the connection is not idle or did what cannot be
    /// replayed (observe/session.rs).
    pub fn take_session(&self) -> Result<Session, &'static str> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &mut inner.proto {
            Proto::Resp(p) => {
                p.idle()?;
                Ok(std::mem::take(&mut p.session))
            }
            Proto::Off => Err("subscribed, monitoring, or bytes the observer did not follow"),
            _ => Err("not a redis connection"),
        }
    }

    /// Bytes the client sent (fed before they are written upstream, so a
    /// request is always seen before its answer).
    pub fn client(&self, data: &[u8]) -> Vec<Finding> {
        self.feed(data, true)
    }

    /// Bytes the upstream sent.
    pub fn server(&self, data: &[u8]) -> Vec<Finding> {
        self.feed(data, false)
    }

    /// Whether this observer has stopped for good.
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    fn feed(&self, data: &[u8], from_client: bool) -> Vec<Finding> {
        if data.is_empty() || self.is_off() {
            return Vec::new();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Out::new(Instant::now(), self.slow);
        let result = match &mut inner.proto {
            Proto::Pg(p) if from_client => p.client(data, &mut out),
            Proto::Pg(p) => p.server(data, &mut out),
            Proto::Resp(p) if from_client => p.client(data, &mut out),
            Proto::Resp(p) => p.server(data, &mut out),
            Proto::Bolt(p) if from_client => p.client(data, &mut out),
            Proto::Bolt(p) => p.server(data, &mut out),
            Proto::Off => Err(Stop::Quiet),
        };
        if let Err(stop) = result {
            inner.proto = Proto::Off;
            self.off.store(true, Ordering::Relaxed);
            if let Stop::Confused(reason) = stop {
                out.findings.push(Finding::Stopped { reason });
            }
        }
        if !self.report {
            out.findings.clear();
        }
        if !out.findings.is_empty() {
            let Inner { errors_left, .. } = &mut *inner;
            out.findings.retain(|f| match f {
                Finding::UpstreamError { .. } if *errors_left == 0 => false,
                Finding::UpstreamError { .. } => {
                    *errors_left -= 1;
                    true
                }
                _ => true,
            });
        }
        out.findings
    }
}
