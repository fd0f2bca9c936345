//! Real PostgreSQL 15 servers on free loopback ports: a single instance, or a
//! primary with a streaming standby.
//!
//! ```ignore
//! let mut pg = PgPair::start();                   // 1-8 s: initdb + basebackup
//! psql(pg.primary_port(), "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
//! pg.wait_for_standby_to_catch_up();
//! assert_eq!(psql(pg.standby_port(), "SELECT x FROM t"), "1");
//! pg.kill_primary();                              // SIGKILL of every process
//! pg.promote_standby();
//! ```
//!
//! Binaries come from `/usr/lib/postgresql/15/bin` (override with
//! `CONTINUITY_PG_BIN`). PostgreSQL refuses to run as root, so when the tests
//! run as root `initdb`, `pg_ctl` and `pg_basebackup` go through
//! `runuser -u postgres --` and the temporary dir is chowned to `postgres`.
//! Authentication is `trust` for user `postgres` (also for replication), and
//! servers run with `fsync=off`: a SIGKILL does not lose what the kernel has
//! (only a power cut would), and it makes tests faster.
//!
//! Starting is slow (initdb ~1.4 s, a standby ~4 s more), so a test that needs
//! PostgreSQL should start one [`PgPair`] and do all its steps on it rather
//! than starting several. Each server's log is `postgres.log` in its dir and
//! is quoted when something fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::ports::{free_port, loopback, wait_for_port_closed, wait_until};
use super::proc::{kill_tree, pid_alive, record_server_pid, run, server_dir, tail, try_run};

/// How long a start (or a standby's first streaming) may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var_os("CONTINUITY_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    dir.join(tool)
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A command for a PostgreSQL server tool, run as `postgres` when we are root.
fn pg_command(tool: &str, cwd: &Path) -> Command {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
        c
    } else {
        Command::new(pg_bin(tool))
    };
    // Not the caller's cwd: `postgres` may not be allowed to read it.
    cmd.current_dir(cwd);
    cmd
}

fn make_dir_for_postgres() -> TempDir {
    let dir = server_dir("postgres");
    if running_as_root() {
        run(
            "chown the postgres tempdir",
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
        );
    }
    dir
}

/// Runs `sql` with `psql -h 127.0.0.1 -p PORT -U postgres -At -c SQL`; the
/// output without its trailing newline. Panics (with psql's stderr) on error.
pub fn psql(port: u16, sql: &str) -> String {
    try_psql(port, sql).unwrap_or_else(|e| panic!("psql on port {port} failed: {e}"))
}

