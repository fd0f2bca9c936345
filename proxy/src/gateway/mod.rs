//! The HTTP gateway for `kind = "http"` services (federal and vendor APIs),
//! built on pingora's `ProxyHttp` and run on the engine's own tokio runtime:
//! each service is a pingora listening service started with
//! `start_service()` on a socket the engine bound (so a bind failure is
//! reported at start, exit 64, like every other listener).
//!
//! - `h1/`: the lean HTTP/1.1 path of plain-text gateways (a client-pinned
//!   upstream connection); it hands pingora what it does not take. Heads
//!   and chunked bodies are read with the HTTP/1 codec (`protocol::http1`).
//! - `workers.rs`: the per-core threads `h1/` serves connections on.
//! - `proxy/`: the request path (failover, retries, hold/queue/fail).
//! - `queue.rs`: the durable store-and-forward queue under `data_dir`.
//! - `deliver.rs`: delivers queued requests in order once an upstream is back.
//! - `peers.rs`: upstream addresses and TLS (CA, SNI, mTLS).
//! - `path.rs`: the upstream path (base path + client path; dot segments refused).
//! - `access.rs`: the access log and request metrics.

pub mod access;
mod deliver;
mod h1;
mod path;
pub mod peers;
pub mod proxy;
pub mod queue;
mod workers;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::AccessLog;
use crate::metrics::HttpMetrics;
use crate::upstream::runtime::{lock, ServiceRt};
use peers::PeerTemplate;
use queue::QueueStore;

/// After a gateway's stop (SIGTERM, reload), its threads finish the
/// connections they serve for this long at most (idle ones close at once).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Clients past `max_client_connections` being answered 503 at once; past
/// this many, a refused client is closed without a word.
const MAX_REFUSING: usize = 64;

/// A gateway listener's cap on client sockets
/// (`max_client_connections`, default 1024): a slot is held for the
/// socket's whole life, on the lean path and after a hand-over to pingora.
pub(crate) struct ClientCap {
    svc: Arc<ServiceRt>,
    slots: Arc<tokio::sync::Semaphore>,
    refusing: Arc<tokio::sync::Semaphore>,
}

