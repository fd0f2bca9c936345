//! The relay of one proxied connection: bytes both ways, each request
//! timed and shown to the connection's statement observer.
//!
//! An idle connection holds no relay buffer. Each direction waits for its
//! socket to be readable with no buffer, then takes one from its thread's
//! pool ([`Buffer`]) for the read and the write that follows, and gives it
//! back. So 10,000 idle clients cost their sockets and tasks only, not
//! 2 × 16 KiB each as when each direction owned its buffer (issue 16;
//! HAProxy takes its buffers from a pool the same way).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::metrics::UpstreamMetrics;
use crate::observe::session::Session;
use crate::observe::{Finding, Tap};
use crate::protocol::bolt_route::RouteRewriter;
use crate::upstream::runtime::ServiceRt;

/// Relay buffer, taken per read.
const RELAY_BUFFER: usize = 16 * 1024;
/// Free buffers a thread keeps for its next reads; more are freed. A
/// buffer is held only from a read to the end of its write, so a thread
/// needs about one per connection whose upstream or client is slow to take
/// what it was sent.
const POOL_KEEP: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    /// Buffers of this thread's pool in use now (tests only: no work on
    /// the relay path for a figure nothing reads).
    #[cfg(test)]
    static OUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A relay buffer from this thread's pool, back to it on drop.
pub(super) struct Buffer(pub(super) Box<[u8]>);

impl Buffer {
    pub(super) fn take() -> Buffer {
        let pooled = POOL.with(|p| p.borrow_mut().pop());
        #[cfg(test)]
        OUT.with(|o| o.set(o.get() + 1));
        Buffer(pooled.unwrap_or_else(|| vec![0u8; RELAY_BUFFER].into_boxed_slice()))
    }

    /// This thread's buffers: (in use, free in its pool).
    #[cfg(test)]
    fn counts() -> (usize, usize) {
        (OUT.with(|o| o.get()), POOL.with(|p| p.borrow().len()))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        #[cfg(test)]
        let _ = OUT.try_with(|o| o.set(o.get().saturating_sub(1)));
        // `try_with`: a buffer dropped while the thread's locals are torn
        // down is simply freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_KEEP {
                p.push(buf);
            }
        });
    }
}

/// Times each request: from the first client byte sent while no request is
/// outstanding to the next upstream byte back (time to first response byte),
/// and feeds both directions to the connection's statement observer
/// (`observe`), which reports slow statements and upstream errors.
pub(super) struct RequestTimer {
    svc: Arc<ServiceRt>,
    idx: usize,
    origin: Instant,
    /// Nanoseconds since `origin` + 1 of the outstanding request, 0 if none.
    pending: AtomicU64,
    /// `None` for kinds without statements, or with `slow_query_ms = 0`.
    tap: Option<Tap>,
}

impl RequestTimer {
    /// `session`: a Redis connection with `reattach_idle` follows its
    /// session (what it had set on an earlier upstream, if it was
    /// re-attached), whatever `slow_query_ms` says.
    pub(super) fn new(svc: Arc<ServiceRt>, idx: usize, session: Option<Session>) -> RequestTimer {
        let tap = match session {
            Some(s) => Some(Tap::redis_session(svc.cfg.slow_query, s)),
            None => Tap::new(svc.cfg.kind, svc.cfg.slow_query),
        };
        RequestTimer {
            svc,
            idx,
            origin: Instant::now(),
            pending: AtomicU64::new(0),
            tap,
        }
    }

    fn sent(&self) {
        if self.pending.load(Ordering::Relaxed) == 0 {
            let t = self.origin.elapsed().as_nanos() as u64 + 1;
            self.pending.store(t, Ordering::Relaxed);
        }
    }

    fn answered(&self) {
        let t = self.pending.swap(0, Ordering::Relaxed);
        if t != 0 {
            let now = self.origin.elapsed().as_nanos() as u64 + 1;
            let d = Duration::from_nanos(now.saturating_sub(t));
            if let Some(up) = self.svc.upstreams.get(self.idx) {
                up.metrics.response.observe(d.as_secs_f64());
                up.inline.record(d);
            }
        }
    }

    /// Client bytes, seen before they are written upstream (so that a
    /// request is always observed before its answer can come back).
    pub(super) fn observe_client(&self, data: &[u8]) {
        if let Some(tap) = &self.tap {
            self.report(tap.client(data));
        }
    }

    /// Upstream bytes, seen after they are written to the client.
    fn observe_server(&self, data: &[u8]) {
        if let Some(tap) = &self.tap {
            self.report(tap.server(data));
        }
    }

