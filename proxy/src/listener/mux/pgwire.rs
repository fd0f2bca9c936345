//! The PostgreSQL wire as a multiplexed service speaks it on its own
//! connections (upstream.rs) and to its clients (pg.rs): where a reply
//! ends (its ReadyForQuery), the startup and authentication of a
//! connection with the upstream's credentials (cleartext, MD5 and
//! SCRAM-SHA-256 by `postgres-protocol`, the crate under the probes'
//! `tokio-postgres`), its backend key (for a client's CancelRequest,
//! cancel.rs), and the few messages the proxy writes itself.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::UpstreamConfig;
use crate::protocol::postgres::{parse_error_fields, split_typed, Error, MESSAGE_MAX};

/// What the proxy's connections call themselves (`pg_stat_activity`).
pub(super) const APPLICATION_NAME: &str = "continuity-multiplex";
/// Largest message read during a connection's startup.
const STARTUP_MESSAGE_MAX: usize = 1024 * 1024;

/// Walks a backend stream, message by message, without buffering: where
/// each ReadyForQuery ends and the transaction status it carries.
#[derive(Default)]
pub(super) struct Replies {
    head: [u8; 5],
    have: usize,
    /// Body bytes of the current message not yet seen.
    left: usize,
    status: u8,
}

impl Replies {
    /// Consumes `data` up to the end of a ReadyForQuery (`Some(status)`:
    /// `I` idle, `T` in a transaction, `E` in a failed one) or all of it.
    /// An error: a length PostgreSQL never sends.
    pub(super) fn next(&mut self, data: &mut &[u8]) -> Result<Option<u8>, ()> {
        loop {
            if self.have < self.head.len() {
                while self.have < self.head.len() {
                    let Some((&b, rest)) = data.split_first() else {
                        return Ok(None);
                    };
                    if let Some(h) = self.head.get_mut(self.have) {
                        *h = b;
                    }
                    self.have += 1;
                    *data = rest;
                }
                let [tag, a, b, c, d] = self.head;
                let len = i32::from_be_bytes([a, b, c, d]);
                let body = usize::try_from(len)
                    .ok()
                    .filter(|n| (4..=MESSAGE_MAX).contains(n))
                    .ok_or(())?
                    - 4;
                if tag == b'Z' && body != 1 {
                    return Err(());
                }
                self.left = body;
            }
            let take = self.left.min(data.len());
            if self.head[0] == b'Z' && take > 0 {
                self.status = data.first().copied().unwrap_or(b'I');
            }
            *data = data.get(take..).unwrap_or_default();
            self.left -= take;
            if self.left > 0 {
                return Ok(None);
            }
            self.have = 0;
            if self.head[0] == b'Z' {
                return Ok(Some(self.status));
            }
        }
    }
}

/// `ReadyForQuery` with a transaction status.
pub(super) fn ready(status: u8) -> [u8; 6] {
    [b'Z', 0, 0, 0, 5, status]
}

/// An `ErrorResponse` of severity ERROR: the statement failed, the client
/// goes on.
pub(super) fn error(sqlstate: &str, message: &str) -> Vec<u8> {
    crate::protocol::postgres::backend::error_response_of("ERROR", sqlstate, message)
}

/// `AuthenticationOk`, `AuthenticationCleartextPassword`.
pub(super) const AUTH_OK: [u8; 9] = [b'R', 0, 0, 0, 8, 0, 0, 0, 0];
pub(super) const AUTH_CLEARTEXT: [u8; 9] = [b'R', 0, 0, 0, 8, 0, 0, 0, 3];

/// `BackendKeyData` for a client: a pid and key of the proxy's own, which
/// a CancelRequest names the client by (cancel.rs).
pub(super) fn backend_key(pid: u32, key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b'K', 0, 0, 0, 12];
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&key);
    out
}

/// The backend of one of the proxy's connections, as its BackendKeyData
/// named it, and the address the connection went to: where a
/// CancelRequest for it is sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BackendKey {
    pub addr: SocketAddr,
    pub pid: i32,
    /// 4 bytes in protocol 3.0 (the one the proxy speaks).
    pub secret: Box<[u8]>,
}

