//! How the gateway reaches each upstream: its address (resolved lazily and
//! re-resolved after a failure), TLS with SNI, the upstream's own CA and a
//! client certificate for mTLS, all checked when the service starts so that
//! pingora (which panics on a bad certificate or an unparsable address) only
//! ever sees material we have already parsed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{HttpTarget, ServiceConfig, UpstreamConfig};
use crate::upstream::runtime::lock;

/// Upstream read timeout: a response (or the next body chunk) slower than
/// this is a failure that counts against the upstream.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle upstream connections kept for reuse this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One upstream, ready to be turned into a pingora [`HttpPeer`].
pub struct PeerTemplate {
    pub name: String,
    pub target: HttpTarget,
    /// `host[:port]` as the upstream expects in `Host`.
    pub authority: String,
    resolved: Mutex<Option<SocketAddr>>,
    ca: Option<Arc<[WrappedX509]>>,
    cert_key: Option<Arc<CertKey>>,
    connect_timeout: Duration,
}

impl PeerTemplate {
    /// Parses the URL and loads the TLS files; the error names the file.
    pub fn new(svc: &ServiceConfig, up: &UpstreamConfig) -> Result<PeerTemplate, String> {
        let target = up
            .http_target()
            .ok_or_else(|| format!("upstream {}: url is not http(s)://host[:port]", up.name))?;
        let default_port = if target.tls { 443 } else { 80 };
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        let authority = if target.port == default_port {
            host
        } else {
            format!("{host}:{}", target.port)
        };
        let ca = match &up.tls.ca_file {
            Some(p) => Some(Arc::from(load_ca(p)?)),
            None => None,
        };
        let cert_key = match (&up.tls.client_cert, &up.tls.client_key) {
            (Some(c), Some(k)) => Some(Arc::new(load_cert_key(c, k)?)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "upstream {}: client_cert and client_key go together",
                    up.name
                ))
            }
        };
        let resolved = target
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, target.port));
        Ok(PeerTemplate {
            name: up.name.clone(),
            target,
            authority,
            resolved: Mutex::new(resolved),
            ca,
            cert_key,
            connect_timeout: svc.health.connect_timeout,
        })
    }

    /// The address to connect to, resolving the host name when needed.
    pub async fn address(&self) -> std::io::Result<SocketAddr> {
        if let Some(a) = *lock(&self.resolved) {
            return Ok(a);
        }
        let found = tokio::net::lookup_host(self.target.host_port())
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{}: no address", self.target.host),
                )
            })?;
        *lock(&self.resolved) = Some(found);
        Ok(found)
    }

    /// Forgets a resolved host name (not an IP literal) after a failure.
    pub fn forget_address(&self) {
        if self.target.host.parse::<std::net::IpAddr>().is_err() {
            *lock(&self.resolved) = None;
        }
    }

    /// A peer for one request.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.target.tls, self.target.host.clone());
        peer.client_cert_key = self.cert_key.clone();
        peer.options.ca = self.ca.clone();
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout * 2);
        peer.options.read_timeout = Some(READ_TIMEOUT);
        peer.options.write_timeout = Some(READ_TIMEOUT);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        peer
    }

    /// The upstream path for a client's path and query.
    pub fn upstream_path(&self, path_and_query: &str) -> String {
        format!("{}{}", self.target.base_path, path_and_query)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    for c in &certs {
        // pingora parses these again with x509-parser and panics on failure.
        if x509_parser::parse_x509_certificate(c.as_ref()).is_err() {
            return Err(format!("{}: a certificate does not parse", path.display()));
        }
    }
    Ok(certs)
}

fn load_ca(path: &Path) -> Result<Box<[WrappedX509]>, String> {
    let certs = certs(path)?;
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(certs
        .into_iter()
        .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
        .collect())
}

fn load_cert_key(cert: &Path, key: &Path) -> Result<CertKey, String> {
    let chain = certs(cert)?;
    let pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no private key found: {e}", key.display()))?;
    let raw = key_der.secret_der().to_vec();
    // pingora converts the bytes back with `try_into().unwrap()`.
    if PrivateKeyDer::try_from(raw.clone()).is_err() {
        return Err(format!("{}: unsupported private key format", key.display()));
    }
    Ok(CertKey::new(
        chain.into_iter().map(|c| c.to_vec()).collect(),
        raw,
    ))
}
