//! HTTPS for the control plane: `load_server_config` and `serve_tls` over
//! real sockets, with a throwaway CA and server certificate from rcgen.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use continuity_control::config::ControlConfig;
use continuity_control::tls::{load_server_config, serve_tls, TlsError, TlsListener};
use continuity_control::{router, AppState};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// ---- PKI ------------------------------------------------------------------

struct Pki {
    _dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    cert: PathBuf,
    key: PathBuf,
    /// A key that belongs to no certificate here.
    other_key: PathBuf,
    dir: PathBuf,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "continuity test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = params.signed_by(&server_key, &issuer).expect("server cert");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    // Leaf first, then the CA: a full chain as operators usually deploy it.
    std::fs::write(
        path("control.pem"),
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )
    .expect("write cert");
    std::fs::write(path("control.key"), server_key.serialize_pem()).expect("write key");
    let other = KeyPair::generate().expect("other key");
    std::fs::write(path("other.key"), other.serialize_pem()).expect("write other key");
    Pki {
        ca: ca_cert.der().clone(),
        cert: path("control.pem"),
        key: path("control.key"),
        other_key: path("other.key"),
        dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

// ---- server ---------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve_tls returns after shutdown")
            .expect("serve task")
    }
}

async fn state(control: ControlConfig) -> AppState {
    let registry = prometheus::Registry::new();
    let engine = continuity_proxy::Engine::start(
        continuity_proxy::config::EngineConfig::default(),
        &registry,
    )
    .await
    .expect("engine starts");
    AppState::new(engine, Arc::new(control), registry).expect("metrics register")
}

async fn start(pki: &Pki, control: ControlConfig) -> Server {
    let tls = load_server_config(&pki.cert, &pki.key).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_tls(listener, state(control).await, tls, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

// ---- client ---------------------------------------------------------------

fn client_config(trust: Option<&CertificateDer<'static>>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = trust {
        roots.add(ca.clone()).expect("add CA");
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tcp_from(addr: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    match from {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::new(ip, 0)).expect("bind client");
            socket.connect(addr).await.expect("connect")
        }
    }
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
    from: Option<IpAddr>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(addr, from).await;
    let name = ServerName::try_from(name.to_string()).expect("server name");
    tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake finishes in time")
}

fn request(path: &str, bearer: Option<&str>) -> Request<Empty<Bytes>> {
    let mut b = Request::builder().uri(path).header("host", "localhost");
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Empty::new()).expect("request")
}

/// One HTTP/1.1 request over a fresh TLS connection.
async fn https_get(
    server: &Server,
    ca: &CertificateDer<'static>,
    path: &str,
    bearer: Option<&str>,
    from: Option<IpAddr>,
) -> (StatusCode, String) {
    let tls = tls_connect(
        server.addr,
        client_config(Some(ca), &[b"http/1.1"]),
        "localhost",
        from,
    )
    .await
    .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(request(path, bearer))
        .await
        .expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---- load_server_config ---------------------------------------------------

#[test]
fn loads_a_matching_pair_with_alpn() {
    let pki = pki();
    let config = load_server_config(&pki.cert, &pki.key).expect("loads");
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    // One combined file (certificate and key) works as both.
    let combined = pki.dir.join("combined.pem");
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&pki.cert).expect("cert"),
        std::fs::read_to_string(&pki.key).expect("key")
    );
    std::fs::write(&combined, both).expect("write");
    load_server_config(&combined, &combined).expect("combined file loads");
}

