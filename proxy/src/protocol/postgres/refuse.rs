//! The refusal a client gets in its own protocol when the proxy will not
//! serve it: a held client whose buffer time ran out, or one past the
//! listener's `max_connections`.

use super::{error_response, starts_with_encryption_request};

/// What a held client gets on timeout: `N` to each encryption request (so
/// the client goes on in plain text), then, once its StartupMessage is in,
/// an ErrorResponse with SQLSTATE 08006 (connection_failure). libpq drops
/// bytes that arrive together with the `N`, so the error must wait for the
/// StartupMessage; that wait is bounded by `wait`.
pub async fn refuse_startup<S>(
    stream: &mut S,
    early: &[u8],
    message: &str,
    wait: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    refuse_startup_with(stream, early, "08006", message, wait).await
}

/// [`refuse_startup`] with another SQLSTATE (53300 too_many_connections
/// for a client past the listener's `max_connections`).
pub async fn refuse_startup_with<S>(
    stream: &mut S,
    early: &[u8],
    sqlstate: &str,
    message: &str,
    wait: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = early.to_vec();
    let _ = tokio::time::timeout(wait, async {
        loop {
            if starts_with_encryption_request(&buf) {
                buf.drain(..8);
                stream.write_all(b"N").await?;
                continue;
            }
            if buf.len() >= 8 {
                // A StartupMessage (or something else): answer it.
                return Ok::<(), std::io::Error>(());
            }
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    })
    .await;
    let _ = stream.write_all(&error_response(sqlstate, message)).await;
}
