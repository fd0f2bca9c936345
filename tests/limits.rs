//! Connection limits and timeouts on every listener (issue #12, item 4),
//! against the real binary: thousands of idle sockets, a slowloris on the
//! control plane, a bare h2c preface on the gateway, clients past each
//! listener's cap refused in their own protocol and counted in
//! `continuity_connections_refused_total{listener}`, and the engine's RSS.
//!
//! File descriptors: the big test keeps about 2,300 sockets open in this
//! process and as many in the engine (plus its upstream connections); it
//! needs `ulimit -n` of at least 8192 (checked at its start, with a clear
//! message). CI's default here is 20000.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::continuity::{Continuity, VIEWER_TOKEN};
use support::*;

/// What the engine may use, at most, while the big test holds its sockets:
/// generous (measured about 60-90 MiB here, see the report printed by the
/// test); a leak of 64 KiB per socket past the caps would exceed it.
const RSS_BOUND_KIB: u64 = 384 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn connect_many(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect #{i} to {addr}: {e}")))
        .collect()
}

/// Reads until EOF (or a reset) within `within`; returns what was read, or
/// `None` if the connection was still open then.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left.min(Duration::from_secs(1))))
            .expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset is a close too.
            Err(_) => return Some(got),
        }
    }
}

fn refused(engine: &Continuity, listener: &str) -> f64 {
    engine
        .metric(&format!(
            "continuity_connections_refused_total{{listener=\"{listener}\"}}"
        ))
        .unwrap_or(0.0)
}

fn pg_startup() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    body.extend_from_slice(b"user\0test\0database\0test\0\0");
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// A client that sends a partial request head and nothing more is closed
/// after `header_read_timeout_ms` (default 10 s), and the control plane
/// keeps answering meanwhile. Before the fix the connection stayed open
/// for ever (no hyper timer was installed).
#[test]
fn control_plane_closes_a_slowloris_after_the_header_read_timeout() {
    let engine = Continuity::builder().start();
    let mut slow = TcpStream::connect(&engine.control).expect("connect");
    slow.write_all(b"GET /api/ops/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("partial head");
    let started = Instant::now();
    let (status, _) = engine.get("/api/ops/health");
    assert_eq!(status, 200, "health answers while a slowloris waits");
    let got = read_until_closed(&mut slow, Duration::from_secs(90));
    assert!(
        got.is_some(),
        "a partial request head was still open after 90 s (header_read_timeout_ms default 10 s)"
    );
    eprintln!(
        "slowloris closed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `[control] max_connections`: past the cap a new connection is closed at
/// once and counted; connections that never send a request are closed
/// after `header_read_timeout_ms`, so that the control plane answers
/// again; an upgraded WebSocket outlives the idle timeout (and keeps its
/// slot).
#[test]
fn control_plane_refuses_past_its_cap_and_keeps_websockets() {
    let engine = Continuity::builder()
        .control("max_connections = 40\nidle_timeout_ms = 2000\nheader_read_timeout_ms = 3000")
        .start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = format!("ws://{}/ws/ops/health?token={VIEWER_TOKEN}", engine.control);
    let mut ws = rt
        .block_on(tokio_tungstenite::connect_async(url))
        .map(|(ws, _)| ws)
        .unwrap_or_else(|e| panic!("websocket: {e}\n{}", engine.log_text()));

    // 39 slots left: fill them, then 20 more are refused at once.
    let mut silent = connect_many(&engine.control, 39);
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = connect_many(&engine.control, 20);
    let mut closed_at_once = 0;
    for s in &mut extra {
        if read_until_closed(s, Duration::from_millis(1500)).is_some() {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 15,
        "only {closed_at_once} of 20 connections past the cap were closed at once"
    );
    // The silent ones go after the header-read timeout; then the plane
    // answers again.
    let gone = silent
        .iter_mut()
        .filter_map(|s| read_until_closed(s, Duration::from_secs(20)))
        .count();
    assert_eq!(
        gone, 39,
        "silent connections closed by header_read_timeout_ms"
    );
    assert!(
        wait_until(Duration::from_secs(10), || engine
            .try_request("GET", "/api/ops/health", None, None)
            .is_ok()),
        "the control plane answers again once the idle connections are gone"
    );
    assert!(
        refused(&engine, "control") >= 15.0,
        "refusals counted: {}",
        engine.metrics()
    );

    // The WebSocket is still there, past 3x the idle timeout.
    std::thread::sleep(Duration::from_secs(6));
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::Ping(b"still-there".to_vec().into()))
            .await
            .expect("ping after the idle timeout");
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(until, ws.next()).await {
                Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == b"still-there" => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("no pong from the WebSocket past the idle timeout: {other:?}"),
            }
        }
    });
}

