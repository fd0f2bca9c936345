//! `http` and `elasticsearch` probes: one `GET {base_path}{health_path}`
//! over HTTP/1.1 (`Connection: close`), over TLS for `https://` URLs.
//!
//! - `http`: healthy on any 2xx; the body is not read.
//! - `elasticsearch` (`/_cluster/health` by default): the JSON `status` of a
//!   2xx answer decides: `green` healthy, `yellow` healthy but degraded,
//!   `red` failed, anything else a protocol error.
//!
//! The client is hyper's HTTP/1 client connection over the stream
//! [`super::connect`] opened (and TLS by [`super::tls`]): what it reads is
//! bounded by [`MAX_RESPONSE`] (head and body, as received), and so is the
//! decoded body. TLS client configurations ([`super::tls::client_config`])
//! are cached per set of files and rebuilt when a file's mtime changes.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::stream::{copy_io, drive, find_io, io_error, Capped};
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
    let request = request(&target, &full)?;
    let tcp = super::connect(service, upstream).await?;
    if target.tls {
        let config = cached_client_config(&upstream.tls)
            .map_err(|e| ProbeError::Protocol(format!("TLS configuration: {e}")))?;
        let name = ServerName::try_from(target.host.clone()).map_err(|_| {
            ProbeError::Protocol(format!("`{}` is not a valid TLS server name", target.host))
        })?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| handshake_error(e, &target))?;
        exchange(tls, request, want_body).await
    } else {
        exchange(tcp, request, want_body).await
    }
}

/// The `Host` header: the host, with the port unless it is the scheme's
/// default (IPv6 literals in brackets).
pub fn host_header(target: &HttpTarget) -> String {
    let default_port = if target.tls { 443 } else { 80 };
    if target.port == default_port {
        if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        }
    } else {
        target.host_port()
    }
}

/// The request: `GET path` with `Host`, `User-Agent`, `Accept` and
/// `Connection: close`, no body.
pub fn request(target: &HttpTarget, path: &str) -> Result<Request<Empty<Bytes>>, ProbeError> {
    let invalid = || ProbeError::Protocol(format!("invalid request path {:?}", shorten(path)));
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Request::get(path)
        .header(header::HOST, host_header(target))
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "*/*")
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|_| invalid())
}

/// Sends `request` with hyper's HTTP/1 client over `stream` (reads capped
/// at [`MAX_RESPONSE`]), the connection driven in this task; reads the
/// body (at most [`MAX_RESPONSE`] decoded bytes) when `want_body`.
async fn exchange<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
    want_body: bool,
) -> Result<Response, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = Capped::new(stream, MAX_RESPONSE, TOO_LARGE).eof_on_unexpected_eof();
    let (mut sender, conn) = http1::Builder::new()
        .title_case_headers(true)
        .max_buf_size(MAX_RESPONSE)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(&e))?;
    let work = async move {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| hyper_error(&e))?;
        let (parts, body) = resp.into_parts();
        let body = if want_body {
            Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| body_error(&*e))?
                .to_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        let reason = match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
            Some(r) => String::from_utf8_lossy(r.as_bytes()).into_owned(),
            None => parts
                .status
                .canonical_reason()
                .unwrap_or_default()
                .to_string(),
        };
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                (n.as_str().to_string(), v)
            })
            .collect();
        Ok(Response {
            status: parts.status.as_u16(),
            reason,
            headers,
            body,
        })
    };
    drive(work, conn, |e| hyper_error(&e), None).await
}

/// The text of an oversize response.
const TOO_LARGE: &str = "response larger than 65536 bytes";

/// A hyper error as a probe error, with the hand-written client's texts:
/// oversize, truncated and malformed responses are protocol errors, TLS
/// errors name rustls' reason, socket errors stay I/O.
fn hyper_error(e: &hyper::Error) -> ProbeError {
    if let Some(io) = find_io(e) {
        return io_error_of(io);
    }
    let malformed = |what: String| ProbeError::Protocol(ResponseError::Malformed(what).to_string());
    if e.is_parse_too_large() {
        ProbeError::Protocol(ResponseError::TooLarge(MAX_RESPONSE).to_string())
    } else if e.is_incomplete_message() {
        ProbeError::Protocol(ResponseError::Truncated.to_string())
    } else if e.is_parse_status() || (e.is_parse() && e.to_string().contains("version")) {
        malformed(format!("not an HTTP/1.x status line ({e})"))
    } else if e.is_parse() {
        malformed(e.to_string())
    } else {
        ProbeError::Protocol(e.to_string())
    }
}

/// A body error: over the decoded limit, or hyper's.
fn body_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ProbeError {
    if e.is::<LengthLimitError>() {
        ProbeError::Protocol(ResponseError::TooLarge(MAX_RESPONSE).to_string())
    } else if let Some(h) = e.downcast_ref::<hyper::Error>() {
        hyper_error(h)
    } else if let Some(io) = find_io(e) {
        io_error_of(io)
    } else {
        ProbeError::Protocol(e.to_string())
    }
}

