//! postgres probe: `SELECT pg_is_in_recovery()`; plus the admin queries
//! ([`simple_query`]: LSNs, ...) and promotion with `SELECT pg_promote()`.
//!
//! The client is `tokio-postgres` (startup, cleartext / MD5 /
//! SCRAM-SHA-256 authentication, simple query), handed the stream
//! [`super::connect`] opened, with reads capped at [`MAX_RESULT`] plus
//! [`STARTUP_SLACK`]; its connection runs in the probe's task. The SCRAM
//! iteration count is capped by the crate (postgres-protocol: 100 000).
//!
//! [`startup_message`], [`parse_error_fields`] and [`parse_data_row`] (pure
//! codecs used by the observers and tests) are moving to `protocol::`
//! (issue 15).

use tokio_postgres::config::SslMode;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use super::stream::{drive, find_io, io_error, Capped};
use super::{BoxFuture, HealthCheck, ObservedRole, ProbeError, Probed};
use crate::config::{ServiceConfig, UpstreamConfig};

/// Largest backend message accepted by [`parse_data_row`]'s callers
/// (length field included).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Largest total size of a query result kept in memory; a probe or admin
/// connection reads at most this plus [`STARTUP_SLACK`] bytes.
pub const MAX_RESULT: usize = 16 * 1024 * 1024;
/// What a connection may read beyond [`MAX_RESULT`]: startup, auth and
/// the per-message framing of a result.
pub const STARTUP_SLACK: usize = 1024 * 1024;
/// How long the connection gets to send Terminate once the work is done.
const TERMINATE_LINGER: std::time::Duration = std::time::Duration::from_millis(100);
const PROTOCOL_V3: i32 = 196_608;

fn proto(msg: impl Into<String>) -> ProbeError {
    ProbeError::Protocol(msg.into())
}

/// Reads fields out of a message body without ever panicking.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProbeError> {
        if n > self.data.len() {
            return Err(proto("truncated backend message"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, ProbeError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| proto("short int32"))?;
        Ok(i32::from_be_bytes(b))
    }

    fn i16(&mut self) -> Result<i16, ProbeError> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| proto("short int16"))?;
        Ok(i16::from_be_bytes(b))
    }

    fn cstr(&mut self) -> Result<&'a [u8], ProbeError> {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| proto("unterminated string in backend message"))?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }
}

/// Fields of an ErrorResponse / NoticeResponse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

// moving to protocol:: (issue 15); kept until callers move
/// Parses an ErrorResponse body.
pub fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut out = ServerError::default();
    let mut c = Cursor::new(body);
    while let Ok(kind) = c.take(1) {
        let Some(&kind) = kind.first() else { break };
        if kind == 0 {
            break;
        }
        let Ok(value) = c.cstr() else { break };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
    out
}

/// Class 28 (invalid authorization) is an auth failure; anything else is
/// reported as a protocol error with its SQLSTATE.
fn server_error(message: &str, code: &str) -> ProbeError {
    if code.starts_with("28") {
        ProbeError::Auth(format!("{message} (SQLSTATE {code})"))
    } else {
        ProbeError::Protocol(format!("{message} (SQLSTATE {code})"))
    }
}

/// A `tokio-postgres` error as a probe error: server errors by SQLSTATE
/// ([`server_error`]), a password the server wants but we lack as
/// [`ProbeError::Auth`], a closed connection as an unexpected EOF (as the
/// hand-written client saw it), I/O (and the read cap) as I/O.
fn client_error(e: tokio_postgres::Error) -> ProbeError {
    if let Some(db) = e.as_db_error() {
        return server_error(db.message(), db.code().code());
    }
    if let Some(io) = find_io(&e) {
        return io_error(io);
    }
    if e.is_closed() {
        return ProbeError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "postgres closed the connection",
        ));
    }
    // The crate's Display leaves the cause out; it says what went wrong.
    let text = match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    if text.contains("password missing") {
        ProbeError::Auth("password required but password_env not set".into())
    } else if text.starts_with("authentication error") {
        ProbeError::Auth(text)
    } else {
        ProbeError::Protocol(text)
    }
}

fn cstring(out: &mut Vec<u8>, s: &str) -> Result<(), ProbeError> {
    if s.as_bytes().contains(&0) {
        return Err(proto("string contains a NUL byte"));
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

// moving to protocol:: (issue 15); kept until callers move
/// The StartupMessage for `user` / `database`.
pub fn startup_message(user: &str, database: &str) -> Result<Vec<u8>, ProbeError> {
    let mut body = PROTOCOL_V3.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", user),
        ("database", database),
        ("application_name", "continuity-probe"),
    ] {
        cstring(&mut body, k)?;
        cstring(&mut body, v)?;
    }
    body.push(0);
    let len = i32::try_from(body.len().saturating_add(4)).map_err(|_| proto("startup too long"))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Rows of text columns (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

// moving to protocol:: (issue 15); kept until callers move
/// Parses a DataRow body.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ProbeError> {
    let mut c = Cursor::new(body);
    let n = c.i16()?;
    let n = usize::try_from(n).map_err(|_| proto("negative column count"))?;
    let mut row = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let len = c.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            let len = usize::try_from(len).map_err(|_| proto("bad column length"))?;
            row.push(Some(String::from_utf8_lossy(c.take(len)?).into_owned()));
        }
    }
    Ok(row)
}

