//! The accept loop and the life of one client connection: pick the active
//! upstream, hold the client while none is usable, connect (marking a
//! refusing upstream down at once and moving on), relay bytes both ways
//! while timing each request, and close when a switch fences the upstream
//! this connection is bound to.
//!
//! The accept loop runs on the engine's runtime and deals each client to
//! one of the engine's L4 threads (`crate::workers`), where its whole life
//! runs: the wait for an upstream, the connect and the relay (relay.rs).
//! What a failed connect triggers (a probe failure, maybe a switch) runs
//! back on the engine's runtime, beside the probes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};

use crate::fallback::Fallback;
use crate::health::{classify_io, FailureKind};
use crate::observe::session::Session;
use crate::protocol;
use crate::upstream::pool;
use crate::upstream::runtime::{Route, ServiceRt};
use crate::workers::Workers;

mod mux;
mod reattach;
mod relay;
use relay::{relay, Ended, RequestTimer};

/// Bytes of a held client kept before TCP backpressure pauses it (SPEC 3).
const HOLD_BUFFER: usize = 64 * 1024;
/// Bytes read from a held client at a time (`early` never grows past
/// [`HOLD_BUFFER`]).
const HOLD_CHUNK: usize = 8 * 1024;
/// Clients past `max_connections` being told so at once (Redis, PostgreSQL);
/// past this many, a refused client is closed without a word.
const MAX_REFUSING: usize = 64;
/// How long a refused PostgreSQL client may take to send its StartupMessage
/// (the ErrorResponse follows it), and a refused client to read the reply.
const REFUSE_WAIT: Duration = Duration::from_secs(2);

/// Engine-wide signals every connection watches.
pub struct Signals {
    pub shutdown: watch::Receiver<bool>,
    pub force_close: watch::Receiver<bool>,
    pub open: Arc<AtomicU64>,
}

impl Clone for Signals {
    fn clone(&self) -> Self {
        Signals {
            shutdown: self.shutdown.clone(),
            force_close: self.force_close.clone(),
            open: self.open.clone(),
        }
    }
}

/// Decrements counters when a connection ends, however it ends.
struct OpenGuard {
    svc: Arc<ServiceRt>,
    open: Arc<AtomicU64>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.svc.active_conns.fetch_sub(1, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.svc
            .metrics
            .active_connections
            .with_label_values(&[self.svc.name()])
            .dec();
    }
}

/// Accepts until shutdown. Past `max_connections` open client connections
/// (default 1024 for L4 services) a new client is refused at once in its
/// own protocol ([`protocol::refuse_full`]) and counted in
/// `continuity_connections_refused_total{listener}`, rather than left
/// waiting in the kernel's backlog.
/// `fallback`: the redis memory fallback of the service, carried across
/// reloads by the engine's slot (proxy/src/fallback).
/// `workers`: the engine's L4 threads, which serve the connections.
pub async fn accept_loop(
    svc: Arc<ServiceRt>,
    fallback: Option<Arc<Fallback>>,
    listener: TcpListener,
    mut sig: Signals,
    workers: Arc<Workers>,
) {
    let engine_rt = Handle::current();
    let limit = svc
        .cfg
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n.max(1) as usize)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mux_thread = svc.cfg.multiplex.then(|| mux::thread_of(svc.name()));
    // `hot`: keeps standby connections ready while this loop runs.
    let _pool_keeper = pool::spawn_keeper(&svc, sig.shutdown.clone());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = sig.shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(service = svc.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match &limit {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    refuse_past_cap(&svc, stream, peer, &refusing);
                    continue;
                }
            },
            None => None,
        };
        svc.active_conns.fetch_add(1, Ordering::Relaxed);
        sig.open.fetch_add(1, Ordering::SeqCst);
        svc.metrics
            .active_connections
            .with_label_values(&[svc.name()])
            .inc();
        let guard = OpenGuard {
            svc: svc.clone(),
            open: sig.open.clone(),
        };
        // The socket moves to the worker's reactor: it is registered with
        // the runtime it is rebuilt on.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(service = svc.name(), %peer, error = %e, "accepted socket lost");
                continue;
            }
        };
        let svc = svc.clone();
        let fallback = fallback.clone();
        let sig = sig.clone();
        let engine_rt = engine_rt.clone();
        match mux_thread {
            // A multiplexed service's clients all live on one thread and
            // share its upstream connection (listener/mux). A task of its
            // own: it does not carry a relay's state (size_tests.rs).
            Some(slot) if svc.cfg.kind == crate::config::Kind::Postgres => {
                workers.spawn_at(slot, move || {
                    let s = svc.clone();
                    connection(svc, peer, stream, (permit, guard), move |c| {
                        mux::serve_pg(s, c, sig, engine_rt)
                    })
                })
            }
            Some(slot) => workers.spawn_at(slot, move || {
                let s = svc.clone();
                connection(svc, peer, stream, (permit, guard), move |c| {
                    mux::serve(s, c, sig, engine_rt)
                })
            }),
            None => workers.spawn(move || {
                let s = svc.clone();
                connection(svc, peer, stream, (permit, guard), move |c| {
                    handle(s, fallback, c, sig, engine_rt)
                })
            }),
        }
    }
}

