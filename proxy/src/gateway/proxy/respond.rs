//! The gateway's own small JSON answers on a pingora session, and the
//! request-header lookups its hooks share.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

/// Writes a small JSON answer with extra headers.
pub(super) async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(&str, String)],
    body: &serde_json::Value,
) {
    // An answer given before the request body was read: the unread body
    // would be taken for the next request, so this connection ends here.
    if !session.as_mut().is_body_done() {
        session.set_keepalive(None);
    }
    let text = Bytes::from(body.to_string());
    let Ok(mut resp) = ResponseHeader::build(status, Some(4)) else {
        return;
    };
    let _ = resp.insert_header("content-type", "application/json");
    let _ = resp.insert_header("content-length", text.len().to_string());
    for (n, v) in headers {
        let _ = resp.insert_header(n.to_string(), v.as_str());
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(text), true).await;
    }
}

pub(super) async fn too_large(session: &mut Session, max: u64) {
    session.set_keepalive(None);
    let body = serde_json::json!({"error": {
        "code": "payload_too_large",
        "message": format!("request body over max_body_bytes ({max})"),
    }});
    respond(session, 413, &[("connection", "close".to_string())], &body).await;
}

/// Reads and drops a small request body (64 KiB, 1 s at most) before a
/// refusal, so that the client reads the answer instead of a reset (an
/// HTTP/2 stream or a socket closed with unread data); a larger or slower
/// body is left, and the connection ends after the answer.
pub(super) async fn discard_small_body(session: &mut Session) {
    const MAX: usize = 64 * 1024;
    let drain = async {
        let mut seen = 0;
        while seen <= MAX && !session.as_mut().is_body_done() {
            match session.read_request_body().await {
                Ok(Some(chunk)) => seen += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

pub(super) fn path_and_query(req: &RequestHeader) -> String {
    req.uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string())
}

/// Whether a raw HTTP/1 header block has a field `name` (lowercase).
pub(super) fn has_header(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':')
    })
}

pub(super) fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_lookup() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(has_header(raw, b"content-length"));
        assert!(has_header(raw, b"transfer-encoding"));
        assert!(!has_header(raw, b"content-type"));
        assert!(!has_header(
            b"GET /content-length: HTTP/1.1\r\n\r\n",
            b"content-length"
        ));
        assert!(!has_header(
            b"GET / HTTP/1.1\r\nContent-Lengthy: 1\r\n\r\n",
            b"content-length"
        ));
    }
}
