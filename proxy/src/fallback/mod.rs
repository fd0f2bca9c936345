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
use crate::listener::Signals;
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

    /// (keys held, journaled ops, counted bytes), for tests and diagnostics.
    pub fn usage(&self) -> (usize, usize, usize) {
        let g = lock(&self.inner);
        (
            g.memory.store.len(),
            g.memory.journal.len(),
            g.memory.used(),
        )
    }
}

/// Serves one client from the service's memory fallback until it leaves,
/// or until the fallback period ends (then the connection is closed).
/// `early` holds bytes the client sent while it was held.
pub async fn serve(
    svc: Arc<ServiceRt>,
    mut client: TcpStream,
    early: BytesMut,
    mut sig: Signals,
) -> std::io::Result<()> {
    let Some(fb) = svc.fallback.clone() else {
        return Ok(());
    };
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
        tokio::spawn(watch_recovery(Arc::downgrade(&svc)));
        svc.refresh_status();
    }
    let creds: Vec<(Option<String>, String)> = svc
        .cfg
        .upstreams
        .iter()
        .filter_map(|u| u.password.clone().map(|p| (u.user.clone(), p)))
        .collect();
    let mut session = Session {
        proto: 2,
        authed: false,
        quit: false,
    };
    let mut buf = early;
    loop {
        let mut out = Vec::new();
        let mut close = false;
        loop {
            match resp::parse_command(&buf) {
                Ok(Some((args, used))) => {
                    buf.advance(used.min(buf.len()));
                    if args.is_empty() {
                        continue;
                    }
                    let reply = {
                        let mut g = lock(&fb.inner);
                        if g.generation != generation {
                            close = true;
                            break;
                        }
                        session::execute(&mut g.memory, &mut session, &creds, &args)
                    };
                    reply.encode(session.proto, &mut out);
                    if session.quit {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::err(format!("ERR Protocol error: {}", e.0))
                        .encode(session.proto, &mut out);
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            client.write_all(&out).await?;
        }
        if close {
            let _ = client.shutdown().await;
            return Ok(());
        }
        tokio::select! {
            n = client.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            _ = ended.changed() => {
                if lock(&fb.inner).generation != generation {
                    let _ = client.shutdown().await;
                    return Ok(());
                }
            }
            _ = sig.shutdown.changed() => return Ok(()),
            _ = sig.force_close.changed() => return Ok(()),
        }
    }
}

/// Waits until the service's active upstream is usable, then replays the
/// journal; retries on every health change until a replay completes.
async fn watch_recovery(svc: Weak<ServiceRt>) {
    let Some(mut changed) = svc.upgrade().map(|s| s.changed_tx.subscribe()) else {
        return;
    };
    loop {
        {
            let Some(s) = svc.upgrade() else {
                return;
            };
            let route = s.route.load_full();
            if s.usable(&route, route.active) && replay(&s, route.active).await {
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
async fn replay(svc: &Arc<ServiceRt>, idx: usize) -> bool {
    let (Some(fb), Some(up)) = (svc.fallback.clone(), svc.upstreams.get(idx)) else {
        return true;
    };
    set_phase(&fb, Phase::Replaying);
    let started = Instant::now();
    let fail = |what: String| {
        tracing::warn!(service = svc.name(), upstream = %up.cfg.name, error = %what, "memory fallback replay failed; will retry");
        set_phase(&fb, Phase::Active);
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
            Ok(crate::health::redis::Reply::Simple(_)) => {}
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