    /// The session of an idle Redis connection, to replay on a new
    /// upstream; why not otherwise (observe/session.rs).
    pub(super) fn take_session(&self) -> Result<Session, &'static str> {
        match &self.tap {
            Some(tap) => tap.take_session(),
            None => Err("not followed"),
        }
    }

    fn report(&self, findings: Vec<Finding>) {
        if findings.is_empty() {
            return;
        }
        let Some(up) = self.svc.upstreams.get(self.idx) else {
            return;
        };
        for f in findings {
            self.svc.emit(f.into_event(&up.cfg.name));
        }
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The client is done (or the relay of a kind that does not re-attach).
    Client,
    /// A re-attaching Redis relay: the upstream closed or failed first; the
    /// client is left open.
    Upstream,
}

pub(super) async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    timer: &RequestTimer,
) -> io::Result<Ended> {
    let Some(up) = timer.svc.upstreams.get(timer.idx) else {
        return Ok(Ended::Client);
    };
    if timer.svc.cfg.reattach_idle {
        return relay_session(client, upstream, timer).await;
    }
    // Neo4j: the routing tables the server answers `ROUTE` with name the
    // address the client reached the proxy at (protocol/bolt_route.rs).
    // Boxed: an idle Redis or PostgreSQL relay should not carry its state
    // (size_tests.rs).
    if timer.svc.cfg.kind == crate::config::Kind::Neo4j {
        if let Ok(local) = client.local_addr() {
            let rw = RouteRewriter::new(local.to_string());
            return Box::pin(relay_bolt(client, upstream, timer, rw))
                .await
                .map(|()| Ended::Client);
        }
    }
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let (c2u, u2c) = pumps(
        (&mut cr, &mut uw),
        (&mut ur, &mut cw),
        &up.metrics,
        timer,
        true,
    );
    tokio::try_join!(c2u, u2c).map(|_| Ended::Client)
}

/// Both directions of a relay: client to upstream (its EOF half-closes
/// the upstream) and upstream to client (its EOF half-closes the client
/// if `half_close_client`), each request timed and observed.
fn pumps<'a, 'h>(
    (cr, uw): (&'a mut ReadHalf<'h>, &'a mut WriteHalf<'h>),
    (ur, cw): (&'a mut ReadHalf<'h>, &'a mut WriteHalf<'h>),
    metrics: &'a UpstreamMetrics,
    timer: &'a RequestTimer,
    half_close_client: bool,
) -> (
    impl std::future::Future<Output = io::Result<()>> + use<'a, 'h>,
    impl std::future::Future<Output = io::Result<()>> + use<'a, 'h>,
) {
    let c2u = pump(
        cr,
        uw,
        &metrics.bytes_up,
        |data| {
            timer.sent();
            timer.observe_client(data);
        },
        |_| {},
        true,
    );
    let u2c = pump(
        ur,
        cw,
        &metrics.bytes_down,
        |_| timer.answered(),
        |data| timer.observe_server(data),
        half_close_client,
    );
    (c2u, u2c)
}

/// [`relay`] of a Redis connection that may be re-attached: when the
/// upstream closes or fails, the client is not half-closed but left open
/// ([`Ended::Upstream`]) for the caller to re-attach or close. When the
/// client closes first, its replies are still delivered, as in [`relay`].
async fn relay_session(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    timer: &RequestTimer,
) -> io::Result<Ended> {
    let Some(up) = timer.svc.upstreams.get(timer.idx) else {
        return Ok(Ended::Client);
    };
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let (c2u, u2c) = pumps(
        (&mut cr, &mut uw),
        (&mut ur, &mut cw),
        &up.metrics,
        timer,
        false,
    );
    tokio::pin!(c2u, u2c);
    tokio::select! {
        // The upstream's side first: when its FIN and a client request are
        // ready in the same turn, the request is not written into a
        // connection already closed (and lost with it: a request in flight
        // closes the client) but kept for the re-attach.
        biased;
        // EOF or an error: either way this upstream is gone.
        _ = &mut u2c => Ok(Ended::Upstream),
        // The client closed (its replies are delivered, then the caller
        // drops both sockets).
        r = &mut c2u => {
            r?;
            (&mut u2c).await?;
            Ok(Ended::Client)
        }
    }
}

