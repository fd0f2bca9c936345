//! Bad input and process life: garbage and half-open connections on every
//! listener, SIGTERM drain, and listeners that cannot bind.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::continuity::Continuity;
use support::*;

/// Deterministic pseudo-random bytes (xorshift), so a failure is repeatable.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn abuse(addr: &str, seed: u64) -> Vec<TcpStream> {
    let mut keep = Vec::new();
    // Garbage, then close.
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.write_all(&garbage(seed, 4096));
    }
    // A large burst (past the 64 KiB hold buffer), left open.
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
        let _ = s.write_all(&garbage(seed + 1, 256 * 1024));
        keep.push(s);
    }
    // Half-open: connected, silent.
    if let Ok(s) = TcpStream::connect(addr) {
        keep.push(s);
    }
    // Half-closed after a partial frame.
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.write_all(b"*3\r\n$3\r\nSET\r\n$1");
        let _ = s.shutdown(Shutdown::Write);
        keep.push(s);
    }
    // A postgres-looking startup with an absurd length, then garbage.
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
        let _ = s.write_all(&garbage(seed + 2, 100));
        keep.push(s);
    }
    keep
}

#[test]
fn garbage_and_half_open_connections_neither_crash_nor_leak() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let api = support::http_upstream::HttpUpstream::start("api-a", None, None, false);
    // An "HTTP" upstream that answers garbage and hangs up.
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_addr = liar.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in liar.incoming().flatten() {
            let _ = s.write_all(&garbage(99, 300));
        }
    });
    let (r_listen, p_listen, n_listen, t_listen) = (
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
    );
    let (h_listen, bad_listen) = (loopback(free_port()), loopback(free_port()));
    let mut engine = Continuity::builder()
        .health("check_interval_seconds = 0.3")
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{r_listen}"
upstreams = [ {{ name = "r", address = "{}", role = "primary" }} ]"#,
            redis.addr()
        ))
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "{p_listen}"
upstreams = [ {{ name = "p", address = "{}", role = "primary", user = "postgres" }} ]"#,
            pg.addr()
        ))
        // No Bolt server behind it: its clients are held, then closed.
        .service(&format!(
            r#"name = "graph"
kind = "neo4j"
category = "internal"
listen = "{n_listen}"
buffer_timeout_ms = 700
upstreams = [ {{ name = "n", address = "{}", role = "primary" }} ]"#,
            loopback(free_port())
        ))
        .service(&format!(
            r#"name = "raw"
kind = "tcp"
category = "internal"
listen = "{t_listen}"
upstreams = [ {{ name = "t", address = "{}", role = "primary" }} ]"#,
            redis.addr()
        ))
        .service(&format!(
            r#"name = "api"
kind = "http"
category = "vendor"
listen = "{h_listen}"
health_path = "/health"
upstreams = [ {{ name = "api-a", url = "{}", role = "primary" }} ]"#,
            api.url()
        ))
        .service(&format!(
            r#"name = "bad"
kind = "http"
category = "vendor"
listen = "{bad_listen}"
buffer_timeout_ms = 300
upstreams = [ {{ name = "bad-a", url = "http://{liar_addr}", role = "primary" }} ]"#
        ))
        .start();
    let control = engine.control.clone();
    let mut open = Vec::new();
    for (i, addr) in [
        &r_listen,
        &p_listen,
        &n_listen,
        &t_listen,
        &h_listen,
        &bad_listen,
        &control,
    ]
    .into_iter()
    .enumerate()
    {
        open.extend(abuse(addr, 1 + i as u64 * 10));
    }
    // The engine still serves real clients meanwhile.
    assert_eq!(redis_cmd(&r_listen, &["PING"]).unwrap(), "PONG");
    assert_eq!(try_psql(p_listen_port(&p_listen), "SELECT 7").unwrap(), "7");
    let r = support::http_client::get(&h_listen, "/still-serving").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // An upstream that answers garbage: a clear 502/503 in JSON, no panic.
    let r = support::http_client::get(&bad_listen, "/x").unwrap();
    assert!(matches!(r.status, 502 | 503), "{r:?}");
    assert!(r.json()["error"]["code"].is_string(), "{r:?}");
    assert!(engine.is_running(), "{}", engine.log_text());
    drop(open);

    // Every connection ends: the active-connection gauge returns to zero.
    let all_closed = wait_until(Duration::from_secs(15), || {
        let m = engine.metrics();
        let open: Vec<_> = m
            .lines()
            .filter(|l| l.starts_with("continuity_proxy_active_connections{"))
            .filter(|l| !l.ends_with(" 0"))
            .collect();
        open.is_empty() && m.contains("continuity_proxy_active_connections{")
    });
    assert!(all_closed, "connections leaked:\n{}", engine.metrics());
    assert!(engine.is_running());
    let (code, _) = engine.get("/api/ops/health");
    assert_eq!(code, 200);
    assert!(
        !engine.log_text().contains("panicked"),
        "{}",
        engine.log_text()
    );
}

