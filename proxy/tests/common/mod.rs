//! What the proxy crate's integration tests share: real `redis-server`
//! processes on free ports, each in its own tempdir, killed on drop. (The
//! root crate's tests have the fuller harness in `tests/support`.)

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server on `port` (a replica of `replica_of` if given); returns
/// once it accepts connections.
pub fn redis(port: u16, replica_of: Option<u16>) -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("redis-server");
    cmd.arg("--dir").arg(dir.path());
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
    cmd.args(["--save", "", "--appendonly", "no"]);
    cmd.args(["--repl-diskless-sync-delay", "0"]);
    if let Some(p) = replica_of {
        cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis { child, _dir: dir }
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL binary as the `postgres` user; panics with its output
/// on failure.
pub fn pg(cwd: &std::path::Path, bin: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/{bin}"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL 15 primary (trust auth) on `port` in its own tempdir
/// owned by `postgres`; stopped (immediate mode) on drop.
pub struct Postgres {
    data: std::path::PathBuf,
    tmp: tempfile::TempDir,
}

impl Postgres {
    pub fn start(port: u16) -> Postgres {
        let tmp = tempfile::tempdir().unwrap();
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        std::os::unix::fs::chown(tmp.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        let data = tmp.path().join("data");
        let shown = data.display().to_string();
        pg(
            tmp.path(),
            "initdb",
            &["-D", &shown, "--auth=trust", "-U", "postgres"],
        );
        let pg_guard = Postgres { data, tmp };
        let opts = format!("-p {port} -k {shown} -c listen_addresses=127.0.0.1");
        let log = pg_guard.tmp.path().join("log").display().to_string();
        pg(
            pg_guard.tmp.path(),
            "pg_ctl",
            &[
                "-D", &shown, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        );
        pg_guard
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"])
            .current_dir(self.tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
