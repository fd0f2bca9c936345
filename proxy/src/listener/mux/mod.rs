//! `multiplex = true` (redis): the commands of a service's clients share
//! one upstream connection, pipelined together, instead of one upstream
//! connection each (what twemproxy and Envoy's Redis proxy do): the
//! service's clients all live on one L4 thread ([`thread_of`]), which keeps
//! one connection per service. Each client's commands are cut whole from
//! its stream and checked (redis.rs, command.rs); those that may go are
//! queued on the thread's connection (upstream.rs), whose task writes every command queued since its last
//! write in one `write`; the server answers the batch in one `write` too,
//! and each reply is written to its client in order. Per command, the
//! proxy then makes about one read and one write on the client's side and
//! a fraction of one on the upstream's, where a relay makes one of each
//! on both sides (BENCHMARKS.md, "Issue #16: multiplexing").
//!
//! What changes for a client is in docs/multiplex.md: commands that hold
//! state on their connection (MULTI, blocking pops, SUBSCRIBE, CLIENT,
//! SELECT n, HELLO) are refused with `-ERR`, AUTH is checked here against
//! the upstream's password, and a client holds no upstream connection
//! between commands, so a failover leaves an idle client untouched.

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::relay::{nothing_read, read_now, Buffer};
use super::Signals;
use crate::observe::Tap;
use crate::upstream::runtime::ServiceRt;

mod cancel;
mod command;
mod pg;
mod pg_startup;
mod pgwire;
mod redis;
mod replies;
mod sql;
mod upstream;

use upstream::{Mux, Slot, State, Wire};

/// Commands one client may have waiting for replies; past it (or past
/// [`MAX_IN_FLIGHT_BYTES`] of them) its socket is not read until replies
/// come back. A command larger than that alone still goes.
const MAX_IN_FLIGHT: usize = 1024;
const MAX_IN_FLIGHT_BYTES: usize = 1024 * 1024;
/// Replies written to a client's socket only in part, past which its
/// commands are not read until it reads (back-pressure).
const MAX_PENDING: usize = 1024 * 1024;
/// Replies waiting for one client past which it is closed, as Redis's
/// `client-output-buffer-limit` does: the shared connection cannot stop
/// for one client that does not read what it asked for.
const MAX_PENDING_HARD: usize = 64 * 1024 * 1024;

thread_local! {
    /// This thread's current connection per multiplexed service (keyed by
    /// the service's address). Weak: a connection no client uses ends.
    static MUXES: RefCell<Vec<(usize, Weak<Mux>)>> = const { RefCell::new(Vec::new()) };
}

/// The L4 thread (modulo their number) whose upstream connection a
/// multiplexed service's clients share: one thread, so that every command
/// joins the same batches. Measured here (2 cores, redis-benchmark -c 50):
/// one shared connection on one thread gave 61-82k SET/s and a GET p99 of
/// 0.70-0.86 ms, one per thread on two threads 55-66k and 1.6-2.1 ms
/// (BENCHMARKS.md, "Issue #16: multiplexing"). Services spread over the
/// threads by name.
pub(super) fn thread_of(service: &str) -> usize {
    service.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    })
}

fn key(svc: &ServiceRt) -> usize {
    std::ptr::from_ref(svc) as usize
}

/// This thread's connection for `svc` that takes new commands, started if
/// there is none (its task connects, holding what is queued meanwhile).
fn current(svc: &Arc<ServiceRt>, lane: usize, sig: &Signals, engine_rt: &Handle) -> Arc<Mux> {
    let k = key(svc) << 6 | lane;
    let found = MUXES.with(|m| {
        let mut m = m.borrow_mut();
        m.retain(|(_, w)| w.strong_count() > 0);
        m.iter()
            .find(|(key, _)| *key == k)
            .and_then(|(_, w)| w.upgrade())
    });
    if let Some(mux) = found {
        if matches!(mux.lock().state, State::Connecting | State::Up) {
            return mux;
        }
    }
    let wire = match svc.cfg.kind {
        crate::config::Kind::Postgres => Wire::Postgres,
        _ => Wire::Redis,
    };
    let mux = Arc::new(Mux::new(wire, false, k));
    MUXES.with(|m| {
        let mut m = m.borrow_mut();
        m.retain(|(key, _)| *key != k);
        m.push((k, Arc::downgrade(&mux)));
    });
    tokio::spawn(upstream::run(
        mux.clone(),
        svc.clone(),
        sig.clone(),
        engine_rt.clone(),
    ));
    mux
}

/// Of the service's `multiplex_connections` shared connections on this
/// thread, the one with the fewest slots waiting (a slot: one client's
/// commands of one read; the first of equals).
fn least_loaded(svc: &Arc<ServiceRt>, sig: &Signals, engine_rt: &Handle) -> Arc<Mux> {
    let mut best = current(svc, 0, sig, engine_rt);
    let mut load = best.lock().fifo.len();
    for lane in 1..svc.cfg.multiplex_connections.min(64) {
        if load == 0 {
            break;
        }
        let m = current(svc, lane, sig, engine_rt);
        let l = m.lock().fifo.len();
        if l < load {
            best = m;
            load = l;
        }
    }
    best
}

