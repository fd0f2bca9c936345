//! The command line (SPEC 1): clap definitions, and the commands that need
//! no runtime: `check`, `token new` and `healthcheck`. `main` parses [`Cli`]
//! and dispatches on [`Cmd`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Exit status of `run` and `check` for an invalid config (and of `run` when
/// a listener cannot bind).
pub const EXIT_CONFIG: i32 = 64;

/// The default `healthcheck --url`.
pub const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:8000";

/// How long `healthcheck` waits in all (connect, send, first line).
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(
    name = "continuity",
    version,
    about = "Operational continuity engine: failover proxy and control plane"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Start the data plane and the control plane (logs to stderr, RUST_LOG).
    Run {
        /// The config file (TOML).
        #[arg(long, value_name = "PATH", env = "CONTINUITY_CONFIG")]
        config: PathBuf,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a config without binding anything: prints `ok` (exit 0) or
    /// every problem (exit 64).
    Check {
        /// The config file (TOML).
        #[arg(long, value_name = "PATH", env = "CONTINUITY_CONFIG")]
        config: PathBuf,
    },
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Exit 0 when BASE/api/ops/health answers 200 (a Docker HEALTHCHECK without curl).
    Healthcheck {
        /// The control plane's base URL, http://host:port or https://host:port.
        #[arg(long, value_name = "BASE", default_value = DEFAULT_HEALTH_URL)]
        url: String,
        /// PEM file of the CA (or self-signed certificate) to trust for https.
        #[arg(long, value_name = "PATH")]
        ca: Option<PathBuf>,
    },
    /// Bearer token tools.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify an audit log offline: the last line is `ok: N entries` or
    /// `broken at seq N: REASON`; exit 0 intact, 1 broken, 2 unreadable.
    Verify {
        /// The audit directory (segment-*.jsonl).
        dir: PathBuf,
        /// Ed25519 public key (SPKI PEM) to check signed checkpoints. With
        /// it, the log must hold at least one entry and one checkpoint, and
        /// no more than a checkpoint's signed `interval` entries may follow
        /// it (at most 1000 after a legacy v1 checkpoint, see docs/audit.md).
        #[arg(long, value_name = "PATH")]
        public_key: Option<PathBuf>,
    },
    /// Write PREFIX.pem (Ed25519 private key, PKCS#8) and PREFIX.pub.pem (SPKI).
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Print a fresh random token and the `sha256 = "..."` line for `[[control.token]]`.
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `continuity check --config PATH`: prints `ok` on stdout and returns 0, or
/// prints each problem as `PATH:LINE: key.path: message` on **stderr**,
/// followed by a count, and returns 64.
pub fn check(path: &Path) -> i32 {
    match crate::config::load(path) {
        Ok(_) => {
            println!("ok");
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.problems.len();
            eprintln!(
                "{}: refused, {n} problem{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            EXIT_CONFIG
        }
    }
}

/// `continuity token new`: two lines without a trailing newline: a fresh
/// token (32 random bytes, URL-safe base64 without padding), then
/// `sha256 = "<hex of SHA-256 of the token text>"`.
pub fn token_new() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    format!("{token}\nsha256 = \"{digest}\"")
}

/// `continuity healthcheck [--url BASE] [--ca PEM]`: 0 when
/// `BASE/api/ops/health` answers 200 within 3 s, else 1 with the reason on
/// stderr. `https://` needs `--ca`: the healthcheck trusts exactly the CA
/// that signed the control plane's certificate, nothing else.
pub fn healthcheck(base: &str, ca: Option<&Path>) -> i32 {
    match health_status_with(base, ca, HEALTHCHECK_TIMEOUT) {
        Ok(200) => {
            println!("healthy: {} answered 200", health_url(base));
            0
        }
        Ok(code) => {
            eprintln!("unhealthy: {} answered {code}", health_url(base));
            1
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            1
        }
    }
}

fn health_url(base: &str) -> String {
    format!("{}/api/ops/health", base.trim_end_matches('/'))
}

/// The status code of an HTTP/1.1 `GET /api/ops/health` to `base`
/// (`http://host[:port]`, port 80 by default, or `https://host[:port]`,
/// port 443, trusting only the certificates in `ca`).
pub fn health_status_with(base: &str, ca: Option<&Path>, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let (tls, rest) = if let Some(r) = base.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "`{base}`: expected http://host:port or https://host:port"
        ));
    };
    let hostport = Some(rest.trim_end_matches('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| format!("`{base}`: expected http(s)://host:port"))?;
    let has_port = if hostport.starts_with('[') {
        hostport.contains("]:")
    } else {
        hostport.contains(':')
    };
    let target = if has_port {
        hostport.to_string()
    } else if tls {
        format!("{hostport}:443")
    } else {
        format!("{hostport}:80")
    };
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{target}`: {e}"))?
        .collect();
    let mut last_err = format!("`{target}` resolved to no address");
    let mut stream = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last_err)?;
    if tls {
        let ca = ca.ok_or_else(|| {
            format!("`{base}`: https needs --ca PEM (the CA of the control plane's certificate)")
        })?;
        let host = hostport
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(hostport);
        let tls_stream = tls_client(stream, host, ca)?;
        return exchange(tls_stream, base, hostport, deadline);
    }
    exchange(stream, base, hostport, deadline)
}

/// A rustls client over `stream` that trusts only the certificates in `ca`.
fn tls_client(
    stream: TcpStream,
    host: &str,
    ca: &Path,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in the file", ca.display()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("`{host}` is not a valid server name: {e}"))?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(conn, stream))
}

/// Deadlines on the socket under any stream we speak HTTP over.
trait Deadline {
    fn set_deadline(&self, left: Option<Duration>) -> std::io::Result<()>;
}

impl Deadline for TcpStream {
    fn set_deadline(&self, left: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(left)?;
        self.set_write_timeout(left)
    }
}

impl Deadline for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_deadline(&self, left: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_deadline(left)
    }
}

/// Sends the GET and reads the status line.
fn exchange<S: Read + Write + Deadline>(
    mut stream: S,
    base: &str,
    hostport: &str,
    deadline: Instant,
) -> Result<u16, String> {
    let left = |d: Instant| {
        Some(
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        )
    };
    let io = |e: std::io::Error| format!("{}: {e}", health_url(base));
    stream.set_deadline(left(deadline)).map_err(io)?;
    let request = format!(
        "GET /api/ops/health HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: continuity-healthcheck\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        stream.set_deadline(left(deadline)).map_err(io)?;
        match stream.read(&mut buf).map_err(io)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status_line = line.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!(
            "{}: not an HTTP response: `{status_line}`",
            health_url(base)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot HTTP server answering `status_line`; returns its base URL.
    fn serve_once(status_line: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let body = "{\"status\":\"healthy\"}";
                let _ = write!(
                    s,
                    "{status_line}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn healthcheck_passes_on_200_and_fails_otherwise() {
        assert_eq!(healthcheck(&serve_once("HTTP/1.1 200 OK"), None), 0);
        assert_eq!(
            healthcheck(&serve_once("HTTP/1.1 503 Service Unavailable"), None),
            1
        );
        assert_eq!(
            health_status_with(&serve_once("HTTP/1.1 503 x"), None, HEALTHCHECK_TIMEOUT),
            Ok(503)
        );
    }

    #[test]
    fn healthcheck_fails_when_nothing_listens_or_url_is_bad() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert_eq!(healthcheck(&format!("http://{addr}"), None), 1);
        assert!(health_status_with("https://127.0.0.1:1", None, HEALTHCHECK_TIMEOUT).is_err());
        assert!(health_status_with("http://127.0.0.1:8000/x", None, HEALTHCHECK_TIMEOUT).is_err());
    }

    #[test]
    fn token_new_prints_token_and_its_digest() {
        let out = token_new();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 43);
        let digest = hex::encode(Sha256::digest(lines[0].as_bytes()));
        assert_eq!(lines[1], format!("sha256 = \"{digest}\""));
        assert_ne!(token_new(), out);
    }

    #[test]
    fn cli_parses_every_command() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.cmd);
        assert!(matches!(
            parse(&[
                "continuity",
                "run",
                "--config",
                "c.toml",
                "--log-format",
                "json"
            ]),
            Ok(Cmd::Run {
                log_format: LogFormat::Json,
                ..
            })
        ));
        assert!(matches!(
            parse(&["continuity", "check", "--config", "c.toml"]),
            Ok(Cmd::Check { .. })
        ));
        assert!(matches!(
            parse(&[
                "continuity",
                "audit",
                "verify",
                "data/audit",
                "--public-key",
                "k.pub.pem"
            ]),
            Ok(Cmd::Audit(AuditCmd::Verify {
                public_key: Some(_),
                ..
            }))
        ));
        assert!(matches!(
            parse(&["continuity", "audit", "keygen", "--out", "keys/audit"]),
            Ok(Cmd::Audit(AuditCmd::Keygen { .. }))
        ));
        match parse(&["continuity", "healthcheck"]) {
            Ok(Cmd::Healthcheck { url, .. }) => assert_eq!(url, DEFAULT_HEALTH_URL),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["continuity", "token", "new"]),
            Ok(Cmd::Token(TokenCmd::New))
        ));
        assert!(parse(&["continuity", "run", "--config", "c", "--log-format", "xml"]).is_err());
    }
}
