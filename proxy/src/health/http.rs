//! `http` and `elasticsearch` probes: one `GET {base_path}{health_path}`
//! over HTTP/1.1 (`Connection: close`), over TLS for `https://` URLs.
//!
//! - `http`: healthy on any 2xx; the body is not read.
//! - `elasticsearch` (`/_cluster/health` by default): the JSON `status` of a
//!   2xx answer decides: `green` healthy, `yellow` healthy but degraded,
//!   `red` failed, anything else a protocol error.
//!
//! The client is a minimal hand-written HTTP/1.1 one: responses are bounded
//! by [`MAX_RESPONSE`] (head and body, as received), bodies are framed by
//! `Content-Length`, `Transfer-Encoding: chunked`, or the end of the
//! connection. TLS client configurations ([`super::tls::client_config`])
//! are cached per set of files and rebuilt when a file's mtime changes.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{BoxFuture, HealthCheck, ProbeError, Probed};
use crate::config::{HttpTarget, Kind, ServiceConfig, UpstreamConfig, UpstreamTls};

/// Largest response read (head and body as received): 64 KiB.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// The `User-Agent` of every probe request.
pub const USER_AGENT: &str = "continuity-probe";

/// The service's `health_path`, or the kind's default (`/_cluster/health`
/// for elasticsearch, `/` otherwise).
pub fn health_path(service: &ServiceConfig) -> &str {
    service
        .health_path
        .as_deref()
        .unwrap_or(match service.kind {
            Kind::Elasticsearch => "/_cluster/health",
            _ => "/",
        })
}

/// `kind = "http"`: `GET health_path`, healthy on 2xx.
pub struct HttpCheck;

impl HealthCheck for HttpCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            let path = health_path(service);
            let resp = get(service, upstream, path, false).await?;
            expect_2xx(&resp, path)?;
            Ok(Probed::up())
        })
    }
}

/// `kind = "elasticsearch"`: `GET /_cluster/health`, judged by its `status`.
pub struct ElasticsearchCheck;

impl HealthCheck for ElasticsearchCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            let path = health_path(service);
            let resp = get(service, upstream, path, true).await?;
            expect_2xx(&resp, path)?;
            cluster_status(&resp.body)
        })
    }
}

/// Judges an elasticsearch `_cluster/health` body.
pub fn cluster_status(body: &[u8]) -> Result<Probed, ProbeError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ProbeError::Protocol(format!("cluster health is not JSON: {e}")))?;
    let status = v
        .get("status")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ProbeError::Protocol("cluster health has no string `status`".into()))?;
    let detail = v
        .get("unassigned_shards")
        .and_then(serde_json::Value::as_u64)
        .filter(|n| *n > 0)
        .map(|n| format!(" ({n} unassigned shards)"))
        .unwrap_or_default();
    match status {
        "green" => Ok(Probed::up()),
        "yellow" => Ok(Probed::degraded(format!("cluster status yellow{detail}"))),
        "red" => Err(ProbeError::Unhealthy(format!("cluster status red{detail}"))),
        other => Err(ProbeError::Protocol(format!(
            "unknown cluster status `{}`",
            shorten(other)
        ))),
    }
}

fn expect_2xx(resp: &Response, path: &str) -> Result<(), ProbeError> {
    let what = || format!("GET {path}: HTTP {} {}", resp.status, shorten(&resp.reason));
    match resp.status {
        200..=299 => Ok(()),
        401 | 403 | 407 => Err(ProbeError::Auth(what())),
        _ => Err(ProbeError::Unhealthy(what())),
    }
}

/// One `GET {base_path}{path}` to the upstream's `url`, within the service's
/// connect timeout for the TCP connect (the whole probe is bounded by the
/// caller). With `want_body` false, returns once the head is read.
pub async fn get(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    path: &str,
    want_body: bool,
) -> Result<Response, ProbeError> {
    let target = upstream.http_target().ok_or_else(|| {
        ProbeError::Protocol(format!(
            "upstream {}: `url` is not an http:// or https:// URL",
            upstream.name
        ))
    })?;
    let full = format!("{}{}", target.base_path, path);
    let request = request_bytes(&target, &full)?;
    let tcp = super::connect(service, upstream).await?;
    if target.tls {
        let config = cached_client_config(&upstream.tls)
            .map_err(|e| ProbeError::Protocol(format!("TLS configuration: {e}")))?;
        let name = ServerName::try_from(target.host.clone()).map_err(|_| {
            ProbeError::Protocol(format!("`{}` is not a valid TLS server name", target.host))
        })?;
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| handshake_error(e, &target))?;
        exchange(&mut tls, &request, want_body).await
    } else {
        let mut tcp = tcp;
        exchange(&mut tcp, &request, want_body).await
    }
}