/// `CancelRequest` for the backend `pid` with `secret`.
pub(super) fn cancel_request(pid: i32, secret: &[u8]) -> Vec<u8> {
    let len = i32::try_from(12 + secret.len()).unwrap_or(i32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&crate::protocol::postgres::startup::CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(secret);
    out
}

/// What a connection's startup gave: the ParameterStatus messages it was
/// sent, whole (to answer clients with), and its BackendKeyData's pid and
/// secret.
pub(super) struct Started {
    pub params: Vec<u8>,
    pub key: Option<(i32, Box<[u8]>)>,
}

/// The server's ErrorResponse to a connection's startup.
#[derive(Debug)]
pub(super) struct Refused {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)
    }
}

impl std::error::Error for Refused {}

/// Whether a connection whose startup failed with `e` may succeed if
/// tried again soon: the server is starting up or shutting down (class
/// 57), has no slot free (class 53), or the connection broke or timed out
/// (an I/O error). A refusal of the credentials or the database (class
/// 28, 3D...) or a protocol the proxy cannot follow will not change.
pub(super) fn transient(e: &io::Error) -> bool {
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<Refused>()) {
        return ["57", "53", "08"].iter().any(|c| r.code.starts_with(c));
    }
    e.kind() != io::ErrorKind::InvalidData
}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn codec(e: Error) -> io::Error {
    proto(format!("postgres startup: {e}"))
}

/// Starts up and authenticates a new connection as the upstream's `user`
/// (default `postgres`) on its `database` (default the user), with
/// `application_name = continuity-multiplex`, within `timeout`.
pub(super) async fn startup(
    stream: &mut TcpStream,
    up: &UpstreamConfig,
    timeout: Duration,
) -> io::Result<Started> {
    tokio::time::timeout(timeout, exchange(stream, up))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "postgres startup timed out"))?
}

async fn exchange(stream: &mut TcpStream, up: &UpstreamConfig) -> io::Result<Started> {
    let user = up.user.as_deref().unwrap_or("postgres");
    let database = up.database.as_deref().unwrap_or(user);
    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", user),
            ("database", database),
            ("application_name", APPLICATION_NAME),
        ],
        &mut out,
    )?;
    stream.write_all(&out).await?;
    let password = || {
        up.password
            .as_deref()
            .map(str::as_bytes)
            .ok_or_else(|| proto("password required but password_env not set"))
    };
    let mut scram: Option<ScramSha256> = None;
    let mut params = Vec::new();
    let mut key = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (tag, body, used) = match split_typed(&buf, STARTUP_MESSAGE_MAX) {
            Ok((h, body)) => (h.tag, body.to_vec(), h.total()),
            Err(Error::Incomplete) => {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "postgres closed the connection at startup",
                    ));
                }
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                continue;
            }
            Err(e) => return Err(codec(e)),
        };
        let whole = buf.drain(..used).collect::<Vec<u8>>();
        let mut reply = BytesMut::new();
        match tag {
            b'R' => {
                let (code, rest) = match body.split_first_chunk::<4>() {
                    Some((c, rest)) => (i32::from_be_bytes(*c), rest),
                    None => return Err(proto("short authentication request")),
                };
                match code {
                    0 => {}
                    3 => frontend::password_message(password()?, &mut reply)?,
                    5 => {
                        let salt = rest
                            .first_chunk::<4>()
                            .copied()
                            .ok_or_else(|| proto("short MD5 salt"))?;
                        let hash = md5_hash(user.as_bytes(), password()?, salt);
                        frontend::password_message(hash.as_bytes(), &mut reply)?;
                    }
                    10 => {
                        let offered = rest
                            .split(|b| *b == 0)
                            .any(|m| m == SCRAM_SHA_256.as_bytes());
                        if !offered {
                            return Err(proto("no SASL mechanism we support (SCRAM-SHA-256)"));
                        }
                        let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut reply)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| proto("SASL out of order"))?;
                        s.update(rest)?;
                        frontend::sasl_response(s.message(), &mut reply)?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or_else(|| proto("SASL out of order"))?;
                        s.finish(rest)?;
                    }
                    other => {
                        return Err(proto(format!(
                            "authentication method {other} is not supported"
                        )))
                    }
                }
            }
            b'S' => params.extend_from_slice(&whole),
            b'E' => {
                let e = parse_error_fields(&body);
                return Err(io::Error::other(Refused {
                    code: e.code,
                    message: e.message,
                }));
            }
            b'K' => {
                key = body
                    .split_first_chunk::<4>()
                    .map(|(pid, secret)| (i32::from_be_bytes(*pid), secret.into()));
            }
            b'Z' => return Ok(Started { params, key }),
            // NoticeResponse.
            _ => {}
        }
        if !reply.is_empty() {
            stream.write_all(&reply).await?;
        }
    }
}