/// One accepted connection on its L4 thread: the socket joins the thread's
/// reactor, `serve` runs it, and the slot it holds (`max_connections`, the
/// open count) is given back when it ends.
async fn connection<F>(
    svc: Arc<ServiceRt>,
    peer: std::net::SocketAddr,
    stream: std::net::TcpStream,
    _held: (Option<tokio::sync::OwnedSemaphorePermit>, OpenGuard),
    serve: impl FnOnce(TcpStream) -> F,
) where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    let result = match TcpStream::from_std(stream) {
        Ok(stream) => serve(stream).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(service = svc.name(), %peer, error = %e, "connection ended with error");
    }
}

/// Counts a client past `max_connections` and tells it so where its
/// protocol can (in a task of its own, at most [`MAX_REFUSING`] at once),
/// then closes it.
fn refuse_past_cap(
    svc: &Arc<ServiceRt>,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    refusing: &Arc<Semaphore>,
) {
    svc.metrics
        .connections_refused
        .with_label_values(&[svc.name()])
        .inc();
    tracing::debug!(
        service = svc.name(),
        %peer,
        max_connections = svc.cfg.max_connections,
        "connection refused (max_connections)"
    );
    let kind = svc.cfg.kind;
    if !matches!(
        kind,
        crate::config::Kind::Redis | crate::config::Kind::Postgres
    ) {
        return;
    }
    let Ok(slot) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        protocol::refuse_full(kind, &mut stream, REFUSE_WAIT).await;
        let _ = stream.shutdown().await;
        // Read what the client still sends, so that the kernel does not
        // answer it with a reset that could destroy the reply.
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(REFUSE_WAIT, async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

/// Why waiting for an upstream ended without one.
enum Gave {
    Up,
    Timeout,
    /// Serve it from the redis memory fallback instead (proxy/src/fallback).
    Fallback,
}

/// In a `[cluster]` with `on_failover = "route"`, when this engine sees
/// the agreed active upstream down: the upstream this one client goes to
/// alone (the first other usable one, configured primaries first). Only
/// the cluster's decision moves the service (docs/cluster.md). `None`
/// otherwise; with `"promote"` the client is held instead, because the
/// other upstream is a read-only replica until the cluster promotes it.
fn detour(svc: &ServiceRt, route: &Route) -> Option<usize> {
    if svc.coordination.get().is_none()
        || svc.cfg.on_failover != crate::config::OnFailover::Route
        || route.switching
        || svc.usable(route, route.active)
    {
        return None;
    }
    let primary = |i: &usize| {
        svc.upstreams
            .get(*i)
            .is_none_or(|u| u.cfg.role != crate::config::Role::Primary)
    };
    (0..svc.upstreams.len())
        .filter(|i| *i != route.active && svc.usable(route, *i))
        .min_by_key(|i| (primary(i), *i))
}

/// Whether a new client of `svc` goes to the memory fallback: it is
/// engaged (until its journal is replayed), or no upstream can take the
/// client and no switch is in progress that could give it one.
fn to_fallback(svc: &ServiceRt, fallback: Option<&Fallback>, route: &Route) -> bool {
    let Some(fb) = fallback else {
        return false;
    };
    if fb.engaged() {
        return true;
    }
    let none = (0..svc.upstreams.len()).all(|i| !svc.usable(route, i));
    let stuck =
        svc.cfg.failover == crate::config::FailoverMode::Manual && !svc.usable(route, route.active);
    !route.switching && (none || stuck)
}

/// One client's life, on an L4 thread. `engine_rt`: where a failed connect
/// is reported (probe accounting and any switch it starts run there).
async fn handle(
    svc: Arc<ServiceRt>,
    fallback: Option<Arc<Fallback>>,
    mut client: TcpStream,
    mut sig: Signals,
    engine_rt: Handle,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let accepted = Instant::now();
    let deadline = tokio::time::Instant::from_std(accepted + svc.cfg.buffer_timeout);
    let mut early = BytesMut::new();
    let outcome = wait_upstream(
        &svc,
        fallback.as_deref(),
        &mut client,
        &mut early,
        deadline,
        &mut sig,
        &engine_rt,
        None,
    )
    .await;
    let (idx, epoch, upstream) = match outcome {
        Ok(v) => v,
        Err(Gave::Up) => return Ok(()),
        Err(Gave::Fallback) => {
            let Some(fb) = fallback else {
                return Ok(());
            };
            // Boxed, as the refusal below: a rare path whose state an idle
            // relay should not carry (size_tests.rs).
            return Box::pin(crate::fallback::serve(
                svc,
                fb,
                client,
                early,
                sig.shutdown,
                sig.force_close,
            ))
            .await;
        }
        Err(Gave::Timeout) => {
            svc.metrics
                .hold_timeouts
                .with_label_values(&[svc.name()])
                .inc();
            // Summarised per service and interval for the audit log, with a
            // sample of client addresses (proxy/src/events.rs).
            svc.events.hold_timed_out(
                svc.name(),
                client.peer_addr().ok().map(|a| a.ip()),
                accepted.elapsed().as_millis() as u64,
            );
            Box::pin(refuse(&svc, client, &early)).await;
            return Ok(());
        }
    };
    serve(svc, client, early, (idx, epoch, upstream), sig, engine_rt).await
}

/// Waits for an upstream this client may use and connects to it: the
/// active one when usable (a `hot` pooled connection if there is one),
/// else a detour in a cluster, else the client is held (what it sends is
/// kept in `early`, up to [`HOLD_BUFFER`]) until the route changes or
/// `deadline`. A refused or timed-out connect is reported and the loop
/// goes on with the route that follows.
///
/// `gone`: a re-attaching connection whose upstream (index, epoch) closed
/// it: a `hot` pooled connection is not taken while the route still names
/// that upstream (the caller checks a fresh connect there, reattach.rs).
#[allow(clippy::too_many_arguments)]
async fn wait_upstream(
    svc: &Arc<ServiceRt>,
    fallback: Option<&Fallback>,
    client: &mut TcpStream,
    early: &mut BytesMut,
    deadline: tokio::time::Instant,
    sig: &mut Signals,
    engine_rt: &Handle,
    gone: Option<(usize, u64)>,
) -> Result<(usize, u64, TcpStream), Gave> {
    let mut changed = svc.changed_tx.subscribe();
    let mut held = false;
    let outcome = loop {
        let route = svc.route.load_full();
        let idx = route.active;
        if to_fallback(svc, fallback, &route) {
            break Err(Gave::Fallback);
        }
        let same = gone == Some((idx, route.epoch));
        if svc.usable(&route, idx) {
            if let Some(up) = svc.upstreams.get(idx) {
                // `hot`: a connection pre-opened by the pool keeper skips
                // the connect (upstream/pool.rs).
                if let Some(stream) = (!same).then(|| pool::take_pooled(svc, idx)).flatten() {
                    up.metrics.connect.observe(0.0);
                    // Pooled on the engine's runtime: move it to this
                    // thread's reactor. If that fails, connect instead.
                    if let Ok(stream) = stream.into_std().and_then(TcpStream::from_std) {
                        break Ok((idx, route.epoch, stream));
                    }
                }
                let turn = match connect_turn(up, deadline, sig).await {
                    Ok(turn) => turn,
                    Err(gave) => break Err(gave),
                };
                if turn.waited && svc.route.load().epoch != route.epoch {
                    // The route moved while this client waited: see where.
                    continue;
                }
                let started = Instant::now();
                let target = up.cfg.target();
                match tokio::time::timeout(
                    svc.cfg.health.connect_timeout,
                    TcpStream::connect(target.as_str()),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        up.connected_now();
                        up.metrics.connect.observe(started.elapsed().as_secs_f64());
                        break Ok((idx, route.epoch, stream));
                    }
                    // Timed out while other connects to it succeeded (or
                    // just before): its listen backlog was full (a herd of
                    // held clients meeting it as it came back), which says
                    // nothing of its health. Counted apart, and tried
                    // again. (A hung server is still found by the probes,
                    // which wait for an answer, not a connect.)
                    Err(_) if up.connected_since(started, svc.cfg.health.connect_timeout) => {
                        svc.metrics
                            .passive_failures
                            .with_label_values(&[svc.name(), &up.cfg.name, "congested"])
                            .inc();
                        // Within `buffer_timeout_ms`, as a held client.
                        if tokio::time::Instant::now() >= deadline {
                            break Err(Gave::Timeout);
                        }
                        continue;
                    }
                    Ok(Err(e)) => {
                        let waited = started.elapsed();
                        if !report_failed_connect(engine_rt, svc, idx, Some(e), waited).await {
                            break Err(Gave::Up);
                        }
                        continue;
                    }
                    Err(_) => {
                        let waited = started.elapsed();
                        if !report_failed_connect(engine_rt, svc, idx, None, waited).await {
                            break Err(Gave::Up);
                        }
                        continue;
                    }
                }
            }
        }
        if let Some(alt) = detour(svc, &route) {
            if let Some(up) = svc.upstreams.get(alt) {
                let _turn = match connect_turn(up, deadline, sig).await {
                    Ok(turn) => turn,
                    Err(gave) => break Err(gave),
                };
                let started = Instant::now();
                let target = up.cfg.target();
                // Boxed, as the other rare paths (size_tests.rs).
                if let Ok(Ok(stream)) = Box::pin(tokio::time::timeout(
                    svc.cfg.health.connect_timeout,
                    TcpStream::connect(target.as_str()),
                ))
                .await
                {
                    up.metrics.connect.observe(started.elapsed().as_secs_f64());
                    break Ok((alt, route.epoch, stream));
                }
            }
        }
        if !held {
            held = true;
            svc.held.fetch_add(1, Ordering::Relaxed);
            svc.metrics.held.with_label_values(&[svc.name()]).inc();
        }
        let room = HOLD_BUFFER.saturating_sub(early.len());
        let mut limited = (&mut *early).limit(room.min(HOLD_CHUNK));
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() { break Err(Gave::Up); }
            }
            _ = tokio::time::sleep_until(deadline) => break Err(Gave::Timeout),
            // At most HOLD_BUFFER bytes kept: a chunk at a time, never more
            // than the room left.
            n = client.read_buf(&mut limited), if room > 0 => {
                match n {
                    Ok(0) | Err(_) => break Err(Gave::Up),
                    Ok(_) => {}
                }
            }
            _ = sig.shutdown.changed() => break Err(Gave::Up),
        }
    };
    if held {
        svc.held.fetch_sub(1, Ordering::Relaxed);
    }
    outcome
}

