//! Passing an answer on to the client: the rewritten head, the body as
//! framed, and the small JSON answers the lean path gives itself.

use bytes::Buf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Pinned, CLIENT_TIMEOUT};
use crate::gateway::peers::READ_TIMEOUT;
use crate::health::FailureKind;
use crate::protocol::http1::{self, chunked::ChunkScanner, Framing, EMPTY_HEADER, MAX_HEADERS};

/// The response head for the client: HTTP/1.1, without hop-by-hop fields
/// other than `Transfer-Encoding` (the body is relayed as framed), without
/// a `Content-Length` beside a `Transfer-Encoding` (a downstream hop must
/// not get both), and with `connection: close` when this is the
/// connection's last answer.
pub(super) fn rewrite_head(raw: &[u8], close: bool, out: &mut Vec<u8>) {
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let Ok(resp) = http1::parse_response_fields(raw, &mut headers) else {
        out.extend_from_slice(raw);
        return;
    };
    let mut tokens: Vec<&[u8]> = Vec::new();
    let mut te = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            tokens.extend(h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
        te |= h.name.eq_ignore_ascii_case("transfer-encoding");
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let hop = name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("proxy-connection")
            || (te && name.eq_ignore_ascii_case("content-length"))
            || (!name.eq_ignore_ascii_case("transfer-encoding")
                && tokens
                    .iter()
                    .any(|t| name.as_bytes().eq_ignore_ascii_case(t)));
        if hop {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

pub(super) enum Side {
    Client,
    Upstream(FailureKind),
}

/// Relays the response body after the head already in `out`: one write when
/// the whole answer is at hand, else as it arrives.
pub(super) async fn relay_body(
    client: &mut TcpStream,
    p: &mut Pinned,
    framing: Framing,
    out: &mut Vec<u8>,
) -> Result<(), Side> {
    let mut scanner = ChunkScanner::default();
    // Bytes of the body still to come (`None`: until the framing says so).
    let mut left: Option<u64> = match framing {
        Framing::Empty => Some(0),
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::UntilClose => None,
    };
    loop {
        // Take what the buffer holds of the body.
        let avail = p.buf.len();
        let (take, end) = match framing {
            Framing::Empty | Framing::Length(_) => {
                let l = left.unwrap_or(0);
                let t = l.min(avail as u64);
                left = Some(l - t);
                (t as usize, l == t)
            }
            Framing::Chunked => match scanner.feed(&p.buf) {
                Ok(Some(n)) => (n, true),
                Ok(None) => (avail, false),
                Err(_) => {
                    // The answer is broken: the client gets what was
                    // relayed so far, then its connection ends.
                    let _ = write_client(client, out).await;
                    return Err(Side::Upstream(FailureKind::Protocol));
                }
            },
            Framing::UntilClose => (avail, false),
        };
        out.extend_from_slice(&p.buf[..take]);
        p.buf.advance(take);
        if end || out.len() >= 64 * 1024 {
            if !write_client(client, out).await {
                return Err(Side::Client);
            }
            out.clear();
        }
        if end {
            return Ok(());
        }
        if !out.is_empty() {
            // Do not sit on relayed bytes while waiting for the next ones.
            if !write_client(client, out).await {
                return Err(Side::Client);
            }
            out.clear();
        }
        if p.buf.capacity() - p.buf.len() < 4096 {
            p.buf.reserve(16 * 1024);
        }
        match tokio::time::timeout(READ_TIMEOUT, p.stream.read_buf(&mut p.buf)).await {
            Ok(Ok(0)) if framing == Framing::UntilClose => return Ok(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Side::Upstream(FailureKind::Io)),
            Ok(Ok(_)) => {}
            Err(_) => return Err(Side::Upstream(FailureKind::Timeout)),
        }
    }
}

/// A complete small JSON answer that ends the connection.
pub(super) fn json_answer(
    status: u16,
    retry_after: Option<u64>,
    body: &serde_json::Value,
) -> Vec<u8> {
    let text = body.to_string();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let retry = retry_after.map_or(String::new(), |s| format!("retry-after: {s}\r\n"));
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

/// Writes to the client; `false` when it is gone or has not taken a byte
/// for [`CLIENT_TIMEOUT`].
pub(super) async fn write_client(client: &mut TcpStream, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(CLIENT_TIMEOUT, client.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_rewrite_drops_hop_by_hop_fields() {
        let mut out = Vec::new();
        rewrite_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\n",
            true,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\n"
        );
        // Both framings from the upstream: the client gets the one that
        // counts (Transfer-Encoding), not both.
        out.clear();
        rewrite_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn json_answers_are_complete() {
        let a = json_answer(502, Some(2), &serde_json::json!({"a": 1}));
        assert_eq!(
            String::from_utf8_lossy(&a),
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: 7\r\nretry-after: 2\r\nconnection: close\r\n\r\n{\"a\":1}"
        );
    }
}
