//! CancelRequest on a multiplexed PostgreSQL service. A client is handed a
//! backend key of the proxy's own at startup (pg.rs), since its statements
//! run on connections it does not own; a CancelRequest with that key, on a
//! connection of its own, is turned here into one for the server backend
//! running the client's statement now, with that backend's key, sent to
//! the address its connection went to, as PostgreSQL's own postmaster
//! would pass it on:
//!
//! - on its private connection (a transaction, a COPY...): always, as
//!   PostgreSQL does (a backend that is idle ignores it);
//! - on a shared connection: only while the client's statement is the one
//!   the server runs (the head of the connection's queue), checked again
//!   just before the cancel is written; the statements of other clients
//!   queued behind it must not be cancelled. What is left of that race is
//!   in docs/multiplex.md.
//!
//! From the moment a cancel is found a backend until the server has closed
//! the cancel's connection, nothing more is written to that backend
//! ([`Hold`]): PostgreSQL signals the backend twice (its pid, then its
//! process group), and a second signal delayed past the cancelled
//! statement's end cancels the next statement the backend reads, which on
//! a shared connection is another client's.
//!
//! A key that is unknown, of another service, or whose secret differs (in
//! constant time) cancels nothing, and nothing is answered, as PostgreSQL
//! answers nothing.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pgwire::{self, BackendKey};
use super::upstream::{Mux, State};
use super::Sink;
use crate::upstream::runtime::ServiceRt;

/// The clients handed a key, by their pid. Process-wide: a CancelRequest
/// is a connection of its own, accepted by whichever L4 thread (each its
/// own runtime) the listener gives it, not necessarily its client's.
/// Weak: an entry outlives its client only until [`Registered`] drops.
static CLIENTS: Mutex<Option<HashMap<u32, Weak<Running>>>> = Mutex::new(None);

fn clients() -> MutexGuard<'static, Option<HashMap<u32, Weak<Running>>>> {
    CLIENTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one client handed a key runs on: its reply side (which the
/// connections' queues and owners name) and the connections it uses.
pub(super) struct Running {
    /// The service it is a client of (by name: a reload that replaces
    /// the service leaves its clients on the old one).
    svc: Arc<ServiceRt>,
    secret: [u8; 4],
    sink: Weak<Sink>,
    on: Mutex<On>,
}

#[derive(Default)]
struct On {
    /// The shared connection its statements go to.
    shared: Weak<Mux>,
    /// Its private connection, while it has one.
    private: Weak<Mux>,
}

impl Running {
    fn on(&self) -> MutexGuard<'_, On> {
        self.on.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client's entry in [`CLIENTS`], taken out when it drops (with the
/// client: pg.rs keeps it in the client's state).
pub(super) struct Registered {
    pid: u32,
    running: Arc<Running>,
}

impl Registered {
    /// Registers the client handed `pid` and `secret`, whose statements
    /// go to `shared` for now.
    pub(super) fn new(
        svc: &Arc<ServiceRt>,
        pid: u32,
        secret: [u8; 4],
        sink: &Arc<Sink>,
        shared: &Arc<Mux>,
    ) -> Registered {
        let running = Arc::new(Running {
            svc: svc.clone(),
            secret,
            sink: Arc::downgrade(sink),
            on: Mutex::new(On {
                shared: Arc::downgrade(shared),
                private: Weak::new(),
            }),
        });
        clients()
            .get_or_insert_with(HashMap::new)
            .insert(pid, Arc::downgrade(&running));
        Registered { pid, running }
    }

    /// Its statements go to the shared connection `mux` from now on.
    pub(super) fn shared(&self, mux: &Arc<Mux>) {
        self.running.on().shared = Arc::downgrade(mux);
    }

    /// It has the private connection `mux` (`None`: none any more).
    pub(super) fn private(&self, mux: Option<&Arc<Mux>>) {
        self.running.on().private = mux.map_or_else(Weak::new, Arc::downgrade);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut all = clients();
        if let Some(map) = all.as_mut() {
            // Only its own entry: a pid counted all the way round may be
            // another client's by now.
            let own = map
                .get(&self.pid)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.running)));
            if own {
                map.remove(&self.pid);
            }
            if map.is_empty() {
                *all = None;
            }
        }
    }
}