/// Copies until EOF, then half-closes the writer if `half_close`.
/// `before` sees each chunk before it is written, `after` once it is.
/// Holds a buffer only from a read to the end of its write.
async fn pump<B, A>(
    r: &mut ReadHalf<'_>,
    w: &mut WriteHalf<'_>,
    bytes: &prometheus::IntCounter,
    before: B,
    after: A,
    half_close: bool,
) -> io::Result<()>
where
    B: Fn(&[u8]),
    A: Fn(&[u8]),
{
    loop {
        r.readable().await?;
        let mut buf = Buffer::take();
        let Some(n) = read_now(r, &mut buf.0) else {
            // Stale readiness or a spent budget: wait again, without the
            // buffer (read_now).
            drop(buf);
            nothing_read().await;
            continue;
        };
        let n = n?;
        if n == 0 {
            if half_close {
                let _ = w.shutdown().await;
            }
            return Ok(());
        }
        let data = buf.0.get(..n).unwrap_or_default();
        before(data);
        w.write_all(data).await?;
        bytes.inc_by(n as u64);
        after(data);
    }
}

/// [`relay`] for Bolt: the server's bytes go through `rw` on their way.
async fn relay_bolt(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    timer: &RequestTimer,
    rw: RouteRewriter,
) -> io::Result<()> {
    let Some(up) = timer.svc.upstreams.get(timer.idx) else {
        return Ok(());
    };
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let c2u = pump(
        &mut cr,
        &mut uw,
        &up.metrics.bytes_up,
        |data| {
            timer.sent();
            timer.observe_client(data);
        },
        |_| {},
        true,
    );
    let u2c = pump_rewritten(&mut ur, &mut cw, &up.metrics.bytes_down, timer, rw);
    tokio::try_join!(c2u, u2c).map(|_| ())
}

/// The server-to-client pump of a Bolt connection: as [`pump`], with each
/// read passed through the routing-table rewrite first (bytes counted as
/// read from the upstream).
async fn pump_rewritten(
    r: &mut ReadHalf<'_>,
    w: &mut WriteHalf<'_>,
    bytes: &prometheus::IntCounter,
    timer: &RequestTimer,
    mut rewriter: RouteRewriter,
) -> io::Result<()> {
    let mut out = Vec::new();
    loop {
        r.readable().await?;
        let mut buf = Buffer::take();
        let Some(n) = read_now(r, &mut buf.0) else {
            drop(buf);
            nothing_read().await;
            continue;
        };
        let n = n?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        let data = buf.0.get(..n).unwrap_or_default();
        timer.answered();
        out.clear();
        rewriter.feed(data, &mut out);
        w.write_all(&out).await?;
        bytes.inc_by(n as u64);
        timer.observe_server(data);
        // A routing table held whole may have grown this one: do not keep
        // a large buffer for the connection's life.
        if out.capacity() > RELAY_BUFFER * 2 {
            out = Vec::new();
        }
    }
}

/// One read of what the socket holds now; `None` if it holds nothing.
/// Through `poll_read` rather than `try_read`: a read that fills less than
/// the buffer tells tokio the socket is drained, which saves the next
/// wait the `read()` syscall that would only return `EAGAIN`.
///
/// `None` also when the task has spent its cooperative budget (tokio's
/// `poll_read` then answers Pending without reading, and wakes nobody: the
/// waker here is a no-op), while `readable()` still answers at once: a
/// caller that gets `None` must await [`nothing_read`] before it waits for
/// readiness again, or it spins at 100 % CPU (tests/large_transfers.rs).
/// What a reader awaits after [`read_now`] gave `None`: if the task's
/// budget is spent, it yields to the scheduler (which renews it); if the
/// readiness was only stale, it goes on at once.
pub(super) async fn nothing_read() {
    tokio::task::consume_budget().await;
}

