//! A real HTTP/1.1 upstream (`scripts/http_upstream.py`) in its own process,
//! so that a test can SIGKILL it, and a throwaway PKI for HTTPS and mTLS.
//!
//! ```ignore
//! let pki = TestPki::new(dir.path());
//! let mut web = HttpUpstream::start("web-a", None, Some(&pki), false);
//! // web.url() == "https://127.0.0.1:PORT"; GET /anything echoes JSON
//! web.set_healthy(false);          // GET /health -> 503, nothing killed
//! web.kill();                      // SIGKILL by PID: the port refuses
//! web.restart();                   // same port, same records file
//! let posts = web.records();       // every non-GET (and /submissions) request
//! ```
//!
//! Routes (see the script's docstring): `/health`, `/status/NNN`,
//! `/ratelimit/N` (429 + `Retry-After: 1` for the first N), `/slow/MS`,
//! `/big/BYTES`, anything else a JSON echo `{server, method, path, headers,
//! body}` (plus `client_cn` under mTLS).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use super::ports::{wait_for_port_closed, wait_until};
use super::proc::{record_server_pid, server_dir, tail, ChildGuard};

/// How long a start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The server script, from the repository root.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/http_upstream.py")
}

/// A CA, a server certificate for `127.0.0.1` + `localhost`, a client
/// certificate (CN `continuity-test-client`), all signed by that CA; and an
/// unrelated CA (`other_ca`) with its own client certificate, for negative
/// tests. PEM files in the given directory.
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca` (refused by an mTLS upstream).
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

fn new_ca(cn: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let key = KeyPair::generate().expect("generate CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert, Issuer::new(params, key))
}

fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    cn: &str,
    sans: Vec<String>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().expect("generate key");
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// Generates everything and writes `ca.pem`, `server.pem`, `server.key`,
    /// `client.pem`, `client.key`, `other-ca.pem`, `other-client.pem`,
    /// `other-client.key` into `dir` (which must exist).
    pub fn new(dir: &Path) -> TestPki {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (ca, issuer) = new_ca("continuity test CA");
        let (other_ca, other_issuer) = new_ca("unrelated test CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            "127.0.0.1",
            vec!["127.0.0.1".into(), "localhost".into()],
            ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&issuer, "continuity-test-client", Vec::new(), ClientAuth);
        let (other_client_cert, other_client_key) =
            leaf(&other_issuer, "unrelated-client", Vec::new(), ClientAuth);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            p
        };
        TestPki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other_ca.pem()),
            other_client_cert: write("other-client.pem", &other_client_cert),
            other_client_key: write("other-client.key", &other_client_key),
        }
    }
}

/// One `http_upstream.py` process; SIGKILLed when dropped.
pub struct HttpUpstream {
    // Declared first so that it is dropped (killed) before its dir is removed.
    child: Option<ChildGuard>,
    name: String,
    port: u16,
    tls: Option<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
    dir: TempDir,
}

impl HttpUpstream {
    /// Starts the server (`port` None: the kernel picks a free one) and waits
    /// for its `READY` line; panics with its stderr if it does not come up.
    /// `tls`: serve HTTPS with the PKI's server certificate;
    /// `require_client_cert`: also require a client certificate signed by
    /// the PKI's CA (mTLS).
    pub fn start(
        name: &str,
        port: Option<u16>,
        tls: Option<&TestPki>,
        require_client_cert: bool,
    ) -> HttpUpstream {
        assert!(
            tls.is_some() || !require_client_cert,
            "require_client_cert needs a TestPki"
        );
        let mut up = HttpUpstream {
            child: None,
            name: name.to_string(),
            port: port.unwrap_or(0),
            tls: tls.map(|p| (p.server_cert.clone(), p.server_key.clone())),
            client_ca: tls.filter(|_| require_client_cert).map(|p| p.ca.clone()),
            dir: server_dir("http"),
        };
        if let Err(e) = up.spawn() {
            panic!("{e}");
        }
        up
    }

    /// Starts the process and waits for `READY <port>`; Err with the
    /// server's stderr if it does not come up.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the upstream log");
        let mut cmd = Command::new("python3");
        cmd.arg(script_path())
            .args(["--port", &self.port.to_string(), "--name", &self.name])
            .arg("--record")
            .arg(self.record_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some(ca) = &self.client_ca {
            cmd.arg("--client-ca").arg(ca);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        record_server_pid(self.dir.path(), child.id());
        let mut guard = ChildGuard::new(format!("http upstream {}", self.name), child);
        // The first stdout line is READY <port>; the reader keeps draining
        // stdout afterwards so the server can never block on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let ready = rx.recv_timeout(START_TIMEOUT);
        let port = match &ready {
            Ok(Some(Ok(line))) => line
                .strip_prefix("READY ")
                .and_then(|p| p.trim().parse::<u16>().ok()),
            _ => None,
        };
        match port {
            Some(p) => {
                self.port = p;
                self.child = Some(guard);
                Ok(())
            }
            None => {
                guard.kill();
                Err(format!(
                    "http upstream {} did not start on port {} (first stdout line: {ready:?}); stderr:\n{}",
                    self.name,
                    self.port,
                    tail(&log_path, 40)
                ))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// SIGKILL (by its own PID) and reap; the port refuses afterwards.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
        assert!(
            wait_for_port_closed(&self.addr(), Duration::from_secs(10)),
            "{} still accepts on {} after SIGKILL",
            self.name,
            self.addr()
        );
    }

    /// Kills it if it runs, then starts it again on the same port (same
    /// records file; the rate-limit counters start from zero).
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; retry briefly should the bind fail.
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(10), || match self.spawn() {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        assert!(ok, "restart failed: {last}");
    }

    /// The JSONL file of recorded requests.
    pub fn record_path(&self) -> PathBuf {
        self.dir.path().join("records.jsonl")
    }

    /// Every recorded request (non-GET, or path under /submissions), in
    /// order: `{server, method, path, idempotency_key, body}`.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.record_path()).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record line {l:?}: {e}"))
            })
            .collect()
    }

    /// `GET /health` answers 200 (true) or 503 (false) from now on.
    pub fn set_healthy(&self, healthy: bool) {
        let mut flag = self.record_path().into_os_string();
        flag.push(".unhealthy");
        if healthy {
            let _ = std::fs::remove_file(&flag);
        } else {
            std::fs::write(&flag, b"").expect("write the unhealthy flag");
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("http_upstream.log")
    }

    /// The server's stderr (errors; every request with `--verbose`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}
