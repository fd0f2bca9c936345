//! Redis fallback to memory (`fallback = "memory"`, docs/fallback.md).
//!
//! While a redis service has no usable upstream, new clients are answered
//! by the proxy itself from a small in-memory keyspace instead of being
//! held. Writes are journaled; once the service's active upstream is usable
//! again the journal is replayed to it in order over one connection, the
//! memory is cleared, and the connections served from memory are closed so
//! that their clients reconnect to Redis. Until the replay is done, new
//! clients keep being served from memory, so nobody reads Redis before it
//! has the fallback's writes.

pub mod commands;
pub mod journal;
pub mod resp;
pub mod session;
pub mod store;

use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::events::EventKind;
use crate::upstream::runtime::{lock, ServiceRt};
use commands::Memory;
use journal::{Counts, Replayer};
use resp::Reply;
use session::Session;

/// Ops sent to Redis per pipelined batch during a replay.
const REPLAY_BATCH: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not in use: clients go to Redis.
    Idle,
    /// Serving from memory (Redis down, or a replay failed and waits).
    Active,
    /// Replaying the journal to Redis; clients are still served from memory.
    Replaying,
}

#[derive(Debug)]
struct Inner {
    memory: Memory,
    phase: Phase,
    /// Bumped when a fallback period ends: its connections close.
    generation: u64,
    since: Option<Instant>,
}

/// The memory fallback of one redis service.
#[derive(Debug)]
pub struct Fallback {
    inner: Mutex<Inner>,
    ended: watch::Sender<u64>,
}

impl Fallback {
    pub fn new(max_bytes: u64) -> Fallback {
        Fallback {
            inner: Mutex::new(Inner {
                memory: Memory {
                    max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                    ..Memory::default()
                },
                phase: Phase::Idle,
                generation: 0,
                since: None,
            }),
            ended: watch::channel(0).0,
        }
    }

    /// Whether clients are being served from memory (and new ones must be
    /// too, even if Redis is usable, until the journal has been replayed).
    pub fn engaged(&self) -> bool {
        lock(&self.inner).phase != Phase::Idle
    }
}

/// Serves one client from the service's memory fallback until it leaves,
/// or until the fallback period ends (then the connection is closed).
/// `early` holds bytes the client sent while it was held; `shutdown`
/// closes the connection once pending replies are written, `force_close`
/// at once.
pub async fn serve(
    svc: Arc<ServiceRt>,
    fb: Arc<Fallback>,
    mut client: TcpStream,
    early: BytesMut,
    mut shutdown: watch::Receiver<bool>,
    mut force_close: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut ended = fb.ended.subscribe();
    let (generation, activated) = {
        let mut g = lock(&fb.inner);
        let activated = g.phase == Phase::Idle;
        if activated {
            g.phase = Phase::Active;
            g.since = Some(Instant::now());
        }
        (g.generation, activated)
    };
    if activated {
        tracing::warn!(
            service = svc.name(),
            "no usable redis upstream: serving clients from the memory fallback"
        );
        svc.emit(EventKind::FallbackActivated {
            fallback: "memory".into(),
            reason: "no usable upstream".into(),
        });
        tokio::spawn(watch_recovery(Arc::downgrade(&svc), fb.clone()));
        svc.refresh_status();
    }
    let creds: Vec<(Option<String>, String)> = svc
        .cfg
        .upstreams
        .iter()
        .filter_map(|u| u.password.clone().map(|p| (u.user.clone(), p)))
        .collect();
    let max_reply = usize::try_from(svc.cfg.fallback_max_reply_bytes).unwrap_or(usize::MAX);
    let max_output = usize::try_from(svc.cfg.fallback_max_output_bytes)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut session = Session::new(max_reply);
    let mut buf = early;
    let mut out = Output::default();
    // No more commands are run: write what is pending, then close.
    let mut close = false;
    // The client has shut down its side: run what it sent, then close.
    let mut eof = false;
    // After a failed AUTH: nothing is written or run until then.
    let mut throttle: Option<tokio::time::Instant> = None;
    let (mut rd, mut wr) = client.split();
    loop {
        // Run the commands received, while the replies waiting to be
        // written stay under the bound: past it, nothing more is run or
        // read until the client has read enough (back-pressure).
        while !close && throttle.is_none() && out.pending() < max_output {
            match resp::parse_command(&buf) {
                Ok(Some((args, used))) => {
                    buf.advance(used.min(buf.len()));
                    if args.is_empty() {
                        continue;
                    }
                    let failures = session.auth_failures;
                    // The mutex is held to run the command only: the reply
                    // is encoded and written without it.
                    let reply = {
                        let mut g = lock(&fb.inner);
                        if g.generation != generation {
                            close = true;
                            break;
                        }
                        session::execute(&mut g.memory, &mut session, &creds, &args)
                    };
                    out.push(&reply, session.proto);
                    drop(reply);
                    if session.quit {
                        close = true;
                    }
                    if session.auth_failures > failures {
                        throttle = Some(tokio::time::Instant::now() + session::AUTH_FAILURE_DELAY);
                        if session.auth_failures >= session::AUTH_MAX_FAILURES {
                            close = true;
                        }
                    }
                }
                Ok(None) => {
                    close |= eof;
                    break;
                }
                Err(e) => {
                    out.push(
                        &Reply::err(format!("ERR Protocol error: {}", e.0)),
                        session.proto,
                    );
                    close = true;
                }
            }
        }
        if close && out.is_empty() && throttle.is_none() {
            let _ = wr.shutdown().await;
            return Ok(());
        }
        let reading = !close && !eof && throttle.is_none() && out.pending() < max_output;
        let writing = throttle.is_none() && !out.is_empty();
        tokio::select! {
            n = rd.read_buf(&mut buf), if reading => {
                if n? == 0 {
                    eof = true;
                }
            }
            n = wr.write(out.unsent()), if writing => {
                match n? {
                    0 => return Err(std::io::ErrorKind::WriteZero.into()),
                    n => out.consume(n),
                }
            }
            _ = tokio::time::sleep_until(throttle.unwrap_or_else(tokio::time::Instant::now)), if throttle.is_some() => {
                throttle = None;
            }
            r = ended.changed(), if !close => {
                if r.is_err() || lock(&fb.inner).generation != generation {
                    close = true;
                }
            }
            _ = shutdown.changed(), if !close => close = true,
            _ = force_close.changed() => return Ok(()),
        }
    }
}

