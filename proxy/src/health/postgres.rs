//! postgres probe: `SELECT pg_is_in_recovery()`; plus the admin queries
//! ([`simple_query`]: LSNs, ...) and promotion with `SELECT pg_promote()`.
//!
//! The client is `tokio-postgres` (startup, cleartext / MD5 /
//! SCRAM-SHA-256 authentication, simple query), handed the stream
//! [`super::connect`] opened, with reads capped at [`MAX_RESULT`] plus
//! [`STARTUP_SLACK`]; its connection runs in the probe's task. The SCRAM
//! iteration count is capped by the crate (postgres-protocol: 100 000).
//!
//! It parses no wire message itself: the relay's PostgreSQL codec is
//! `protocol::postgres`.

use tokio_postgres::config::SslMode;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use super::stream::{drive, find_io, io_error, Capped};
use super::{BoxFuture, HealthCheck, ObservedRole, ProbeError, Probed};
use crate::config::{ServiceConfig, UpstreamConfig};

/// Largest total size of a query result kept in memory; a probe or admin
/// connection reads at most this plus [`STARTUP_SLACK`] bytes.
pub const MAX_RESULT: usize = 16 * 1024 * 1024;
/// What a connection may read beyond [`MAX_RESULT`]: startup, auth and
/// the per-message framing of a result.
pub const STARTUP_SLACK: usize = 1024 * 1024;
/// How long the connection gets to send Terminate once the work is done.
const TERMINATE_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

fn proto(msg: impl Into<String>) -> ProbeError {
    ProbeError::Protocol(msg.into())
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

/// Rows of text columns (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

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
    fn server_errors_by_sqlstate_class() {
        assert!(matches!(
            server_error("bad", "28P01"),
            ProbeError::Auth(m) if m == "bad (SQLSTATE 28P01)"
        ));
        assert!(matches!(
            server_error("recovery is not in progress", "55000"),
            ProbeError::Protocol(m) if m.contains("55000")
        ));
    }
}