/// As [`psql`], but an error is returned (server down, SQL error).
pub fn try_psql(port: u16, sql: &str) -> Result<String, String> {
    let out = try_run(
        Command::new("psql")
            .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-At"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "3"),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// One PostgreSQL server (postmaster and its children); stopped when dropped.
pub struct PgServer {
    port: u16,
    dir: TempDir,
    postmaster: Option<u32>,
}

impl PgServer {
    /// A fresh primary: initdb, then start.
    pub fn start() -> Self {
        let dir = make_dir_for_postgres();
        let data = dir.path().join("data");
        run(
            "initdb",
            pg_command("initdb", dir.path())
                .arg("-D")
                .arg(&data)
                .args(["--auth=trust", "-U", "postgres", "--no-sync"])
                .args(["--encoding=UTF8", "--locale=C", "--no-instructions"]),
        );
        let mut server = Self {
            port: free_port(),
            dir,
            postmaster: None,
        };
        server.pg_ctl_start();
        server
    }

    /// A streaming standby of `primary`, from `pg_basebackup -R -X stream`.
    /// Returns once it is in recovery and the primary reports it streaming.
    pub fn standby_of(primary: &PgServer) -> Self {
        let dir = make_dir_for_postgres();
        let data = dir.path().join("data");
        run(
            "pg_basebackup",
            pg_command("pg_basebackup", dir.path())
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(&data)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        );
        let mut standby = Self {
            port: free_port(),
            dir,
            postmaster: None,
        };
        standby.pg_ctl_start();
        assert!(
            wait_until(START_TIMEOUT, || standby.is_in_recovery()),
            "standby on port {} is not in recovery\n{}",
            standby.port,
            tail(&standby.log_path(), 20)
        );
        let streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
        assert!(
            wait_until(START_TIMEOUT, || try_psql(primary.port, streaming)
                .is_ok_and(|n| n != "0")),
            "primary on port {} shows no streaming standby within {START_TIMEOUT:?}\n{}",
            primary.port,
            tail(&standby.log_path(), 20)
        );
        standby
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        loopback(self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// PID of the postmaster. Panics if it has been killed.
    pub fn pid(&self) -> u32 {
        self.postmaster.expect("postgres is not running (killed?)")
    }

    pub fn is_running(&self) -> bool {
        self.postmaster.is_some_and(pid_alive)
    }

    /// [`psql`] on this server.
    pub fn psql(&self, sql: &str) -> String {
        psql(self.port, sql)
    }

    /// `pg_is_in_recovery()`; false if the server does not answer.
    pub fn is_in_recovery(&self) -> bool {
        try_psql(self.port, "SELECT pg_is_in_recovery()").is_ok_and(|r| r == "t")
    }

    /// SIGKILL of the postmaster and of all its children (which would
    /// otherwise keep serving for a moment), as a crash of the host would;
    /// returns once the port refuses connections.
    pub fn kill(&mut self) {
        if let Some(pid) = self.postmaster.take() {
            kill_tree(pid);
            // The dead postmaster may linger as a zombie until PID 1 reaps it,
            // and postgres takes a lock file naming a zombie for a live
            // server. It is dead: remove its stale locks as postgres would.
            let _ = fs::remove_file(self.data_dir().join("postmaster.pid"));
            let socket_lock = format!(".s.PGSQL.{}.lock", self.port);
            let _ = fs::remove_file(self.dir.path().join(socket_lock));
        }
        assert!(
            wait_for_port_closed(&self.addr(), Duration::from_secs(10)),
            "postgres port {} still open after SIGKILL",
            self.port
        );
    }

    /// Starts again on the same port and data dir (crash recovery if it was
    /// killed); kills it first if it is running.
    pub fn restart(&mut self) {
        self.kill();
        self.pg_ctl_start();
    }

    /// Rebuilds this server, on the same port, as a streaming standby of
    /// `primary`, as docs/runbook.md does: stop, remove the data dir,
    /// `pg_basebackup -R -X stream`, start. Returns once it is in recovery.
    pub fn rebuild_as_standby_of(&mut self, primary: &PgServer) {
        self.kill();
        let data = self.data_dir();
        fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("remove {}: {e}", data.display()));
        run(
            "pg_basebackup (rebuild)",
            pg_command("pg_basebackup", self.dir.path())
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(&data)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        );
        self.pg_ctl_start();
        assert!(
            wait_until(START_TIMEOUT, || self.is_in_recovery()),
            "rebuilt standby on port {} is not in recovery\n{}",
            self.port,
            tail(&self.log_path(), 20)
        );
    }

    /// `SELECT pg_promote()`: a standby becomes a primary (waits up to 30 s).
    pub fn promote(&self) {
        let done = self.psql("SELECT pg_promote(true, 30)");
        assert_eq!(
            done, "t",
            "pg_promote on port {} did not complete",
            self.port
        );
    }

    fn pg_ctl_start(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let started = try_run(
            pg_command("pg_ctl", self.dir.path())
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
        );
        if let Err(e) = started {
            panic!(
                "pg_ctl start on port {} failed: {e}\n--- postgres.log\n{}",
                self.port,
                tail(&self.log_path(), 30)
            );
        }
        let pid_file = self.data_dir().join("postmaster.pid");
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no PID in {}", pid_file.display()));
        record_server_pid(self.dir.path(), pid);
        self.postmaster = Some(pid);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Some(pid) = self.postmaster.take() else {
            return;
        };
        if pid_alive(pid) {
            let _ = try_run(
                pg_command("pg_ctl", self.dir.path())
                    .arg("-D")
                    .arg(self.data_dir())
                    .args(["-m", "immediate", "-w", "-t", "10", "stop"]),
            );
        }
        if pid_alive(pid) {
            kill_tree(pid);
        }
    }
}

/// A primary and a streaming standby.
pub struct PgPair {
    pub primary: PgServer,
    pub standby: PgServer,
}

impl PgPair {
    /// initdb + start a primary, then pg_basebackup + start a standby; returns
    /// once the standby streams.
    pub fn start() -> Self {
        let primary = PgServer::start();
        let standby = PgServer::standby_of(&primary);
        Self { primary, standby }
    }

    pub fn primary_port(&self) -> u16 {
        self.primary.port()
    }

    pub fn standby_port(&self) -> u16 {
        self.standby.port()
    }

    /// SIGKILL of the primary's postmaster and children.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Starts the primary again on its port (as a primary: if the standby was
    /// promoted meanwhile, the two have diverged).
    pub fn restart_primary(&mut self) {
        self.primary.restart();
    }

    /// Promotes the standby to primary.
    pub fn promote_standby(&self) {
        self.standby.promote();
    }

    /// Waits until the standby has replayed everything the primary has written
    /// so far; panics after 30 s.
    pub fn wait_for_standby_to_catch_up(&self) {
        let lsn = self.primary.psql("SELECT pg_current_wal_lsn()");
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        assert!(
            wait_until(START_TIMEOUT, || try_psql(self.standby.port, &sql)
                .is_ok_and(|r| r == "t")),
            "standby on port {} did not replay up to {lsn} within {START_TIMEOUT:?}",
            self.standby.port
        );
    }
}