/// The value of ParameterStatus `name` among `params` (as [`startup`]
/// returns them, [`Started::params`]).
pub(super) fn param<'a>(params: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut rest = params;
    while let Ok((h, body)) = split_typed(rest, STARTUP_MESSAGE_MAX) {
        let mut parts = body.split(|b| *b == 0);
        if parts.next() == Some(name.as_bytes()) {
            return parts.next();
        }
        rest = rest.get(h.total()..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A typed message (pg.rs's tests use it too).
    pub(in crate::listener::mux) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn replies_end_at_each_ready_for_query_in_any_split() {
        let mut stream = Vec::new();
        stream.extend(msg(b'T', b"\0\x01abc\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"));
        stream.extend(msg(b'D', b"\0\x01\0\0\0\x0212"));
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(ready(b'I'));
        stream.extend(msg(b'C', b"BEGIN\0"));
        stream.extend(ready(b'T'));
        stream.extend(msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"));
        stream.extend(ready(b'E'));
        for step in 1..stream.len() {
            let mut r = Replies::default();
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                let mut rest = piece;
                while !rest.is_empty() {
                    if let Some(s) = r.next(&mut rest).expect("valid") {
                        got.push(s);
                    }
                }
            }
            assert_eq!(got, b"ITE", "split every {step} bytes");
        }
    }

    #[test]
    fn a_length_postgres_never_sends_is_an_error() {
        let mut r = Replies::default();
        assert!(r.next(&mut &[b'D', 0, 0, 0, 3][..]).is_err());
        let mut r = Replies::default();
        assert!(r.next(&mut &[b'Z', 0, 0, 0, 6, b'I', 0][..]).is_err());
        let mut r = Replies::default();
        assert!(r.next(&mut &[b'D', 0xff, 0xff, 0xff, 0xff][..]).is_err());
    }

    #[test]
    fn only_refusals_that_may_pass_are_tried_again() {
        let refused = |code: &str| {
            io::Error::other(Refused {
                code: code.into(),
                message: "m".into(),
            })
        };
        for code in ["57P03", "57P01", "53300", "08006"] {
            assert!(transient(&refused(code)), "{code}");
        }
        for code in ["28P01", "28000", "3D000", "42501"] {
            assert!(!transient(&refused(code)), "{code}");
        }
        assert!(transient(&io::Error::from(io::ErrorKind::UnexpectedEof)));
        assert!(transient(&io::Error::from(io::ErrorKind::TimedOut)));
        assert!(!transient(&proto(
            "authentication method 7 is not supported"
        )));
        assert_eq!(
            refused("53300").to_string(),
            "m (SQLSTATE 53300)",
            "the message the held statements get"
        );
    }

    #[test]
    fn an_error_is_of_severity_error() {
        let e = error("0A000", "SET is not supported");
        let f = parse_error_fields(e.get(5..).unwrap_or_default());
        assert_eq!(f.severity, "ERROR");
        assert_eq!(f.code, "0A000");
        assert_eq!(f.message, "SET is not supported");
        assert!(!e.windows(5).any(|w| w == b"FATAL"));
    }

    #[test]
    fn a_cancel_request_is_16_bytes_with_the_backend_key() {
        let m = cancel_request(4242, &[1, 2, 3, 4]);
        assert_eq!(
            m,
            [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x10, 0x92, 1, 2, 3, 4]
        );
        assert_eq!(
            backend_key(7, [9, 8, 7, 6]),
            [b'K', 0, 0, 0, 12, 0, 0, 0, 7, 9, 8, 7, 6]
        );
    }

    #[test]
    fn params_are_found_by_name() {
        let mut p = msg(b'S', b"server_version\x0015.2\0");
        p.extend(msg(b'S', b"client_encoding\0UTF8\0"));
        assert_eq!(param(&p, "client_encoding"), Some(&b"UTF8"[..]));
        assert_eq!(param(&p, "server_version"), Some(&b"15.2"[..]));
        assert_eq!(param(&p, "TimeZone"), None);
    }
}
