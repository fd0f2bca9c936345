//! PostgreSQL wire pieces the proxy writes itself.

/// `SSLRequest` and `GSSENCRequest` codes: an 8-byte message a client may
/// send before its StartupMessage, answered with one byte.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Whether `early` begins with an SSL or GSS encryption request.
pub fn starts_with_encryption_request(early: &[u8]) -> bool {
    let (Some(len), Some(code)) = (early.get(0..4), early.get(4..8)) else {
        return false;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST)
}

/// An `ErrorResponse` with severity FATAL and the given SQLSTATE.
pub fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ssl_request_gets_n_then_the_error_after_startup() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut proxy, mut client) = tokio::io::duplex(1024);
        let ssl = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let task = tokio::spawn(async move {
            refuse_startup(&mut proxy, &ssl, "x", std::time::Duration::from_secs(2)).await;
        });
        let mut n = [0u8; 1];
        client.read_exact(&mut n).await.unwrap();
        assert_eq!(n[0], b'N');
        client
            .write_all(&[0, 0, 0, 9, 0, 3, 0, 0, 0])
            .await
            .unwrap();
        let mut e = [0u8; 1];
        client.read_exact(&mut e).await.unwrap();
        assert_eq!(e[0], b'E');
        task.await.unwrap();
    }

    #[test]
    fn error_response_is_well_framed() {
        let e = error_response("08006", "no upstream");
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len + 1, e.len());
        assert!(e.windows(5).any(|w| w == b"08006"));
    }
}
