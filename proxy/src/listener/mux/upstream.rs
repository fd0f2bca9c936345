//! The shared upstream connection of a multiplexed service, on the L4
//! thread that serves its clients ([`Mux`]): clients append whole commands
//! to its queue, and its task writes what has gathered in one write, reads
//! the replies and hands each, in order, to the client that sent its
//! command. Commands queued
//! before it is connected are held, as a new client is held without
//! multiplexing, for `buffer_timeout_ms`.
//!
//! Its life: connecting (holding), up on one upstream (index, epoch),
//! retired when the route moves away (no new commands; those in flight may
//! finish while a recover's drain allows), closed. A client whose command
//! was in flight when the connection was lost is closed, as its own
//! connection would have been; the others go on, on the next one.
//!
//! PostgreSQL (pg.rs) uses the same connection for its pipelined
//! statements, framed by ReadyForQuery instead of by RESP reply, and a
//! second kind: a *private* connection, owned by one client from a
//! statement that may open a transaction until its transaction ends, then
//! kept idle on the thread ([`PRIVATE`]) for the next such client, as
//! PgBouncer's transaction pooling does.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::replies::{read_replies, Replies};
use super::{pgwire, Sink};
use crate::listener::relay::nothing_read;
use crate::listener::{report_failed_connect, Signals};
use crate::protocol::resp::stream::Replies as RespReplies;
use crate::protocol::resp::{error_reply, write_command};
use crate::upstream::runtime::ServiceRt;

/// How long a private PostgreSQL connection nobody owns stays open for the
/// next client's transaction (PgBouncer's `server_idle_timeout` is 600 s;
/// shorter here, since a client's own connection is only for transactions).
const PRIVATE_IDLE: Duration = Duration::from_secs(60);
/// Idle private connections kept per service on a thread; past it, one
/// let go of is closed.
const PRIVATE_KEEP: usize = 32;
/// How long a connection whose PostgreSQL startup was refused for a
/// reason that may pass (`pgwire::transient`) waits before it tries again:
/// at first, then twice as long after each refusal, up to
/// [`STARTUP_RETRY_MAX`], so that clients held on a full server do not
/// hammer it with logins (PgBouncer waits `server_login_retry`, 15 s).
const STARTUP_RETRY: Duration = Duration::from_millis(50);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(1);

