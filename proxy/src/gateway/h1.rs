//! The lean HTTP/1.1 path of a plain-text gateway.
//!
//! pingora's proxy loop returns the upstream connection to its pool after
//! every request, spawns an idle watcher for it and relays through two
//! joined futures and a channel: on a keep-alive connection that costs
//! about twice HAProxy's CPU per request (BENCHMARKS.md). This path does
//! what HAProxy does instead: each client connection keeps one upstream
//! connection pinned to it, and a request is one read, one parse, one
//! write each way, in the connection's own task.
//!
//! It only takes the common case: an HTTP/1.1 request with no body or a
//! `Content-Length` body of at most [`MAX_BODY`], to the route's active
//! upstream, while that upstream is usable and not under a 429 quota.
//! Everything else is handed to pingora's `ProxyHttp` (`proxy.rs`) with the
//! bytes read so far put back, and pingora serves the connection from then
//! on: h2c, chunked or large request bodies, `Expect`, upgrades, HTTP/1.0,
//! malformed requests, outages (hold / queue / fail), `max_connections`,
//! and retries. A connection handed over for a passing reason (an outage,
//! a 429 window, a failed attempt, `max_connections`) is closed by pingora
//! after an answer once this path could take it again, so that the client
//! comes back here (`Shared::recycle`). A request handed over after it reached an upstream is
//! one pingora may repeat by the gateway's rules (an idempotent method or
//! an `Idempotency-Key`); one that may not be repeated is answered 502 here
//! instead, exactly as `proxy.rs` would.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::access::{self, Outcome};
use super::chunked::ChunkScanner;
use super::peers::{PeerTemplate, READ_TIMEOUT};
use super::proxy::{self as gw, Gateway, InFlight, Prior};
use super::workers::Workers;
use super::Shared;
use crate::health::FailureKind;
use crate::upstream::runtime::{lock, ServiceRt};

/// A request head larger than this goes to pingora (which answers it).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Request bodies up to this size are read whole here (so the request can
/// still be handed over and repeated); larger ones go to pingora.
pub const MAX_BODY: usize = 64 * 1024;
/// A keep-alive client connection idle this long is closed (HAProxy's
/// `timeout client` in the reference configuration).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client must send a whole request (head and body) within this from its
/// first byte (HAProxy's `timeout http-request`: a client trickling a byte
/// at a time cannot hold a connection), and may not stall this long taking
/// an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The lean path of one gateway, and the pingora apps it hands over to.
pub struct Lean {
    svc: Arc<ServiceRt>,
    shared: Arc<Shared>,
    /// pingora for HTTP/1 connections handed over (no h2c sniffing: what is
    /// handed over is known to be HTTP/1).
    h1: Arc<HttpProxy<Gateway>>,
    /// pingora for h2c (prior knowledge) connections.
    h2: Arc<HttpProxy<Gateway>>,
    /// The threads connections are served on (workers.rs).
    workers: Workers,
}

/// The upstream connection pinned to a client connection.
struct Pinned {
    idx: usize,
    stream: TcpStream,
    buf: BytesMut,
}

struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    /// `peer` as the access log writes it (formatted once).
    client_text: String,
    /// Client bytes not yet consumed (the current request stays here until
    /// its response is done, so that it can still be handed over).
    buf: BytesMut,
    up: Option<Pinned>,
    out: Vec<u8>,
}

/// One request the lean path takes, from its head.
struct Plan {
    idx: usize,
    head_len: usize,
    body_len: usize,
    /// Where the method and the path (with its query, as sent; masked when
    /// logged) are in the connection's buffer, which keeps the request head
    /// until the exchange is over.
    method: std::ops::Range<usize>,
    path: std::ops::Range<usize>,
    head_only: bool,
    retry_safe: bool,
    /// The client asked to close after this request.
    close: bool,
    route: Option<usize>,
}

enum Parsed {
    Partial,
    /// Not for this path: pingora takes the connection.
    HandOver,
    /// No upstream the lean path may send to now (an outage, a 429
    /// window): pingora takes the connection for now.
    Outage,
    /// Refused here with 400, and the connection closed.
    Bad(Refused),
    Ready(Plan),
}

