//! `http`, `elasticsearch` and `websocket` probes against real servers
//! started here on 127.0.0.1: a small hand-written HTTP/1.1 server over TCP
//! (plain, TLS, and TLS requiring client certificates, with a throwaway CA
//! from rcgen) and a tokio-tungstenite WebSocket server.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use continuity_proxy::config::{Kind, Role, ServiceConfig, UpstreamConfig, UpstreamTls};
use continuity_proxy::health::{self, FailureKind, ProbeOutcome};
use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn service(kind: Kind, up: &UpstreamConfig) -> ServiceConfig {
    let mut s = ServiceConfig::new("svc", kind, vec![up.clone()]);
    s.health.timeout = Duration::from_secs(5);
    s.health.connect_timeout = Duration::from_secs(2);
    s
}

async fn probe(kind: Kind, up: &UpstreamConfig) -> ProbeOutcome {
    health::run_probe(&service(kind, up), up).await
}

fn failed(out: &ProbeOutcome, kind: FailureKind, needle: &str) {
    assert!(!out.ok, "expected a failure: {out:?}");
    assert_eq!(out.failure, Some(kind), "{out:?}");
    let err = out.error.as_deref().unwrap_or_default();
    assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
}

// ------------------------------------------------------------ HTTP server

/// Answers a request head with raw response bytes.
type Handler = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// A real HTTP/1.1 server: one response per connection, then close. Every
/// request head it saw is kept.
struct HttpServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    async fn start(tls: Option<Arc<ServerConfig>>, handler: Handler) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, handler, log).await;
                            }
                        }
                        None => serve(tcp, handler, log).await,
                    }
                });
            }
        });
        HttpServer { addr, seen }
    }

    async fn plain(handler: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> HttpServer {
        HttpServer::start(None, Arc::new(handler)).await
    }

    fn url(&self, scheme: &str, base: &str) -> String {
        format!("{scheme}://{}{base}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    handler: Handler,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    log.lock().unwrap().push(head.clone());
    let resp = handler(&head);
    let _ = s.write_all(&resp).await;
    let _ = s.shutdown().await;
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn url_upstream(url: &str) -> UpstreamConfig {
    UpstreamConfig::url("u", url, Role::Primary)
}

// ------------------------------------------------------------------- PKI

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

type Issuer = rcgen::Issuer<'static, rcgen::KeyPair>;

fn new_ca(cn: &str) -> (rcgen::Certificate, Issuer) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer,
    cn: &str,
    sans: Vec<String>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    (params.signed_by(&key, issuer).unwrap(), key)
}

impl Pki {
    fn new() -> Pki {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let dir = tempfile::tempdir().unwrap();
        let (ca, issuer) = new_ca("probe test CA");
        let (other_ca, other_issuer) = new_ca("unrelated CA");
        let (server, server_key) = leaf(
            &issuer,
            "server",
            vec!["127.0.0.1".into(), "localhost".into()],
            ServerAuth,
        );
        let (client, client_key) = leaf(&issuer, "probe", Vec::new(), ClientAuth);
        let (other, other_key) = leaf(&other_issuer, "stranger", Vec::new(), ClientAuth);
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            other_ca: write("other-ca.pem", other_ca.pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            other_client_cert: write("other-client.pem", other.pem()),
            other_client_key: write("other-client.key", other_key.serialize_pem()),
            ca_der: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            _dir: dir,
        }
    }

    /// A server config; with `mtls`, client certificates from our CA are required.
    fn server(&self, mtls: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mtls {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        Arc::new(
            builder
                .with_single_cert(self.server_chain.clone(), key)
                .unwrap(),
        )
    }

    fn tls(&self, ca: &Path, client: Option<(&PathBuf, &PathBuf)>) -> UpstreamTls {
        UpstreamTls {
            ca_file: Some(ca.to_path_buf()),
            client_cert: client.map(|(c, _)| c.clone()),
            client_key: client.map(|(_, k)| k.clone()),
        }
    }
}

// ------------------------------------------------------------------ http

#[tokio::test]
async fn http_2xx_is_healthy_and_the_request_is_well_formed() {
    let srv = HttpServer::plain(|_| response("204 No Content", "")).await;
    let up = url_upstream(&srv.url("http", "/base/"));
    let mut svc = service(Kind::Http, &up);
    svc.health_path = Some("/healthz".into());
    let out = health::run_probe(&svc, &up).await;
    assert!(out.ok, "{out:?}");
    assert_eq!((out.degraded.as_deref(), out.role), (None, None));
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    let head = &reqs[0];
    assert!(head.starts_with("GET /base/healthz HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nHost: {}\r\n", srv.addr)),
        "{head}"
    );
    assert!(
        head.contains("\r\nUser-Agent: continuity-probe\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");

    // Default path "/"; a large read-to-close page still passes (head only).
    let big = "x".repeat(200 * 1024);
    let srv = HttpServer::plain(move |_| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n{big}").into_bytes()
    })
    .await;
    let out = probe(Kind::Http, &url_upstream(&srv.url("http", ""))).await;
    assert!(out.ok, "{out:?}");
    assert!(srv.requests()[0].starts_with("GET / HTTP/1.1\r\n"));
}

#[tokio::test]
async fn http_non_2xx_fails_with_the_status() {
    let srv = HttpServer::plain(|_| response("500 Internal Server Error", "boom")).await;
    let out = probe(Kind::Http, &url_upstream(&srv.url("http", ""))).await;
    failed(
        &out,
        FailureKind::Protocol,
        "HTTP 500 Internal Server Error",
    );

    let srv = HttpServer::plain(|_| {
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n".to_vec()
    })
    .await;
    let out = probe(Kind::Http, &url_upstream(&srv.url("http", ""))).await;
    failed(&out, FailureKind::Protocol, "HTTP 301");

    let srv = HttpServer::plain(|_| response("401 Unauthorized", "")).await;
    let out = probe(Kind::Http, &url_upstream(&srv.url("http", ""))).await;
    failed(&out, FailureKind::Auth, "HTTP 401");

    // Not HTTP at all.
    let srv = HttpServer::plain(|_| b"-ERR wrong protocol\r\n\r\n".to_vec()).await;
    let out = probe(Kind::Http, &url_upstream(&srv.url("http", ""))).await;
    failed(&out, FailureKind::Protocol, "not an HTTP/1.x status line");

    // Closed before a complete response.
    let srv = HttpServer::plain(|_| b"HTTP/1.1 200 OK\r\nContent-".to_vec()).await;
    let out = probe(Kind::Http, &url_upstream(&srv.url("http", ""))).await;
    failed(
        &out,
        FailureKind::Protocol,
        "connection closed before a complete response",
    );
}

#[tokio::test]
async fn refused_port_is_refused() {
    let port = free_port();
    for kind in [Kind::Http, Kind::Elasticsearch] {
        let out = probe(kind, &url_upstream(&format!("http://127.0.0.1:{port}"))).await;
        failed(&out, FailureKind::Refused, "");
    }
    let up = UpstreamConfig::at("ws", &format!("127.0.0.1:{port}"), Role::Primary);
    failed(&probe(Kind::Websocket, &up).await, FailureKind::Refused, "");
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accepted, never answered
        }
    });
    let cases = [
        (Kind::Http, url_upstream(&format!("http://{addr}"))),
        (Kind::Http, url_upstream(&format!("https://{addr}"))),
        (Kind::Elasticsearch, url_upstream(&format!("http://{addr}"))),
        (
            Kind::Websocket,
            UpstreamConfig::at("ws", &addr.to_string(), Role::Primary),
        ),
    ];
    for (kind, up) in cases {
        let mut svc = service(kind, &up);
        svc.health.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let out = health::run_probe(&svc, &up).await;
        // It accepts connections: unanswered (busy or hung, judged with
        // busy_grace_ms), not a plain timeout (issue #18).
        failed(&out, FailureKind::Unanswered, "timed out after 300 ms");
        assert!(started.elapsed() < Duration::from_secs(2), "{kind:?}");
    }
}