/// A turn to connect to `up`, held until the connect is done (the
/// service's `max_connecting` turns per upstream). Without it, clients
/// held through an outage all connect at once when the upstream comes
/// back: past its listen backlog the kernel drops their SYNs, those
/// connects run past `connect_timeout_ms`, and each would count as a
/// failure of an upstream that is up (tests/recovery_herd.rs). Turns are
/// given in the order asked for (tokio's semaphore is fair).
struct Turn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    /// It had to wait for it.
    waited: bool,
}

async fn connect_turn<'a>(
    up: &'a crate::upstream::state::UpstreamRt,
    deadline: tokio::time::Instant,
    sig: &mut Signals,
) -> Result<Turn<'a>, Gave> {
    if let Ok(p) = up.connecting.try_acquire() {
        return Ok(Turn {
            _permit: p,
            waited: false,
        });
    }
    // Boxed: a rare path, whose state an idle relay should not carry
    // (size_tests.rs).
    Box::pin(async {
        tokio::select! {
            p = up.connecting.acquire() => match p {
                Ok(p) => Ok(Turn { _permit: p, waited: true }),
                Err(_) => Err(Gave::Up),
            },
            _ = tokio::time::sleep_until(deadline) => Err(Gave::Timeout),
            _ = sig.shutdown.changed() => Err(Gave::Up),
        }
    })
    .await
}

