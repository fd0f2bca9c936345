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
