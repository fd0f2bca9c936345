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
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{HttpTarget, ServiceConfig, UpstreamConfig};
use crate::health::tls;
use crate::upstream::runtime::lock;

/// Upstream read timeout: a response (or the next body chunk) slower than
/// this is a failure that counts against the upstream.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle upstream connections kept for reuse this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One upstream, ready to be turned into a pingora [`HttpPeer`].
pub struct PeerTemplate {
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

    /// How long a connect may take (the service's `connect_timeout_ms`).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
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

    /// The upstream path for a client's path and query; `Err` when it has
    /// a dot segment, a way out of the base path (`gateway/path.rs`).
    pub fn upstream_path(&self, path_and_query: &str) -> Result<String, &'static str> {
        super::path::join(&self.target.base_path, path_and_query)
    }
}

/// The certificates of a PEM file (`health::tls`), each also parsed the way
/// pingora will parse it (x509-parser), since pingora panics on failure.
fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = tls::load_certs(path, what)?;
    for c in &certs {
        if x509_parser::parse_x509_certificate(c.as_ref()).is_err() {
            return Err(format!(
                "{what} {}: a certificate does not parse",
                path.display()
            ));
        }
    }
    Ok(certs)
}

fn load_ca(path: &Path) -> Result<Box<[WrappedX509]>, String> {
    let certs = certs(path, "ca_file")?;
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
    let chain = certs(cert, "client_cert")?;
    let raw = tls::load_key(key)?.secret_der().to_vec();
    // pingora converts the bytes back with `try_into().unwrap()`.
    if PrivateKeyDer::try_from(raw.clone()).is_err() {
        return Err(format!(
            "client_key {}: unsupported private key format",
            key.display()
        ));
    }
    Ok(CertKey::new(
        chain.into_iter().map(|c| c.to_vec()).collect(),
        raw,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{Kind, Role};

    fn upstream(url: &str, ca: Option<&Path>) -> (ServiceConfig, UpstreamConfig) {
        let mut up = UpstreamConfig::url("u", url, Role::Primary);
        up.tls.ca_file = ca.map(Path::to_path_buf);
        (ServiceConfig::new("s", Kind::Http, vec![up.clone()]), up)
    }

    #[test]
    fn urls_give_address_authority_and_path() {
        let (svc, up) = upstream("https://ndex.example:8443/api/", None);
        let t = PeerTemplate::new(&svc, &up).unwrap();
        assert_eq!(t.authority, "ndex.example:8443");
        assert_eq!(t.upstream_path("/q?x=1").as_deref(), Ok("/api/q?x=1"));
        assert!(t.upstream_path("/../admin").is_err());
        let (svc, up) = upstream("http://127.0.0.1", None);
        let t = PeerTemplate::new(&svc, &up).unwrap();
        assert_eq!(t.authority, "127.0.0.1");
        assert_eq!(t.upstream_path("/q").as_deref(), Ok("/q"));
    }

    #[test]
    fn bad_tls_files_are_errors_naming_the_file_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        // Valid PEM armour around bytes that are no certificate: pingora's
        // own parser would panic on these.
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let (svc, up) = upstream("https://127.0.0.1:1", Some(&junk));
        let err = PeerTemplate::new(&svc, &up).err().unwrap();
        assert!(err.contains("junk.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        let (svc, up) = upstream("https://127.0.0.1:1", Some(&missing));
        let err = PeerTemplate::new(&svc, &up).err().unwrap();
        assert!(err.contains("missing.pem"), "{err}");
        let (svc, mut up) = upstream("https://127.0.0.1:1", None);
        up.tls.client_cert = Some(junk.clone());
        up.tls.client_key = Some(junk);
        let err = PeerTemplate::new(&svc, &up).err().unwrap();
        assert!(err.contains("junk.pem"), "{err}");
    }
}