/// The request bytes: `GET` with `Host`, `User-Agent`, `Connection: close`.
pub fn request_bytes(target: &HttpTarget, path: &str) -> Result<Vec<u8>, ProbeError> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProbeError::Protocol(format!(
            "invalid request path {:?}",
            shorten(path)
        )));
    }
    let default_port = if target.tls { 443 } else { 80 };
    let host = if target.port == default_port {
        if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        }
    } else {
        target.host_port()
    };
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    want_body: bool,
) -> Result<Response, ProbeError> {
    stream.write_all(request).await.map_err(stream_error)?;
    stream.flush().await.map_err(stream_error)?;
    read_response(stream, MAX_RESPONSE, want_body).await
}

/// Reads one response of at most `limit` bytes (head only when `want_body`
/// is false).
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
    want_body: bool,
) -> Result<Response, ProbeError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // Never more than limit + 1 bytes: the parser then says TooLarge.
        let room = (limit + 1).saturating_sub(buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..room]).await {
            Ok(n) => n,
            // rustls: the peer closed without close_notify. Taken as the
            // end of the stream; the framing is still checked.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(stream_error(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        let eof = n == 0;
        let parsed = if want_body {
            parse_response(&buf, eof, limit)
        } else {
            parse_head(&buf, eof, limit).map(|h| h.map(|(r, _)| r))
        };
        match parsed.map_err(|e| ProbeError::Protocol(e.to_string()))? {
            Some(r) => return Ok(r),
            None if eof => return Err(ProbeError::Protocol(ResponseError::Truncated.to_string())),
            None => {}
        }
    }
}

/// An I/O error on an established (TLS) stream: TLS errors become protocol
/// errors with rustls' reason.
fn stream_error(e: std::io::Error) -> ProbeError {
    match tls_reason(&e) {
        Some(reason) => ProbeError::Protocol(format!("TLS: {reason}")),
        None => ProbeError::Io(e),
    }
}

/// A failed TLS handshake: a protocol error naming the peer (a timeout stays one).
fn handshake_error(e: std::io::Error, target: &HttpTarget) -> ProbeError {
    if e.kind() == ErrorKind::TimedOut {
        return ProbeError::Timeout;
    }
    let reason = tls_reason(&e).unwrap_or_else(|| e.to_string());
    ProbeError::Protocol(format!(
        "TLS handshake with {} failed: {reason}",
        target.host_port()
    ))
}

fn tls_reason(e: &std::io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(ToString::to_string)
}

type FileStamp = Option<(PathBuf, Option<SystemTime>)>;

fn stamp(path: &Option<PathBuf>) -> FileStamp {
    path.as_ref().map(|p| {
        let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (p.clone(), modified)
    })
}

/// [`super::tls::client_config`], cached by file paths and mtimes (errors
/// are not cached, so a fixed file is picked up by the next probe).
fn cached_client_config(tls: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, String> {
    type Cache = Mutex<HashMap<[FileStamp; 3], Arc<rustls::ClientConfig>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let key = [
        stamp(&tls.ca_file),
        stamp(&tls.client_cert),
        stamp(&tls.client_key),
    ];
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let built = super::tls::client_config(tls)?;
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= 64 {
        map.clear();
    }
    map.insert(key, built.clone());
    Ok(built)
}

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// In order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Decoded body (empty when only the head was read).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("connection closed before a complete response")]
    Truncated,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push_str("...");
        out
    }
}

/// Parses the head (status line and headers) at the start of `buf`,
/// skipping interim `1xx` responses: the response (without body) and the
/// offset of its body. `Ok(None)` when more bytes are needed; `eof` says no
/// more will come.
pub fn parse_head(
    buf: &[u8],
    eof: bool,
    limit: usize,
) -> Result<Option<(Response, usize)>, ResponseError> {
    if buf.len() > limit {
        return Err(ResponseError::TooLarge(limit));
    }
    let mut start = 0;
    loop {
        let rest = buf.get(start..).unwrap_or_default();
        let Some(end) = find(rest, b"\r\n\r\n") else {
            return if eof {
                Err(ResponseError::Truncated)
            } else {
                Ok(None)
            };
        };
        let resp = parse_head_block(&rest[..end])?;
        let body_at = start + end + 4;
        if (100..200).contains(&resp.status) && resp.status != 101 {
            start = body_at;
            continue;
        }
        return Ok(Some((resp, body_at)));
    }
}