std::thread_local! {
    /// Idle private PostgreSQL connections of this thread, per service
    /// (keyed as `MUXES`). Strong: being here is what keeps one open.
    pub(super) static PRIVATE: std::cell::RefCell<Vec<(usize, Arc<Mux>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Commands sent (or queued) on a [`Mux`], waiting for their replies:
/// one client's consecutive commands of one read share a slot (what a
/// pipelining client sends costs one queue entry per read, not one per
/// command).
pub(super) struct Slot {
    pub sink: Arc<Sink>,
    pub sent: Instant,
    /// Bytes of its commands, in flight until the last one is answered.
    pub bytes: usize,
    /// Its commands not yet answered (at least 1).
    pub count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Connecting,
    Up,
    /// The route moved away: takes no new command.
    Retired,
    Closed,
}

pub(super) struct Inner {
    /// Commands not yet handed to the socket.
    pub out: Vec<u8>,
    /// One per command queued or sent, in order (PostgreSQL: one per
    /// ReadyForQuery expected: a Query, a Sync, a FunctionCall).
    pub fifo: VecDeque<Slot>,
    pub state: State,
    /// PostgreSQL: the ParameterStatus messages of the connection's
    /// startup, which a client's own startup is answered with.
    pub params: Option<Arc<Vec<u8>>>,
    /// A private connection's client: gets every byte the server sends,
    /// asked for by a Query/Sync or not (ParseComplete after a Flush, COPY).
    pub owner: Option<Arc<Sink>>,
    /// A private connection: since when nobody owns it.
    pub idle_since: Option<Instant>,
    /// PostgreSQL: its backend's key and address, for a client's
    /// CancelRequest (cancel.rs).
    pub backend: Option<Arc<pgwire::BackendKey>>,
    /// PostgreSQL: CancelRequests for its backend not yet done (cancel.rs).
    /// While one is, nothing more is written ([`Inner::take_out`]).
    pub cancels: u32,
}

impl Inner {
    /// What is queued to be written, taken: nothing while a CancelRequest
    /// for the backend is in progress. PostgreSQL signals a cancelled
    /// backend twice (its pid, then its process group), and a second
    /// signal that comes late cancels whatever statement the backend has
    /// read by then: on a shared connection, another client's. A statement
    /// written only once the server has closed the cancel's connection
    /// (both signals sent) is read after them, when a cancel is ignored.
    pub(super) fn take_out(&mut self, into: &mut Vec<u8>) {
        if self.cancels == 0 {
            std::mem::swap(into, &mut self.out);
        }
    }
}

/// The wire a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    Redis,
    Postgres,
}

pub(super) struct Mux {
    inner: Mutex<Inner>,
    /// Commands were queued, or a client let go of this connection.
    pub wake: Notify,
    pub wire: Wire,
    /// One client's own (PostgreSQL transactions), not shared.
    pub private: bool,
    /// Its key in this thread's registries (mod.rs, `key`).
    pub key: usize,
}

impl Mux {
    pub(super) fn new(wire: Wire, private: bool, key: usize) -> Mux {
        Mux {
            inner: Mutex::new(Inner {
                out: Vec::new(),
                fifo: VecDeque::new(),
                state: State::Connecting,
                params: None,
                owner: None,
                idle_since: None,
                backend: None,
                cancels: 0,
            }),
            wake: Notify::new(),
            wire,
            private,
            key,
        }
    }

    /// The error each held command gets when no upstream came within
    /// `buffer_timeout_ms`: a RESP error, or a PostgreSQL ErrorResponse and
    /// the ReadyForQuery that ends the statement (the client stays).
    fn hold_error(&self, message: &str) -> Vec<u8> {
        match self.wire {
            Wire::Redis => error_reply(message),
            Wire::Postgres => {
                let mut out = pgwire::error("08006", message);
                out.extend_from_slice(&pgwire::ready(b'I'));
                out
            }
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a connection ended.
enum End {
    /// Nothing left to do on it (retired and drained, or no client left).
    Done,
    /// Lost (EOF, error, a reply nobody asked for) or cut (the route moved
    /// with no drain, the engine force-closed): clients with a command in
    /// flight are closed.
    Lost(&'static str),
}

/// The task of one [`Mux`]: connects, serves, and on its way out takes
/// itself off the thread's registry and settles every queued command.
pub(super) async fn run(mux: Arc<Mux>, svc: Arc<ServiceRt>, mut sig: Signals, engine_rt: Handle) {
    let key = mux.key;
    let (idx, epoch, stream) = match connect(&mux, &svc, &mut sig, &engine_rt).await {
        Ok(up) => up,
        // No upstream within buffer_timeout_ms (or one that refused the
        // connection for good): each held command gets the error a held
        // client gets, and its connection stays usable.
        Err(why) => {
            let (slots, owner) = close(&mux, key);
            let message = match why {
                Some(why) => format!(
                    "continuity: the upstream of {} refused a connection: {why}",
                    svc.name()
                ),
                None => format!("continuity: no upstream available for {}", svc.name()),
            };
            let reply = mux.hold_error(&message);
            let idle = (!reply.is_empty()).then_some(b'I');
            for s in slots {
                let replies = reply.repeat(s.count);
                s.sink.deliver(&replies, s.count, s.bytes, None, idle);
            }
            drop(owner);
            return;
        }
    };
    let Some(up) = svc.upstreams.get(idx).cloned() else {
        close(&mux, key);
        return;
    };
    up.active_conns
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    up.total_conns
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    up.metrics.connections.inc();
    let _ = stream.set_nodelay(true);
    {
        let mut g = mux.lock();
        if g.state == State::Connecting {
            g.state = State::Up;
        }
    }
    let end = serve(&mux, &svc, idx, epoch, stream, &mut sig).await;
    up.active_conns
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let (slots, owner) = close(&mux, key);
    // A private connection's client loses its transaction with it, even
    // between statements: it is closed, as its own connection would be.
    if let (End::Lost(_), Some(owner)) = (&end, owner) {
        owner.cut();
    }
    if let End::Lost(why) = end {
        if !slots.is_empty() {
            tracing::debug!(
                service = svc.name(),
                upstream = %up.cfg.name,
                why,
                in_flight = slots.iter().map(|s| s.count).sum::<usize>(),
                "multiplexed connection lost with commands in flight"
            );
        }
    }
    for s in slots {
        s.sink.cut();
    }
}

/// Marks the connection closed, takes it off this thread's registries and
/// hands back its commands not yet answered, and its owner if private.
fn close(mux: &Arc<Mux>, key: usize) -> (VecDeque<Slot>, Option<Arc<Sink>>) {
    let taken = {
        let mut g = mux.lock();
        g.state = State::Closed;
        g.out = Vec::new();
        (std::mem::take(&mut g.fifo), g.owner.take())
    };
    unregister(key, mux);
    taken
}

/// Takes `mux` off this thread's registries: the shared one, or the idle
/// private ones.
fn unregister(key: usize, mux: &Arc<Mux>) {
    if mux.private {
        let _ = PRIVATE.try_with(|p| {
            p.borrow_mut()
                .retain(|(k, m)| !(*k == key && Arc::ptr_eq(m, mux)))
        });
    } else {
        super::unregister(key, mux);
    }
}

/// An idle private connection of this thread for `key`, if one is up.
pub(super) fn take_private(key: usize) -> Option<Arc<Mux>> {
    PRIVATE
        .try_with(|p| {
            let mut p = p.borrow_mut();
            let at = p
                .iter()
                .position(|(k, m)| *k == key && m.lock().state == State::Up)?;
            Some(p.swap_remove(at).1)
        })
        .ok()
        .flatten()
}

/// Gives a private connection back to this thread's idle ones (closed if
/// there are enough, or if it is no longer up).
pub(super) fn keep_private(key: usize, mux: Arc<Mux>) {
    {
        let mut g = mux.lock();
        g.owner = None;
        g.idle_since = Some(Instant::now());
        if g.state != State::Up {
            drop(g);
            super::let_go(mux);
            return;
        }
    }
    let kept = PRIVATE
        .try_with(|p| {
            let mut p = p.borrow_mut();
            if p.iter().filter(|(k, _)| *k == key).count() < PRIVATE_KEEP {
                p.push((key, mux.clone()));
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if kept {
        mux.wake.notify_one();
    } else {
        super::let_go(mux);
    }
}

/// Waits for a usable active upstream and connects (AUTH, or PostgreSQL's
/// startup, included), as a held client does (listener/mod.rs,
/// `wait_upstream`), until `buffer_timeout_ms` after the first held command.
async fn connect(
    mux: &Mux,
    svc: &Arc<ServiceRt>,
    sig: &mut Signals,
    engine_rt: &Handle,
) -> Result<(usize, u64, TcpStream), Option<String>> {
    let first = mux
        .lock()
        .fifo
        .front()
        .map_or_else(Instant::now, |s| s.sent);
    let deadline = tokio::time::Instant::from_std(first + svc.cfg.buffer_timeout);
    let mut changed = svc.changed_tx.subscribe();
    let mut held = false;
    // The last refusal at startup, told to the held commands if no try
    // succeeds in time.
    let mut last: Option<String> = None;
    let mut retry = STARTUP_RETRY;
    let got = loop {
        let mut pause: Option<tokio::time::Instant> = None;
        let route = svc.route.load_full();
        let idx = route.active;
        if let (true, Some(up)) = (svc.usable(&route, idx), svc.upstreams.get(idx)) {
            let started = Instant::now();
            let target = up.cfg.target();
            let timeout = svc.cfg.health.connect_timeout;
            match tokio::time::timeout(timeout, TcpStream::connect(target.as_str())).await {
                Ok(Ok(mut stream)) => {
                    up.metrics.connect.observe(started.elapsed().as_secs_f64());
                    let ready = match mux.wire {
                        Wire::Redis => auth(&mut stream, &up.cfg, timeout).await,
                        // A backend's fork and authentication can take
                        // longer than a TCP connect on a busy server: as
                        // long as a held statement may wait.
                        Wire::Postgres => pgwire::startup(
                            &mut stream,
                            &up.cfg,
                            timeout.max(svc.cfg.buffer_timeout),
                        )
                        .await
                        .map(|started| {
                            let backend = match (started.key, stream.peer_addr()) {
                                (Some((pid, secret)), Ok(addr)) => {
                                    Some(Arc::new(pgwire::BackendKey { addr, pid, secret }))
                                }
                                _ => None,
                            };
                            let mut g = mux.lock();
                            g.params = Some(Arc::new(started.params));
                            g.backend = backend;
                        }),
                    };
                    match ready {
                        Ok(()) => break Ok((idx, route.epoch, stream)),
                        // The server starting up or shutting down, or out
                        // of slots: tried again while the held command may
                        // wait, as a refused TCP connect is.
                        Err(e) if mux.wire == Wire::Postgres && pgwire::transient(&e) => {
                            tracing::info!(service = svc.name(), upstream = %up.cfg.name,
                                error = %e, "multiplexed connection refused; trying again");
                            last = Some(e.to_string());
                            pause = Some(tokio::time::Instant::now() + retry);
                            retry = (retry * 2).min(STARTUP_RETRY_MAX);
                        }
                        Err(e) => {
                            tracing::warn!(service = svc.name(), upstream = %up.cfg.name,
                                error = %e, "multiplexed connection refused");
                            break Err(Some(e.to_string()));
                        }
                    }
                }
                Ok(Err(e)) => {
                    let waited = started.elapsed();
                    if !report_failed_connect(engine_rt, svc, idx, Some(e), waited).await {
                        break Err(None);
                    }
                    continue;
                }
                Err(_) => {
                    let waited = started.elapsed();
                    if !report_failed_connect(engine_rt, svc, idx, None, waited).await {
                        break Err(None);
                    }
                    continue;
                }
            }
        }
        if !held {
            held = true;
            svc.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            svc.metrics.held.with_label_values(&[svc.name()]).inc();
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { break Err(last) },
            _ = tokio::time::sleep_until(deadline) => {
                svc.metrics.hold_timeouts.with_label_values(&[svc.name()]).inc();
                break Err(last);
            }
            // Refused at startup just now: the next try after a pause,
            // unless the route changes first.
            _ = tokio::time::sleep_until(pause.unwrap_or(deadline)),
                if pause.is_some_and(|p| p < deadline) => {}
            _ = sig.shutdown.changed() => break Err(last),
        }
    };
    if held {
        svc.held.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    got
}

/// `AUTH [user] password` with the upstream's probe credentials, if it has
/// a password: the clients' own AUTH is checked by the proxy instead.
async fn auth(
    stream: &mut TcpStream,
    up: &crate::config::UpstreamConfig,
    timeout: Duration,
) -> io::Result<()> {
    let Some(password) = up.password.as_deref() else {
        return Ok(());
    };
    let mut cmd = Vec::new();
    match up.user.as_deref() {
        Some(user) => write_command(
            &[&b"AUTH"[..], user.as_bytes(), password.as_bytes()],
            &mut cmd,
        ),
        None => write_command(&[&b"AUTH"[..], password.as_bytes()], &mut cmd),
    }
    let exchange = async {
        stream.write_all(&cmd).await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"\r\n") && got.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed at AUTH",
                ));
            }
            got.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        if got == b"+OK\r\n" {
            Ok(())
        } else {
            let line = String::from_utf8_lossy(&got).trim_end().to_string();
            Err(io::Error::other(format!("AUTH answered {line}")))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "AUTH timed out"))?
}

/// Whether the route has moved away from upstream `idx` since `epoch`, and
/// if so until when its connections may finish (a recover's drain).
fn moved(svc: &ServiceRt, idx: usize, epoch: u64) -> Option<Option<Instant>> {
    let route = svc.route.load_full();
    let away = route.epoch != epoch
        && (route.active != idx || route.fenced.get(idx).copied().unwrap_or(true));
    away.then(|| match route.drain {
        Some((d, until)) if d == idx => Some(until),
        _ => None,
    })
}

/// Writes what clients queue, reads and hands out replies, until the
/// connection is lost, retired and drained, or unused.
async fn serve(
    mux: &Arc<Mux>,
    svc: &ServiceRt,
    idx: usize,
    epoch: u64,
    stream: TcpStream,
    sig: &mut Signals,
) -> End {
    let Some(up) = svc.upstreams.get(idx) else {
        return End::Lost("upstream gone");
    };
    let (mut rd, wr) = stream.into_split();
    let mut route_rx = svc.route_tx.subscribe();
    // A move between the connect and this subscription is seen at once.
    route_rx.mark_changed();
    let mut wbuf: Vec<u8> = Vec::new();
    let mut wpos = 0usize;
    let mut replies = match mux.wire {
        Wire::Redis => Replies::Redis(RespReplies::default()),
        Wire::Postgres => Replies::Postgres(pgwire::Replies::default()),
    };
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut retired = false;
    let response = up.metrics.response.local();
    loop {
        if wpos == wbuf.len() {
            wbuf.clear();
            wpos = 0;
            mux.lock().take_out(&mut wbuf);
        }
        if wpos < wbuf.len() {
            match wr.try_write(wbuf.get(wpos..).unwrap_or_default()) {
                Ok(n) => {
                    wpos += n;
                    up.metrics.bytes_up.inc_by(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return End::Lost("write failed"),
            }
            // Keep a large batch's buffer only while it is in use.
            if wpos == wbuf.len() && wbuf.capacity() > 64 * 1024 {
                wbuf = Vec::new();
                wpos = 0;
            }
        }
        let (empty, users, idle_since) = {
            let g = mux.lock();
            (
                g.fifo.is_empty() && g.out.is_empty() && g.owner.is_none(),
                Arc::strong_count(mux),
                g.idle_since,
            )
        };
        if empty && wpos == wbuf.len() && (retired || users == 1) {
            return End::Done;
        }
        // A private connection nobody owns closes after PRIVATE_IDLE.
        let idle_until = match (mux.private, idle_since) {
            (true, Some(t)) if empty => Some(tokio::time::Instant::from_std(t + PRIVATE_IDLE)),
            _ => None,
        };
        tokio::select! {
            biased;
            r = rd.readable() => {
                if r.is_err() {
                    return End::Lost("read failed");
                }
                match read_replies(mux, svc, idx, &mut rd, &mut replies, &response) {
                    Ok(true) => {}
                    Ok(false) => nothing_read().await,
                    Err(why) => return End::Lost(why),
                }
            }
            _ = wr.writable(), if wpos < wbuf.len() => {}
            _ = mux.wake.notified(), if wpos == wbuf.len() => {}
            r = route_rx.changed(), if !retired => {
                if r.is_err() {
                    // The service is gone: serve on until unused.
                    retired = true;
                } else if let Some(drain) = moved(svc, idx, epoch) {
                    retired = true;
                    mux.lock().state = State::Retired;
                    unregister(mux.key, mux);
                    match drain {
                        Some(until) => drain_until = Some(tokio::time::Instant::from_std(until)),
                        None => return End::Lost("the route moved away"),
                    }
                }
            }
            _ = sleep_opt(drain_until) => return End::Lost("drain period over"),
            _ = sleep_opt(idle_until) => {
                let mut g = mux.lock();
                if g.owner.is_none() && g.idle_since == idle_since {
                    g.state = State::Retired;
                    drop(g);
                    unregister(mux.key, mux);
                    retired = true;
                }
            }
            _ = sig.force_close.changed() => return End::Lost("force-closed"),
        }
    }
}

async fn sleep_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
