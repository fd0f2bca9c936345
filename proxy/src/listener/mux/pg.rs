//! `multiplex = true` for PostgreSQL: the proxy answers a client's startup
//! itself (pg_startup.rs: user, database and password checked against the
//! upstreams'), then cuts its stream into units, each ending with the message that
//! gets a ReadyForQuery (a Query, a Sync, a FunctionCall), and sends each
//! where it can go:
//!
//! - a unit whose statements cannot open a transaction or leave session
//!   state (sql.rs: SELECT, INSERT, UPDATE, DELETE...) joins the shared
//!   connection's pipeline with every other client's, as a Redis command
//!   does (mod.rs);
//! - any other (BEGIN, COPY, DDL, a FunctionCall...) takes a private
//!   connection of the client's own (upstream.rs), which it keeps, every
//!   unit included, until a ReadyForQuery says its transaction is over;
//!   the connection then waits, idle, for the next such client;
//! - a unit that would leave state on a connection after the client's
//!   transaction (SET, LISTEN, PREPARE, named prepared statements...) is
//!   refused with an ERROR and the client goes on.
//!
//! A client in COPY, or one that sends Flush and waits for answers before
//! its Sync, is on its private connection, and each of its messages is
//! forwarded as it comes. A CancelRequest with the key a client was
//! handed is passed on to the backend running its statement (cancel.rs).
//! What a client gives up is in docs/multiplex.md.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use super::cancel::Registered;
use super::pg_startup::{handshake, Started};
use super::pgwire;
use super::sql::{self, Class};
use super::upstream::{self, Mux, State, Wire};
use super::{drive, enqueue, key, let_go, new_sink, report, shared_for_next, Side, Sink};
use crate::listener::Signals;
use crate::protocol::postgres::{error_response, split_typed, Error};
use crate::upstream::runtime::ServiceRt;

/// Largest unit (a Query, or an extended batch up to its Sync) or single
/// message taken from a client; past it the client is closed.
const MAX_UNIT: usize = 64 * 1024 * 1024;
/// How long a client has to start up and authenticate.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One multiplexed PostgreSQL client's life, on an L4 thread.
pub(in crate::listener) async fn serve(
    svc: Arc<ServiceRt>,
    client: TcpStream,
    sig: Signals,
    engine_rt: Handle,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let (mut rd, mut wr) = client.into_split();
    let mut inbuf = BytesMut::new();
    let started = tokio::time::timeout(
        STARTUP_TIMEOUT,
        handshake(&svc, &sig, &engine_rt, &mut rd, &mut wr, &mut inbuf),
    )
    .await;
    let Started {
        shared,
        startup,
        answer,
        key: (pid, secret),
    } = match started {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    let sink = new_sink(&svc, wr);
    if let Some(tap) = &sink.tap {
        // The observer skips the startup phase up to its ReadyForQuery.
        let _ = tap.client(&startup);
        let _ = tap.server(&answer);
    }
    // Freed now, not held by this future for the client's whole life
    // (0.9 KiB per idle client: benches/conn_memory.sh --pg-multiplex).
    drop((startup, answer));
    // Before its first statement is read: from now on its key cancels.
    let cancel = Registered::new(&svc, pid, secret, &sink, &shared);
    let client = PgClient {
        svc,
        sig: sig.clone(),
        engine_rt,
        sink: sink.clone(),
        shared: Some(shared),
        private: None,
        cancel,
        interactive: false,
        quit: false,
    };
    drive(client, sink, rd, inbuf, sig).await
}

/// Where the front of a client's stream ends.
enum Cut {
    /// A whole unit of `len` bytes; `ready`: it gets a ReadyForQuery.
    Unit { len: usize, ready: bool },
    /// Not yet a whole unit; `flush`: what there is holds a Flush (the
    /// client may wait for answers before it sends the rest).
    More { flush: bool },
    /// Not a message a client sends, or too large: the client is closed.
    Bad(String),
}

/// Cuts the unit at the front of `buf`: messages up to a Query, Sync or
/// FunctionCall, or one COPY message, or Terminate.
fn cut(buf: &[u8]) -> Cut {
    let mut at = 0;
    let mut flush = false;
    loop {
        let rest = buf.get(at..).unwrap_or_default();
        let h = match split_typed(rest, MAX_UNIT.saturating_sub(at)) {
            Ok((h, _)) => h,
            Err(Error::Incomplete) => return Cut::More { flush },
            Err(e) => return Cut::Bad(format!("invalid message: {e}")),
        };
        at += h.total();
        match h.tag {
            b'Q' | b'S' | b'F' => {
                return Cut::Unit {
                    len: at,
                    ready: true,
                }
            }
            b'd' | b'c' | b'f' | b'X' if at == h.total() => {
                return Cut::Unit {
                    len: at,
                    ready: false,
                }
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => {}
            b'H' => flush = true,
            t => {
                return Cut::Bad(format!(
                    "unexpected message type 0x{t:02x} in an extended-query batch"
                ))
            }
        }
    }
}

/// NUL-terminated strings at the front of a message body.
fn cstrs(body: &[u8], n: usize) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == 0).take(n)
}

