//! Runs the real `continuity` binary with a generated config, and talks to
//! its control plane over plain HTTP/1.1.
//!
//! ```ignore
//! let engine = Continuity::builder()
//!     .health("check_interval_seconds = 0.2\nfailure_threshold = 2")
//!     .service(r#"name = "redis" ... "#)
//!     .start();
//! let (status, body) = engine.get("/api/ops/failover/status");
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_port;

/// The operator token every test engine accepts (actor `ops`).
pub const OPERATOR_TOKEN: &str = "operator-test-token";
/// The viewer token every test engine accepts (actor `viewer`).
pub const VIEWER_TOKEN: &str = "viewer-test-token";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[derive(Default)]
pub struct Builder {
    control: String,
    health: String,
    top: String,
    services: Vec<String>,
    tail: String,
}

impl Builder {
    /// Lines for the `[health]` table.
    pub fn health(mut self, lines: &str) -> Self {
        self.health = lines.to_string();
        self
    }

    /// Extra lines for the `[control]` table (e.g. `tls_cert = "..."`).
    pub fn control(mut self, lines: &str) -> Self {
        self.control = lines.to_string();
        self
    }

    /// Top-level lines (e.g. `drain_timeout_ms = 500`).
    pub fn top(mut self, lines: &str) -> Self {
        self.top = lines.to_string();
        self
    }

    /// Tables written after the services (e.g. `[alerts]` with its rules).
    pub fn tail(mut self, lines: &str) -> Self {
        self.tail = lines.to_string();
        self
    }

    /// The body of one `[[service]]` table.
    pub fn service(mut self, body: &str) -> Self {
        self.services.push(body.to_string());
        self
    }

    /// Writes the config and starts the engine; waits until
    /// `/api/ops/health` answers.
    pub fn start(self) -> Continuity {
        let mut c = self.prepare();
        c.spawn();
        c
    }

    /// Writes the config without starting (for tests that run the binary themselves).
    pub fn prepare(self) -> Continuity {
        let dir = tempfile::tempdir().expect("tempdir");
        let control_port = free_port();
        let mut toml = format!(
            "{top}\ndata_dir = \"data\"\n\n[control]\nlisten = \"127.0.0.1:{control_port}\"\n{control}\n\n\
             [[control.token]]\nname = \"ops\"\nrole = \"operator\"\nsha256 = \"{op}\"\n\n\
             [[control.token]]\nname = \"viewer\"\nrole = \"viewer\"\nsha256 = \"{viewer}\"\n\n\
             [health]\n{health}\n",
            top = self.top,
            control = self.control,
            op = sha256_hex(OPERATOR_TOKEN),
            viewer = sha256_hex(VIEWER_TOKEN),
            health = self.health,
        );
        for s in &self.services {
            toml.push_str(&format!("\n[[service]]\n{s}\n"));
        }
        toml.push_str(&format!("\n{}\n", self.tail));
        let config = dir.path().join("continuity.toml");
        std::fs::write(&config, &toml).expect("write config");
        Continuity {
            child: None,
            control: format!("127.0.0.1:{control_port}"),
            config,
            log: dir.path().join("continuity.log"),
            _dir: dir,
        }
    }
}

pub struct Continuity {
    child: Option<Child>,
    /// `127.0.0.1:PORT` of the control plane.
    pub control: String,
    pub config: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Continuity {
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn spawn(&mut self) {
        self.spawn_no_wait();
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = self.try_request("GET", "/api/ops/health", None, None) {
                return;
            }
            assert!(
                self.is_running(),
                "continuity exited at start:\n{}",
                self.log_text()
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "continuity did not answer /api/ops/health:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process and returns at once (e.g. for an HTTPS control
    /// plane, which the plain-HTTP helpers here cannot ask).
    pub fn spawn_no_wait(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_continuity"));
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn continuity"));
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("continuity was started")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit code (up to `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        super::proc::signal_pid(self.pid(), "TERM");
        self.wait_exit(within)
    }

    /// Waits for the process to exit; its exit code (None: still running or killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the same config again (after `kill` or `terminate`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL, for crash tests.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// GET with the operator token: (status, JSON body or Null).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.request("GET", path, None, Some(OPERATOR_TOKEN))
    }

    /// POST a JSON body with the operator token.
    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.request("POST", path, Some(body), Some(OPERATOR_TOKEN))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self
            .try_request(method, path, body, token)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_text()));
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// The raw `/metrics` text.
    pub fn metrics(&self) -> String {
        self.try_request("GET", "/metrics", None, Some(OPERATOR_TOKEN))
            .map(|(_, t)| t)
            .unwrap_or_default()
    }

    /// One sample of `/metrics` whose line starts with `prefix` (name and labels).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Result<(u16, String), String> {
        let mut s = TcpStream::connect(&self.control).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(40)))
            .map_err(|e| e.to_string())?;
        let body = body.unwrap_or("");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.control,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("malformed response: {text}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in: {head}"))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((status, body))
    }
}

impl Drop for Continuity {
    fn drop(&mut self) {
        self.kill();
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}
