//! Per-protocol codecs the L4 proxy needs: the error each protocol gives a
//! held client whose `buffer_timeout_ms` ran out (SPEC 3), and the
//! read-only observers that time statements in the relay ([`observe`]).

pub mod http1;
pub mod observe;
pub mod postgres;
pub mod redis;
pub mod resp;

use crate::config::Kind;

/// Tells a client past the listener's `max_connections` so in its own
/// protocol, as the real server would: Redis `-ERR max number of clients
/// reached`, PostgreSQL an ErrorResponse with SQLSTATE 53300
/// (too_many_connections) once its StartupMessage is in (waiting at most
/// `wait` for it). Others have no such message: the caller just closes.
pub async fn refuse_full<S>(kind: Kind, stream: &mut S, wait: std::time::Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    match kind {
        Kind::Redis => {
            let _ = stream
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
        }
        Kind::Postgres => {
            postgres::refuse_startup_with(
                stream,
                &[],
                "53300",
                "sorry, too many clients already",
                wait,
            )
            .await
        }
        _ => {}
    }
}

/// Gives a held client that timed out its protocol's error, given the
/// bytes it sent while held. Bolt and tcp have none: they are just closed.
pub async fn refuse_held<S>(kind: Kind, service: &str, stream: &mut S, early: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let message = format!("continuity: no upstream available for {service}");
    match kind {
        Kind::Redis => {
            let _ = stream.write_all(&redis::error_reply(&message)).await;
        }
        Kind::Postgres => {
            postgres::refuse_startup(stream, early, &message, std::time::Duration::from_secs(2))
                .await
        }
        _ => {}
    }
}
