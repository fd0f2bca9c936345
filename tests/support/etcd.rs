//! A real etcd cluster: N `etcd` processes (Debian's etcd 3.4,
//! `/usr/bin/etcd`) on loopback, read and inspected with `etcdctl`
//! (`ETCDCTL_API=3`).
//!
//! ```ignore
//! let mut etcd = EtcdCluster::start(3);       // every member healthy
//! let toml = etcd.endpoints_toml();           // ["http://127.0.0.1:P", ...]
//! let leader = etcd.leader();                 // index of the raft leader
//! etcd.kill(leader);                          // SIGKILL, the port refuses
//! etcd.start_member(leader);                  // same dir and ports: rejoins
//! etcd.get("/continuity/t/route/redis");      // Some(value) or None
//! ```
//!
//! Each member has a free client port and a free peer port, its data dir
//! and log (`etcd.log`) in its own tempdir (`continuity-test-etcd-*`, run
//! with that dir as its working directory so that the orphan sweep
//! recognises it), and is SIGKILLed when the cluster is dropped. Members
//! share a unique `--initial-cluster-token` and run with test timings
//! (`--heartbeat-interval 50 --election-timeout 500`).
//!
//! Measured here (2 cores, a cargo build sometimes running alongside): a
//! 3-member start, until every member answers `etcdctl endpoint health`,
//! takes 0.2-2.4 s (typically 1.1 s); a killed member restarted on its data
//! dir is healthy again in about 0.1 s; `stop_all` then `start_all` takes
//! 0.3-1.1 s.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

use super::ports::{free_port, loopback, wait_for_port_closed, wait_until};
use super::proc::{record_server_pid, server_dir, tail, try_run, ChildGuard};

/// How long a start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The etcd binary; `ETCD_BIN` overrides it.
fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// Extra `etcd` arguments from `ETCD_EXTRA_ARGS` (split on whitespace), to
/// try a server setting without editing the harness, e.g.
/// `ETCD_EXTRA_ARGS=--grpc-keepalive-min-time=200ms`.
fn etcd_extra_args() -> Vec<String> {
    std::env::var("ETCD_EXTRA_ARGS")
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The etcdctl binary; `ETCDCTL_BIN` overrides it.
fn etcdctl_bin() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into())
}

