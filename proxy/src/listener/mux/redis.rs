//! The command side of a multiplexed Redis client (mod.rs has the
//! connection it shares and its reply side): commands cut whole from its
//! stream (command.rs), checked, answered here or queued, a read's run of
//! them at once.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use super::command::{self, Action, Scan, Step};
use super::upstream::Mux;
use super::{drive, enqueue, let_go, new_sink, report, shared_for_next, Side, Sink};
use crate::listener::Signals;
use crate::protocol::resp::error_reply;
use crate::upstream::runtime::ServiceRt;

/// One multiplexed Redis client's life, on an L4 thread. Not itself
/// async: its future is [`drive`]'s alone, which owns what the client
/// needs (size_tests.rs keeps an idle one small).
pub(in crate::listener) fn serve(
    svc: Arc<ServiceRt>,
    client: TcpStream,
    sig: Signals,
    engine_rt: Handle,
) -> impl std::future::Future<Output = io::Result<()>> {
    let _ = client.set_nodelay(true);
    let (rd, wr) = client.into_split();
    let sink = new_sink(&svc, wr);
    let authed = passwords(&svc).next().is_none();
    let client = Client {
        authed,
        svc,
        sig: sig.clone(),
        engine_rt,
        sink: sink.clone(),
        mux: None,
        scan: Scan::default(),
        quit: false,
    };
    drive(client, sink, rd, BytesMut::new(), sig)
}

/// The passwords a client may AUTH with: those of the service's upstreams.
fn passwords(svc: &ServiceRt) -> impl Iterator<Item = &str> {
    svc.cfg
        .upstreams
        .iter()
        .filter_map(|u| u.password.as_deref())
}

/// The command side of one client.
struct Client {
    svc: Arc<ServiceRt>,
    sig: Signals,
    engine_rt: Handle,
    sink: Arc<Sink>,
    /// The connection its commands in flight went to.
    mux: Option<Arc<Mux>>,
    scan: Scan,
    authed: bool,
    quit: bool,
}

impl Side for Client {
    fn quit(&self) -> bool {
        self.quit
    }

    fn finish(&mut self) {
        if let Some(mux) = self.mux.take() {
            let_go(mux);
        }
    }

    /// An answer given here, or a move to another connection, must not
    /// overtake the replies in flight. Consecutive commands of one read
    /// are queued together (one lock of the client and of the connection,
    /// one pass of the observer), as one slot.
    fn run(&mut self, inbuf: &mut BytesMut) -> io::Result<bool> {
        let mut queued = None;
        // One clock read for the commands of one read.
        let mut now = None;
        // Commands to forward, not yet queued.
        let mut batch: Option<Batch> = None;
        // Where the commands not yet taken start in `inbuf`.
        let mut pos = 0;
        // The rest of `inbuf` is dropped: the client quit or broke the
        // protocol.
        let mut drop_rest = false;
        let held = loop {
            if self.quit {
                drop_rest = true;
                break false;
            }
            let rest = inbuf.get(pos..).unwrap_or_default();
            let step = match self.scan.next(rest) {
                Ok(s) => s,
                // After the replies in flight (the scan stops at the same
                // place again).
                Err(_) if batch.is_some() || self.sink.state().in_flight > 0 => break true,
                Err(why) => {
                    // As Redis: the error, then the connection is closed.
                    let reply = error_reply(&format!("Protocol error: {why}"));
                    self.sink.deliver(&reply, 0, 0, None, None);
                    self.quit = true;
                    drop_rest = true;
                    break false;
                }
            };
            let (used, inline) = match step {
                Step::More => break false,
                Step::Empty(n) => {
                    pos += n.min(rest.len());
                    continue;
                }
                Step::Multibulk(n) => (n.min(rest.len()), None),
                Step::Inline(n, words) => (n.min(rest.len()), Some(words)),
            };
            let cmd = rest.get(..used).unwrap_or_default();
            let action = match &inline {
                Some(words)
                    if words
                        .iter()
                        .any(|w| w.contains(&b'"') || w.contains(&b'\'')) =>
                {
                    Action::Reply(error_reply(
                        "inline commands with quotes are not supported on a multiplexed \
                         connection; send the command as a RESP array",
                    ))
                }
                Some(words) => {
                    let name = words.first().map(Vec::as_slice).unwrap_or_default();
                    command::classify(name, || words.iter().map(Vec::as_slice).collect())
                }
                None => command::classify(command::name(cmd), || command::args(cmd)),
            };
            let action = match action {
                Action::Auth => Action::Reply(self.auth(cmd, inline.as_deref())),
                Action::Forward if !self.authed => {
                    Action::Reply(b"-NOAUTH Authentication required.\r\n".to_vec())
                }
                a => a,
            };
            match (action, inline) {
                // The next of a run of commands: its connection is the
                // run's, as its commands are in flight.
                (Action::Forward, None) if batch.as_ref().is_some_and(|b| b.end == pos) => {
                    if let Some(b) = &mut batch {
                        b.end = pos + used;
                        b.count += 1;
                    }
                }
                (Action::Forward, inline) => {
                    if let Some(b) = batch.take() {
                        self.queue(inbuf, b, &mut now, &mut queued);
                    }
                    let in_flight = self.sink.state().in_flight;
                    let Some(mux) = self.mux_for_next(in_flight) else {
                        break true;
                    };
                    match inline {
                        None => {
                            batch = Some(Batch {
                                mux,
                                start: pos,
                                end: pos + used,
                                count: 1,
                            })
                        }
                        Some(words) => {
                            let mut encoded = Vec::new();
                            crate::protocol::resp::write_command(&words, &mut encoded);
                            self.observe(&encoded);
                            enqueue(&self.sink, &mux, &encoded, 1, &mut now);
                            queued = Some(mux);
                        }
                    }
                }
                // An answer given here comes after the replies in flight.
                (Action::Reply(_) | Action::Quit, _)
                    if batch.is_some() || self.sink.state().in_flight > 0 =>
                {
                    break true
                }
                (Action::Reply(reply), _) => self.sink.deliver(&reply, 0, 0, None, None),
                (Action::Quit, _) => {
                    self.sink.deliver(b"+OK\r\n", 0, 0, None, None);
                    self.quit = true;
                }
                (Action::Auth, _) => {}
            }
            pos += used;
        };
        if let Some(b) = batch.take() {
            self.queue(inbuf, b, &mut now, &mut queued);
        }
        if drop_rest {
            inbuf.clear();
        } else {
            let _ = inbuf.split_to(pos.min(inbuf.len()));
        }
        if let Some(mux) = queued {
            mux.wake.notify_one();
        }
        if inbuf.is_empty() && inbuf.capacity() > 0 {
            // Idle: keep no buffer.
            *inbuf = BytesMut::new();
        }
        Ok(held)
    }
}

