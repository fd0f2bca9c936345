//! The wire codecs, one per protocol, and nothing above them: RESP2/3
//! ([`resp`]), PostgreSQL messages ([`postgres`]) and HTTP/1 heads and
//! chunked bodies ([`http1`]), each with `check`/`parse` and an
//! `Incomplete` case; PackStream values ([`packstream`]) and the Bolt
//! routing-table rewrite that keeps `neo4j://` drivers on the proxy
//! ([`bolt_route`]); plus the errors each protocol gives a client the
//! proxy refuses (SPEC 3). The fallback, the relay's observers
//! (`crate::observe`) and the gateway use these codecs; the probes use
//! client crates (`redis`, `tokio-postgres`, hyper) instead.

pub mod bolt_route;
pub mod http1;
pub mod packstream;
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