/// The client of `svc` handed exactly `pid` and `secret`.
fn find(svc: &ServiceRt, pid: i32, secret: &[u8]) -> Option<Arc<Running>> {
    let pid = u32::from_be_bytes(pid.to_be_bytes());
    let running = clients().as_ref()?.get(&pid)?.upgrade()?;
    let same = secret.len() == running.secret.len() && bool::from(secret.ct_eq(&running.secret));
    (same && running.svc.name() == svc.name()).then_some(running)
}

/// The connection running the client's statement now and that
/// connection's backend key, if any.
fn target(running: &Running) -> Option<(Arc<Mux>, Arc<BackendKey>)> {
    let sink = running.sink.upgrade()?;
    let (shared, private) = {
        let on = running.on();
        (on.shared.upgrade(), on.private.upgrade())
    };
    [private, shared]
        .into_iter()
        .flatten()
        .find_map(|m| runs(&m, &sink).map(|k| (m, k)))
}

/// `mux`'s backend key if the client of `sink` runs a statement on it:
/// it owns it (private), or its statement is at the head of its queue
/// (shared), the one the server runs.
fn runs(mux: &Mux, sink: &Arc<Sink>) -> Option<Arc<BackendKey>> {
    let g = mux.lock();
    let here = if mux.private {
        g.owner.as_ref().is_some_and(|o| Arc::ptr_eq(o, sink))
    } else {
        g.fifo.front().is_some_and(|s| Arc::ptr_eq(&s.sink, sink))
    };
    let up = matches!(g.state, State::Up | State::Retired);
    (here && up).then(|| g.backend.clone()).flatten()
}