/// The connection settings: user (default `postgres`), database (default
/// the user), password, `application_name`; no TLS negotiation (the
/// stream is already what [`super::connect`] made it).
fn config(upstream: &UpstreamConfig) -> tokio_postgres::Config {
    let user = upstream.user.as_deref().unwrap_or("postgres");
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(user)
        .dbname(upstream.database.as_deref().unwrap_or(user))
        .application_name("continuity-probe")
        .ssl_mode(SslMode::Disable);
    if let Some(pw) = upstream.password.as_deref() {
        cfg.password(pw);
    }
    cfg
}

/// Connects (our connect path, reads capped), starts up and authenticates
/// with `tokio-postgres` (cleartext, MD5, SCRAM-SHA-256), runs `sql` as a
/// simple query, then lets the connection send Terminate. The rows of
/// every statement, in order; at most [`MAX_RESULT`] bytes of cells.
async fn query(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    sql: &str,
) -> Result<Rows, ProbeError> {
    if sql.as_bytes().contains(&0) {
        return Err(proto("string contains a NUL byte"));
    }
    let stream = super::connect(service, upstream).await?;
    let stream = Capped::new(
        stream,
        MAX_RESULT.saturating_add(STARTUP_SLACK),
        "query result too large",
    );
    let (client, connection) = config(upstream)
        .connect_raw(stream, NoTls)
        .await
        .map_err(client_error)?;
    let work = async move {
        let messages = client.simple_query(sql).await.map_err(client_error);
        drop(client);
        let mut rows = Vec::new();
        let mut size = 0usize;
        for message in messages? {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let mut cells = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let cell = row.try_get(i).map_err(client_error)?;
                size = size.saturating_add(cell.map_or(0, str::len));
                cells.push(cell.map(str::to_string));
            }
            if size > MAX_RESULT {
                return Err(proto("query result too large"));
            }
            rows.push(cells);
        }
        Ok(rows)
    };
    drive(work, connection, client_error, Some(TERMINATE_LINGER)).await
}

/// Connects, authenticates and runs `sql` as a simple query: the rows of
/// text columns. The caller bounds the call.
pub async fn simple_query(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    sql: &str,
) -> Result<Rows, ProbeError> {
    query(service, upstream, sql).await
}

/// The single boolean of a one-row, one-column result.
fn single_bool(rows: &Rows, what: &str) -> Result<bool, ProbeError> {
    let cell = rows.first().and_then(|r| r.first()).cloned().flatten();
    match cell.as_deref() {
        Some("t") => Ok(true),
        Some("f") => Ok(false),
        other => Err(proto(format!("{what}: unexpected result {other:?}"))),
    }
}

pub struct PostgresCheck;

impl HealthCheck for PostgresCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            let rows = simple_query(service, upstream, "SELECT pg_is_in_recovery()").await?;
            Ok(Probed::role(
                if single_bool(&rows, "pg_is_in_recovery()")? {
                    ObservedRole::Replica
                } else {
                    ObservedRole::Primary
                },
            ))
        })
    }
}

/// `SELECT pg_promote()` (server waits up to 60 s). An upstream already out
/// of recovery is left alone and counts as promoted.
pub async fn promote(service: &ServiceConfig, upstream: &UpstreamConfig) -> Result<(), ProbeError> {
    let rows = simple_query(service, upstream, "SELECT pg_is_in_recovery()").await?;
    if !single_bool(&rows, "pg_is_in_recovery()")? {
        return Ok(());
    }
    let rows = simple_query(service, upstream, "SELECT pg_promote()").await?;
    if single_bool(&rows, "pg_promote()")? {
        Ok(())
    } else {
        Err(proto(
            "pg_promote() returned false (promotion not finished in time)",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codec_helpers() {
        let s = startup_message("u", "d").unwrap();
        assert_eq!(s.get(..4).unwrap(), &(s.len() as i32).to_be_bytes());
        assert_eq!(s.get(4..8).unwrap(), &196_608i32.to_be_bytes());
        assert!(s.ends_with(b"continuity-probe\0\0"));
        assert!(startup_message("a\0b", "d").is_err());

        let row = [0u8, 2, 0, 0, 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&row).unwrap(), vec![Some("t".into()), None]);
        assert!(parse_data_row(&[0, 1, 0, 0, 0, 9, b'x']).is_err());
        assert!(parse_data_row(&[0xff, 0xff]).is_err());
        assert!(parse_data_row(&[]).is_err());

        let e = parse_error_fields(b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
        assert_eq!(e.code, "28P01");
        assert!(matches!(
            server_error("bad", "28P01"),
            ProbeError::Auth(m) if m == "bad (SQLSTATE 28P01)"
        ));
        assert!(matches!(
            server_error("recovery is not in progress", "55000"),
            ProbeError::Protocol(m) if m.contains("55000")
        ));
        // Truncated / garbage error bodies never panic.
        let _ = parse_error_fields(b"SFAT");
        let _ = parse_error_fields(&[0xff; 7]);
    }
}
