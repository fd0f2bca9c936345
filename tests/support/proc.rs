//! Processes: a child that dies with its guard, SIGKILL by PID, and running a
//! command to completion with its output in the panic message when it fails.
//!
//! No libc or nix: signals go through `kill(1)` and `pkill(1)`, liveness is
//! read from `/proc`. A killed process that is not our child may stay a
//! zombie when PID 1 does not reap (as in some containers), so a zombie counts
//! as dead.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use super::ports::wait_until;

/// A child process that is SIGKILLed and reaped when the guard is dropped.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards `child`; `name` appears in messages.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child: Some(child),
        }
    }

    /// Spawns `cmd` and guards it.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Self {
        let name = name.into();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name} ({cmd:?}): {e}"));
        Self::new(name, child)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID, or None once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap; does nothing the second time.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Err means it has already exited; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and
        // may itself contain spaces or parentheses.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// `kill -SIGNAL PID`; true if the signal was delivered.
pub fn signal_pid(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// SIGKILLs `pid` and waits (up to 10 s) until it is gone.
pub fn kill_pid(pid: u32) {
    signal_pid(pid, "KILL");
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(pid)),
        "process {pid} still alive 10 s after SIGKILL"
    );
}

/// SIGKILLs `pid` together with its direct children, so that nothing of it
/// keeps serving: the parent is stopped first so it cannot fork new children
/// while they are being killed.
pub fn kill_tree(pid: u32) {
    signal_pid(pid, "STOP");
    let children = child_pids(pid);
    let _ = Command::new("pkill")
        .args(["-9", "-P", &pid.to_string()])
        .output();
    kill_pid(pid);
    for child in children {
        kill_pid(child);
    }
}

/// Direct children of `pid` (from `pgrep -P`).
pub fn child_pids(pid: u32) -> Vec<u32> {
    Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cmd` to completion; panics with its stdout and stderr if it cannot
/// start or exits non-zero.
pub fn run(what: &str, cmd: &mut Command) -> Output {
    try_run(cmd).unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// Runs `cmd` to completion; Err with its output if it exits non-zero.
pub fn try_run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Name prefix of every server tempdir, so that orphans can be found.
const DIR_PREFIX: &str = "continuity-test-";
/// In a server dir: the PID of the test process that owns it.
const OWNER_FILE: &str = "harness.owner";
/// In a server dir: the PID of the server process (postmaster for postgres).
const PID_FILE: &str = "harness.pid";

/// A tempdir for one server, named `continuity-test-KIND-*` and marked with
/// this test process's PID. Drop normally kills the servers; when a test run
/// is killed before its Drops run (SIGKILL, or Ctrl-C, which `pg_ctl`'s
/// daemonized postgres does not receive), the next run finds the dirs whose
/// owner is dead, kills their servers and removes them.
pub fn server_dir(kind: &str) -> tempfile::TempDir {
    sweep_orphans();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{kind}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("create a tempdir for {kind}: {e}"));
    fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .expect("write the harness owner file");
    dir
}

/// Records the server PID of a [`server_dir`] for the orphan sweep.
pub fn record_server_pid(dir: &Path, pid: u32) {
    let _ = fs::write(dir.join(PID_FILE), pid.to_string());
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Once per test process: kills the servers of server dirs whose owning test
/// process is gone, and removes those dirs. A server is only killed if its
/// working directory is inside the dir (so a reused PID is left alone).
pub fn sweep_orphans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let is_ours = entry.file_name().to_string_lossy().starts_with(DIR_PREFIX);
            let Some(owner) = read_pid(&dir.join(OWNER_FILE)).filter(|_| is_ours) else {
                continue;
            };
            if pid_alive(owner) {
                continue;
            }
            if let Some(pid) = read_pid(&dir.join(PID_FILE)) {
                let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                if pid_alive(pid) && cwd.starts_with(&dir) {
                    eprintln!(
                        "harness: killing orphaned server {pid} in {}",
                        dir.display()
                    );
                    kill_tree(pid);
                }
            }
            let _ = fs::remove_dir_all(&dir);
        }
    });
}

/// This process's soft limit of open files (`ulimit -n`), from
/// /proc/self/limits; `u64::MAX` when it cannot be read or is unlimited.
pub fn nofile_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}
