//! Slow statements seen in the data path, against real servers started
//! here on free ports: `DEBUG SLEEP` on redis-server, `pg_sleep` on
//! PostgreSQL 15 through psql (simple query, after an SSLRequest refused
//! with 'N') and through a small client speaking the extended protocol.
//! Every process is killed by a Drop guard.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use continuity_proxy::config::{EngineConfig, Kind, Role, ServiceConfig, UpstreamConfig};
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::protocol::postgres::startup_message;
use continuity_proxy::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Proc(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> (Proc, u16) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    (Proc(child, dir), port)
}

async fn engine(
    kind: Kind,
    upstream_port: u16,
    slow: Duration,
) -> (Engine, std::net::SocketAddr, broadcast::Receiver<Event>) {
    let mut svc = ServiceConfig::new(
        kind.as_str(),
        kind,
        vec![UpstreamConfig::at(
            "up1",
            &format!("127.0.0.1:{upstream_port}"),
            Role::Primary,
        )],
    );
    svc.listen = Some("127.0.0.1:0".parse().unwrap());
    svc.slow_query = slow;
    svc.health.check_interval = Duration::from_millis(200);
    let reg = prometheus::Registry::new();
    let (engine, events) = Engine::start_subscribed(
        EngineConfig {
            services: vec![svc],
            ..Default::default()
        },
        &reg,
    )
    .await
    .unwrap();
    let addr = engine.listen_addrs()[0].1;
    (engine, addr, events)
}

/// The request-path events received so far (waits `settle` for stragglers).
async fn observed(events: &mut broadcast::Receiver<Event>, settle: Duration) -> Vec<EventKind> {
    tokio::time::sleep(settle).await;
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let k @ (EventKind::SlowQuery { .. }
        | EventKind::ProtocolError { .. }
        | EventKind::UpstreamError { .. }) = e.kind
        {
            out.push(k);
        }
    }
    out
}

