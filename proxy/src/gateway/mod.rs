//! The HTTP gateway for `kind = "http"` services (federal and vendor APIs),
//! built on pingora's `ProxyHttp` and run on the engine's own tokio runtime:
//! each service is a pingora listening service started with
//! `start_service()` on a socket the engine bound (so a bind failure is
//! reported at start, exit 64, like every other listener).
//!
//! - `h1/`: the lean HTTP/1.1 path of plain-text gateways (a client-pinned
//!   upstream connection); it hands pingora what it does not take. Heads
//!   and chunked bodies are read with the HTTP/1 codec (`protocol::http1`).
//! - `crate::workers`: the per-core threads `h1/` serves connections on.
//! - `proxy/`: the request path (failover, retries, hold/queue/fail).
//! - `queue.rs`: the durable store-and-forward queue under `data_dir`.
//! - `deliver.rs`: delivers queued requests in order once an upstream is back.
//! - `peers.rs`: upstream addresses and TLS (CA, SNI, mTLS).
//! - `path.rs`: the upstream path (base path + client path; dot segments refused).
//! - `access.rs`: the access log and request metrics.
//! - `cap.rs`: the cap on client sockets (`max_client_connections`).
//! - `tls.rs`: the accept loop with TLS on either side, and its certificate.

pub mod access;
mod cap;
mod deliver;
mod h1;
mod path;
pub mod peers;
pub mod proxy;
pub mod queue;
mod tls;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use pingora::server::configuration::ServerConf;
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

pub(crate) use cap::ClientCap;
use tls::{serve_pingora, server_tls, tls_settings};

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
        let workers = crate::workers::Workers::start(
            &format!("gw-{}", svc.name()),
            threads,
            &p.stop,
            DRAIN_GRACE,
        )?;
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