pub(super) fn read_now<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Option<io::Result<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut rb = ReadBuf::new(buf);
    match Pin::new(r).poll_read(&mut cx, &mut rb) {
        Poll::Ready(Ok(())) => Some(Ok(rb.filled().len())),
        Poll::Ready(Err(e)) => Some(Err(e)),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// An idle relay holds no buffer; one that carried data gave its
    /// buffers back to the thread's pool, which reuses them.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_relay_holds_no_buffer() {
        let (mut client, mut from_client) = pair().await;
        let (mut to_upstream, mut upstream) = pair().await;
        let bytes = prometheus::IntCounter::new("b", "b").unwrap();
        let seen = std::cell::Cell::new(0usize);
        let relay = async {
            let (mut r, _w) = from_client.split();
            let (_r2, mut w) = to_upstream.split();
            pump(
                &mut r,
                &mut w,
                &bytes,
                |d| seen.set(seen.get() + d.len()),
                |_| {},
                true,
            )
            .await
        };
        let check = async {
            for i in 0..3u8 {
                client.write_all(&[i; 100]).await.unwrap();
                let mut got = [0u8; 100];
                upstream.read_exact(&mut got).await.unwrap();
                assert_eq!(got, [i; 100]);
                // The pump is parked on readiness now.
                tokio::task::yield_now().await;
                let (out, free) = Buffer::counts();
                assert_eq!(out, 0, "an idle pump holds no buffer");
                assert_eq!(free, 1, "one buffer, reused");
            }
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            upstream.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        };
        let (r, ()) = tokio::join!(relay, check);
        r.unwrap();
        assert_eq!(seen.get(), 300);
        assert_eq!(bytes.get(), 300);
    }

    /// A Redis service whose idle clients are re-attached.
    fn redis_service() -> Arc<ServiceRt> {
        use crate::config::{Kind, Role, ServiceConfig, UpstreamConfig};
        let cfg = ServiceConfig::new(
            "cache",
            Kind::Redis,
            vec![UpstreamConfig::at("r1", "127.0.0.1:1", Role::Primary)],
        );
        assert!(cfg.reattach_idle);
        ServiceRt::detached(cfg)
    }

    /// The upstream's FIN (its process killed) and a client's request
    /// ready in the same turn: the relay ends on the upstream's side with
    /// the request not read, so the connection is still idle and the
    /// request goes to the upstream it is re-attached to. Read first, the
    /// request would be written into the closed connection and, in flight
    /// there, close the client (a failed request in `benches/failover.sh`).
    /// Many rounds: which side an unbiased select polls first is random.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_that_comes_with_the_upstreams_fin_is_kept() {
        let svc = redis_service();
        let ping = b"*1\r\n$4\r\nPING\r\n";
        for round in 0..32 {
            let (mut app, mut client) = pair().await;
            let (mut upstream, server) = pair().await;
            drop(server);
            app.write_all(ping).await.unwrap();
            // Both reach the proxy's sockets before the relay first runs.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let timer = RequestTimer::new(svc.clone(), 0, Some(Session::default()));
            let ended = relay(&mut client, &mut upstream, &timer).await.unwrap();
            assert_eq!(ended, Ended::Upstream, "round {round}");
            assert!(timer.take_session().is_ok(), "round {round}: not idle");
            let mut kept = [0u8; 14];
            client.read_exact(&mut kept).await.unwrap();
            assert_eq!(&kept, ping, "round {round}");
        }
    }

    /// An upstream that never stops sending (`MONITOR`, a subscriber's
    /// stream) to a client that keeps reading does not starve the client's
    /// side: the relay looks at the upstream's side first, and must still
    /// pass the client's command on. The stream and the reader are threads
    /// of their own, as the server and the application are processes.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_from_the_upstream_does_not_hold_back_the_clients_commands() {
        use std::io::{Read, Write};
        let svc = redis_service();
        let (app, mut client) = pair().await;
        let (mut upstream, server) = pair().await;
        let mut server = server.into_std().unwrap();
        server.set_nonblocking(false).unwrap();
        let mut app = app.into_std().unwrap();
        app.set_nonblocking(false).unwrap();
        let mut feed = server.try_clone().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streaming = stop.clone();
        let streamer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 16 * 1024];
            while !streaming.load(std::sync::atomic::Ordering::Relaxed) {
                if feed.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let mut reader = app.try_clone().unwrap();
        let drainer = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        });
        let timer = RequestTimer::new(svc.clone(), 0, Some(Session::default()));
        let relay = relay(&mut client, &mut upstream, &timer);
        let check = tokio::task::spawn_blocking(move || {
            // The stream is flowing before the command is sent.
            std::thread::sleep(Duration::from_millis(100));
            app.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut got = [0u8; 14];
            let read = server.read_exact(&mut got).map(|()| got);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = server.shutdown(std::net::Shutdown::Both);
            let _ = app.shutdown(std::net::Shutdown::Both);
            read
        });
        let (_, got) = tokio::join!(relay, check);
        let got = got
            .unwrap()
            .expect("the command reached the upstream within 5 s");
        assert_eq!(&got, b"*1\r\n$4\r\nPING\r\n");
        streamer.join().unwrap();
        drainer.join().unwrap();
        // The stream did flow through the relay while the command waited.
        let down = svc.upstreams[0].metrics.bytes_down.get();
        assert!(down > 1024 * 1024, "only {down} bytes streamed");
    }

    /// The pool keeps at most POOL_KEEP free buffers.
    #[test]
    fn pool_is_bounded() {
        let many: Vec<Buffer> = (0..POOL_KEEP + 10).map(|_| Buffer::take()).collect();
        assert_eq!(Buffer::counts().0, POOL_KEEP + 10);
        drop(many);
        assert_eq!(Buffer::counts(), (0, POOL_KEEP));
    }
}