/// A request the lean path refuses itself: why, and what its access line
/// says (method and path are ranges of the connection's buffer).
struct Refused {
    why: &'static str,
    method: std::ops::Range<usize>,
    path: std::ops::Range<usize>,
    route: Option<usize>,
}

/// How an exchange ended.
enum Done {
    KeepAlive,
    Close,
    /// Give the connection, with the request still buffered, to pingora.
    HandOver,
    /// The same, after a failed attempt that pingora's count goes on from.
    Retry(Prior),
}

/// What the response's head says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by the upstream closing the connection.
    UntilClose,
}

struct RespHead {
    status: u16,
    len: usize,
    framing: Framing,
    /// The upstream connection may carry another request.
    reusable: bool,
    /// The head must be rewritten (hop-by-hop fields, HTTP/1.0).
    rewrite: bool,
    retry_after: Option<Duration>,
}

impl Lean {
    pub fn new(
        svc: Arc<ServiceRt>,
        shared: Arc<Shared>,
        h1: HttpProxy<Gateway>,
        h2: HttpProxy<Gateway>,
        workers: Workers,
    ) -> Lean {
        Lean {
            svc,
            shared,
            h1: Arc::new(h1),
            h2: Arc::new(h2),
            workers,
        }
    }

    /// Accepts connections on `listener` until `stop`, and deals each to
    /// a gateway thread (workers.rs). At most `max_client_connections`
    /// client sockets are open at once (a socket keeps its slot when it is
    /// handed to pingora); past that a new client gets a 503 and is closed
    /// ([`super::ClientCap::refuse`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let cap = super::ClientCap::new(&self.svc);
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((client, peer)) => {
                        let Some(slot) = cap.admit() else {
                            cap.refuse(client, peer, true);
                            continue;
                        };
                        // Registered again with the chosen thread's reactor.
                        let client = match client.into_std() {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(service = self.svc.name(), error = %e, "accepted socket unusable");
                                continue;
                            }
                        };
                        let this = self.clone();
                        let stop = stop.clone();
                        self.workers.spawn(move || async move {
                            let _slot = slot;
                            match TcpStream::from_std(client) {
                                Ok(client) => this.connection(client, peer, stop).await,
                                Err(e) => tracing::warn!(service = this.svc.name(), error = %e, "accepted socket unusable"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait, do not spin.
                        tracing::warn!(service = self.svc.name(), error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                r = stop.changed() => if r.is_err() || *stop.borrow() { return; },
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let _ = client.set_nodelay(true);
        let mut c = Conn {
            client,
            peer,
            client_text: peer.to_string(),
            buf: BytesMut::with_capacity(8 * 1024),
            up: None,
            out: Vec::with_capacity(4 * 1024),
        };
        let mut first = true;
        loop {
            let plan = match self.read_request(&mut c, first, &mut stop).await {
                Next::Closed => return pool_put(c.up.take()),
                // The pinned upstream connection is idle here (its last
                // answer was read whole): the next client may use it.
                Next::H2 => {
                    pool_put(c.up.take());
                    return self.hand_over(c, true, stop).await;
                }
                Next::HandOver => {
                    pool_put(c.up.take());
                    return self.hand_over(c, false, stop).await;
                }
                Next::Outage => {
                    pool_put(c.up.take());
                    return self.hand_over_for_now(c, stop).await;
                }
                Next::Bad(r) => {
                    let start = Instant::now();
                    let body =
                        serde_json::json!({"error": {"code": "bad_request", "message": r.why}});
                    let _ = write_client(&mut c.client, &json_answer(400, None, &body)).await;
                    self.record_refused(&c, &r, start);
                    let _ = c.client.shutdown().await;
                    return pool_put(c.up.take());
                }
                Next::Ready(p) => p,
            };
            first = false;
            let in_flight = InFlight::new(&self.shared, &self.svc);
            if let Some(limit) = self.svc.cfg.max_connections {
                if self.svc.active_conns.load(Ordering::SeqCst) > u64::from(limit) {
                    // pingora answers 503 overloaded (and counts it itself).
                    drop(in_flight);
                    return self.hand_over_for_now(c, stop).await;
                }
            }
            let done = self.exchange(&mut c, &plan, &stop).await;
            drop(in_flight);
            match done {
                Done::KeepAlive => c.buf.advance(plan.head_len + plan.body_len),
                Done::Close => {
                    pool_put(c.up.take());
                    let _ = c.client.shutdown().await;
                    return;
                }
                Done::HandOver => return self.hand_over_for_now(c, stop).await,
                Done::Retry(prior) => {
                    lock(&self.shared.handed).insert(c.peer, prior);
                    let peer = c.peer;
                    self.hand_over_for_now(c, stop).await;
                    // Taken by pingora's first request, unless it never came.
                    lock(&self.shared.handed).remove(&peer);
                    return;
                }
            }
        }
    }

    /// Gives the connection to pingora with the unconsumed bytes put back.
    async fn hand_over(&self, c: Conn, h2: bool, stop: watch::Receiver<bool>) {
        let Conn { client, buf, .. } = c;
        let mut stream = L4Stream::from(client);
        stream.set_socket_digest(SocketDigest::from_raw_fd(stream.as_raw_fd()));
        stream.rewind(&buf);
        let app = if h2 { &self.h2 } else { &self.h1 };
        let mut next: Option<pingora::protocols::Stream> = Some(Box::new(stream));
        while let Some(s) = next {
            next = app.process_new(s, &stop).await;
        }
    }

    /// Gives the connection to pingora for a passing reason: pingora
    /// closes it after an answer once the lean path could take it back
    /// (`Shared::recycle`).
    async fn hand_over_for_now(&self, c: Conn, stop: watch::Receiver<bool>) {
        let peer = c.peer;
        lock(&self.shared.recycle).insert(peer);
        self.hand_over(c, false, stop).await;
        lock(&self.shared.recycle).remove(&peer);
    }

    /// The active upstream, when the lean path may send to it now.
    fn target(&self) -> Option<usize> {
        self.shared.lean_target(&self.svc)
    }

    /// Reads the next request's head (and its body) into `c.buf`.
    async fn read_request(
        &self,
        c: &mut Conn,
        first: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> Next {
        // Set once the request's first byte is here.
        let mut deadline: Option<Instant> = None;
        loop {
            if !c.buf.is_empty() {
                let until = *deadline.get_or_insert_with(|| Instant::now() + CLIENT_TIMEOUT);
                if first && c.buf[0] == b'P' && H2_PREFACE.starts_with(&c.buf[..c.buf.len().min(3)])
                {
                    let n = c.buf.len().min(H2_PREFACE.len());
                    if c.buf[..n] != H2_PREFACE[..n] {
                        return Next::HandOver;
                    }
                    if n == H2_PREFACE.len() {
                        return Next::H2;
                    }
                } else {
                    match self.plan(c) {
                        Parsed::HandOver => return Next::HandOver,
                        Parsed::Outage => return Next::Outage,
                        Parsed::Bad(r) => return Next::Bad(r),
                        Parsed::Ready(p) => {
                            let need = p.head_len + p.body_len;
                            while c.buf.len() < need {
                                match read_some(&mut c.client, &mut c.buf, left(until)).await {
                                    Some(n) if n > 0 => {}
                                    _ => return Next::Closed,
                                }
                            }
                            return Next::Ready(p);
                        }
                        Parsed::Partial if c.buf.len() > MAX_HEAD => return Next::HandOver,
                        Parsed::Partial => {}
                    }
                }
            }
            let got = if c.buf.is_empty() {
                // Between requests: idle, and the first thing a drain closes.
                if *stop.borrow() {
                    return Next::Closed;
                }
                tokio::select! {
                    r = read_some(&mut c.client, &mut c.buf, IDLE_TIMEOUT) => r,
                    _ = stop.changed() => return Next::Closed,
                }
            } else {
                let until = *deadline.get_or_insert_with(|| Instant::now() + CLIENT_TIMEOUT);
                read_some(&mut c.client, &mut c.buf, left(until)).await
            };
            match got {
                Some(n) if n > 0 => {}
                _ => return Next::Closed,
            }
        }
    }

    /// Parses the head in `c.buf` and writes the upstream's version of it
    /// into `c.out`.
    fn plan(&self, c: &mut Conn) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&c.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::HandOver,
        };
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::HandOver;
        };
        if !path.starts_with('/') || method == "CONNECT" {
            return Parsed::HandOver;
        }
        // A way out of the upstream's base path (issue 12): refused here.
        if let Err(why) = super::path::check(path) {
            let query_at = path.find('?').unwrap_or(path.len());
            return Parsed::Bad(Refused {
                why,
                method: span(&c.buf, method),
                path: span(&c.buf, path),
                route: self.svc.cfg.http.route_index(&path[..query_at]),
            });
        }
        let Some(idx) = self.target() else {
            return Parsed::Outage;
        };
        let Some(tpl) = self.shared.peers.get(idx) else {
            return Parsed::HandOver;
        };
        let route = |path: &str| {
            let query_at = path.find('?').unwrap_or(path.len());
            self.svc.cfg.http.route_index(&path[..query_at])
        };
        let mut body_len: Option<usize> = None;
        let mut close = false;
        let mut has_key = false;
        let mut xff: Option<&[u8]> = None;
        let mut conn_tokens: Vec<&[u8]> = Vec::new();
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                // Not digits only: refused, as pingora would read `+5` as 5
                // and another hop may not (request smuggling).
                let Some(n) = content_length(h.value).and_then(|n| usize::try_from(n).ok()) else {
                    return Parsed::Bad(Refused {
                        why: "invalid Content-Length",
                        method: span(&c.buf, method),
                        path: span(&c.buf, path),
                        route: route(path),
                    });
                };
                if body_len.is_some() {
                    return Parsed::HandOver;
                }
                body_len = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("expect")
                || name.eq_ignore_ascii_case("upgrade")
            {
                return Parsed::HandOver;
            } else if name.eq_ignore_ascii_case("connection") {
                for t in h.value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::HandOver;
                    }
                    conn_tokens.push(t);
                }
            } else if name.eq_ignore_ascii_case("idempotency-key") {
                has_key = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-for") && xff.is_none() {
                xff = Some(h.value);
            }
        }
        let body_len = body_len.unwrap_or(0);
        let max = self.svc.cfg.http.max_body_bytes;
        if body_len > MAX_BODY || body_len as u64 > max {
            return Parsed::HandOver;
        }
        let out = &mut c.out;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tpl.target.base_path.as_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(tpl.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host")
                || name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("x-forwarded-proto")
                || gw::HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
                || conn_tokens
                    .iter()
                    .any(|t| name.as_bytes().eq_ignore_ascii_case(t))
            {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = xff {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{}", c.peer.ip());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
        let retry_safe = matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ) || has_key;
        Parsed::Ready(Plan {
            idx,
            head_len,
            body_len,
            method: span(&c.buf, method),
            path: span(&c.buf, path),
            head_only: method == "HEAD",
            retry_safe,
            close,
            route: route(path),
        })
    }

    /// Sends the planned request and relays the response.
    async fn exchange(&self, c: &mut Conn, plan: &Plan, stop: &watch::Receiver<bool>) -> Done {
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
            // Quota, not ill health (proxy.rs does the same).
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

    fn record(&self, c: &Conn, l: &LogLine<'_>) {
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
    fn record_refused(&self, c: &Conn, r: &Refused, start: Instant) {
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

enum Next {
    Closed,
    H2,
    HandOver,
    Outage,
    Bad(Refused),
    Ready(Plan),
}

struct LogLine<'a> {
    plan: &'a Plan,
    status: u16,
    outcome: Outcome,
    upstream_ms: Option<f64>,
    error: Option<&'static str>,
    start: Instant,
    /// This request's failure is reported as passive evidence already: a
    /// 5xx whose body then fails to arrive is one failure, not two.
    reported: bool,
}

/// Idle upstream connections kept per gateway thread for the next client
/// connection (HAProxy's `http-reuse safe`): a client connection that ends
/// leaves its pinned upstream connection here, most recent last.
const POOL_MAX: usize = 32;
/// A pooled connection idle longer than this is closed rather than reused
/// (servers close idle connections on their own schedule).
const POOL_IDLE: Duration = Duration::from_secs(15);

thread_local! {
    static POOL: std::cell::RefCell<Vec<(Pinned, Instant)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `p` (a connection whose last answer was read whole) for reuse.
fn pool_put(p: Option<Pinned>) {
    let Some(p) = p else {
        return;
    };
    if !p.buf.is_empty() {
        return;
    }
    POOL.with_borrow_mut(|pool| {
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push((p, Instant::now()));
    });
}

/// The most recently parked usable connection to upstream `idx`.
fn pool_take(idx: usize) -> Option<Pinned> {
    POOL.with_borrow_mut(|pool| {
        pool.retain(|(_, at)| at.elapsed() < POOL_IDLE);
        while let Some(i) = pool.iter().rposition(|(p, _)| p.idx == idx) {
            let (mut p, _) = pool.remove(i);
            if still_open(&mut p) {
                return Some(p);
            }
        }
        None
    })
}

/// Writes to the client; `false` when it is gone or has not taken a byte
/// for [`CLIENT_TIMEOUT`].
async fn write_client(client: &mut TcpStream, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(CLIENT_TIMEOUT, client.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Where `part` (a slice httparse took from `buf`) is in `buf`.
fn span(buf: &[u8], part: &str) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize)
        .checked_sub(buf.as_ptr() as usize)
        .filter(|s| s + part.len() <= buf.len())
        .unwrap_or(0);
    start..start + part.len()
}

/// What is left until `until` (zero once it has passed).
fn left(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

/// Reads into `buf`; `None` on an error or a timeout.
async fn read_some(s: &mut TcpStream, buf: &mut BytesMut, limit: Duration) -> Option<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
    match tokio::time::timeout(limit, s.read_buf(buf)).await {
        Ok(Ok(n)) => Some(n),
        _ => None,
    }
}

/// Whether an idle pinned connection is still usable: the upstream has not
/// closed it nor sent anything unasked. No system call unless the reactor
/// saw the socket readable since it was last drained (`try_read` answers
/// `WouldBlock` from tokio's readiness alone).
fn still_open(p: &mut Pinned) -> bool {
    if !p.buf.is_empty() {
        return false;
    }
    let mut probe = [0u8; 1];
    matches!(p.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

struct HeadError {
    kind: FailureKind,
    what: &'static str,
}

/// Reads and parses the upstream's response head.
async fn read_head(p: &mut Pinned) -> Result<RespHead, HeadError> {
    loop {
        if !p.buf.is_empty() {
            match parse_response(&p.buf) {
                Ok(Some(h)) => return Ok(h),
                Ok(None) if p.buf.len() > MAX_HEAD => {
                    return Err(HeadError {
                        kind: FailureKind::Protocol,
                        what: "response head too large",
                    })
                }
                Ok(None) => {}
                Err(()) => {
                    return Err(HeadError {
                        kind: FailureKind::Protocol,
                        what: "invalid response",
                    })
                }
            }
        }
        read_upstream(p, "closed before answering").await?;
    }
}

/// Reads more of the upstream's answer into `p.buf` (`READ_TIMEOUT`);
/// `eof` names an end of the connection at this point.
async fn read_upstream(p: &mut Pinned, eof: &'static str) -> Result<(), HeadError> {
    if p.buf.capacity() - p.buf.len() < 4096 {
        p.buf.reserve(16 * 1024);
    }
    let (kind, what) = match tokio::time::timeout(READ_TIMEOUT, p.stream.read_buf(&mut p.buf)).await
    {
        Ok(Ok(n)) if n > 0 => return Ok(()),
        Ok(Ok(_)) => (FailureKind::Io, eof),
        Ok(Err(_)) => (FailureKind::Io, "read"),
        Err(_) => (FailureKind::Timeout, "read timed out"),
    };
    Err(HeadError { kind, what })
}

/// Answers up to this size (head and body) are buffered whole.
const MAX_BUFFERED: usize = 64 * 1024;

/// Reads the rest of a small answer (a `Content-Length` or chunked body
/// that ends within [`MAX_BUFFERED`] bytes) into `p.buf`. Larger answers,
/// and those delimited by the connection's end, are left to stream.
async fn read_small_body(
    p: &mut Pinned,
    head_len: usize,
    framing: Framing,
) -> Result<(), HeadError> {
    let mut scanner = ChunkScanner::default();
    let mut scanned = head_len;
    loop {
        let complete = match framing {
            Framing::Empty | Framing::UntilClose => return Ok(()),
            Framing::Length(n) => {
                // `n` is the upstream's word: up to u64::MAX.
                let total = (head_len as u64).saturating_add(n);
                if total > MAX_BUFFERED as u64 {
                    return Ok(());
                }
                p.buf.len() as u64 >= total
            }
            Framing::Chunked => {
                let found = scanner.feed(&p.buf[scanned..]).map_err(|_| HeadError {
                    kind: FailureKind::Protocol,
                    what: "invalid chunked body",
                })?;
                scanned = p.buf.len();
                if found.is_none() && p.buf.len() >= MAX_BUFFERED {
                    return Ok(());
                }
                found.is_some()
            }
        };
        if complete {
            return Ok(());
        }
        read_upstream(p, "closed mid-answer").await?;
    }
}

/// A `Content-Length` value: digits only (RFC 9110 8.6; Rust's integer
/// parser would also take `+5`, which another hop may read otherwise).
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_response(buf: &[u8]) -> Result<Option<RespHead>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(());
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = version == 0;
    let mut rewrite = version != 1;
    let mut retry_after = None;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(h.value).ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            rewrite = true;
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("proxy-connection")
        {
            rewrite = true;
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = std::str::from_utf8(h.value)
                .ok()
                .and_then(gw::parse_retry_after);
        }
    }
    let framing = if te {
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3): the
        // Content-Length is not passed on (rewrite_head), and such a
        // connection is not reused.
        if length.is_some() {
            close = true;
            rewrite = true;
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if (100..200).contains(&status) {
        Framing::Empty
    } else {
        Framing::UntilClose
    };
    Ok(Some(RespHead {
        status,
        len,
        framing,
        reusable: !close,
        rewrite,
        retry_after,
    }))
}

/// The response head for the client: HTTP/1.1, without hop-by-hop fields
/// other than `Transfer-Encoding` (the body is relayed as framed), without
/// a `Content-Length` beside a `Transfer-Encoding` (a downstream hop must
/// not get both), and with `connection: close` when this is the
/// connection's last answer.
fn rewrite_head(raw: &[u8], close: bool, out: &mut Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(raw), Ok(httparse::Status::Complete(_))) {
        out.extend_from_slice(raw);
        return;
    }
    let mut tokens: Vec<&[u8]> = Vec::new();
    let mut te = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            tokens.extend(h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
        te |= h.name.eq_ignore_ascii_case("transfer-encoding");
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.code.unwrap_or(502).to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let hop = name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("proxy-connection")
            || (te && name.eq_ignore_ascii_case("content-length"))
            || (!name.eq_ignore_ascii_case("transfer-encoding")
                && tokens
                    .iter()
                    .any(|t| name.as_bytes().eq_ignore_ascii_case(t)));
        if hop {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

enum Side {
    Client,
    Upstream(FailureKind),
}

/// Relays the response body after the head already in `out`: one write when
/// the whole answer is at hand, else as it arrives.
async fn relay_body(
    client: &mut TcpStream,
    p: &mut Pinned,
    framing: Framing,
    out: &mut Vec<u8>,
) -> Result<(), Side> {
    let mut scanner = ChunkScanner::default();
    // Bytes of the body still to come (`None`: until the framing says so).
    let mut left: Option<u64> = match framing {
        Framing::Empty => Some(0),
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::UntilClose => None,
    };
    loop {
        // Take what the buffer holds of the body.
        let avail = p.buf.len();
        let (take, end) = match framing {
            Framing::Empty | Framing::Length(_) => {
                let l = left.unwrap_or(0);
                let t = l.min(avail as u64);
                left = Some(l - t);
                (t as usize, l == t)
            }
            Framing::Chunked => match scanner.feed(&p.buf) {
                Ok(Some(n)) => (n, true),
                Ok(None) => (avail, false),
                Err(_) => {
                    // The answer is broken: the client gets what was
                    // relayed so far, then its connection ends.
                    let _ = write_client(client, out).await;
                    return Err(Side::Upstream(FailureKind::Protocol));
                }
            },
            Framing::UntilClose => (avail, false),
        };
        out.extend_from_slice(&p.buf[..take]);
        p.buf.advance(take);
        if end || out.len() >= 64 * 1024 {
            if !write_client(client, out).await {
                return Err(Side::Client);
            }
            out.clear();
        }
        if end {
            return Ok(());
        }
        if !out.is_empty() {
            // Do not sit on relayed bytes while waiting for the next ones.
            if !write_client(client, out).await {
                return Err(Side::Client);
            }
            out.clear();
        }
        if p.buf.capacity() - p.buf.len() < 4096 {
            p.buf.reserve(16 * 1024);
        }
        match tokio::time::timeout(READ_TIMEOUT, p.stream.read_buf(&mut p.buf)).await {
            Ok(Ok(0)) if framing == Framing::UntilClose => return Ok(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Side::Upstream(FailureKind::Io)),
            Ok(Ok(_)) => {}
            Err(_) => return Err(Side::Upstream(FailureKind::Timeout)),
        }
    }
}

/// A complete small JSON answer that ends the connection.
fn json_answer(status: u16, retry_after: Option<u64>, body: &serde_json::Value) -> Vec<u8> {
    let text = body.to_string();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let retry = retry_after.map_or(String::new(), |s| format!("retry-after: {s}\r\n"));
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing() {
        let h = |raw: &[u8]| {
            parse_response(raw)
                .ok()
                .flatten()
                .map(|h| (h.framing, h.reusable, h.rewrite))
        };
        assert_eq!(
            h(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            Some((Framing::Length(5), true, false))
        );
        assert_eq!(
            h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: keep-alive\r\n\r\n"),
            Some((Framing::Chunked, true, true))
        );
        assert_eq!(
            h(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
            Some((Framing::UntilClose, false, true))
        );
        assert_eq!(
            h(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            Some((Framing::Length(1), false, true))
        );
        assert_eq!(
            h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            Some((Framing::Chunked, false, true))
        );
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        .is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert_eq!(h(b"HTTP/1.1 200 OK\r\nContent-"), None);
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"42"), Some(42));
        assert_eq!(content_length(b" 7 "), Some(7));
        assert_eq!(content_length(b"+5"), None);
        assert_eq!(content_length(b"5, 5"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"99999999999999999999999"), None);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n").is_err());
    }

    #[test]
    fn head_rewrite_drops_hop_by_hop_fields() {
        let mut out = Vec::new();
        rewrite_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\n",
            true,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\n"
        );
        // Both framings from the upstream: the client gets the one that
        // counts (Transfer-Encoding), not both.
        out.clear();
        rewrite_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn json_answers_are_complete() {
        let a = json_answer(502, Some(2), &serde_json::json!({"a": 1}));
        assert_eq!(
            String::from_utf8_lossy(&a),
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: 7\r\nretry-after: 2\r\nconnection: close\r\n\r\n{\"a\":1}"
        );
    }
}
