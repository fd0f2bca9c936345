//! Webhook delivery: the alert JSON POSTed to `webhook_url` (and the
//! federal liaison's), over plain HTTP/1.1 or HTTPS (rustls, ring), with
//! retries: up to `attempts` tries, each bounded by `timeout`, separated
//! by exponential backoff with jitter (`backoff`, doubling; each wait
//! drawn uniformly from half to all of it). A 2xx answer is delivery.
//!
//! Each webhook has one worker task fed by a bounded queue, so deliveries
//! keep their order and the evaluator never waits: when the queue is full
//! the payload is dropped and counted. Outcomes are counted in
//! `continuity_alert_webhook_deliveries_total{result}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

pub const DELIVERIES_TOTAL: &str = "continuity_alert_webhook_deliveries_total";

/// Label values of `result`.
pub mod result {
    /// A 2xx answer.
    pub const DELIVERED: &str = "delivered";
    /// One attempt failed; another follows.
    pub const RETRY: &str = "retry";
    /// Every attempt failed; the payload is given up.
    pub const FAILED: &str = "failed";
    /// The queue was full; never attempted.
    pub const DROPPED: &str = "dropped";
}

/// CA bundles tried for `https` when no CA file is given.
pub const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each.
    pub backoff: Duration,
    /// Per attempt: connect, TLS, request and response head.
    pub timeout: Duration,
    pub queue: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            attempts: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            queue: 1024,
        }
    }
}

pub fn deliveries_counter() -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(
        Opts::new(
            DELIVERIES_TOTAL,
            "Alert webhook POST outcomes: delivered (2xx), retry (an attempt failed, another follows), failed (all attempts failed), dropped (queue full).",
        ),
        &["result"],
    )?;
    for r in [
        result::DELIVERED,
        result::RETRY,
        result::FAILED,
        result::DROPPED,
    ] {
        c.with_label_values(&[r]);
    }
    Ok(c)
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let (https, rest) = if lower.starts_with("https://") {
            (true, &s[8..])
        } else if lower.starts_with("http://") {
            (false, &s[7..])
        } else {
            return Err("must start with http:// or https://".into());
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(
                "credentials in the URL are not supported; put a secret in the path".into(),
            );
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in host")?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?,
            None if https => 443,
            None => 80,
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Url {
            https,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// `scheme://host:port`, without the path (which may hold a secret).
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Loads trust anchors from `ca_file`, else from the system bundle.
pub fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => env
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
            .find(|p| p.is_file())
            .ok_or("an https webhook needs a CA: set [alerts] webhook_ca_file (no system CA bundle found)")?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
        // A bundle may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "CA file {} holds no usable certificate",
            path.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

struct Target {
    url: Url,
    tls: Option<TlsConnector>,
    settings: DeliverySettings,
    counter: IntCounterVec,
}

/// One webhook: its queue and (once started) its worker.
pub struct Webhook {
    tx: mpsc::Sender<Value>,
    rx: Mutex<Option<mpsc::Receiver<Value>>>,
    target: Arc<Target>,
}

impl Webhook {
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        settings: DeliverySettings,
        counter: IntCounterVec,
    ) -> Result<Webhook, String> {
        let url = Url::parse(url)?;
        let tls = if url.https {
            Some(tls_connector(ca_file)?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        Ok(Webhook {
            tx,
            rx: Mutex::new(Some(rx)),
            target: Arc::new(Target {
                url,
                tls,
                settings,
                counter,
            }),
        })
    }

    pub fn origin(&self) -> String {
        self.target.url.origin()
    }

    /// Queues a payload; never waits.
    pub fn enqueue(&self, payload: Value) {
        if self.tx.try_send(payload).is_err() {
            self.target
                .counter
                .with_label_values(&[result::DROPPED])
                .inc();
            tracing::warn!(webhook = %self.origin(), "alert webhook queue full; payload dropped");
        }
    }

    /// Starts the worker (once; later calls return `None`).
    pub fn start(&self) -> Option<JoinHandle<()>> {
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let target = self.target.clone();
        Some(tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                deliver(&target, &payload).await;
            }
        }))
    }
}

/// Tries until a 2xx or `attempts` failures; returns whether delivered.
async fn deliver(t: &Target, payload: &Value) -> bool {
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let attempts = t.settings.attempts.max(1);
    let mut wait = t.settings.backoff;
    for attempt in 1..=attempts {
        let outcome = tokio::time::timeout(t.settings.timeout, post(t, &body))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", t.settings.timeout)));
        let error = match outcome {
            Ok(status) if (200..300).contains(&status) => {
                t.counter.with_label_values(&[result::DELIVERED]).inc();
                tracing::debug!(webhook = %t.url.origin(), attempt, "alert delivered");
                return true;
            }
            Ok(status) => format!("HTTP {status}"),
            Err(e) => e,
        };
        if attempt == attempts {
            t.counter.with_label_values(&[result::FAILED]).inc();
            tracing::error!(webhook = %t.url.origin(), attempts, %error, "alert webhook delivery failed; giving up");
            return false;
        }
        t.counter.with_label_values(&[result::RETRY]).inc();
        tracing::warn!(webhook = %t.url.origin(), attempt, %error, "alert webhook attempt failed; retrying");
        let half = wait / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        tokio::time::sleep(half + Duration::from_millis(jitter)).await;
        wait = wait.saturating_mul(2);
    }
    false
}

/// One POST; the status code of the answer.
async fn post(t: &Target, body: &[u8]) -> Result<u16, String> {
    let u = &t.url;
    let tcp = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &t.tls {
        None => exchange(tcp, u, body).await,
        Some(tls) => {
            let name = ServerName::try_from(u.host.clone()).map_err(|e| format!("host: {e}"))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(stream, u, body).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    u: &Url,
    body: &[u8],
) -> Result<u16, String> {
    let default_port = if u.https { 443 } else { 80 };
    let host = match (u.host.contains(':'), u.port == default_port) {
        (true, true) => format!("[{}]", u.host),
        (true, false) => format!("[{}]:{}", u.host, u.port),
        (false, true) => u.host.clone(),
        (false, false) => format!("{}:{}", u.host, u.port),
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: continuity/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        u.path,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 || buf.len() > 16 * 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err("no HTTP status line in the answer".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://ops.example/hooks/x?k=1#frag").expect("url");
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "ops.example", 443, "/hooks/x?k=1")
        );
        assert_eq!(u.origin(), "https://ops.example:443");
        let u = Url::parse("HTTP://127.0.0.1:8080").expect("url");
        assert_eq!((u.https, u.port, u.path.as_str()), (false, 8080, "/"));
        let u = Url::parse("http://[::1]:9000/a").expect("url");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.origin(), "http://[::1]:9000");
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@h/",
            "http://h:99999/",
            "http://[::1/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn https_with_an_unusable_ca_file_fails_early() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").expect("write");
        let counter = deliveries_counter().expect("counter");
        let err = Webhook::new(
            "https://h/x",
            Some(&p),
            DeliverySettings::default(),
            counter,
        )
        .err()
        .expect("error");
        assert!(err.contains("no usable certificate"), "{err}");
    }
}