fn parse_head_block(head: &[u8]) -> Result<Response, ResponseError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let malformed_status = || {
        ResponseError::Malformed(format!(
            "not an HTTP/1.x status line: {:?}",
            shorten(status_line)
        ))
    };
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(malformed_status());
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed_status());
    }
    let status = code.parse::<u16>().map_err(|_| malformed_status())?;
    let reason = parts.next().unwrap_or_default().trim().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .filter(|(n, _)| !n.is_empty() && !n.contains([' ', '\t']))
            .ok_or_else(|| {
                ResponseError::Malformed(format!("bad header line {:?}", shorten(line)))
            })?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    })
}

fn content_length(resp: &Response) -> Result<Option<usize>, ResponseError> {
    let mut found: Option<usize> = None;
    for (_, v) in resp
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in v.split(',') {
            let part = part.trim();
            let len = part
                .parse::<usize>()
                .ok()
                .filter(|_| part.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    ResponseError::Malformed(format!("bad Content-Length {:?}", shorten(v)))
                })?;
            if found.is_some_and(|f| f != len) {
                return Err(ResponseError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            found = Some(len);
        }
    }
    Ok(found)
}

/// Parses a whole response at the start of `buf` (see [`parse_head`]),
/// decoding a chunked body. `Ok(None)` when more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    eof: bool,
    limit: usize,
) -> Result<Option<Response>, ResponseError> {
    let Some((mut resp, at)) = parse_head(buf, eof, limit)? else {
        return Ok(None);
    };
    let body = buf.get(at..).unwrap_or_default();
    if matches!(resp.status, 204 | 304) || (100..200).contains(&resp.status) {
        return Ok(Some(resp));
    }
    let chunked = resp.header("transfer-encoding").map(|te| {
        te.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    });
    match chunked {
        Some(true) => match decode_chunked(body, limit)? {
            Some(decoded) => {
                resp.body = decoded;
                Ok(Some(resp))
            }
            None if eof => Err(ResponseError::Truncated),
            None => Ok(None),
        },
        // Another transfer coding: the body runs to the end of the connection.
        Some(false) => Ok(read_to_close(resp, body, eof)),
        None => match content_length(&resp)? {
            Some(len) if len > limit => Err(ResponseError::TooLarge(limit)),
            Some(len) => match body.get(..len) {
                Some(b) => {
                    resp.body = b.to_vec();
                    Ok(Some(resp))
                }
                None if eof => Err(ResponseError::Truncated),
                None => Ok(None),
            },
            None => Ok(read_to_close(resp, body, eof)),
        },
    }
}

fn read_to_close(mut resp: Response, body: &[u8], eof: bool) -> Option<Response> {
    eof.then(|| {
        resp.body = body.to_vec();
        resp
    })
}