/// A CancelRequest for `pid` with `secret`, received on `svc`: passed on
/// to the server backend running that client's statement, if any.
pub(super) async fn forward(svc: &ServiceRt, pid: i32, secret: &[u8]) {
    let timeout = svc.cfg.health.connect_timeout;
    let Some(running) = find(svc, pid, secret) else {
        return;
    };
    let Some((mux, key)) = target(&running) else {
        return;
    };
    // From here until the server is done with the cancel, nothing more is
    // written to that backend.
    let _hold = Hold::new(&mux);
    let Ok(Ok(mut stream)) = tokio::time::timeout(timeout, TcpStream::connect(key.addr)).await
    else {
        return;
    };
    // Checked again as late as can be (nothing awaits between this and
    // the write): while connecting, the statement may have ended and
    // another client's begun on the shared connection, or the private one
    // passed to another client's transaction.
    let Some(sink) = running.sink.upgrade() else {
        return;
    };
    if runs(&mux, &sink).is_none_or(|k| !Arc::ptr_eq(&k, &key)) {
        return;
    }
    let request = pgwire::cancel_request(key.pid, &key.secret);
    // Sent, then read to its end: the server closes the connection once it
    // has signalled the backend (both signals), and only then is the
    // backend's next statement written (`Inner::take_out`).
    let done = tokio::time::timeout(timeout, async {
        stream.write_all(&request).await?;
        stream.shutdown().await?;
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
    tracing::debug!(service = svc.name(), backend = %key.addr, pid = key.pid,
        shared = !mux.private, done = matches!(done, Ok(Ok(()))), "CancelRequest passed on");
}

/// A CancelRequest in progress for `mux`'s backend: nothing more is written
/// to it until this drops (upstream.rs, `Inner::take_out`).
struct Hold<'a>(&'a Mux);

impl<'a> Hold<'a> {
    fn new(mux: &'a Mux) -> Hold<'a> {
        mux.lock().cancels += 1;
        Hold(mux)
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        {
            let mut g = self.0.lock();
            g.cancels = g.cancels.saturating_sub(1);
        }
        // Its task writes what was held back.
        self.0.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use tokio::net::TcpListener;

    use super::super::upstream::{Slot, Wire};
    use super::super::{key, new_sink};
    use super::*;
    use crate::config::{Kind, Role, ServiceConfig, UpstreamConfig};

    fn service(name: &str) -> Arc<ServiceRt> {
        let cfg = ServiceConfig::new(
            name,
            Kind::Postgres,
            vec![UpstreamConfig::at("p1", "127.0.0.1:1", Role::Primary)],
        );
        ServiceRt::detached(cfg)
    }

    async fn sink(svc: &ServiceRt) -> Arc<Sink> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        new_sink(svc, c.into_split().1)
    }

    /// A connection that is up, with a backend key.
    fn mux(svc: &ServiceRt, private: bool, pid: i32) -> Arc<Mux> {
        mux_at(svc, private, pid, "127.0.0.1:5432".parse().unwrap())
    }

    /// As [`mux`], its backend's server at `addr`.
    fn mux_at(svc: &ServiceRt, private: bool, pid: i32, addr: std::net::SocketAddr) -> Arc<Mux> {
        let m = Arc::new(Mux::new(Wire::Postgres, private, key(svc)));
        {
            let mut g = m.lock();
            g.state = State::Up;
            g.backend = Some(Arc::new(BackendKey {
                addr,
                pid,
                secret: Box::new([1, 2, 3, 4]),
            }));
        }
        m
    }

    /// What the connection's task would write now.
    fn writable(m: &Mux) -> Vec<u8> {
        let mut out = Vec::new();
        m.lock().take_out(&mut out);
        out
    }

    fn queue(m: &Mux, sink: &Arc<Sink>) {
        m.lock().fifo.push_back(Slot {
            sink: sink.clone(),
            sent: Instant::now(),
            bytes: 1,
            count: 1,
        });
    }

    fn backend_pid(r: &Running) -> Option<i32> {
        target(r).map(|(_, k)| k.pid)
    }

    // Pids far from the ones the proxy hands out (and distinct per test:
    // the registry is the process's).
    #[tokio::test]
    async fn only_the_exact_key_on_its_own_service_finds_the_client() {
        let (svc, other) = (service("records"), service("other"));
        let sink = sink(&svc).await;
        let shared = mux(&svc, false, 7);
        let pid = 0x1000_0001;
        let reg = Registered::new(&svc, pid, [9, 8, 7, 6], &sink, &shared);
        let p = i32::try_from(pid).unwrap();
        assert!(find(&svc, p, &[9, 8, 7, 6]).is_some());
        for secret in [&[9, 8, 7, 7][..], &[9, 8, 7], &[9, 8, 7, 6, 0], &[]] {
            assert!(find(&svc, p, secret).is_none(), "{secret:?}");
        }
        assert!(find(&svc, p + 1, &[9, 8, 7, 6]).is_none());
        assert!(find(&other, p, &[9, 8, 7, 6]).is_none());
        drop(reg);
        assert!(find(&svc, p, &[9, 8, 7, 6]).is_none());
    }

    #[tokio::test]
    async fn a_shared_statement_is_cancelled_only_at_the_head_of_its_queue() {
        let svc = service("records");
        let (a, b) = (sink(&svc).await, sink(&svc).await);
        let shared = mux(&svc, false, 7);
        let reg = Registered::new(&svc, 0x1000_0002, [1; 4], &a, &shared);
        // Idle: nothing to cancel.
        assert_eq!(backend_pid(&reg.running), None);
        // Behind another client's statement: not running yet.
        queue(&shared, &b);
        queue(&shared, &a);
        assert_eq!(backend_pid(&reg.running), None);
        // At the head: the one the server runs.
        shared.lock().fifo.pop_front();
        assert_eq!(backend_pid(&reg.running), Some(7));
        // Moved to another shared connection: that one's head counts.
        let next = mux(&svc, false, 8);
        reg.shared(&next);
        assert_eq!(backend_pid(&reg.running), None);
        queue(&next, &a);
        assert_eq!(backend_pid(&reg.running), Some(8));
        // A connection not up (closed, or still connecting) gets none.
        next.lock().state = State::Closed;
        assert_eq!(backend_pid(&reg.running), None);
    }

    #[tokio::test]
    async fn a_private_connection_is_cancelled_while_the_client_owns_it() {
        let svc = service("records");
        let (a, b) = (sink(&svc).await, sink(&svc).await);
        let shared = mux(&svc, false, 7);
        let private = mux(&svc, true, 9);
        let reg = Registered::new(&svc, 0x1000_0003, [1; 4], &a, &shared);
        private.lock().owner = Some(a.clone());
        reg.private(Some(&private));
        assert_eq!(backend_pid(&reg.running), Some(9));
        // Given back, then taken by another client: not a's any more.
        private.lock().owner = Some(b.clone());
        assert_eq!(backend_pid(&reg.running), None);
        reg.private(None);
        assert_eq!(backend_pid(&reg.running), None);
    }

    /// PostgreSQL signals a cancelled backend twice, the second time
    /// possibly late: nothing more (another client's statement) is written
    /// to the backend until the server has closed the cancel's connection,
    /// which it does once both signals are sent.
    #[tokio::test]
    async fn nothing_is_written_to_a_backend_until_its_cancel_is_done() {
        let svc = service("records");
        let (a, b) = (sink(&svc).await, sink(&svc).await);
        let postmaster = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = mux_at(&svc, false, 7, postmaster.local_addr().unwrap());
        let reg = Registered::new(&svc, 0x1000_0005, [3; 4], &a, &shared);
        queue(&shared, &a);
        queue(&shared, &b);
        shared.lock().out.extend_from_slice(b"b's statement");

        let cancel = tokio::spawn({
            let svc = svc.clone();
            async move { forward(&svc, 0x1000_0005, &[3; 4]).await }
        });
        let (mut conn, _) = postmaster.accept().await.unwrap();
        let mut request = [0u8; 16];
        conn.read_exact(&mut request).await.unwrap();
        assert_eq!(request.to_vec(), pgwire::cancel_request(7, &[1, 2, 3, 4]));
        // The server has not closed the cancel's connection yet: b's
        // statement waits, and so does the cancel.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(writable(&shared).is_empty());
        assert!(!cancel.is_finished());
        drop(conn);
        cancel.await.unwrap();
        assert_eq!(writable(&shared), b"b's statement");
        assert_eq!(shared.lock().cancels, 0);
        drop(reg);
    }

    /// A cancel that finds nothing to cancel holds nothing back.
    #[tokio::test]
    async fn a_cancel_with_nothing_running_holds_nothing_back() {
        let svc = service("records");
        let (a, b) = (sink(&svc).await, sink(&svc).await);
        let shared = mux(&svc, false, 7);
        let reg = Registered::new(&svc, 0x1000_0006, [4; 4], &a, &shared);
        queue(&shared, &b);
        shared.lock().out.extend_from_slice(b"b's statement");
        forward(&svc, 0x1000_0006, &[4; 4]).await;
        assert_eq!(shared.lock().cancels, 0);
        assert_eq!(writable(&shared), b"b's statement");
        drop(reg);
    }

    #[tokio::test]
    async fn a_pid_counted_round_keeps_the_newer_clients_entry() {
        let svc = service("records");
        let (a, b) = (sink(&svc).await, sink(&svc).await);
        let shared = mux(&svc, false, 7);
        let old = Registered::new(&svc, 0x1000_0004, [1; 4], &a, &shared);
        let new = Registered::new(&svc, 0x1000_0004, [2; 4], &b, &shared);
        drop(old);
        assert!(find(&svc, 0x1000_0004, &[2; 4]).is_some());
        assert!(find(&svc, 0x1000_0004, &[1; 4]).is_none());
        drop(new);
        assert!(find(&svc, 0x1000_0004, &[2; 4]).is_none());
    }
}