/// Relays the client to `upstream` (index, epoch, socket) until one side
/// is done, a switch means this connection must go ([`must_close`]) or
/// the engine force-closes. A Redis connection with `reattach_idle` that
/// is idle when its upstream moves or goes away is re-attached to the
/// active upstream (listener/reattach.rs) and relayed on; any other is
/// closed, as is one that cannot be re-attached.
async fn serve(
    svc: Arc<ServiceRt>,
    mut client: TcpStream,
    mut early: BytesMut,
    (mut idx, mut epoch, mut upstream): (usize, u64, TcpStream),
    mut sig: Signals,
    engine_rt: Handle,
) -> std::io::Result<()> {
    let mut session = svc.cfg.reattach_idle.then(Session::default);
    loop {
        let _ = upstream.set_nodelay(true);
        let Some(up) = svc.upstreams.get(idx) else {
            return Ok(());
        };
        up.active_conns.fetch_add(1, Ordering::Relaxed);
        up.total_conns.fetch_add(1, Ordering::Relaxed);
        up.metrics.connections.inc();
        let timer = RequestTimer::new(svc.clone(), idx, session.take());
        let result = async {
            if !early.is_empty() {
                timer.observe_client(&early);
                upstream.write_all(&early).await?;
                up.metrics.bytes_up.inc_by(early.len() as u64);
            }
            // What a held client sent is upstream now: free it for the
            // connection's life.
            early = BytesMut::new();
            // A planned switchover unpauses the old redis primary only once
            // every relay bound to it has left this select (a write paused
            // there would be answered READONLY): it waits for the relays'
            // count to reach zero (upstream/switchover.rs, relays_closed).
            tokio::select! {
                _ = must_close(&svc, idx, epoch) => Ok(Some(Ended::Upstream)),
                _ = sig.force_close.changed() => Ok(None),
                r = relay(&mut client, &mut upstream, &timer) => r.map(Some),
            }
        }
        .await;
        up.active_conns.fetch_sub(1, Ordering::Relaxed);
        if result? != Some(Ended::Upstream) || !svc.cfg.reattach_idle {
            return Ok(());
        }
        let outcome = |o: &str| {
            svc.metrics
                .reattached
                .with_label_values(&[svc.name(), o])
                .inc()
        };
        let s = match timer.take_session() {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(service = svc.name(), why, "connection not re-attached");
                outcome("ineligible");
                return Ok(());
            }
        };
        drop(upstream);
        // Boxed: an idle relay does not carry the state of a re-attach.
        let next = Box::pin(reattach::reattach(
            &svc,
            &mut client,
            &s,
            (idx, epoch),
            &mut sig,
            &engine_rt,
        ))
        .await;
        match next {
            Some((i, e, stream, held)) => {
                outcome("reattached");
                (idx, epoch, upstream, early) = (i, e, stream, held);
                session = Some(s);
            }
            None => {
                outcome("failed");
                return Ok(());
            }
        }
    }
}