/// Takes `mux` off this thread's registry (if it is still the one there).
fn unregister(k: usize, mux: &Arc<Mux>) {
    let _ = MUXES.try_with(|m| {
        m.borrow_mut()
            .retain(|(key, w)| !(*key == k && std::ptr::eq(w.as_ptr(), Arc::as_ptr(mux))));
    });
}

/// The replies side of one client, shared with the connections that
/// answer its commands.
pub(super) struct Sink {
    wr: OwnedWriteHalf,
    st: Mutex<SinkState>,
    /// Replies are waiting to be written, the client may go on, or it
    /// must close.
    wake: Notify,
    /// The statement observer (slow commands, errors), as on a relay.
    tap: Option<Tap>,
}

#[derive(Default)]
struct SinkState {
    /// Replies not yet written to the client.
    pending: Vec<u8>,
    /// Commands sent and not answered, and their bytes.
    in_flight: usize,
    in_flight_bytes: usize,
    /// The client's socket failed: its replies are dropped.
    gone: bool,
    /// A connection was lost with its commands in flight: close it.
    cut: bool,
    /// The client waits for its commands in flight to be answered.
    waiting: bool,
    /// PostgreSQL: the transaction status of its last ReadyForQuery (0
    /// before any: idle).
    status: u8,
    /// PostgreSQL: it owns a private connection, which it gives back once
    /// its transaction is over (so every answer wakes it).
    attached: bool,
}

impl Sink {
    fn state(&self) -> MutexGuard<'_, SinkState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reply bytes for this client, answering `done` of its commands (of
    /// `bytes` in all): written at once if nothing waits before them.
    /// `from`: the service and upstream they came from, for the observer;
    /// `status`: PostgreSQL's transaction status after them.
    fn deliver(
        &self,
        data: &[u8],
        done: usize,
        bytes: usize,
        from: Option<(&ServiceRt, usize)>,
        status: Option<u8>,
    ) {
        let wake = {
            let mut st = self.state();
            if let Some(status) = status {
                st.status = status;
            }
            if !st.gone {
                if st.pending.is_empty() {
                    match self.wr.try_write(data) {
                        Ok(n) => st
                            .pending
                            .extend_from_slice(data.get(n..).unwrap_or_default()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            st.pending.extend_from_slice(data)
                        }
                        Err(_) => st.gone = true,
                    }
                } else {
                    st.pending.extend_from_slice(data);
                }
                if st.pending.len() > MAX_PENDING_HARD {
                    tracing::warn!(
                        pending = st.pending.len(),
                        "multiplexed client closed: it does not read its replies"
                    );
                    st.pending = Vec::new();
                    st.gone = true;
                }
            }
            st.in_flight = st.in_flight.saturating_sub(done);
            st.in_flight_bytes = st.in_flight_bytes.saturating_sub(bytes);
            !st.pending.is_empty() || ((st.waiting || st.attached) && done > 0) || st.gone
        };
        if wake {
            self.wake.notify_one();
        }
        if let (Some(tap), Some((svc, idx))) = (&self.tap, from) {
            report(svc, idx, tap.server(data));
        }
    }

    /// Its commands in flight were lost with their connection.
    fn cut(&self) {
        self.state().cut = true;
        self.wake.notify_one();
    }

