//! The accept loop of a gateway with TLS on either side (pingora serves
//! every request there), and the HTTPS listener's certificate.

use std::path::Path;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio::sync::watch;

use super::proxy;
use super::ClientCap;
use crate::upstream::runtime::ServiceRt;

/// A TLS handshake must be done within this, or the socket is closed.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The accept loop of a gateway with TLS on either side: each client socket
/// (under `max_client_connections`), after its TLS handshake when the
/// listener has a certificate, is served by pingora's HTTP app, as
/// pingora's own listening service would.
pub(super) async fn serve_pingora(
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
pub(super) fn server_tls(cert: &Path, key: &Path) -> Result<Arc<SingleCertAndKey>, String> {
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
pub(super) fn tls_settings(resolver: Arc<SingleCertAndKey>) -> Result<TlsSettings, String> {
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| format!("tls: {e}"))?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}