/// An I/O error under hyper: the read cap and TLS errors as protocol
/// errors, a body cut short as truncated, a body hyper could not decode
/// (chunked framing) as malformed, the rest as I/O.
fn io_error_of(e: &std::io::Error) -> ProbeError {
    if let ProbeError::Protocol(m) = io_error(e) {
        return ProbeError::Protocol(m);
    }
    if let Some(reason) = tls_reason(e) {
        return ProbeError::Protocol(format!("TLS: {reason}"));
    }
    match e.kind() {
        ErrorKind::UnexpectedEof if e.get_ref().is_some() => {
            ProbeError::Protocol(ResponseError::Truncated.to_string())
        }
        ErrorKind::InvalidData | ErrorKind::InvalidInput => {
            ProbeError::Protocol(ResponseError::Malformed(e.to_string()).to_string())
        }
        _ => ProbeError::Io(copy_io(e)),
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
///
/// The cache is a process-wide static rather than engine state because a
/// probe is a free function called from any service generation. It is safe
/// to share because the key is the identity of what was read (each file's
/// path and mtime): a config is only reused for the very same files, two
/// services with the same files rightly share one, and a rewritten file
/// gets a new key. Entries are immutable `Arc`s; the mutex is held only for
/// the lookup or insert. It grows by one entry per distinct file set (a
/// certificate rotation adds one), which stays small.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Runs one exchange against a peer that reads the request, then
    /// writes `answer` and closes; the request head it saw comes back too.
    async fn answered(answer: Vec<u8>, want_body: bool) -> (Result<Response, ProbeError>, String) {
        let (client, mut server) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server.write_all(&answer).await;
            String::from_utf8(head).unwrap()
        });
        let t = HttpTarget::parse("http://es.example").unwrap();
        let r = exchange(client, request(&t, "/h").unwrap(), want_body).await;
        (r, peer.await.unwrap())
    }

    fn protocol(r: Result<Response, ProbeError>) -> String {
        match r {
            Err(ProbeError::Protocol(m)) => m,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bodies_by_length_chunks_and_close() {
        let (r, head) = answered(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello".to_vec(),
            true,
        )
        .await;
        let r = r.unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (200, "OK", &b"hello"[..])
        );
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(
            head,
            "GET /h HTTP/1.1\r\nHost: es.example\r\nUser-Agent: continuity-probe\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(
            answered(chunked.to_vec(), true).await.0.unwrap().body,
            b"hello, world"
        );
        let to_close = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close";
        assert_eq!(
            answered(to_close.to_vec(), true).await.0.unwrap().body,
            b"until close"
        );
        let interim =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";
        let r = answered(interim.to_vec(), true).await.0.unwrap();
        assert_eq!((r.status, r.reason.as_str()), (503, "Busy"));
    }

    #[tokio::test]
    async fn oversize_truncated_and_malformed_answers() {
        assert_eq!(TOO_LARGE, ResponseError::TooLarge(MAX_RESPONSE).to_string());
        let mut endless = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        endless.resize(MAX_RESPONSE + 10, b'x');
        assert_eq!(protocol(answered(endless, true).await.0), TOO_LARGE);
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_RESPONSE + 1
        );
        let mut big = big.into_bytes();
        big.resize(big.len() + MAX_RESPONSE + 1, b'x');
        assert_eq!(protocol(answered(big, true).await.0), TOO_LARGE);
        // Head only: the body is not read.
        let mut head_only = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        head_only.extend_from_slice(b"abc");
        assert_eq!(answered(head_only, false).await.0.unwrap().status, 200);

        let cut = b"HTTP/1.1 200 OK\r\nContent-".to_vec();
        assert_eq!(
            protocol(answered(cut, true).await.0),
            ResponseError::Truncated.to_string()
        );
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc".to_vec();
        assert_eq!(
            protocol(answered(short, true).await.0),
            ResponseError::Truncated.to_string()
        );
        let m = protocol(
            answered(b"-ERR wrong protocol\r\n\r\n".to_vec(), true)
                .await
                .0,
        );
        assert!(m.contains("not an HTTP/1.x status line"), "{m}");
        let m = protocol(answered(b"HTTP/1.1 2000 OK\r\n\r\n".to_vec(), true).await.0);
        assert!(m.starts_with("malformed HTTP response"), "{m}");
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
        let m = protocol(answered(bad_chunk, true).await.0);
        assert!(m.starts_with("malformed HTTP response"), "{m}");
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
    fn request_head() {
        let t = HttpTarget::parse("https://es.example/base").unwrap();
        let r = request(&t, "/base/_cluster/health").unwrap();
        assert_eq!(r.uri(), "/base/_cluster/health");
        assert_eq!(r.headers()[header::HOST], "es.example");
        assert_eq!(r.headers()[header::CONNECTION], "close");
        let t = HttpTarget::parse("http://[::1]:8080").unwrap();
        assert_eq!(host_header(&t), "[::1]:8080");
        assert!(request(&t, "/a b").is_err());
        assert!(request(&t, "/a\r\nX: y").is_err());
        assert!(request(&t, "a").is_err());
    }
}