    /// Writes what replies it can; whether some are still waiting.
    fn flush(&self) -> io::Result<bool> {
        let mut st = self.state();
        while !st.pending.is_empty() {
            match self.wr.try_write(&st.pending) {
                Ok(n) => {
                    st.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        if st.pending.capacity() > 64 * 1024 {
            st.pending = Vec::new();
        }
        Ok(false)
    }
}

/// Bytes of one client's reply side (size_tests.rs).
#[cfg(test)]
pub(super) fn sink_size() -> usize {
    std::mem::size_of::<Sink>()
}

fn report(svc: &ServiceRt, idx: usize, findings: Vec<crate::observe::Finding>) {
    if findings.is_empty() {
        return;
    }
    if let Some(up) = svc.upstreams.get(idx) {
        for f in findings {
            svc.emit(f.into_event(&up.cfg.name));
        }
    }
}

pub(super) use pg::serve as serve_pg;
pub(super) use redis::serve;

fn new_sink(svc: &ServiceRt, wr: OwnedWriteHalf) -> Arc<Sink> {
    Arc::new(Sink {
        wr,
        st: Mutex::new(SinkState::default()),
        wake: Notify::new(),
        tap: Tap::new(svc.cfg.kind, svc.cfg.slow_query),
    })
}

/// The command side of a client, per wire.
trait Side {
    /// Takes every whole command at the front of `inbuf`: queued, or
    /// answered here. `Ok(true)`: it stopped at one that must wait for the
    /// replies in flight.
    fn run(&mut self, inbuf: &mut BytesMut) -> io::Result<bool>;
    /// It asked to close (QUIT, Terminate) or was refused for good.
    fn quit(&self) -> bool;
    /// Lets go of its connections, as it ends.
    fn finish(&mut self);
}

/// Reads a client's commands and hands them to `side` until it closes,
/// asks to, or is cut; replies are written by the connections (through
/// its [`Sink`]), or here when its socket could not take them at once.
async fn drive<S: Side>(
    mut side: S,
    sink: Arc<Sink>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut inbuf: BytesMut,
    mut sig: Signals,
) -> io::Result<()> {
    let mut eof = false;
    let result = loop {
        let held = match side.run(&mut inbuf) {
            Ok(held) => held,
            Err(e) => break Err(e),
        };
        let pending = match sink.flush() {
            Ok(p) => p,
            Err(e) => break Err(e),
        };
        let (in_flight, cut, gone, room) = {
            let st = sink.state();
            let room = st.in_flight < MAX_IN_FLIGHT
                && st.in_flight_bytes < MAX_IN_FLIGHT_BYTES
                && st.pending.len() < MAX_PENDING;
            (st.in_flight, st.cut, st.gone, room)
        };
        let quit = side.quit();
        if cut || gone || ((eof || quit) && in_flight == 0 && !pending) {
            break Ok(());
        }
        let read = !eof && !quit && !held && room;
        sink.state().waiting = held || !room;
        tokio::select! {
            biased;
            _ = sig.force_close.changed() => break Ok(()),
            _ = sink.wake.notified() => {}
            _ = sink.wr.writable(), if pending => {}
            r = rd.readable(), if read => {
                if let Err(e) = r {
                    break Err(e);
                }
                match read_into(&mut rd, &mut inbuf) {
                    Ok(Some(0)) => eof = true,
                    Ok(Some(_)) => {}
                    Ok(None) => nothing_read().await,
                    Err(e) => break Err(e),
                }
            }
        }
    };
    side.finish();
    result
}

/// Queues `bytes` of a client on `mux`; `slots`: how many commands that
/// get a reply they hold (RESP commands; PostgreSQL Query, Sync or
/// FunctionCall messages), which count as in flight until answered.
/// `now`: one clock read for the commands of one read.
fn enqueue(sink: &Arc<Sink>, mux: &Mux, bytes: &[u8], slots: usize, now: &mut Option<Instant>) {
    if slots > 0 {
        let mut st = sink.state();
        st.in_flight += slots;
        st.in_flight_bytes += bytes.len();
    }
    let mut g = mux.lock();
    g.out.extend_from_slice(bytes);
    if slots > 0 {
        let sent = *now.get_or_insert_with(Instant::now);
        // The client's previous commands of this read: one slot for all.
        match g.fifo.back_mut() {
            Some(s) if s.sent == sent && Arc::ptr_eq(&s.sink, sink) => {
                s.count += slots;
                s.bytes += bytes.len();
            }
            _ => g.fifo.push_back(Slot {
                sink: sink.clone(),
                sent,
                bytes: bytes.len(),
                count: slots,
            }),
        }
    }
}

/// The shared connection a client's next command goes to: the one its
/// commands in flight went to (`held`) while it takes commands, else (none
/// in flight) the thread's current one. `None`: wait for the replies in
/// flight first.
fn shared_for_next(
    held: &mut Option<Arc<Mux>>,
    in_flight: usize,
    svc: &Arc<ServiceRt>,
    sig: &Signals,
    engine_rt: &Handle,
) -> Option<Arc<Mux>> {
    if let Some(m) = held {
        let state = m.lock().state;
        let usable = matches!(state, State::Connecting | State::Up);
        // With its commands in flight it stays (their order); with none,
        // it moves to the least loaded, if the service has several.
        if usable && (in_flight > 0 || svc.cfg.multiplex_connections <= 1) {
            return Some(m.clone());
        }
        if !usable && in_flight > 0 {
            return None;
        }
    }
    let old = held.take();
    let m = least_loaded(svc, sig, engine_rt);
    if let Some(old) = old {
        let_go(old);
    }
    *held = Some(m.clone());
    Some(m)
}

/// Drops a client's hold on `mux` and lets its task see it: a connection
/// no client holds ends once its queue is empty.
fn let_go(mux: Arc<Mux>) {
    let weak = Arc::downgrade(&mux);
    drop(mux);
    if let Some(m) = weak.upgrade() {
        m.wake.notify_one();
    }
}

/// One read of the client's socket into `inbuf`; `None` if it held
/// nothing. Through a pooled buffer, so an idle client keeps none (issue
/// 16's 4 KiB per connection), and through `read_now`, so a short read
/// marks the socket drained and the next wait costs no `EAGAIN` read.
fn read_into(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    inbuf: &mut BytesMut,
) -> io::Result<Option<usize>> {
    let mut buf = Buffer::take();
    match read_now(rd, &mut buf.0) {
        Some(Ok(n)) => {
            inbuf.extend_from_slice(buf.0.get(..n).unwrap_or_default());
            Ok(Some(n))
        }
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}
