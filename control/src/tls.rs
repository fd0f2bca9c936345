//! HTTPS for the control plane (SPEC 2: `[control] tls_cert`, `tls_key`).
//!
//! [`load_server_config`] turns a PEM certificate chain and a PEM private
//! key into a rustls [`ServerConfig`] (ring provider only, TLS 1.2 and 1.3,
//! ALPN `h2` and `http/1.1`), with errors that name the offending file.
//! [`serve_tls`] serves the same [`router`] as [`crate::serve`] through
//! [`TlsListener`], an [`axum::serve::Listener`] that hands the accept loop
//! ([`crate::limits`]) only
//! finished handshakes, so `ConnectInfo<SocketAddr>` (the auth limiter's
//! client address) and graceful shutdown work exactly as over plain HTTP.
//!
//! Handshakes run in their own tasks, each bounded by [`HANDSHAKE_TIMEOUT`]
//! and at most [`MAX_PENDING_HANDSHAKES`] at once: a slow or half-open
//! client never holds up the others, and a failed handshake only drops that
//! connection (logged at debug), never the server.

#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::{router, AppState};

/// How long a client may take from TCP accept to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; past this, new TCP connections wait in
/// the kernel's accept queue until some finish or time out.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Why the certificate or key could not be used. Every message names the
/// file(s) involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TLS {what} file {} is not valid PEM: {detail}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("TLS certificate file {} contains no certificate (expected a PEM \"CERTIFICATE\" block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("TLS key file {} contains no private key (expected a PEM PKCS#8, RSA or EC private key block)", path.display())]
    NoKey { path: PathBuf },
    #[error("TLS key file {} holds an unusable private key: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error("TLS key file {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot use TLS certificate {} with key {}: {detail}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// Loads a PEM certificate chain (leaf first) from `cert` and a PEM private
/// key (PKCS#8, PKCS#1/RSA or SEC1/EC) from `key`, checks that they belong
/// together, and builds a server config with the ring provider, TLS 1.2 and
/// 1.3, and ALPN `h2`, `http/1.1`. Other PEM blocks in either file are
/// ignored (so one combined file may be given as both).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let cert_pem = read(cert, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, "certificate", e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }

    let key_pem = read(key, "key")?;
    let private_key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key.to_path_buf(),
            })
        }
        Err(e) => return Err(pem_error(key, "key", e)),
    };

    // Checked here (rather than left to `with_single_cert`) so that each
    // failure gets its own message.
    let signing_key = provider
        .key_provider
        .load_private_key(private_key.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
    match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // `Unknown`: the public key could not be read from the certificate;
        // rustls then serves it unchecked, and so do we.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(config_error(cert, key, e)),
    }

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config_error(cert, key, e))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                }
            }
            e => config_error(cert, key, e),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, what: &'static str, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(source) => TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        },
        other => TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

fn config_error(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Serves [`router`] over TLS on `listener` until `shutdown` resolves, then
/// lets in-flight requests finish: the HTTPS twin of [`crate::serve`], with
/// the peer address still reaching the auth limiter as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve_tls<F>(
    listener: TcpListener,
    state: AppState,
    tls: Arc<ServerConfig>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    // The cap counts connections whose handshake is done; those still
    // handshaking are bounded by `MAX_PENDING_HANDSHAKES` and
    // `HANDSHAKE_TIMEOUT`.
    let listener = TlsListener::new(listener, tls);
    let limits = state.config.limits;
    let refused = state.engine.connections_refused("control");
    crate::limits::serve_limited(listener, router(state), limits, refused, shutdown).await
}

type Handshake = Option<(TlsStream<TcpStream>, SocketAddr)>;

/// A TCP listener that yields only connections whose TLS handshake has
/// finished. Handshakes run concurrently in their own tasks (aborted when
/// the listener is dropped), each bounded by a timeout.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Handshake>,
    handshake_timeout: Duration,
    max_pending: usize,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_pending: MAX_PENDING_HANDSHAKES,
        }
    }

    /// Overrides [`HANDSHAKE_TIMEOUT`] (tests).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> TlsListener {
        self.handshake_timeout = timeout;
        self
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::trace!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = self.acceptor.clone();
        let timeout = self.handshake_timeout;
        self.handshakes.spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "control: TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(
                        %peer,
                        timeout_s = timeout.as_secs_f64(),
                        "control: TLS handshake timed out"
                    );
                    None
                }
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    /// Cancel-safe (axum drops it on shutdown): both `TcpListener::accept`
    /// and `JoinSet::join_next` are, and a started handshake lives in the
    /// set, not in this future.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let pending = !self.handshakes.is_empty();
            let room = self.handshakes.len() < self.max_pending.max(1);
            tokio::select! {
                // Hand out finished handshakes before taking new work.
                biased;
                Some(done) = self.handshakes.join_next(), if pending => match done {
                    Ok(Some(conn)) => return conn,
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "control: TLS handshake task failed"),
                },
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    Err(e) => handle_accept_error(e).await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// As axum does for its own `TcpListener`: per-connection errors are
/// skipped; anything else (such as running out of file descriptors) is
/// logged and retried after a pause rather than spinning.
async fn handle_accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "control: accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