// ----------------------------------------------------------------- https

#[tokio::test]
async fn https_with_our_ca_is_healthy_and_a_wrong_ca_fails() {
    let pki = Pki::new();
    let srv = HttpServer::start(
        Some(pki.server(false)),
        Arc::new(|_: &str| response("200 OK", "ok")),
    )
    .await;
    let mut up = url_upstream(&srv.url("https", "/svc"));
    up.tls = pki.tls(&pki.ca, None);
    let out = probe(Kind::Http, &up).await;
    assert!(out.ok, "{out:?}");
    assert!(srv.requests()[0].starts_with("GET /svc/ HTTP/1.1\r\n"));

    // By host name too (SNI "localhost", a DNS SAN).
    let mut by_name = url_upstream(&format!("https://localhost:{}/svc", srv.addr.port()));
    by_name.tls = pki.tls(&pki.ca, None);
    assert!(probe(Kind::Http, &by_name).await.ok);

    up.tls = pki.tls(&pki.other_ca, None);
    let out = probe(Kind::Http, &up).await;
    failed(&out, FailureKind::Protocol, "TLS handshake");
    assert!(
        out.error
            .as_deref()
            .unwrap_or_default()
            .contains("certificate"),
        "{out:?}"
    );

    // The system roots do not know our CA either.
    up.tls = UpstreamTls::default();
    let out = probe(Kind::Http, &up).await;
    assert!(!out.ok, "{out:?}");

    // Plain HTTP to a TLS port: a readable protocol error.
    let out = probe(Kind::Http, &url_upstream(&srv.url("http", ""))).await;
    assert!(!out.ok, "{out:?}");

    // A CA file without a certificate: the error names it.
    let empty = pki.ca.with_file_name("empty.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    up.tls = pki.tls(&empty, None);
    let out = probe(Kind::Http, &up).await;
    failed(&out, FailureKind::Protocol, "no certificate found");
    assert!(
        out.error
            .as_deref()
            .unwrap_or_default()
            .contains("empty.pem"),
        "{out:?}"
    );
}

#[tokio::test]
async fn mtls_needs_our_client_certificate() {
    let pki = Pki::new();
    let srv = HttpServer::start(
        Some(pki.server(true)),
        Arc::new(|_: &str| response("200 OK", "ok")),
    )
    .await;
    let mut up = url_upstream(&srv.url("https", ""));
    up.tls = pki.tls(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let out = probe(Kind::Http, &up).await;
    assert!(out.ok, "{out:?}");

    up.tls = pki.tls(&pki.ca, None);
    let out = probe(Kind::Http, &up).await;
    assert!(!out.ok, "{out:?}");
    assert_ne!(out.failure, Some(FailureKind::Timeout), "{out:?}");

    up.tls = pki.tls(
        &pki.ca,
        Some((&pki.other_client_cert, &pki.other_client_key)),
    );
    let out = probe(Kind::Http, &up).await;
    assert!(!out.ok, "{out:?}");

    // Exactly the accepted connections answered.
    assert_eq!(srv.requests().len(), 1);

    // A certificate without its key is a configuration error.
    up.tls = UpstreamTls {
        ca_file: Some(pki.ca.clone()),
        client_cert: Some(pki.client_cert.clone()),
        client_key: None,
    };
    let out = probe(Kind::Http, &up).await;
    failed(
        &out,
        FailureKind::Protocol,
        "client_cert is set without client_key",
    );
}

// --------------------------------------------------------- elasticsearch

fn es_server(body: &'static str) -> impl Fn(&str) -> Vec<u8> + Send + Sync + 'static {
    move |_| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

#[tokio::test]
async fn elasticsearch_cluster_status() {
    let green = HttpServer::plain(es_server(
        r#"{"cluster_name":"c","status":"green","unassigned_shards":0}"#,
    ))
    .await;
    let up = url_upstream(&green.url("http", "/es"));
    let out = probe(Kind::Elasticsearch, &up).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.degraded, None);
    assert!(green.requests()[0].starts_with("GET /es/_cluster/health HTTP/1.1\r\n"));

    // Yellow, chunked: ok but degraded.
    let yellow = HttpServer::plain(|_| {
        let body = r#"{"cluster_name":"c","status":"yellow","unassigned_shards":2}"#;
        let (a, b) = body.split_at(10);
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .into_bytes()
    })
    .await;
    let out = probe(Kind::Elasticsearch, &url_upstream(&yellow.url("http", ""))).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.degraded.as_deref(),
        Some("cluster status yellow (2 unassigned shards)")
    );

    // Red, read to close: down.
    let red = HttpServer::plain(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"status\":\"red\"}".to_vec()
    })
    .await;
    let out = probe(Kind::Elasticsearch, &url_upstream(&red.url("http", ""))).await;
    failed(&out, FailureKind::Protocol, "cluster status red");

    // Garbage and unknown statuses.
    let garbage = HttpServer::plain(es_server("<html>not json</html>")).await;
    let out = probe(Kind::Elasticsearch, &url_upstream(&garbage.url("http", ""))).await;
    failed(&out, FailureKind::Protocol, "not JSON");
    let blue = HttpServer::plain(es_server(r#"{"status":"blue"}"#)).await;
    let out = probe(Kind::Elasticsearch, &url_upstream(&blue.url("http", ""))).await;
    failed(&out, FailureKind::Protocol, "unknown cluster status `blue`");

    // A non-2xx answer fails with its status.
    let busy = HttpServer::plain(|_| response("503 Service Unavailable", "{}")).await;
    let out = probe(Kind::Elasticsearch, &url_upstream(&busy.url("http", ""))).await;
    failed(&out, FailureKind::Protocol, "HTTP 503");

    // An endless body is cut at 64 KiB.
    let huge = HttpServer::plain(|_| {
        let mut r = b"HTTP/1.1 200 OK\r\n\r\n{\"status\":\"green\",\"x\":\"".to_vec();
        r.resize(r.len() + 100 * 1024, b'a');
        r
    })
    .await;
    let out = probe(Kind::Elasticsearch, &url_upstream(&huge.url("http", ""))).await;
    failed(
        &out,
        FailureKind::Protocol,
        "response larger than 65536 bytes",
    );
}

#[tokio::test]
async fn elasticsearch_over_https() {
    let pki = Pki::new();
    let srv = HttpServer::start(
        Some(pki.server(true)),
        Arc::new(es_server(r#"{"status":"yellow"}"#)),
    )
    .await;
    let mut up = url_upstream(&srv.url("https", ""));
    up.tls = pki.tls(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let out = probe(Kind::Elasticsearch, &up).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.degraded.as_deref(), Some("cluster status yellow"));
}

// `yellow_makes_the_service_degraded` moved in-crate (proxy/src/upstream/harness_tests.rs):
// it drives the service runtime, which is crate-internal.

// ------------------------------------------------------------- websocket

/// A real WebSocket server (tokio-tungstenite answers pings by itself);
/// returns its address and the paths it was asked for.
// The handshake callback's `Result` type is tungstenite's, large `Err` and all.
#[allow(clippy::result_large_err)]
async fn ws_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let record = |req: &Request, resp: Response| {
                    seen.lock().unwrap().push(req.uri().path().to_string());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, record).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                }
            });
        }
    });
    (addr, paths)
}

