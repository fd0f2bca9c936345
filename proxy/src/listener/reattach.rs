//! Re-attaching an idle Redis client connection to the active upstream
//! when its own upstream moved (a failover, a switchover) or went away (a
//! crash), instead of closing it (issue #18 item 3; docs/clients.md).
//!
//! The client is held as a new client would be: until an upstream is
//! usable, for at most `buffer_timeout_ms`, what it sends meanwhile kept.
//! The new upstream connection is first given the session's replay list
//! (observe/session.rs); the client's bytes follow only once every replay
//! reply is in and none is an error. Anything else closes the client, as
//! a connection that is not idle is closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use super::{report_failed_connect, wait_upstream, Gave, Signals};
use crate::observe::session::Session;
use crate::protocol::resp::stream::Replies;
use crate::upstream::runtime::ServiceRt;

/// Longest wait for the replies to the replayed commands.
const REPLAY_WAIT: Duration = Duration::from_secs(2);

/// The new upstream (index, epoch, socket, what the client sent while
/// held) of the connection whose upstream `gone` (index, epoch) moved or
/// went away; `None`: close the client.
pub(super) async fn reattach(
    svc: &Arc<ServiceRt>,
    client: &mut TcpStream,
    session: &Session,
    gone: (usize, u64),
    sig: &mut Signals,
    engine_rt: &Handle,
) -> Option<(usize, u64, TcpStream, BytesMut)> {
    let deadline = tokio::time::Instant::from_std(Instant::now() + svc.cfg.buffer_timeout);
    let mut early = BytesMut::new();
    let (idx, epoch, mut upstream) = loop {
        let waited = wait_upstream(
            svc,
            None,
            client,
            &mut early,
            deadline,
            sig,
            engine_rt,
            Some(gone),
        )
        .await;
        let (idx, epoch, mut upstream) = match waited {
            Ok(v) => v,
            Err(gave) => {
                let why = match gave {
                    Gave::Up => "the client closed, or the engine is stopping",
                    Gave::Timeout => "no upstream within buffer_timeout_ms",
                    Gave::Fallback => "the memory fallback is serving",
                };
                tracing::info!(
                    service = svc.name(),
                    why,
                    "re-attach given up: closing the client"
                );
                return None;
            }
        };
        if (idx, epoch) != gone {
            break (idx, epoch, upstream);
        }
        // The route still names the upstream that closed this client.
        match alive(&mut upstream).await {
            // It answers: it closed the client on purpose (`CLIENT KILL`,
            // its idle `timeout`), so the client is closed too.
            Some(true) => {
                tracing::debug!(
                    service = svc.name(),
                    "the server closed an idle client itself: closing it too"
                );
                return None;
            }
            Some(false) => return None,
            // Closed or reset at once, nothing answered: the server is going
            // away (a process killed closes its connections first, and its
            // listening socket accepts for milliseconds more: 2 to over 7 here,
            // BENCHMARKS.md, "The relay's failover tail").
            // A probe that saw this would count it as a refused connect
            // (down at once), and so does this: the route moves now, not
            // once a later connect is refused. (A server that closes clients
            // on purpose, or is full, answers first.)
            None => {
                let dying = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "accepted, then closed before answering PING",
                );
                if !report_failed_connect(engine_rt, svc, gone.0, Some(dying), Duration::ZERO).await
                {
                    return None;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(e) = replay(&mut upstream, session).await {
        let upstream = svc.upstream_name(idx).unwrap_or("?");
        tracing::info!(service = svc.name(), upstream, error = %e, "re-attach refused: closing the client");
        return None;
    }
    tracing::debug!(
        service = svc.name(),
        upstream = svc.upstream_name(idx).unwrap_or("?"),
        replayed = session.replay_len(),
        "idle client connection re-attached"
    );
    Some((idx, epoch, upstream, early))
}

/// Whether a fresh connection to the upstream that closed the client is
/// answered: `Some(true)` a reply, `None` closed or reset at once (the
/// server is going away), `Some(false)` silence for [`REPLAY_WAIT`].
async fn alive(upstream: &mut TcpStream) -> Option<bool> {
    let ping = async {
        upstream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut b = [0u8; 64];
        match upstream.read(&mut b).await {
            Ok(n) if n > 0 => Some(true),
            _ => None,
        }
    };
    tokio::time::timeout(REPLAY_WAIT, ping)
        .await
        .unwrap_or(Some(false))
}

/// Sends the session's commands and reads their replies: every one must be
/// in within [`REPLAY_WAIT`], none an error, nothing more.
async fn replay(upstream: &mut TcpStream, session: &Session) -> Result<(), String> {
    let want = session.replay_len();
    if want == 0 {
        return Ok(());
    }
    let out: Vec<u8> = session.replay().flatten().copied().collect();
    let exchange = async {
        upstream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut replies = Replies::default();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < want {
            let n = upstream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the upstream closed during the replay".to_string());
            }
            let mut data = buf.get(..n).unwrap_or_default();
            while let Some(error) = replies
                .next(&mut data)
                .map_err(|e| e.reason().to_string())?
            {
                if let Some(line) = error {
                    return Err(format!(
                        "replayed command {} answered {}",
                        got + 1,
                        String::from_utf8_lossy(line)
                    ));
                }
                got += 1;
                if got == want {
                    break;
                }
            }
            if got == want && !data.is_empty() {
                return Err("more than the replies to the replay".to_string());
            }
        }
        Ok(())
    };
    tokio::time::timeout(REPLAY_WAIT, exchange)
        .await
        .map_err(|_| format!("no reply to the replay within {REPLAY_WAIT:?}"))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicU64;

    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::*;
    use crate::config::{Kind, Role, ServiceConfig, UpstreamConfig};
    use crate::snapshot::UpstreamHealth;

    /// A server that accepts every connection and closes it at once, as
    /// the listening socket of a process being killed does for a few
    /// milliseconds after its connections were closed.
    async fn dying() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        addr
    }

    /// A server that accepts and keeps every connection.
    async fn alive_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                kept.push(s);
            }
        });
        addr
    }

    /// The idle client of a primary that died is re-attached to the
    /// secondary as soon as a fresh connection to the primary is closed
    /// unanswered, not once the primary's listening socket is gone (here
    /// it never goes: before, the client was closed at `buffer_timeout_ms`).
    #[tokio::test]
    async fn a_primary_that_accepts_and_closes_at_once_is_down_and_the_client_moves() {
        let (p, s) = (dying().await, alive_server().await);
        let mut cfg = ServiceConfig::new(
            "cache",
            Kind::Redis,
            vec![
                UpstreamConfig::at("r1", &p, Role::Primary),
                UpstreamConfig::at("r2", &s, Role::Secondary),
            ],
        );
        cfg.buffer_timeout = Duration::from_secs(2);
        let svc = ServiceRt::detached(cfg);
        for up in &svc.upstreams {
            up.health.lock().unwrap().counters.health = UpstreamHealth::Up;
        }
        let (_stop, shutdown) = watch::channel(false);
        let (_force, force_close) = watch::channel(false);
        let mut sig = Signals {
            shutdown,
            force_close,
            open: Arc::new(AtomicU64::new(0)),
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _app = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut client, _) = l.accept().await.unwrap();
        let gone = (0, svc.route.load().epoch);

        let started = Instant::now();
        let next = reattach(
            &svc,
            &mut client,
            &Session::default(),
            gone,
            &mut sig,
            &Handle::current(),
        )
        .await;
        let (idx, epoch, _upstream, _) = next.expect("re-attached");
        assert_eq!(idx, 1, "on the secondary");
        assert_ne!(epoch, gone.1);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            svc.upstreams[0].health.lock().unwrap().counters.health,
            UpstreamHealth::Down
        );
    }
}