/// One member of an [`EtcdCluster`].
struct Member {
    // Declared first so that it is dropped (killed) before its dir is removed.
    child: Option<ChildGuard>,
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}", loopback(self.client_port))
    }

    fn peer_url(&self) -> String {
        format!("http://{}", loopback(self.peer_port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// N real etcd processes forming one raft cluster; every process is
/// SIGKILLed when this value is dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    token: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until each answers `endpoint health`.
    pub fn start(n: usize) -> EtcdCluster {
        assert!(n > 0, "an etcd cluster needs at least one member");
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let token = format!(
            "continuity-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let members = (0..n)
            .map(|i| Member {
                child: None,
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                dir: server_dir("etcd"),
            })
            .collect();
        let mut cluster = EtcdCluster { members, token };
        let started = Instant::now();
        cluster.start_all();
        eprintln!(
            "harness: etcd cluster of {n} healthy in {:?}",
            started.elapsed()
        );
        cluster
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `127.0.0.1:PORT` of each member's client port.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| loopback(m.client_port))
            .collect()
    }

    /// The client URLs as a TOML array: `["http://127.0.0.1:P1", ...]`.
    pub fn endpoints_toml(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"{}\"", m.client_url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Whether member `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i]
            .child
            .as_mut()
            .is_some_and(ChildGuard::is_running)
    }

    /// The last lines of member `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.members[i].log_path(), lines)
    }

    /// The index of the current raft leader, as the running members report
    /// it (`endpoint status`); waits up to 10 s for an election to settle.
    pub fn leader(&mut self) -> usize {
        let mut last = String::new();
        let found = {
            let mut found = None;
            wait_until(Duration::from_secs(10), || {
                match self.try_leader() {
                    Ok(i) => found = Some(i),
                    Err(e) => last = e,
                }
                found.is_some()
            });
            found
        };
        found.unwrap_or_else(|| panic!("no etcd leader within 10 s: {last}"))
    }

    /// One attempt at [`leader`](EtcdCluster::leader).
    fn try_leader(&mut self) -> Result<usize, String> {
        let mut leader_ids = Vec::new();
        let mut ids = Vec::new();
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                continue;
            }
            let endpoint = loopback(self.members[i].client_port);
            let Ok(out) = try_run(
                self.ctl(&endpoint)
                    .args(["endpoint", "status", "-w", "json"]),
            ) else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("endpoint status: {e}: {text}"))?;
            let status = &json[0]["Status"];
            let (Some(me), Some(leader)) = (
                status["header"]["member_id"].as_u64(),
                status["leader"].as_u64(),
            ) else {
                continue;
            };
            ids.push((i, me));
            if leader != 0 {
                leader_ids.push(leader);
            }
        }
        leader_ids.sort_unstable();
        leader_ids.dedup();
        match leader_ids.as_slice() {
            [leader] => ids
                .iter()
                .find(|(_, id)| id == leader)
                .map(|(i, _)| *i)
                .ok_or_else(|| format!("leader {leader:x} is not a running member ({ids:?})")),
            [] => Err("no member reports a leader".into()),
            many => Err(format!("members disagree on the leader: {many:x?}")),
        }
    }

    /// SIGKILLs member `i`; returns once its client port refuses.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut child) = m.child.take() {
            child.kill();
        }
        assert!(
            wait_for_port_closed(&loopback(m.client_port), Duration::from_secs(5)),
            "etcd member {} client port {} still open after SIGKILL",
            m.name,
            m.client_port
        );
    }

    /// Starts member `i` again on its data dir and ports (it rejoins the
    /// cluster from its WAL) and waits until it answers `endpoint health`,
    /// which needs a quorum of members running. (Not `start(i)`: that name
    /// is the cluster's constructor.)
    pub fn start_member(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// SIGKILLs every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every member that is not running, then waits until all of
    /// them answer `endpoint health`.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                self.spawn(i);
            }
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    /// The value of `key`, read with a linearizable `etcdctl get`; panics
    /// if etcd does not answer.
    pub fn get(&self, key: &str) -> Option<String> {
        self.try_get(key).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`get`](EtcdCluster::get), with Err when etcd does not answer (e.g.
    /// during an election).
    pub fn try_get(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.read(&["get", key])?.into_iter().next().map(|(_, v)| v))
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.read(&["get", "--prefix", prefix])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Writes `key` = `value` (for fault injection); panics on failure.
    pub fn put(&self, key: &str, value: &str) {
        let endpoints = self.endpoints().join(",");
        try_run(self.ctl(&endpoints).args(["put", key, value]))
            .unwrap_or_else(|e| panic!("etcdctl put {key}: {e}"));
    }

    /// `etcdctl ARGS -w json` against every endpoint; the kvs of the answer.
    fn read(&self, args: &[&str]) -> Result<Vec<(String, String)>, String> {
        let endpoints = self.endpoints().join(",");
        let out = try_run(self.ctl(&endpoints).args(args).args(["-w", "json"]))
            .map_err(|e| format!("etcdctl {args:?}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("etcdctl {args:?} answered {e}: {text}"))?;
        let decode = |v: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| format!("etcdctl {args:?}: base64 {v}: {e}"))
        };
        json["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| Ok((decode(&kv["key"])?, decode(&kv["value"])?)))
                    .collect()
            })
            .unwrap_or(Ok(Vec::new()))
    }

    /// An `etcdctl` command against `endpoints` with short timeouts.
    fn ctl(&self, endpoints: &str) -> Command {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=1s", "--command-timeout=2s"])
            .stdin(Stdio::null());
        cmd
    }

    /// `endpoint health` of member `i` answers; panics after the timeout.
    fn wait_healthy(&mut self, i: usize) {
        let endpoint = loopback(self.members[i].client_port);
        let mut last = String::new();
        let healthy = wait_until(START_TIMEOUT, || {
            if !self.is_running(i) {
                return true;
            }
            match try_run(self.ctl(&endpoint).args(["endpoint", "health"])) {
                Ok(_) => true,
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        let running = self.is_running(i);
        let m = &self.members[i];
        assert!(
            healthy && running,
            "etcd member {} ({endpoint}) not healthy within {START_TIMEOUT:?} (running: {running}): {last}\n{}",
            m.name,
            tail(&m.log_path(), 30)
        );
    }

    /// Spawns member `i` (killing it first if it runs). A fresh data dir
    /// bootstraps with `--initial-cluster-state new`; an existing one
    /// restarts from its WAL, and etcd ignores the bootstrap flags then.
    fn spawn(&mut self, i: usize) {
        if self.is_running(i) {
            self.kill(i);
        }
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let state = if m.data_dir().exists() {
            "existing"
        } else {
            "new"
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.log_path())
            .unwrap_or_else(|e| panic!("etcd log {}: {e}", m.log_path().display()));
        let mut cmd = Command::new(etcd_bin());
        cmd.current_dir(m.dir.path())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .arg(format!("--listen-client-urls={}", m.client_url()))
            .arg(format!("--advertise-client-urls={}", m.client_url()))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .args(["--logger=zap", "--log-outputs=stderr"])
            .args(etcd_extra_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let name = format!("etcd {} :{}", m.name, m.client_port);
        let child = ChildGuard::spawn(name, &mut cmd);
        if let Some(pid) = child.pid() {
            record_server_pid(m.dir.path(), pid);
        }
        self.members[i].child = Some(child);
    }
}