async fn resp(stream: &mut TcpStream, cmd: &[u8], replies: usize) -> String {
    stream.write_all(cmd).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b'\n').count() < replies {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "redis closed");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_debug_sleep_is_slow_and_fast_commands_are_not() {
    let (_redis, port) = redis();
    let (_engine, addr, mut events) = engine(Kind::Redis, port, Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(resp(&mut c, b"PING\r\n", 1).await, "+PONG\r\n");
    let pipelined = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
    assert_eq!(
        resp(&mut c, pipelined, 4).await,
        "+OK\r\n$5\r\nhello\r\n+PONG\r\n"
    );
    let started = Instant::now();
    assert_eq!(
        resp(
            &mut c,
            b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.2\r\n",
            1
        )
        .await,
        "+OK\r\n"
    );
    let wall = started.elapsed();
    assert_eq!(resp(&mut c, b"GET k\r\n", 2).await, "$5\r\nhello\r\n");
    let seen = observed(&mut events, Duration::from_millis(100)).await;
    match seen.as_slice() {
        [EventKind::SlowQuery {
            upstream,
            statement,
            duration_ms,
            command_kind,
        }] => {
            assert_eq!(upstream, "up1");
            assert_eq!(statement, "DEBUG SLEEP ?");
            assert_eq!(command_kind, "command");
            assert!(*duration_ms >= 200.0, "{duration_ms}");
            assert!(
                *duration_ms <= wall.as_secs_f64() * 1000.0 + 1.0,
                "{duration_ms} vs {wall:?}"
            );
        }
        other => panic!("expected one slow query, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_query_ms_zero_turns_observation_off() {
    let (_redis, port) = redis();
    let (_engine, addr, mut events) = engine(Kind::Redis, port, Duration::ZERO).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    resp(&mut c, b"DEBUG SLEEP 0.15\r\n", 1).await;
    assert!(observed(&mut events, Duration::from_millis(50))
        .await
        .is_empty());
}

// ---------------------------------------------------------------- postgres

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL 15 cluster (trust auth), stopped when dropped.
struct Pg {
    data: PathBuf,
    port: u16,
    _tmp: tempfile::TempDir,
}

fn as_postgres(bin: &str, args: &[&str], cwd: &std::path::Path) {
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
        "{bin} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pg {
    fn start() -> Pg {
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
        let port = free_port();
        let d = data.display().to_string();
        as_postgres(
            "initdb",
            &["-D", &d, "--auth=trust", "-U", "postgres"],
            tmp.path(),
        );
        let opts = format!("-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off");
        let log = tmp.path().join("pg.log").display().to_string();
        as_postgres(
            "pg_ctl",
            &["-D", &d, "-l", &log, "-o", &opts, "-w", "-t", "60", "start"],
            tmp.path(),
        );
        Pg {
            data,
            port,
            _tmp: tmp,
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"])
            .current_dir(self._tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn psql(port: u16, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-X", "-A", "-t", "-c", sql])
        .env("PGSSLMODE", "prefer")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads messages until the `n`th ReadyForQuery; returns the tags seen.
async fn until_ready(s: &mut TcpStream, mut n: usize) -> Vec<u8> {
    let mut tags = Vec::new();
    while n > 0 {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        tags.push(head[0]);
        if head[0] == b'Z' {
            n -= 1;
        }
    }
    tags
}

fn extended(sql: &str) -> Vec<u8> {
    let mut parse = format!("\0{sql}\0").into_bytes();
    parse.extend_from_slice(&[0, 0]);
    [
        message(b'P', &parse),
        message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]),
        message(b'E', &[0, 0, 0, 0, 0]),
        message(b'S', b""),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_simple_and_extended_statements_are_timed() {
    let pg = tokio::task::spawn_blocking(Pg::start).await.unwrap();
    let (_engine, addr, mut events) =
        engine(Kind::Postgres, pg.port, Duration::from_millis(500)).await;
    let port = addr.port();

    // psql: SSLRequest answered 'N', startup, then a simple Query.
    let out = tokio::task::spawn_blocking(move || {
        psql(port, "SELECT 1");
        psql(port, "SELECT pg_sleep(0.6)")
    })
    .await
    .unwrap();
    assert_eq!(out, "");
    let seen = observed(&mut events, Duration::from_millis(100)).await;
    match seen.as_slice() {
        [EventKind::SlowQuery {
            statement,
            duration_ms,
            command_kind,
            ..
        }] => {
            assert_eq!(statement, "SELECT pg_sleep(?)");
            assert_eq!(command_kind, "simple_query");
            assert!(*duration_ms >= 600.0, "{duration_ms}");
        }
        other => panic!("expected one slow query, got {other:?}"),
    }

    // The extended protocol, one batch then two pipelined ones.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_message("postgres", "postgres").unwrap())
        .await
        .unwrap();
    until_ready(&mut s, 1).await;
    s.write_all(&extended("SELECT pg_sleep(0.55), 'secret', 42"))
        .await
        .unwrap();
    let tags = until_ready(&mut s, 1).await;
    assert!(tags.contains(&b'D') && !tags.contains(&b'E'), "{tags:?}");
    let two = [
        extended("SELECT 1"),
        extended("SELECT pg_sleep(0.52)::text"),
    ]
    .concat();
    s.write_all(&two).await.unwrap();
    until_ready(&mut s, 2).await;
    let seen = observed(&mut events, Duration::from_millis(100)).await;
    let slow: Vec<(String, f64, String)> = seen
        .into_iter()
        .filter_map(|k| match k {
            EventKind::SlowQuery {
                statement,
                duration_ms,
                command_kind,
                ..
            } => Some((statement, duration_ms, command_kind)),
            _ => None,
        })
        .collect();
    assert_eq!(slow.len(), 2, "{slow:?}");
    assert_eq!(slow[0].0, "SELECT pg_sleep(?), ?, ?");
    assert!(slow[0].1 >= 550.0, "{slow:?}");
    assert_eq!(slow[0].2, "extended_query");
    // The pipelined fast batch is answered first and is not slow; the
    // second is timed from the shared write.
    assert_eq!(slow[1].0, "SELECT pg_sleep(?)::text");
    assert!(slow[1].1 >= 520.0, "{slow:?}");
}

// ------------------------------------------------------- cost (ignored)

/// CPU seconds this process (the proxies) has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Runs `cmd`, returning (throughput, proxy CPU µs per operation).
fn measure(cmd: &mut Command, ops: impl Fn(&str, f64) -> (f64, f64)) -> (f64, f64) {
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let out = cmd.output().unwrap();
    let (cpu, secs) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rate, n) = ops(&text, secs);
    (rate, cpu * 1e6 / n)
}

fn redis_rps(text: &str, n: f64) -> (f64, f64) {
    let rps: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
        .collect();
    (rps.iter().sum::<f64>() / rps.len() as f64, n)
}

fn pg_tps(text: &str, secs: f64) -> (f64, f64) {
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split(' ').next()?.parse().ok())
        .unwrap();
    (tps, tps * secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The observer's cost: the same proxy with observation on (default
/// thresholds) and off (`slow_query = 0`), interleaved, median of the
/// rounds. `cargo test --release -p continuity-proxy --test slow_queries
/// -- --ignored --nocapture observer_cost` (ROUNDS=n to change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes of load"]
async fn observer_cost() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let (_redis, rport) = redis();
    let pg = tokio::task::spawn_blocking(Pg::start).await.unwrap();
    let pport = pg.port.to_string();
    tokio::task::spawn_blocking(move || {
        let st = Command::new("pgbench")
            .args([
                "-i",
                "-q",
                "-s",
                "10",
                "-h",
                "127.0.0.1",
                "-p",
                &pport,
                "-U",
                "postgres",
                "postgres",
            ])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    })
    .await
    .unwrap();
    let mut targets = Vec::new();
    for (label, on) in [("on", true), ("off", false)] {
        let r = engine(
            Kind::Redis,
            rport,
            if on {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            },
        )
        .await;
        let p = engine(
            Kind::Postgres,
            pg.port,
            if on {
                Duration::from_millis(500)
            } else {
                Duration::ZERO
            },
        )
        .await;
        targets.push((label, r.1.port(), p.1.port(), r.0, p.0));
    }
    type Bench = (
        &'static str,
        fn(u16) -> Command,
        fn(&str, f64) -> (f64, f64),
    );
    let benches: [Bench; 4] = [
        (
            "redis_np",
            |p| redis_bench(p, &["-n", "200000"]),
            |t, _| redis_rps(t, 400_000.0),
        ),
        (
            "redis_p16",
            |p| redis_bench(p, &["-n", "2000000", "-P", "16"]),
            |t, _| redis_rps(t, 4_000_000.0),
        ),
        ("pg_S", |p| pgbench(p, "simple"), pg_tps),
        ("pg_S_prepared", |p| pgbench(p, "prepared"), pg_tps),
    ];
    type Runs = Vec<(f64, f64)>;
    let mut results: Vec<(&str, &str, Runs)> = Vec::new();
    for round in 0..rounds {
        for (name, make, parse) in &benches {
            // Alternate which target goes first, so drift is shared.
            let order: Vec<usize> = if round % 2 == 0 {
                vec![0, 1]
            } else {
                vec![1, 0]
            };
            for i in order {
                let (label, rp, pp, _, _) = &targets[i];
                let port = if name.starts_with("redis") { *rp } else { *pp };
                let (mut cmd, parse) = (make(port), *parse);
                let m = tokio::task::spawn_blocking(move || measure(&mut cmd, parse))
                    .await
                    .unwrap();
                match results.iter_mut().find(|r| r.0 == *name && r.1 == *label) {
                    Some(r) => r.2.push(m),
                    None => results.push((name, label, vec![m])),
                }
            }
        }
    }
    println!("| bench | observer | throughput (median) | proxy CPU µs/op (median) |");
    println!("|---|---|---|---|");
    for (name, label, runs) in &results {
        let rate = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        println!("| {name} | {label} | {rate:.0} | {cpu:.2} |");
    }
}

fn redis_bench(port: u16, extra: &[&str]) -> Command {
    let mut c = Command::new("redis-benchmark");
    c.args([
        "-q",
        "--csv",
        "-t",
        "set,get",
        "-c",
        "50",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    c.args(extra);
    c
}

fn pgbench(port: u16, mode: &str) -> Command {
    let mut c = Command::new("pgbench");
    c.args([
        "-S",
        "-c",
        "16",
        "-j",
        "2",
        "-T",
        "10",
        "-M",
        mode,
        "-h",
        "127.0.0.1",
    ])
    .args(["-p", &port.to_string(), "-U", "postgres", "postgres"]);
    c
}