/// Decodes a complete chunked body at the start of `body` (trailers are
/// skipped); `Ok(None)` when more bytes are needed.
pub fn decode_chunked(body: &[u8], limit: usize) -> Result<Option<Vec<u8>>, ResponseError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&rest[..eol]);
        let digits = line.split(';').next().unwrap_or_default().trim();
        let size = Some(digits)
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or_else(|| {
                ResponseError::Malformed(format!("bad chunk size {:?}", shorten(&line)))
            })?;
        pos += eol + 2;
        if size == 0 {
            // Trailer fields, up to an empty line.
            loop {
                let rest = body.get(pos..).unwrap_or_default();
                match find(rest, b"\r\n") {
                    None => return Ok(None),
                    Some(0) => return Ok(Some(out)),
                    Some(n) => pos += n + 2,
                }
            }
        }
        if size > limit.saturating_sub(out.len()) {
            return Err(ResponseError::TooLarge(limit));
        }
        let Some(data) = body.get(pos..pos + size + 2) else {
            return Ok(None);
        };
        if &data[size..] != b"\r\n" {
            return Err(ResponseError::Malformed(
                "chunk data not followed by CRLF".into(),
            ));
        }
        out.extend_from_slice(&data[..size]);
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const L: usize = MAX_RESPONSE;

    fn full(raw: &[u8]) -> Response {
        parse_response(raw, false, L).unwrap().unwrap()
    }

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA";
        let r = full(raw);
        assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("x-a"), Some("b"));
        // Incomplete until all five bytes are there, whatever the split.
        for cut in 0..raw.len() - 5 {
            assert_eq!(parse_response(&raw[..cut], false, L), Ok(None), "{cut}");
        }
        assert_eq!(
            parse_response(&raw[..raw.len() - 7], true, L),
            Err(ResponseError::Truncated)
        );
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(matches!(
            parse_response(conflicting, false, L),
            Err(ResponseError::Malformed(_))
        ));
        let same = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok";
        assert_eq!(full(same).body, b"ok");
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, L),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(full(raw).body, b"hello, world");
        for cut in 0..raw.len() {
            assert_eq!(parse_response(&raw[..cut], false, L), Ok(None), "{cut}");
        }
        assert_eq!(
            parse_response(&raw[..raw.len() - 1], true, L),
            Err(ResponseError::Truncated)
        );
        let no_trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                            2\r\nhi\r\n0\r\n\r\n";
        assert_eq!(full(no_trailers).body, b"hi");
        // Chunked wins over Content-Length.
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
                     1\r\na\r\n0\r\n\r\n";
        assert_eq!(full(both).body, b"a");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(bad, false, L),
                    Err(ResponseError::Malformed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn read_to_close_and_no_body() {
        let raw = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close";
        assert_eq!(parse_response(raw, false, L), Ok(None));
        assert_eq!(
            parse_response(raw, true, L).unwrap().unwrap().body,
            b"until close"
        );
        let r = full(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((r.status, r.body.len()), (204, 0));
        // Interim responses are skipped.
        let r =
            full(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((r.status, r.reason.as_str()), (503, "Busy"));
        // A reason phrase is optional.
        assert_eq!(
            full(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n").reason,
            ""
        );
    }

    #[test]
    fn oversize() {
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", L + 1);
        assert_eq!(
            parse_response(big.as_bytes(), false, L),
            Err(ResponseError::TooLarge(L))
        );
        let huge_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n";
        assert_eq!(
            parse_response(huge_chunk, false, L),
            Err(ResponseError::TooLarge(L))
        );
        let endless_head = vec![b'a'; L + 1];
        assert_eq!(
            parse_head(&endless_head, false, L),
            Err(ResponseError::TooLarge(L))
        );
        let mut to_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        to_close.resize(L + 1, b'x');
        assert_eq!(
            parse_response(&to_close, false, L),
            Err(ResponseError::TooLarge(L))
        );
        // Exactly at the limit is fine.
        to_close.truncate(L);
        assert!(parse_response(&to_close, true, L).unwrap().is_some());
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(bad, false, L),
                    Err(ResponseError::Malformed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_head(b"", true, L), Err(ResponseError::Truncated));
    }

    #[tokio::test]
    async fn reads_from_a_stream_bounded() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = server
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            for _ in 0..100 {
                if server.write_all(b"400\r\n").await.is_err() {
                    return;
                }
                if server.write_all(&[b'x'; 0x400]).await.is_err() {
                    return;
                }
                if server.write_all(b"\r\n").await.is_err() {
                    return;
                }
            }
        });
        let err = read_response(&mut client, L, true).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("protocol error: response larger than {L} bytes")
        );
        // Head only: returns as soon as the head is in.
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = server
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabc")
                .await;
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        });
        let r = read_response(&mut client, L, false).await.unwrap();
        assert_eq!(r.status, 200);
    }

    #[test]
    fn cluster_statuses() {
        assert_eq!(
            cluster_status(br#"{"cluster_name":"c","status":"green"}"#).unwrap(),
            Probed::up()
        );
        let y = cluster_status(br#"{"status":"yellow","unassigned_shards":3}"#).unwrap();
        assert_eq!(
            y.degraded.as_deref(),
            Some("cluster status yellow (3 unassigned shards)")
        );
        assert!(matches!(
            cluster_status(br#"{"status":"red"}"#),
            Err(ProbeError::Unhealthy(m)) if m == "cluster status red"
        ));
        assert!(matches!(
            cluster_status(br#"{"status":"blue"}"#),
            Err(ProbeError::Protocol(_))
        ));
        assert!(matches!(
            cluster_status(br#"{"status":1}"#),
            Err(ProbeError::Protocol(_))
        ));
        assert!(matches!(
            cluster_status(b"<html>"),
            Err(ProbeError::Protocol(_))
        ));
    }

    #[test]
    fn request() {
        let t = HttpTarget::parse("https://es.example/base").unwrap();
        let r = String::from_utf8(request_bytes(&t, "/base/_cluster/health").unwrap()).unwrap();
        assert_eq!(
            r,
            "GET /base/_cluster/health HTTP/1.1\r\nHost: es.example\r\n\
             User-Agent: continuity-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let t = HttpTarget::parse("http://[::1]:8080").unwrap();
        let r = String::from_utf8(request_bytes(&t, "/").unwrap()).unwrap();
        assert!(r.contains("\r\nHost: [::1]:8080\r\n"), "{r}");
        assert!(request_bytes(&t, "/a b").is_err());
        assert!(request_bytes(&t, "/a\r\nX: y").is_err());
        assert!(request_bytes(&t, "a").is_err());
    }
}