/// What a unit may do (sql.rs for its statements' text); a Bind or
/// Describe of the unnamed statement with no Parse before it in the unit
/// needs the connection that statement was parsed on: the client's own.
fn classify(unit: &[u8]) -> Class {
    let mut class = Class::Shared;
    let mut parsed = false;
    let mut bound = false;
    let mut rest = unit;
    while let Ok((h, body)) = split_typed(rest, MAX_UNIT) {
        rest = rest.get(h.total()..).unwrap_or_default();
        let this = match h.tag {
            b'Q' => sql::classify(body),
            b'P' => {
                parsed = true;
                let mut s = cstrs(body, 2);
                match (s.next(), s.next()) {
                    (Some(b""), Some(query)) => sql::classify(query),
                    _ => Class::Refused("named prepared statements"),
                }
            }
            b'B' => {
                bound = true;
                let mut s = cstrs(body, 2);
                match (s.next(), s.next()) {
                    (_, Some(b"")) if parsed => Class::Shared,
                    (_, Some(b"")) => Class::Private,
                    _ => Class::Refused("named prepared statements"),
                }
            }
            b'D' | b'C' => match body.split_first() {
                Some((b'S', name)) if name.first() != Some(&0) => {
                    Class::Refused("named prepared statements")
                }
                Some((b'S', _)) if !parsed => Class::Private,
                Some((b'P', _)) if !bound => Class::Private,
                _ => Class::Shared,
            },
            b'E' if !bound => Class::Private,
            b'E' | b'H' | b'S' => Class::Shared,
            _ => Class::Private,
        };
        class = match (class, this) {
            (Class::Refused(w), _) | (_, Class::Refused(w)) => Class::Refused(w),
            (Class::Private, _) | (_, Class::Private) => Class::Private,
            _ => Class::Shared,
        };
    }
    class
}

/// The statement side of one multiplexed PostgreSQL client.
struct PgClient {
    svc: Arc<ServiceRt>,
    sig: Signals,
    engine_rt: Handle,
    sink: Arc<Sink>,
    /// The shared connection its units in flight went to.
    shared: Option<Arc<Mux>>,
    /// Its private connection, while it has one.
    private: Option<Arc<Mux>>,
    /// Its key's entry, which tells a CancelRequest where it runs: kept up
    /// to date as it moves (shared connection, private one), not per unit.
    cancel: Registered,
    /// On its private connection, messages are forwarded one by one: a
    /// COPY, or an extended batch sent with Flush before its Sync.
    interactive: bool,
    quit: bool,
}

impl Side for PgClient {
    fn quit(&self) -> bool {
        self.quit
    }

    fn finish(&mut self) {
        if let Some(m) = self.shared.take() {
            let_go(m);
        }
        self.detach(true);
    }