/// Thousands of idle sockets on every kind of listener: each listener's
/// cap refuses the excess in its own protocol (Redis `-ERR max number of
/// clients reached`, PostgreSQL SQLSTATE 53300, HTTP 503 or a close) and
/// counts it; `/api/ops/health` keeps answering; held clients keep at most
/// 64 KiB each; a bare h2c preface and silent control-plane sockets are
/// closed after the idle timeout (60 s); the engine's RSS stays under
/// [`RSS_BOUND_KIB`].
#[test]
fn thousands_of_idle_sockets_are_capped_and_the_engine_stays_up() {
    let nofile = nofile_soft_limit();
    assert!(
        nofile >= 8192,
        "this test needs `ulimit -n` >= 8192 (about 2,300 sockets here and as many in the engine); it is {nofile}"
    );
    let redis = RedisServer::start();
    let api = support::http_upstream::HttpUpstream::start("api-a", None, None, false);
    let dead = loopback(free_port());
    let (r_listen, p_listen, h_listen) = (
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
    );
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.5")
        .service(&format!(
            r#"name = "cache"
kind = "redis"
listen = "{r_listen}"
redundancy = "cold"
max_connections = 300
upstreams = [ {{ name = "cache-a", address = "{}", role = "primary" }} ]"#,
            redis.addr()
        ))
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "{p_listen}"
max_connections = 200
buffer_timeout_ms = 300000
upstreams = [ {{ name = "pg-a", address = "{dead}", role = "primary" }} ]"#
        ))
        .service(&format!(
            r#"name = "api"
kind = "http"
listen = "{h_listen}"
health_path = "/health"
upstreams = [ {{ name = "api-a", url = "{}", role = "primary" }} ]"#,
            api.url()
        ))
        .start();
    let pid = engine.pid();
    let base_rss = rss_kib(pid);
    let started = Instant::now();

    // A bare h2c preface: pingora must close it after its idle timeout.
    let mut h2c = TcpStream::connect(&h_listen).expect("h2c");
    h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    // Silent sockets on the control plane (under its cap of 1024).
    let mut control_idle = connect_many(&engine.control, 300);

    // Redis: 300 fill the cap, 50 more are told so and closed.
    let _cache = connect_many(&r_listen, 300);
    assert!(
        wait_until(Duration::from_secs(30), || engine
            .metric("continuity_proxy_active_connections{service=\"cache\"}")
            == Some(300.0)),
        "300 redis clients accepted"
    );
    for (i, mut s) in connect_many(&r_listen, 50).into_iter().enumerate() {
        let got = read_until_closed(&mut s, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("redis client #{i} past the cap is still open"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            "-ERR max number of clients reached\r\n",
            "redis client #{i} past the cap"
        );
    }

    // PostgreSQL with no usable upstream: 200 held clients, each pushing
    // 100 KiB (the engine keeps 64 KiB of each), then 20 past the cap get
    // SQLSTATE 53300.
    let mut held = connect_many(&p_listen, 200);
    let chunk = vec![0x55u8; 100 * 1024];
    for s in &mut held {
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        let _ = s.write_all(&pg_startup());
        let _ = s.write_all(&chunk);
    }
    assert!(
        wait_until(Duration::from_secs(30), || engine
            .metric("continuity_proxy_active_connections{service=\"pg\"}")
            == Some(200.0)),
        "200 postgres clients held"
    );
    for (i, mut s) in connect_many(&p_listen, 20).into_iter().enumerate() {
        s.write_all(&pg_startup()).expect("startup");
        let got = read_until_closed(&mut s, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("postgres client #{i} past the cap is still open"));
        assert_eq!(got.first(), Some(&b'E'), "an ErrorResponse: {got:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("C53300"), "SQLSTATE 53300: {text:?}");
    }

    // The gateway: 1024 sockets fill its default cap; 50 more are refused
    // (a 503, or closed at once).
    let _gw = connect_many(&h_listen, 1024);
    std::thread::sleep(Duration::from_secs(1));
    let mut gw_refused = 0;
    for mut s in connect_many(&h_listen, 50) {
        let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
        if let Some(got) = read_until_closed(&mut s, Duration::from_secs(10)) {
            let text = String::from_utf8_lossy(&got);
            assert!(
                got.is_empty()
                    || (text.starts_with("HTTP/1.1 503")
                        && text.contains("max_client_connections")),
                "a gateway client past the cap: {text:?}"
            );
            gw_refused += 1;
        }
    }
    assert!(
        gw_refused >= 45,
        "only {gw_refused} of 50 gateway clients past the cap were refused"
    );

    // The control plane answers, and every refusal is counted.
    let t = Instant::now();
    let (status, _) = engine.get("/api/ops/health");
    assert_eq!(status, 200);
    eprintln!(
        "health answered in {:.0} ms with ~2,000 idle sockets open",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert!(refused(&engine, "cache") >= 50.0, "{}", engine.metrics());
    assert!(refused(&engine, "pg") >= 20.0, "{}", engine.metrics());
    assert!(refused(&engine, "api") >= 45.0, "{}", engine.metrics());

    let rss = rss_kib(pid);
    eprintln!(
        "engine RSS: {} KiB at start, {} KiB with the sockets open (bound {} KiB)",
        base_rss, rss, RSS_BOUND_KIB
    );
    assert!(
        rss < RSS_BOUND_KIB,
        "engine RSS {rss} KiB >= {RSS_BOUND_KIB} KiB"
    );

    // The idle timeouts (60 s by default): the bare h2c preface and the
    // silent control-plane sockets are closed.
    let left = Duration::from_secs(150).saturating_sub(started.elapsed());
    assert!(
        read_until_closed(&mut h2c, left).is_some(),
        "a bare h2c preface was still open {:.0} s later",
        started.elapsed().as_secs_f64()
    );
    let left = Duration::from_secs(150).saturating_sub(started.elapsed());
    assert!(
        read_until_closed(&mut control_idle[0], left).is_some(),
        "a silent control-plane socket was still open {:.0} s later",
        started.elapsed().as_secs_f64()
    );
    let gone = control_idle
        .iter_mut()
        .skip(1)
        .filter_map(|s| read_until_closed(s, Duration::from_secs(10)))
        .count();
    assert_eq!(gone, 299, "every silent control-plane socket was closed");
    let (status, _) = engine.get("/api/ops/health");
    assert_eq!(status, 200);
    drop(held);
}

/// An HTTPS gateway (pingora serves it) caps its client sockets too:
/// `max_client_connections = 20` sockets stay open (silent, mid-handshake),
/// the 21st and later are closed at once and counted, and once those are
/// gone (TLS handshake timeout, 10 s) a real HTTPS request is served again.
#[test]
fn an_https_gateway_caps_its_client_sockets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = support::http_upstream::TestPki::new(dir.path());
    let api = support::http_upstream::HttpUpstream::start("tls-api-a", None, None, false);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.5")
        .service(&format!(
            r#"name = "tls-api"
kind = "http"
listen = "{listen}"
health_path = "/health"
max_client_connections = 20
tls_cert = "{}"
tls_key = "{}"
upstreams = [ {{ name = "tls-api-a", url = "{}", role = "primary" }} ]"#,
            pki.server_cert.display(),
            pki.server_key.display(),
            api.url()
        ))
        .start();
    let mut silent = connect_many(&listen, 20);
    std::thread::sleep(Duration::from_millis(500));
    let mut closed = 0;
    for mut s in connect_many(&listen, 10) {
        if read_until_closed(&mut s, Duration::from_secs(3)).is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 10, "sockets past max_client_connections are closed");
    assert!(
        refused(&engine, "tls-api") >= 10.0,
        "refusals counted: {}",
        engine.metrics()
    );
    // The silent ones never finish a handshake: closed after its timeout.
    let gone = silent
        .iter_mut()
        .filter_map(|s| read_until_closed(s, Duration::from_secs(40)))
        .count();
    assert_eq!(
        gone, 20,
        "silent TLS sockets closed by the handshake timeout"
    );
    let served = wait_until(Duration::from_secs(20), || {
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&pki.ca)
            .arg(format!("https://localhost:{port}/x"))
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    });
    assert!(served, "an HTTPS request is served once the cap has room");
}
