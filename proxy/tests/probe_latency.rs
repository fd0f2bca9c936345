//! Probe latency figures (issue 15, item 9): N sequential probes through
//! `health::run_probe` against a real redis-server, a real PostgreSQL 15
//! (trust auth) and an in-test HTTP/1.1 server, all on free ports of
//! 127.0.0.1. Prints the median and p99 of each kind; asserts only that
//! every probe succeeded with the expected role (timings are not asserted:
//! they depend on the machine). Run with `-- --nocapture` to see them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use continuity_proxy::config::{Kind, Role, ServiceConfig, UpstreamConfig};
use continuity_proxy::health::{self, ObservedRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const N: usize = 200;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn service(kind: Kind, up: &UpstreamConfig) -> ServiceConfig {
    let mut s = ServiceConfig::new("svc", kind, vec![up.clone()]);
    s.health.timeout = Duration::from_secs(10);
    s.health.connect_timeout = Duration::from_secs(5);
    s
}

/// Waits for a first good probe, then runs `N` and prints median / p99.
async fn measure(label: &str, kind: Kind, up: &UpstreamConfig, role: Option<ObservedRole>) {
    let svc = service(kind, up);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = health::run_probe(&svc, up).await;
        if out.ok {
            break;
        }
        assert!(Instant::now() < deadline, "{label} never came up: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat = Vec::with_capacity(N);
    for _ in 0..N {
        let out = health::run_probe(&svc, up).await;
        assert!(out.ok, "{label}: {out:?}");
        assert_eq!(out.role, role, "{label}: {out:?}");
        lat.push(out.latency);
    }
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "probe latency {label}: n={N} median={:.3} ms p99={:.3} ms max={:.3} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redis_probe_latency() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _r = Proc(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = UpstreamConfig::at("u", &format!("127.0.0.1:{port}"), Role::Primary);
    measure("redis", Kind::Redis, &up, Some(ObservedRole::Primary)).await;
}

fn pg(cwd: &Path, bin: &str, args: &[&str]) {
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
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops the cluster (immediate mode) before the tempdir goes.
struct PgStop(PathBuf, PathBuf);

impl Drop for PgStop {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.0)
            .args(["stop", "-m", "immediate"])
            .current_dir(&self.1)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn postgres_probe_latency() {
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
    let port = free_port();
    let opts = format!("-p {port} -k {shown} -c listen_addresses=127.0.0.1");
    let log = tmp.path().join("log").display().to_string();
    let _stop = PgStop(data.clone(), tmp.path().to_path_buf());
    pg(
        tmp.path(),
        "pg_ctl",
        &["-D", &shown, "-l", &log, "-o", &opts, "-w", "start"],
    );
    let up = UpstreamConfig::at("u", &format!("127.0.0.1:{port}"), Role::Primary);
    measure("postgres", Kind::Postgres, &up, Some(ObservedRole::Primary)).await;
}

#[tokio::test]
async fn http_probe_latency() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"status":"green"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let up = UpstreamConfig::url("u", &format!("http://{addr}"), Role::Primary);
    measure("http", Kind::Http, &up, None).await;
    measure("elasticsearch", Kind::Elasticsearch, &up, None).await;
}