    fn run(&mut self, inbuf: &mut BytesMut) -> io::Result<bool> {
        let mut now = None;
        let mut woke: [Option<Arc<Mux>>; 2] = [None, None];
        let held = loop {
            if self.quit {
                inbuf.clear();
                break false;
            }
            let (in_flight, status) = {
                let st = self.sink.state();
                (st.in_flight, st.status)
            };
            if in_flight == 0 && !self.interactive && matches!(status, 0 | b'I') {
                self.detach(false);
            }
            if self.interactive {
                match self.forward_one(inbuf, &mut now) {
                    Some(m) => {
                        woke[1] = Some(m);
                        continue;
                    }
                    None => break false,
                }
            }
            let (len, ready) = match cut(inbuf) {
                Cut::Unit { len, ready } => (len, ready),
                Cut::More { flush: false } => break false,
                Cut::More { flush: true } => {
                    // It waits for answers before its Sync: on its own
                    // connection, message by message.
                    if self.private.is_none() && in_flight > 0 {
                        break true;
                    }
                    self.attach();
                    self.interactive = true;
                    continue;
                }
                Cut::Bad(why) => {
                    self.close_with("08P01", &why);
                    continue;
                }
            };
            let unit = inbuf.get(..len).unwrap_or_default();
            if unit.first() == Some(&b'X') {
                self.quit = true;
                continue;
            }
            let class = match classify(unit) {
                Class::Shared if self.private.is_some() => Class::Private,
                c => c,
            };
            match class {
                Class::Refused(what) => {
                    // After the answers in flight, in order.
                    if in_flight > 0 {
                        break true;
                    }
                    let status = match status {
                        0 => b'I',
                        s => s,
                    };
                    let mut reply = pgwire::error(
                        "0A000",
                        &format!(
                            "{what} is not supported on a multiplexed connection: it would \
                             stay on a connection other clients share (docs/multiplex.md)"
                        ),
                    );
                    if ready {
                        reply.extend_from_slice(&pgwire::ready(status));
                    }
                    self.sink.deliver(&reply, 0, 0, None, None);
                }
                Class::Shared => {
                    let was = self.shared.as_ref().map(Arc::as_ptr);
                    let Some(mux) = shared_for_next(
                        &mut self.shared,
                        in_flight,
                        &self.svc,
                        &self.sig,
                        &self.engine_rt,
                    ) else {
                        break true;
                    };
                    // A pointer compare per unit; the entry's Weak keeps
                    // the old connection's allocation, so a new one is
                    // never at its address.
                    if was != Some(Arc::as_ptr(&mux)) {
                        self.cancel.shared(&mux);
                    }
                    self.observe(unit);
                    enqueue(&self.sink, &mux, unit, usize::from(ready), &mut now);
                    woke[0] = Some(mux);
                }
                Class::Private => {
                    if self.private.is_none() && in_flight > 0 {
                        break true;
                    }
                    let mux = self.attach();
                    self.observe(unit);
                    enqueue(&self.sink, &mux, unit, usize::from(ready), &mut now);
                    woke[1] = Some(mux);
                }
            }
            inbuf.advance(len.min(inbuf.len()));
        };
        for m in woke.into_iter().flatten() {
            m.wake.notify_one();
        }
        if inbuf.is_empty() && inbuf.capacity() > 0 {
            *inbuf = BytesMut::new();
        }
        Ok(held)
    }
}

impl PgClient {
    /// Its private connection: the one it has, else an idle one of this
    /// thread, else a new one (which connects, holding the unit).
    fn attach(&mut self) -> Arc<Mux> {
        if let Some(m) = &self.private {
            return m.clone();
        }
        let m = upstream::take_private(key(&self.svc)).unwrap_or_else(|| {
            let m = Arc::new(Mux::new(Wire::Postgres, true, key(&self.svc)));
            tokio::spawn(upstream::run(
                m.clone(),
                self.svc.clone(),
                self.sig.clone(),
                self.engine_rt.clone(),
            ));
            m
        });
        {
            let mut g = m.lock();
            g.owner = Some(self.sink.clone());
            g.idle_since = None;
        }
        self.sink.state().attached = true;
        self.cancel.private(Some(&m));
        self.private = Some(m.clone());
        m
    }

    /// Gives its private connection back, idle, for the next client's
    /// transaction; `closing`: the client is gone, and a connection it
    /// may have left inside a transaction is closed instead.
    fn detach(&mut self, closing: bool) {
        let Some(m) = self.private.take() else {
            return;
        };
        self.cancel.private(None);
        let clean = {
            let st = self.sink.state();
            st.in_flight == 0 && matches!(st.status, 0 | b'I') && !self.interactive
        };
        self.sink.state().attached = false;
        if clean {
            upstream::keep_private(key(&self.svc), m);
        } else {
            debug_assert!(closing);
            {
                let mut g = m.lock();
                g.owner = None;
                g.state = State::Retired;
            }
            let_go(m);
        }
    }