/// A failed connect (`error`; `None`: it ran past `connect_timeout_ms`) as
/// a probe failure of upstream `idx`, on the engine's runtime. Returns once
/// it is accounted and any switch it started has run, so the next try sees
/// the new route. `false` when the engine's runtime is gone (the engine is
/// being torn down): nothing was accounted, and the client should give up
/// rather than try the same upstream again at once.
async fn report_failed_connect(
    engine_rt: &Handle,
    svc: &Arc<ServiceRt>,
    idx: usize,
    error: Option<std::io::Error>,
    waited: Duration,
) -> bool {
    let svc = svc.clone();
    engine_rt
        .spawn(async move {
            match error {
                Some(e) if classify_io(&e) == FailureKind::Refused => svc.on_refused(idx, &e).await,
                _ => svc.on_connect_timeout(idx, waited).await,
            }
        })
        .await
        .is_ok()
}

/// Resolves when a switch means this connection must go: at once after a
/// failover away from its upstream, or after the drain period of a recover.
async fn must_close(svc: &ServiceRt, idx: usize, epoch: u64) {
    let mut rx = svc.route_tx.subscribe();
    loop {
        let route = svc.route.load_full();
        if route.epoch != epoch
            && (route.active != idx || route.fenced.get(idx).copied().unwrap_or(true))
        {
            match route.drain {
                Some((d, until)) if d == idx => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
                }
                _ => {}
            }
            return;
        }
        if rx.changed().await.is_err() {
            // The service is gone: nothing will ever ask us to close.
            std::future::pending::<()>().await;
        }
    }
}

/// Gives a held client its protocol's error, then closes gracefully: a
/// FIN after the reply, and the client's pending bytes read so the kernel
/// does not answer them with a reset that could destroy the reply.
async fn refuse(svc: &ServiceRt, mut client: TcpStream, early: &[u8]) {
    protocol::refuse_held(svc.cfg.kind, svc.name(), &mut client, early).await;
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod size_tests;
#[cfg(test)]
#[path = "../../tests/common/mod.rs"]
mod test_common;