#[test]
fn missing_file_is_named() {
    let pki = pki();
    let missing = pki.dir.join("nope.pem");
    let e = load_server_config(&missing, &pki.key).expect_err("missing cert");
    assert!(matches!(e, TlsError::Read { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("certificate") && msg.contains("nope.pem"),
        "{msg}"
    );

    let e = load_server_config(&pki.cert, &missing).expect_err("missing key");
    let msg = e.to_string();
    assert!(msg.contains("key") && msg.contains("nope.pem"), "{msg}");
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let pki = pki();
    let e = load_server_config(&pki.cert, &pki.other_key).expect_err("mismatch");
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("other.key") && msg.contains("control.pem") && msg.contains("does not match"),
        "{msg}"
    );
}

#[test]
fn files_without_a_certificate_or_a_key_are_refused() {
    let pki = pki();
    // The key file has no CERTIFICATE block; the cert file has no key.
    let e = load_server_config(&pki.key, &pki.key).expect_err("no cert");
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
    assert!(e.to_string().contains("control.key"), "{e}");
    let e = load_server_config(&pki.cert, &pki.cert).expect_err("no key");
    assert!(matches!(e, TlsError::NoKey { .. }), "{e:?}");
    assert!(e.to_string().contains("control.pem"), "{e}");
    let empty = pki.dir.join("empty.pem");
    std::fs::write(&empty, "not PEM at all\n").expect("write");
    let e = load_server_config(&empty, &pki.key).expect_err("empty");
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
}

// ---- serve_tls ------------------------------------------------------------

#[tokio::test]
async fn trusted_client_gets_health_over_https() {
    let pki = pki();
    let server = start(&pki, ControlConfig::default()).await;
    let (status, body) = https_get(&server, &pki.ca, "/api/ops/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "healthy");

    // By IP address too (the certificate names 127.0.0.1).
    let tls = tls_connect(
        server.addr,
        client_config(Some(&pki.ca), &[b"http/1.1"]),
        "127.0.0.1",
        None,
    )
    .await;
    assert!(tls.is_ok(), "{tls:?}");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let pki = pki();
    let server = start(&pki, ControlConfig::default()).await;
    let tls = tls_connect(
        server.addr,
        client_config(Some(&pki.ca), &[b"h2", b"http/1.1"]),
        "localhost",
        None,
    )
    .await
    .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("https://localhost/api/ops/health")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn untrusted_client_fails_the_handshake_and_the_server_goes_on() {
    let pki = pki();
    let server = start(&pki, ControlConfig::default()).await;
    let e = tls_connect(
        server.addr,
        client_config(None, &[b"http/1.1"]),
        "localhost",
        None,
    )
    .await
    .expect_err("no trust in the test CA");
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"));
    assert!(
        matches!(
            inner,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{inner:?}"
    );
    // A wrong name fails as well.
    let e = tls_connect(
        server.addr,
        client_config(Some(&pki.ca), &[b"http/1.1"]),
        "example.com",
        None,
    )
    .await;
    assert!(e.is_err());
    let (status, _) = https_get(&server, &pki.ca, "/api/ops/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_200() {
    let pki = pki();
    let server = start(&pki, ControlConfig::default()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /api/ops/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closes the connection");
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("200"), "{text}");
    assert!(!text.contains("healthy"), "{text}");
    // ...and keeps serving HTTPS.
    let (status, _) = https_get(&server, &pki.ca, "/api/ops/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn half_open_clients_do_not_block_others() {
    let pki = pki();
    let server = start(&pki, ControlConfig::default()).await;
    // Connections that never send a ClientHello, and one that stops halfway.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let t0 = Instant::now();
    for _ in 0..3 {
        let (status, _) = https_get(&server, &pki.ca, "/api/ops/health", None, None).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    // Shutdown is not held up by them either.
    server.stop().await.expect("clean stop");
    drop((idle, partial));
}

#[tokio::test]
async fn stalled_handshakes_are_dropped_after_the_timeout() {
    let pki = pki();
    let tls = load_server_config(&pki.cert, &pki.key).expect("server config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let listener = TlsListener::new(tcp, tls)
        .with_handshake_timeout(Duration::from_millis(200))
        .tap_io(|_| {});
    let app = router(state(ControlConfig::default()).await)
        .into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), stalled.read(&mut buf))
        .await
        .expect("the server closes a stalled handshake");
    // EOF (or a reset): the server gave up on it.
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    server.abort();
}

#[tokio::test]
async fn auth_rate_limit_sees_the_client_address_over_tls() {
    let pki = pki();
    let server = start(
        &pki,
        ControlConfig {
            auth_failures_per_minute: 1,
            ..ControlConfig::default()
        },
    )
    .await;
    let a: IpAddr = [127, 0, 0, 1].into();
    let b: IpAddr = [127, 0, 0, 2].into();
    let path = "/api/ops/failover/status";
    let (s, body) = https_get(&server, &pki.ca, path, Some("bad-token"), Some(a)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, body) = https_get(&server, &pki.ca, path, Some("bad-token"), Some(a)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // Another address has its own budget: the limiter is keyed by the real
    // peer (`ConnectInfo<SocketAddr>`), not one shared fallback address.
    let (s, body) = https_get(&server, &pki.ca, path, Some("bad-token"), Some(b)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let pki = pki();
    let server = start(&pki, ControlConfig::default()).await;
    let addr = server.addr;
    server.stop().await.expect("clean stop");
    assert!(TcpStream::connect(addr).await.is_err());
}
