//! A real Bolt server: ArcadeDB from PyPI (`arcadedb-embedded`), standing in
//! for Neo4j, which cannot be installed on our machines.
//!
//! ```ignore
//! let Some(neo) = ArcadeDb::start_or_skip("my_test") else { return };
//! // bolt://127.0.0.1:{neo.bolt_port()}, user "root", password ARCADEDB_PASSWORD
//! ```
//!
//! Each instance is `scripts/arcadedb_server.py` (Python + an embedded JVM)
//! on a free Bolt port and a free HTTP port, with its databases in a
//! tempdir. It answers as "Neo4j/5.26.0 compatible (ArcadeDB ...)" and
//! negotiates Bolt 5.4. Start two for a primary and a secondary.
//!
//! What a Bolt client needs:
//! - credentials: basic auth, user [`ARCADEDB_USER`] (`root`) with the root
//!   password given at start ([`ARCADEDB_PASSWORD`]). ArcadeDB refuses a root
//!   password shorter than 8 characters, and without one it exits at start
//!   (it would ask on a terminal). Wrong or missing credentials fail the
//!   HELLO/LOGON with `Neo.ClientError.Security.Unauthorized`.
//! - a database: with none, every query fails with
//!   `Neo.TransientError.Database.DatabaseUnavailable` ("No database available
//!   on this server"), so the script creates [`ARCADEDB_DATABASE`] (`neo4j`)
//!   at start. A session that names no database uses it; naming a database
//!   that does not exist fails with `DatabaseNotFound`.
//!
//! Start takes 2-4.5 s on a quiet 2-core machine (a JVM starts), up to ~8 s
//! under a parallel test load; the harness waits up to 90 s for a completed
//! Bolt handshake. Each instance takes ~200 MB (heap capped at 512 MB).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::ports::{free_port, loopback, wait_for_port_closed, wait_until};
use super::proc::{record_server_pid, server_dir, tail, ChildGuard};

/// Bolt (and HTTP) user.
pub const ARCADEDB_USER: &str = "root";
/// Root password every harness instance starts with.
pub const ARCADEDB_PASSWORD: &str = "continuity-test";
/// The database created at start, the one a session without a name uses.
pub const ARCADEDB_DATABASE: &str = "neo4j";

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The Bolt magic preamble followed by four version proposals: 5.4 down to
/// 5.0 (range), 4.4, 4.0, 3.0.
pub const BOLT_HANDSHAKE: [u8; 20] = [
    0x60, 0x60, 0xB0, 0x17, // magic
    0x00, 0x04, 0x04, 0x05, // 5.4, and 4 minor versions below
    0x00, 0x00, 0x04, 0x04, // 4.4
    0x00, 0x00, 0x00, 0x04, // 4.0
    0x00, 0x00, 0x00, 0x03, // 3.0
];

/// Connects to `addr`, sends [`BOLT_HANDSHAKE`] and returns the version the
/// server picked (`0x00000504` is 5.4); Err if it picked none (zero) or the
/// connection failed. Times out after 2 s.
pub fn bolt_handshake(addr: &str) -> io::Result<u32> {
    let timeout = Duration::from_secs(2);
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{addr} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&BOLT_HANDSHAKE)?;
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer)?;
    match u32::from_be_bytes(answer) {
        0 => Err(io::Error::other(
            "server supports none of the proposed Bolt versions",
        )),
        version => Ok(version),
    }
}

/// One ArcadeDB server with the Bolt plugin; SIGKILLed when dropped.
pub struct ArcadeDb {
    // Declared first so that it is dropped (killed) before its dir is removed.
    child: Option<ChildGuard>,
    bolt_port: u16,
    http_port: u16,
    dir: TempDir,
}

impl ArcadeDb {
    /// True if `python3 -c "import arcadedb_embedded"` works.
    pub fn is_available() -> bool {
        Command::new("python3")
            .args(["-c", "import arcadedb_embedded"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// True when running in CI (`CI` set to anything but empty, `0`, `false`).
    pub fn in_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
    }

    /// Starts a server, or returns None (after saying so on stderr) when
    /// `arcadedb-embedded` is not installed. In CI it is always installed
    /// (`scripts/install-deps`), so there a missing package fails the test.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        if Self::is_available() {
            return Some(Self::start());
        }
        assert!(
            !Self::in_ci(),
            "{test}: python3 cannot import arcadedb_embedded, and CI must not skip \
             (run scripts/install-deps)"
        );
        eprintln!(
            "SKIPPED {test}: python3 cannot import arcadedb_embedded \
             (run scripts/install-deps, or `python3 -m pip install arcadedb-embedded`)"
        );
        None
    }

    /// Starts a server and waits until it completes a Bolt handshake.
    pub fn start() -> Self {
        let mut server = Self {
            child: None,
            bolt_port: free_port(),
            http_port: free_port(),
            dir: server_dir("arcadedb"),
        };
        server.spawn();
        server
    }

    /// Two servers started side by side (the JVM starts overlap), e.g. a
    /// primary and a secondary.
    pub fn start_two() -> (Self, Self) {
        std::thread::scope(|s| {
            let second = s.spawn(Self::start);
            let first = Self::start();
            let second = second
                .join()
                .expect("starting the second arcadedb panicked");
            (first, second)
        })
    }

    pub fn bolt_port(&self) -> u16 {
        self.bolt_port
    }

    /// `127.0.0.1:BOLT_PORT`.
    pub fn bolt_addr(&self) -> String {
        loopback(self.bolt_port)
    }

    /// `bolt://127.0.0.1:BOLT_PORT`.
    pub fn bolt_uri(&self) -> String {
        format!("bolt://127.0.0.1:{}", self.bolt_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("arcadedb.log")
    }

    /// PID of the server process. Panics if it has been killed.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(ChildGuard::pid)
            .expect("arcadedb is not running (killed?)")
    }

    /// SIGKILL; returns once the Bolt port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        assert!(
            wait_for_port_closed(&self.bolt_addr(), Duration::from_secs(10)),
            "arcadedb bolt port {} still open after SIGKILL",
            self.bolt_port
        );
    }

    /// Starts again on the same ports and data (kills it first if running).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/arcadedb_server.py");
        let log = File::create(self.log_path()).expect("create arcadedb.log");
        let log_err = log.try_clone().expect("clone arcadedb.log handle");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--bolt-port", &self.bolt_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--root-password", ARCADEDB_PASSWORD])
            .args(["--database", ARCADEDB_DATABASE])
            .arg("--data")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = ChildGuard::spawn(format!("arcadedb :{}", self.bolt_port), &mut cmd);
        let addr = self.bolt_addr();
        // The Bolt port opens before the database exists: wait for the
        // script's READY line (printed after create_database) as well.
        let log_path = self.log_path();
        let up = wait_until(START_TIMEOUT, || {
            let ready = std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("READY bolt="));
            (ready && bolt_handshake(&addr).is_ok()) || !child.is_running()
        });
        assert!(
            up && child.is_running(),
            "arcadedb (bolt {}) did not answer a Bolt handshake within {START_TIMEOUT:?}\n{}",
            self.bolt_port,
            tail(&self.log_path(), 30)
        );
        if let Some(pid) = child.pid() {
            record_server_pid(self.dir.path(), pid);
        }
        self.child = Some(child);
    }
}