/// Consecutive commands of one read, to be forwarded on `mux`: `count`
/// of them, in `inbuf` from `start` to `end`.
struct Batch {
    mux: Arc<Mux>,
    start: usize,
    end: usize,
    count: usize,
}

impl Client {
    /// Queues a run of commands on its connection.
    fn queue(
        &self,
        inbuf: &[u8],
        b: Batch,
        now: &mut Option<Instant>,
        queued: &mut Option<Arc<Mux>>,
    ) {
        let bytes = inbuf.get(b.start..b.end).unwrap_or_default();
        self.observe(bytes);
        enqueue(&self.sink, &b.mux, bytes, b.count, now);
        *queued = Some(b.mux);
    }

    /// Commands on their way to the active upstream, to the observer.
    fn observe(&self, bytes: &[u8]) {
        if let Some(tap) = &self.sink.tap {
            let findings = tap.client(bytes);
            if !findings.is_empty() {
                report(&self.svc, self.svc.route.load().active, findings);
            }
        }
    }

    fn mux_for_next(&mut self, in_flight: usize) -> Option<Arc<Mux>> {
        shared_for_next(
            &mut self.mux,
            in_flight,
            &self.svc,
            &self.sig,
            &self.engine_rt,
        )
    }

    /// `AUTH [user] password`, checked against the upstreams' passwords.
    fn auth(&mut self, cmd: &[u8], inline: Option<&[Vec<u8>]>) -> Vec<u8> {
        let args: Vec<&[u8]> = match inline {
            Some(words) => words.iter().map(Vec::as_slice).collect(),
            None => command::args(cmd),
        };
        let given = match args.as_slice() {
            [_, pw] => Some((None, *pw)),
            [_, user, pw] => Some((Some(*user), *pw)),
            _ => None,
        };
        let Some((user, pw)) = given else {
            return error_reply("wrong number of arguments for 'auth' command");
        };
        if passwords(&self.svc).next().is_none() {
            return error_reply(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        }
        let ok = self.svc.cfg.upstreams.iter().any(|u| {
            let user_ok = match user {
                None => true,
                Some(name) => {
                    name == b"default" || u.user.as_deref().map(str::as_bytes) == Some(name)
                }
            };
            user_ok && u.password.as_deref().map(str::as_bytes) == Some(pw)
        });
        // As Redis: a failed AUTH leaves an authenticated client so.
        self.authed |= ok;
        if ok {
            b"+OK\r\n".to_vec()
        } else {
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec()
        }
    }
}