impl ClientCap {
    pub(crate) fn new(svc: &Arc<ServiceRt>) -> ClientCap {
        let n = svc.cfg.http.max_client_connections.max(1) as usize;
        ClientCap {
            svc: svc.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(n)),
            refusing: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING)),
        }
    }

    /// A slot for a new client socket, if one is free.
    pub(crate) fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Counts a client past the cap in
    /// `continuity_connections_refused_total{listener}` and, with `answer`,
    /// answers it 503 (`Retry-After: 1`, `Connection: close`); it is just
    /// closed without `answer` (a TLS listener) or when [`MAX_REFUSING`]
    /// others are being answered.
    pub(crate) fn refuse(
        &self,
        mut client: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        answer: bool,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let name = self.svc.name().to_string();
        self.svc
            .metrics
            .connections_refused
            .with_label_values(&[&name])
            .inc();
        let max = self.svc.cfg.http.max_client_connections;
        tracing::debug!(service = %name, %peer, max_client_connections = max, "connection refused (max_client_connections)");
        if !answer {
            return;
        }
        let Ok(slot) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let body = serde_json::json!({"error": {"code": "overloaded", "message":
                format!("continuity: {name} has {max} client connections open (max_client_connections)")}})
            .to_string();
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let wait = std::time::Duration::from_secs(2);
            let _ = tokio::time::timeout(wait, client.write_all(answer.as_bytes())).await;
            let _ = client.shutdown().await;
            // Read what the client still sends, so that the kernel does not
            // answer it with a reset that could destroy the 503.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(wait, async {
                while let Ok(n) = client.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

/// What every request of one gateway shares.
pub struct Shared {
    pub service: String,
    pub peers: Vec<PeerTemplate>,
    /// Per upstream: no request before this instant (a 429's Retry-After).
    /// The cells are the upstreams' own (`UpstreamRt::quota`), so that the
    /// engine's snapshot shows the window.
    pub quota: Vec<Arc<Mutex<Option<Instant>>>>,
    pub queue: Option<QueueStore>,
    /// Wakes the delivery task (a request was queued).
    pub wake: Arc<Notify>,
    pub metrics: HttpMetrics,
    /// Per `[[service.route]]`, then the service's own (`/`).
    pub routes: Vec<access::RouteMetrics>,
    pub shutdown: watch::Receiver<bool>,
    pub tls_listener: bool,
    /// Which requests get a `continuity::access` line (`access_log`).
    pub access_log: AccessLog,
    /// The engine's count of open client connections and in-flight HTTP
    /// requests: a SIGTERM drain waits for it to reach 0.
    pub open: Arc<std::sync::atomic::AtomicU64>,
    /// `continuity_proxy_active_connections{service}`: requests in flight.
    pub active: prometheus::IntGauge,
    /// Client connections the lean path handed to pingora after a failed
    /// attempt, by client address (h1/), until pingora's first request.
    pub handed: Mutex<std::collections::HashMap<std::net::SocketAddr, proxy::Prior>>,
    /// Client connections the lean path handed to pingora for a passing
    /// reason (no usable upstream, a 429 window, a failed attempt,
    /// `max_connections`), by client address, for as long as pingora
    /// serves them. Once the lean path could take their requests again,
    /// pingora closes them after an answer, so that the client reconnects
    /// to the lean path instead of staying on the slower one.
    pub recycle: Mutex<std::collections::HashSet<std::net::SocketAddr>>,
}

impl Shared {
    /// The active upstream, when the lean path may send to it now: usable,
    /// and outside any 429 window.
    pub fn lean_target(&self, svc: &ServiceRt) -> Option<usize> {
        let route = svc.route.load();
        let idx = route.active;
        if !svc.usable(&route, idx) {
            return None;
        }
        let quota = self.quota.get(idx).map(|q| *lock(q))?;
        if quota.is_some_and(|until| until > Instant::now()) {
            return None;
        }
        Some(idx)
    }

    /// Whether pingora should close `client`'s connection after this answer
    /// (see `recycle`); says so once per connection.
    pub fn recycle_now(&self, client: &std::net::SocketAddr, svc: &ServiceRt) -> bool {
        if !lock(&self.recycle).contains(client) || self.lean_target(svc).is_none() {
            return false;
        }
        lock(&self.recycle).remove(client)
    }

    pub fn update_queue_metrics(&self) {
        let Some(q) = &self.queue else {
            return;
        };
        let depth = q.depth(&self.service);
        let bytes = q.pending_bytes(&self.service);
        let age = q.oldest_age(&self.service).map_or(0.0, |d| d.as_secs_f64());
        self.metrics
            .queue_depth
            .with_label_values(&[&self.service])
            .set(depth as i64);
        self.metrics
            .queue_oldest
            .with_label_values(&[&self.service])
            .set(age);
        self.metrics
            .queue_bytes
            .with_label_values(&[&self.service])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Checks what [`start`] would load (URLs, certificates, keys), so that a
/// bad file stops the engine at start instead of one service later.
pub fn check(svc: &crate::config::ServiceConfig) -> Result<(), String> {
    for u in &svc.upstreams {
        PeerTemplate::new(svc, u)?;
    }
    if let (Some(c), Some(k)) = (&svc.http.tls_cert, &svc.http.tls_key) {
        server_tls(c, k)?;
    }
    Ok(())
}

/// Everything the engine hands a gateway.
pub struct GatewayParams<'a> {
    pub svc: Arc<ServiceRt>,
    pub listener: &'a std::net::TcpListener,
    pub stop: watch::Receiver<bool>,
    pub queue: Option<QueueStore>,
    pub access_log: bool,
    pub open: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts `svc`'s gateway (and its queue delivery task) on the current
/// runtime. Errors name the bad setting (a certificate file, an URL).
pub fn start(p: GatewayParams<'_>) -> Result<Vec<JoinHandle<()>>, String> {
    // One process-wide crypto provider (NOTES: ring only).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let svc = p.svc;
    let peers = svc
        .upstreams
        .iter()
        .map(|u| PeerTemplate::new(&svc.cfg, &u.cfg))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match (&svc.cfg.http.tls_cert, &svc.cfg.http.tls_key) {
        (Some(c), Some(k)) => Some(server_tls(c, k)?),
        _ => None,
    };
    let shared = Arc::new(Shared {
        service: svc.name().to_string(),
        quota: svc.upstreams.iter().map(|u| u.quota.clone()).collect(),
        peers,
        queue: p.queue,
        wake: Arc::new(Notify::new()),
        metrics: svc.metrics.http.clone(),
        routes: access::RouteMetrics::for_service(
            &svc.metrics.http,
            svc.name(),
            &svc.cfg
                .http
                .routes
                .iter()
                .map(|r| r.path_prefix.as_str())
                .collect::<Vec<_>>(),
        ),
        shutdown: p.stop.clone(),
        tls_listener: tls.is_some(),
        access_log: if p.access_log {
            svc.cfg.http.access_log
        } else {
            AccessLog::Off
        },
        open: p.open,
        active: svc
            .metrics
            .active_connections
            .with_label_values(&[svc.name()]),
        handed: Mutex::new(std::collections::HashMap::new()),
        recycle: Mutex::new(std::collections::HashSet::new()),
    });
    shared.update_queue_metrics();
    let conf = Arc::new(ServerConf {
        max_retries: proxy::MAX_ATTEMPTS as usize,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    });
    let gateway = proxy::Gateway {
        svc: svc.clone(),
        shared: shared.clone(),
    };
    let mut tasks = Vec::new();
    // Plain text on both sides: the lean HTTP/1.1 path, handing pingora
    // what it does not take (h1/). With TLS on either side: pingora only.
    if tls.is_none() && shared.peers.iter().all(|p| !p.target.tls) {
        let proxy_app = |h2c: bool, gateway: proxy::Gateway| {
            let mut app = pingora::proxy::http_proxy(&conf, gateway);
            let mut opts = pingora::apps::HttpServerOptions::default();
            opts.h2c = h2c;
            // An HTTP/2 connection with no stream open is closed after
            // this (pingora's default is never).
            opts.h2_idle_timeout = Some(h1::IDLE_TIMEOUT);
            app.server_options = Some(opts);
            app
        };
        let h1 = proxy_app(false, gateway);
        let h2 = proxy_app(
            true,
            proxy::Gateway {
                svc: svc.clone(),
                shared: shared.clone(),
            },
        );
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = workers::Workers::start(svc.name(), threads, &p.stop, DRAIN_GRACE)?;
        let listener = p
            .listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("listener: {e}"))?;
        if shared.queue.is_some() {
            tasks.push(tokio::spawn(deliver::run(svc.clone(), shared.clone())));
        }
        let lean = Arc::new(h1::Lean::new(svc, shared, h1, h2, workers));
        tasks.push(tokio::spawn(lean.serve(listener, p.stop)));
        return Ok(tasks);
    }
    // pingora serves every request here; the accept loop is ours, so that
    // `max_client_connections` applies (pingora's own has no cap).
    let mut app = pingora::proxy::http_proxy(&conf, gateway);
    // HTTP/2 in clear text too (prior knowledge); with TLS, ALPN.
    let mut opts = pingora::apps::HttpServerOptions::default();
    opts.h2c = true;
    opts.h2_idle_timeout = Some(h1::IDLE_TIMEOUT);
    app.server_options = Some(opts);
    let acceptor = match tls {
        Some(resolver) => Some(Arc::new(tls_settings(resolver)?.build())),
        None => None,
    };
    let listener = p
        .listener
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| format!("listener: {e}"))?;
    tasks.push(tokio::spawn(serve_pingora(
        svc.clone(),
        Arc::new(app),
        acceptor,
        listener,
        p.stop,
    )));
    if shared.queue.is_some() {
        tasks.push(tokio::spawn(deliver::run(svc, shared)));
    }
    Ok(tasks)
}

/// A TLS handshake must be done within this, or the socket is closed.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The accept loop of a gateway with TLS on either side: each client socket
/// (under `max_client_connections`), after its TLS handshake when the
/// listener has a certificate, is served by pingora's HTTP app, as
/// pingora's own listening service would.
async fn serve_pingora(
    svc: Arc<ServiceRt>,
    app: Arc<pingora::proxy::HttpProxy<proxy::Gateway>>,
    acceptor: Option<Arc<pingora::listeners::tls::Acceptor>>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    use pingora::apps::ServerApp;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use pingora::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::AsRawFd;
    let cap = ClientCap::new(&svc);
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(service = svc.name(), error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        };
        let Some(slot) = cap.admit() else {
            // A plain-text 503 means nothing to a TLS client: just close.
            cap.refuse(client, peer, acceptor.is_none());
            continue;
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        let name = svc.name().to_string();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = client.set_nodelay(true);
            let mut l4 = L4Stream::from(client);
            l4.set_socket_digest(SocketDigest::from_raw_fd(l4.as_raw_fd()));
            let stream: pingora::protocols::Stream = match acceptor {
                None => Box::new(l4),
                Some(a) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, a.tls_handshake(l4)).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(e)) => {
                            tracing::debug!(service = %name, %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(service = %name, %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let mut next = Some(stream);
            while let Some(s) = next {
                next = app.process_new(s, &stop).await;
            }
        });
    }
}

/// The HTTPS listener's certificate, parsed and checked against its key
/// here (pingora's own loader panics on a bad file).
fn server_tls(cert: &Path, key: &Path) -> Result<Arc<SingleCertAndKey>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls_cert {}: no certificate found", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key_der, &provider)
        .map_err(|e| format!("tls_cert/tls_key: {e}"))?;
    Ok(Arc::new(SingleCertAndKey::from(certified)))
}

/// pingora TLS settings serving `resolver`'s certificate, h2 and http/1.1.
fn tls_settings(resolver: Arc<SingleCertAndKey>) -> Result<TlsSettings, String> {
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| format!("tls: {e}"))?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}