fn p_listen_port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap()
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let redis = RedisServer::start();
    let listen = loopback(free_port());
    let mut engine = Continuity::builder()
        .top("drain_timeout_ms = 800")
        .health("check_interval_seconds = 0.5")
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
upstreams = [ {{ name = "r", address = "{}", role = "primary" }} ]"#,
            redis.addr()
        ))
        .start();
    let mut client = TcpStream::connect(&listen).unwrap();
    client.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 7);

    let started = std::time::Instant::now();
    let code = engine.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", engine.log_text());
    // It waited for the open connection (the drain), but not past the timeout by much.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "did not drain: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "drain too long: {took:?}");
    // New connections are refused once it stopped; the open one was closed.
    assert!(TcpStream::connect(&listen).is_err());
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)));
}

fn run_and_wait(engine: &Continuity) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_continuity"))
        .arg("run")
        .arg("--config")
        .arg(engine.config_path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_listener_that_cannot_bind_stops_the_process_with_64() {
    // The proxy port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let engine = Continuity::builder()
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{addr}"
upstreams = [ {{ name = "r", address = "127.0.0.1:1", role = "primary" }} ]"#
        ))
        .prepare();
    let (code, stderr) = run_and_wait(&engine);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("service redis: cannot listen on"),
        "{stderr}"
    );

    // The control port is taken.
    let engine = Continuity::builder().prepare();
    let _hold = std::net::TcpListener::bind(&engine.control).unwrap();
    let (code, stderr) = run_and_wait(&engine);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("control: cannot listen on"), "{stderr}");
}

#[test]
fn the_control_plane_needs_a_token() {
    let engine = Continuity::builder().start();
    let (code, body) = engine.request("GET", "/api/ops/failover/status", None, None);
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (code, body) = engine.request(
        "POST",
        "/api/ops/failover/trigger/x",
        Some(r#"{"reason":"r"}"#),
        Some(support::continuity::VIEWER_TOKEN),
    );
    assert_eq!(code, 403, "{body}");
    // healthcheck subcommand against the live engine.
    let status = Command::new(env!("CARGO_BIN_EXE_continuity"))
        .args([
            "healthcheck",
            "--url",
            &format!("http://{}", engine.control),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_unparsable_upstream_certificate_stops_the_process_with_64() {
    // PEM armour around bytes that are no certificate: the file exists (the
    // config check passes), pingora would panic on it, we refuse it.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("federal-ca.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let engine = Continuity::builder()
        .service(&format!(
            r#"name = "ndex"
kind = "http"
category = "federal"
listen = "{}"
upstreams = [ {{ name = "ndex-a", url = "https://127.0.0.1:1", role = "primary", ca_file = "{}" }} ]"#,
            loopback(free_port()),
            junk.display()
        ))
        .prepare();
    let (code, stderr) = run_and_wait(&engine);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("service ndex") && stderr.contains("federal-ca.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