/// Chunks of replies are filled up to this size, then a new one is begun.
const OUTPUT_CHUNK: usize = 64 * 1024;

/// The replies of one connection waiting to be written, in chunks, so that
/// what has been written is freed as it goes and the memory held is about
/// what is pending.
#[derive(Debug, Default)]
struct Output {
    chunks: std::collections::VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already written.
    head: usize,
    pending: usize,
}

impl Output {
    fn pending(&self) -> usize {
        self.pending
    }

    fn is_empty(&self) -> bool {
        self.pending == 0
    }

    fn push(&mut self, reply: &Reply, proto: u8) {
        let len = reply.encoded_len(proto);
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.len().saturating_add(len) <= OUTPUT_CHUNK.max(c.capacity()));
        if !fits {
            self.chunks.push_back(Vec::with_capacity(len.max(4096)));
        }
        if let Some(c) = self.chunks.back_mut() {
            let before = c.len();
            reply.encode(proto, c);
            self.pending += c.len() - before;
        }
    }

    fn unsent(&self) -> &[u8] {
        self.chunks
            .front()
            .and_then(|c| c.get(self.head..))
            .unwrap_or_default()
    }

    fn consume(&mut self, n: usize) {
        self.pending = self.pending.saturating_sub(n);
        self.head += n;
        if self.chunks.front().is_some_and(|c| self.head >= c.len()) {
            self.chunks.pop_front();
            self.head = 0;
        }
    }
}

/// Waits until the service's active upstream is usable, then replays the
/// journal; retries on every health change until a replay completes.
async fn watch_recovery(svc: Weak<ServiceRt>, fb: Arc<Fallback>) {
    let Some(mut changed) = svc.upgrade().map(|s| s.changed_tx.subscribe()) else {
        return;
    };
    loop {
        {
            let Some(s) = svc.upgrade() else {
                return;
            };
            let route = s.route.load_full();
            if s.usable(&route, route.active) && replay(&s, &fb, route.active).await {
                return;
            }
        }
        // The sender lives in the service: an error means it is gone.
        if changed.changed().await.is_err() {
            return;
        }
    }
}

fn set_phase(fb: &Fallback, phase: Phase) {
    lock(&fb.inner).phase = phase;
}

/// Replays the whole journal to upstream `idx`. True when done (the
/// fallback is idle again), false to retry later.
async fn replay(svc: &Arc<ServiceRt>, fb: &Fallback, idx: usize) -> bool {
    let Some(up) = svc.upstreams.get(idx) else {
        return true;
    };
    set_phase(fb, Phase::Replaying);
    let started = Instant::now();
    let fail = |what: String| {
        tracing::warn!(service = svc.name(), upstream = %up.cfg.name, error = %what, "memory fallback replay failed; will retry");
        set_phase(fb, Phase::Active);
        false
    };
    let stream = match crate::health::connect(&svc.cfg, &up.cfg).await {
        Ok(s) => s,
        Err(e) => return fail(format!("connect: {e}")),
    };
    let mut conn = Replayer::new(stream);
    if let Some(pw) = up.cfg.password.clone() {
        let mut args = vec![b"AUTH".to_vec()];
        args.extend(up.cfg.user.clone().map(String::into_bytes));
        args.push(pw.into_bytes());
        match conn.request(&args).await {
            Ok(crate::protocol::resp::Reply::Simple(_)) => {}
            Ok(other) => return fail(format!("AUTH: {other:?}")),
            Err(e) => return fail(format!("AUTH: {e}")),
        }
    }
    let mut total = Counts::default();
    let since = loop {
        let batch = {
            let mut g = lock(&fb.inner);
            if g.memory.journal.is_empty() {
                g.phase = Phase::Idle;
                g.generation = g.generation.wrapping_add(1);
                g.memory.store.clear();
                break g.since.take();
            }
            g.memory.journal.take(REPLAY_BATCH)
        };
        match conn.replay(batch).await {
            Ok(c) => add(&mut total, c),
            Err((c, rest, e)) => {
                add(&mut total, c);
                lock(&fb.inner).memory.journal.restore(rest);
                return fail(format!("replay: {e}"));
            }
        }
    };
    fb.ended.send_modify(|v| *v = v.wrapping_add(1));
    svc.changed_tx.send_modify(|v| *v = v.wrapping_add(1));
    tracing::warn!(service = svc.name(), upstream = %up.cfg.name, replayed = total.replayed, failed = total.failed, "memory fallback journal replayed; clients go to redis again");
    svc.emit(EventKind::FallbackDeactivated {
        fallback: "memory".into(),
        upstream: up.cfg.name.clone(),
        replayed: total.replayed,
        expired: total.expired,
        failed: total.failed,
        replay_ms: started.elapsed().as_millis() as u64,
        fallback_seconds: since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
    });
    svc.refresh_status();
    true
}

fn add(total: &mut Counts, c: Counts) {
    total.replayed += c.replayed;
    total.expired += c.expired;
    total.failed += c.failed;
}