#[tokio::test]
async fn websocket_ping_pong() {
    let (addr, paths) = ws_server().await;
    let up = UpstreamConfig::at("ws", &addr.to_string(), Role::Primary);
    let mut svc = service(Kind::Websocket, &up);
    svc.health_path = Some("/live".into());
    let out = health::run_probe(&svc, &up).await;
    assert!(out.ok, "{out:?}");
    // Default path "/".
    let out = probe(Kind::Websocket, &up).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(*paths.lock().unwrap(), vec!["/live", "/"]);
}

#[tokio::test]
async fn websocket_against_plain_http_fails() {
    let srv = HttpServer::plain(|_| response("200 OK", "hello")).await;
    let up = UpstreamConfig::at("ws", &srv.addr.to_string(), Role::Primary);
    let out = probe(Kind::Websocket, &up).await;
    failed(
        &out,
        FailureKind::Protocol,
        "websocket upgrade refused: HTTP 200",
    );
    assert!(srv.requests()[0].contains("Upgrade: websocket"));

    // Upgraded, then closed at once: no pong.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                let _ = ws.close(None).await;
            }
        }
    });
    let up = UpstreamConfig::at("ws", &addr.to_string(), Role::Primary);
    let out = probe(Kind::Websocket, &up).await;
    assert!(!out.ok, "{out:?}");
}