    /// Forwards the next whole message to its private connection: the
    /// connection, or `None` if there is none yet.
    fn forward_one(&mut self, inbuf: &mut BytesMut, now: &mut Option<Instant>) -> Option<Arc<Mux>> {
        let h = match split_typed(inbuf, MAX_UNIT) {
            Ok((h, _)) => h,
            Err(Error::Incomplete) => return None,
            Err(e) => {
                self.close_with("08P01", &format!("invalid message: {e}"));
                return None;
            }
        };
        let msg = inbuf.get(..h.total()).unwrap_or_default();
        if h.tag == b'X' {
            self.quit = true;
            return None;
        }
        if let Class::Refused(what) = classify(msg) {
            // Mid-batch, the batch cannot be answered for: closed.
            self.close_with(
                "0A000",
                &format!("{what} is not supported on a multiplexed connection (docs/multiplex.md)"),
            );
            return None;
        }
        let ready = matches!(h.tag, b'Q' | b'S' | b'F');
        let mux = self.attach();
        self.observe(msg);
        enqueue(&self.sink, &mux, msg, usize::from(ready), now);
        // Its batch is over at the Sync; a COPY's at its ReadyForQuery.
        if ready {
            self.interactive = false;
        }
        inbuf.advance(h.total());
        Some(mux)
    }

    /// FATAL, then closed (after the answers in flight).
    fn close_with(&mut self, sqlstate: &str, message: &str) {
        self.sink
            .deliver(&error_response(sqlstate, message), 0, 0, None, None);
        self.quit = true;
    }

    fn observe(&self, bytes: &[u8]) {
        if let Some(tap) = &self.sink.tap {
            report(&self.svc, self.svc.route.load().active, tap.client(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pgwire::tests::msg;
    use super::*;

    fn extended(stmt: &[u8], query: &[u8]) -> Vec<u8> {
        let mut p = stmt.to_vec();
        p.push(0);
        p.extend_from_slice(query);
        p.extend_from_slice(b"\0\0\0");
        let mut b = b"\0".to_vec();
        b.extend_from_slice(stmt);
        b.extend_from_slice(b"\0\0\0\0\0\0\0");
        let mut out = msg(b'P', &p);
        out.extend(msg(b'B', &b));
        out.extend(msg(b'D', b"P\0"));
        out.extend(msg(b'E', b"\0\0\0\0\0"));
        out.extend(msg(b'S', b""));
        out
    }

    #[test]
    fn units_end_at_query_sync_or_function_call() {
        let q = msg(b'Q', b"SELECT 1\0");
        let mut two = q.clone();
        two.extend(msg(b'Q', b"SELECT 2\0"));
        assert!(matches!(cut(&two), Cut::Unit { len, ready: true } if len == q.len()));
        let e = extended(b"", b"SELECT $1");
        assert!(matches!(cut(&e), Cut::Unit { len, ready: true } if len == e.len()));
        assert!(matches!(
            cut(e.get(..e.len() - 5).unwrap_or_default()),
            Cut::More { flush: false }
        ));
        let mut flushed = msg(b'P', b"\0SELECT 1\0\0\0");
        flushed.extend(msg(b'H', b""));
        assert!(matches!(cut(&flushed), Cut::More { flush: true }));
        assert!(matches!(
            cut(&msg(b'd', b"1\t2\n")),
            Cut::Unit { ready: false, .. }
        ));
        assert!(matches!(
            cut(&msg(b'X', b"")),
            Cut::Unit { ready: false, .. }
        ));
        assert!(matches!(cut(&msg(b'p', b"pw\0")), Cut::Bad(_)));
        assert!(matches!(cut(&[b'Q', 0, 0, 0, 2]), Cut::Bad(_)));
    }

    #[test]
    fn units_are_classified_by_their_statements_and_names() {
        assert_eq!(classify(&msg(b'Q', b"SELECT 1\0")), Class::Shared);
        assert_eq!(classify(&msg(b'Q', b"BEGIN\0")), Class::Private);
        assert!(matches!(
            classify(&msg(b'Q', b"SET x = 1\0")),
            Class::Refused(_)
        ));
        assert_eq!(classify(&extended(b"", b"SELECT $1")), Class::Shared);
        assert_eq!(classify(&extended(b"", b"BEGIN")), Class::Private);
        assert!(matches!(
            classify(&extended(b"s1", b"SELECT $1")),
            Class::Refused("named prepared statements")
        ));
        // A Bind of the unnamed statement parsed in an earlier unit.
        let mut bind_only = msg(b'B', b"\0\0\0\0\0\0\0\0");
        bind_only.extend(msg(b'E', b"\0\0\0\0\0"));
        bind_only.extend(msg(b'S', b""));
        assert_eq!(classify(&bind_only), Class::Private);
        assert_eq!(classify(&msg(b'F', b"\0\0\0\x01")), Class::Private);
        assert!(matches!(classify(&msg(b'C', b"Ss1\0")), Class::Refused(_)));
    }
}
