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
//! Everything else is handed to pingora's `ProxyHttp` (`proxy/`) with the
//! bytes read so far put back, and pingora serves the connection from then
//! on: h2c, chunked or large request bodies, `Expect`, upgrades, HTTP/1.0,
//! malformed requests, outages (hold / queue / fail), `max_connections`,
//! and retries. A connection handed over for a passing reason (an outage,
//! a 429 window, a failed attempt, `max_connections`) is closed by pingora
//! after an answer once this path could take it again, so that the client
//! comes back here (`Shared::recycle`). A request handed over after it reached an upstream is
//! one pingora may repeat by the gateway's rules (an idempotent method or
//! an `Idempotency-Key`); one that may not be repeated is answered 502 here
//! instead, exactly as `proxy/` would.
//!
//! The parts: `plan.rs` reads a request head and writes the upstream's
//! version of it; `exchange.rs` sends it and relays the answer, with
//! `upstream.rs` reading the answer's head (the HTTP/1 codec,
//! `protocol::http1`) and `relay.rs` passing it on; `pool.rs` keeps idle
//! upstream connections per thread; `log.rs` writes the access lines.

mod exchange;
mod log;
mod plan;
mod pool;
mod relay;
mod upstream;

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

use super::proxy::{Gateway, InFlight};
use super::Shared;
use crate::upstream::runtime::{lock, ServiceRt};
use crate::workers::Workers;
use exchange::Done;
use plan::{Parsed, Plan, Refused};
use pool::pool_put;
use relay::{json_answer, write_client};

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
    /// The threads connections are served on (crate::workers).
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

impl Conn {
    /// Frees the client's buffers, and the pinned upstream's if it holds
    /// nothing; called only between requests, with nothing unconsumed.
    fn release_buffers(&mut self) {
        self.buf = BytesMut::new();
        self.out = Vec::new();
        if let Some(p) = &mut self.up {
            if p.buf.is_empty() {
                p.buf = BytesMut::new();
            }
        }
    }
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
    /// a gateway thread (crate::workers). At most `max_client_connections`
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
            buf: BytesMut::new(),
            up: None,
            out: Vec::new(),
        };
        // The hand-overs to pingora are boxed: their futures are large and
        // rare, and an idle keep-alive client should not carry their state
        // (issue 16: at most 4 KiB per idle connection).
        let mut first = true;
        loop {
            let plan = match self.read_request(&mut c, first, &mut stop).await {
                Next::Closed => return pool_put(c.up.take()),
                // The pinned upstream connection is idle here (its last
                // answer was read whole): the next client may use it.
                Next::H2 => {
                    pool_put(c.up.take());
                    return Box::pin(self.hand_over(c, true, stop)).await;
                }
                Next::HandOver => {
                    pool_put(c.up.take());
                    return Box::pin(self.hand_over(c, false, stop)).await;
                }
                Next::Outage => {
                    pool_put(c.up.take());
                    return Box::pin(self.hand_over_for_now(c, stop)).await;
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
            if c.out.capacity() == 0 {
                c.out.reserve(4 * 1024);
            }
            let in_flight = InFlight::new(&self.shared, &self.svc);
            if let Some(limit) = self.svc.cfg.max_connections {
                if self.svc.active_conns.load(Ordering::SeqCst) > u64::from(limit) {
                    // pingora answers 503 overloaded (and counts it itself).
                    drop(in_flight);
                    return Box::pin(self.hand_over_for_now(c, stop)).await;
                }
            }
            // Boxed too: allocated per request, so that an idle client
            // does not carry an exchange's state.
            let done = Box::pin(self.exchange(&mut c, &plan, &stop)).await;
            drop(in_flight);
            match done {
                Done::KeepAlive => c.buf.advance(plan.head_len + plan.body_len),
                Done::Close => {
                    pool_put(c.up.take());
                    let _ = c.client.shutdown().await;
                    return;
                }
                Done::HandOver => return Box::pin(self.hand_over_for_now(c, stop)).await,
                Done::Retry(prior) => {
                    lock(&self.shared.handed).insert(c.peer, prior);
                    let peer = c.peer;
                    Box::pin(self.hand_over_for_now(c, stop)).await;
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
                        // Incomplete, and within `http1::MAX_HEAD`.
                        Parsed::Partial => {}
                    }
                }
            }
            let got = if c.buf.is_empty() {
                // Between requests: idle, and the first thing a drain closes.
                if *stop.borrow() {
                    return Next::Closed;
                }
                // An idle client holds no buffer (issue 16): they are
                // allocated again once its next request is readable.
                c.release_buffers();
                tokio::select! {
                    r = read_when_readable(&mut c.client, &mut c.buf, IDLE_TIMEOUT) => r,
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
}

enum Next {
    Closed,
    H2,
    HandOver,
    Outage,
    Bad(Refused),
    Ready(Plan),
}

/// What is left until `until` (zero once it has passed).
fn left(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

/// Waits for `s` to be readable holding no buffer, then reads into `buf`
/// as [`read_some`]; `None` on an error or a timeout.
async fn read_when_readable(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    limit: Duration,
) -> Option<usize> {
    let until = Instant::now() + limit;
    match tokio::time::timeout(limit, s.readable()).await {
        Ok(Ok(())) => read_some(s, buf, left(until)).await,
        _ => None,
    }
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
