//! rustls client configuration for HTTPS upstreams (probes and the HTTP
//! gateway): trust `ca_file` if set, else the system's root certificates;
//! present `client_cert`/`client_key` (mTLS) when both are set.
//!
//! The provider is always rustls' `ring` (no process-level default is
//! consulted, so it cannot panic on a missing or ambiguous provider). Nothing
//! is cached here: building reads the PEM files (and the system roots) every
//! time, so callers keep the `Arc` they get.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::UpstreamTls;

/// A rustls client configuration for `tls` (ring provider, TLS 1.2 and 1.3,
/// no ALPN). Errors name the file and what is wrong with it, e.g.
/// `ca_file certs/x.pem: no certificate found`.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
    let identity = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some((cert, load_certs(cert, "client_cert")?, load_key(key)?)),
        (None, None) => None,
        (Some(_), None) => return Err("client_cert is set without client_key".into()),
        (None, Some(_)) => return Err("client_key is set without client_cert".into()),
    };
    let roots = root_store(tls.ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((path, chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client_cert {}: {e}", path.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The trust anchors: every certificate of `ca_file`, or the system's roots.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path, "ca_file")? {
                roots.add(cert).map_err(|e| {
                    format!("ca_file {}: invalid CA certificate: {e}", path.display())
                })?;
            }
        }
        None => {
            // Unreadable individual system certificates are skipped; only
            // an empty result is an error.
            let certs = rustls_native_certs::load_native_certs()
                .map_err(|e| format!("system root certificates: {e}"))?;
            roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                return Err("no system root certificates found; set tls.ca_file".into());
            }
        }
    }
    Ok(roots)
}

/// All certificates of a PEM file; an error when there is none.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {shown}: {}", pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {shown}: {}", pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{what} {shown}: no certificate found"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("client_key {}: no private key found", path.display())
        }
        e => format!("client_key {}: {}", path.display(), pem_error(e)),
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        e => format!("invalid PEM ({e})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("x.pem");
        std::fs::write(&empty, "not a pem\n").unwrap();
        let tls = UpstreamTls {
            ca_file: Some(empty.clone()),
            ..UpstreamTls::default()
        };
        let err = client_config(&tls).unwrap_err();
        assert_eq!(
            err,
            format!("ca_file {}: no certificate found", empty.display())
        );

        let missing = dir.path().join("missing.pem");
        let tls = UpstreamTls {
            ca_file: Some(missing.clone()),
            ..UpstreamTls::default()
        };
        let err = client_config(&tls).unwrap_err();
        assert!(
            err.starts_with(&format!("ca_file {}: ", missing.display())),
            "{err}"
        );

        let tls = UpstreamTls {
            client_cert: Some(empty.clone()),
            ..UpstreamTls::default()
        };
        assert_eq!(
            client_config(&tls).unwrap_err(),
            "client_cert is set without client_key"
        );
        assert!(load_key(&empty)
            .unwrap_err()
            .contains("no private key found"));
    }
}
