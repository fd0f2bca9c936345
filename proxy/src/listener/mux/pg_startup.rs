//! A multiplexed PostgreSQL client's startup (pg.rs), which the proxy
//! answers itself, since the client's statements will run on connections
//! it does not own: encryption refused (`N`); user, database and password
//! checked against the upstreams'; every other startup parameter equal to
//! the shared connection's; then that connection's ParameterStatus, a
//! backend key of the proxy's own (a CancelRequest names the client by it,
//! cancel.rs) and ReadyForQuery.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::runtime::Handle;

use super::cancel;
use super::least_loaded;
use super::pgwire::{self, AUTH_CLEARTEXT, AUTH_OK};
use super::upstream::{Mux, State};
use crate::listener::Signals;
use crate::protocol::postgres::startup::Startup;
use crate::protocol::postgres::{error_response, split_typed, Error};
use crate::upstream::runtime::ServiceRt;

/// Backend pids handed to clients: the proxy's own, counted down from the
/// top of the range so that they are not mistaken for a server's.
static NEXT_PID: AtomicU32 = AtomicU32::new(i32::MAX as u32);

/// What a client's startup gave: its shared connection, its
/// StartupMessage and the answer it got (for the observer), and the
/// backend key it was handed (pid, secret).
pub(super) struct Started {
    pub shared: Arc<Mux>,
    pub startup: Vec<u8>,
    pub answer: Vec<u8>,
    pub key: (u32, [u8; 4]),
}

/// The user and database a multiplexed service serves: its upstreams'
/// (the first that names them), `postgres` and the user by default.
fn identity(svc: &ServiceRt) -> (&str, &str) {
    let ups = &svc.cfg.upstreams;
    let user = ups
        .iter()
        .find_map(|u| u.user.as_deref())
        .unwrap_or("postgres");
    let database = ups
        .iter()
        .find_map(|u| u.database.as_deref())
        .unwrap_or(user);
    (user, database)
}

/// Startup parameters a client may send that the shared connections
/// cannot honour per client and are left out: the name it gives itself,
/// and its encoding (it is told the connection's, as ParameterStatus).
const IGNORED: &[&str] = &["user", "database", "application_name", "client_encoding"];

async fn fatal(wr: &mut OwnedWriteHalf, sqlstate: &str, message: &str) -> io::Result<()> {
    wr.write_all(&error_response(sqlstate, message)).await
}

/// Reads more of the client's stream into `inbuf`; false at its end.
async fn fill(rd: &mut OwnedReadHalf, inbuf: &mut BytesMut) -> io::Result<bool> {
    Ok(rd.read_buf(inbuf).await? > 0)
}

/// The client's startup: encryption refused (`N`), its user, database and
/// password checked, every other parameter equal to the shared
/// connection's or refused; then answered with the shared connection's
/// ParameterStatus, a key of the proxy's own and ReadyForQuery. `None`:
/// the client was refused (told why) or went away, or the connection was
/// a CancelRequest (passed on by cancel.rs, answered nothing).
pub(super) async fn handshake(
    svc: &Arc<ServiceRt>,
    sig: &Signals,
    engine_rt: &Handle,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
) -> io::Result<Option<Started>> {
    let (params, startup) = loop {
        match Startup::parse(inbuf) {
            Err(Error::Incomplete) => {
                if !fill(rd, inbuf).await? {
                    return Ok(None);
                }
            }
            Err(e) => {
                fatal(wr, "08P01", &format!("invalid startup packet: {e}")).await?;
                return Ok(None);
            }
            Ok((Startup::SslRequest | Startup::GssEncRequest, n)) => {
                inbuf.advance(n);
                wr.write_all(b"N").await?;
            }
            // Alone on its connection, which is then closed. Boxed: rare,
            // and an idle client's future need not carry it (size_tests.rs).
            Ok((Startup::Cancel { pid, secret }, _)) => {
                Box::pin(cancel::forward(svc, pid, &secret)).await;
                return Ok(None);
            }
            Ok((Startup::Startup { version, params }, n)) => {
                let startup = inbuf.split_to(n).to_vec();
                if version >> 16 != 3 {
                    let m = format!(
                        "unsupported frontend protocol {}.{}",
                        version >> 16,
                        version & 0xffff
                    );
                    fatal(wr, "0A000", &m).await?;
                    return Ok(None);
                }
                break (params, startup);
            }
        }
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (want_user, want_db) = identity(svc);
    let user = get("user").unwrap_or_default();
    let database = get("database").unwrap_or(user);
    if user != want_user || database != want_db {
        let m = format!(
            "continuity: the multiplexed service {} serves user \"{want_user}\" on database \
             \"{want_db}\" only (docs/multiplex.md)",
            svc.name()
        );
        fatal(wr, "28000", &m).await?;
        return Ok(None);
    }
    if svc.cfg.upstreams.iter().any(|u| u.password.is_some()) {
        wr.write_all(&AUTH_CLEARTEXT).await?;
        let given = loop {
            match split_typed(inbuf, 64 * 1024) {
                Ok((h, body)) if h.tag == b'p' => {
                    let pw = body.strip_suffix(&[0]).unwrap_or(body).to_vec();
                    inbuf.advance(h.total());
                    break Some(pw);
                }
                Ok(_) | Err(Error::Length(_) | Error::Invalid(_)) => break None,
                Err(_) => {
                    if !fill(rd, inbuf).await? {
                        return Ok(None);
                    }
                }
            }
        };
        let ok = given.is_some_and(|pw| {
            svc.cfg.upstreams.iter().any(|u| {
                u.password
                    .as_deref()
                    .is_some_and(|p| bool::from(p.as_bytes().ct_eq(&pw)))
            })
        });
        if !ok {
            let m = format!("password authentication failed for user \"{user}\"");
            fatal(wr, "28P01", &m).await?;
            return Ok(None);
        }
    }
    // The shared connection's parameters: it starts up now if it has not.
    let shared = least_loaded(svc, sig, engine_rt);
    let deadline = Instant::now() + svc.cfg.buffer_timeout + svc.cfg.health.connect_timeout;
    let server = loop {
        let (params, state) = {
            let g = shared.lock();
            (g.params.clone(), g.state)
        };
        if let Some(p) = params {
            break p;
        }
        if state == State::Closed || Instant::now() >= deadline {
            let m = format!("continuity: no upstream available for {}", svc.name());
            fatal(wr, "08006", &m).await?;
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    for (name, value) in &params {
        if IGNORED.contains(&name.as_str()) {
            continue;
        }
        let same =
            pgwire::param(&server, name).is_some_and(|v| v.eq_ignore_ascii_case(value.as_bytes()));
        if !same {
            let m = format!(
                "continuity: startup parameter {name} = \"{value}\" is not supported on a \
                 multiplexed connection (docs/multiplex.md)"
            );
            fatal(wr, "0A000", &m).await?;
            return Ok(None);
        }
    }
    let mut answer = AUTH_OK.to_vec();
    answer.extend_from_slice(&server);
    let pid = NEXT_PID.fetch_sub(1, Ordering::Relaxed);
    let secret: [u8; 4] = rand::random();
    answer.extend_from_slice(&pgwire::backend_key(pid, secret));
    answer.extend_from_slice(&pgwire::ready(b'I'));
    wr.write_all(&answer).await?;
    Ok(Some(Started {
        shared,
        startup,
        answer,
        key: (pid, secret),
    }))
}
