//! Many held clients meet an upstream that comes back (issue #16's outage
//! row). While the only Redis upstream is down, `CLIENTS` clients connect
//! and each sends PING: the proxy holds them. When Redis is back, every one
//! of them connects to it at once. Redis's listen backlog here is 128 (its
//! default is 511): a proxy that opens them all at once overflows it, the
//! kernel drops the SYNs past it, those connects run past
//! `connect_timeout_ms`, each counts as a probe failure, and the upstream
//! that just came back is marked down again (with a secondary, it would be
//! failed over). Seen on the code before the fix: 212 and 565 such
//! failures, and the upstream marked down twice.
//!
//! Now the proxy opens at most `max_connecting` connects per upstream at
//! once (default 64; the others wait their turn), and a connect that times
//! out while others to the same upstream succeed (or did within
//! `connect_timeout_ms` before it began) met a full backlog: it is counted
//! as `reason="congested"`, not against the upstream's health, and tried
//! again.
//!
//! File descriptors: the test holds `CLIENTS` sockets and the engine twice
//! as many; it needs `ulimit -n` of at least 4096 (checked at its start).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::continuity::Continuity;
use support::redis::encode;
use support::*;

const CLIENTS: usize = 1500;

/// `continuity_passive_failures_total` of the service's upstream, with
/// `reason` (`None`: every reason but `congested`, the ones that count
/// against its health).
fn passive_failures(engine: &Continuity, reason: Option<&str>) -> f64 {
    let label = reason.map(|r| format!("reason=\"{r}\""));
    engine
        .metrics()
        .lines()
        .filter(|l| l.starts_with("continuity_passive_failures_total{"))
        .filter(|l| match &label {
            Some(label) => l.contains(label.as_str()),
            None => !l.contains("reason=\"congested\""),
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn status(engine: &Continuity) -> String {
    engine.get("/api/ops/health").1["services"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Reads one line (up to CRLF) within `within`.
fn read_line(s: &mut TcpStream, within: Duration) -> Result<String, String> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\r\n") {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no reply, got {:?}", String::from_utf8_lossy(&got)));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&got))),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&got).trim_end().to_string())
}

#[test]
fn held_clients_reaching_a_recovered_upstream_do_not_mark_it_down_again() {
    let limit = nofile_soft_limit();
    assert!(
        limit >= 4096,
        "this test needs `ulimit -n` >= 4096 (it is {limit}): it holds {CLIENTS} sockets"
    );
    let mut redis = RedisServer::with_args(&["--tcp-backlog", "128"]).start();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(
            "check_interval_seconds = 0.5\ntimeout_ms = 500\nconnect_timeout_ms = 300\n\
             failure_threshold = 2\nrecovery_threshold = 1",
        )
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
buffer_timeout_ms = 60000
max_connections = 4096
upstreams = [ {{ name = "redis-primary", address = "{a}", role = "primary" }} ]"#,
            a = redis.addr()
        ))
        .start();
    assert!(
        wait_until(Duration::from_secs(10), || status(&engine) == "healthy"),
        "never healthy:\n{}",
        engine.log_text()
    );

    redis.kill();
    assert!(
        wait_until(Duration::from_secs(10), || status(&engine) == "down"),
        "never down:\n{}",
        engine.log_text()
    );
    let ping = encode(&["PING"]);
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut c = TcpStream::connect(&listen).unwrap_or_else(|e| panic!("client #{i}: {e}"));
            c.write_all(&ping)
                .unwrap_or_else(|e| panic!("client #{i}: {e}"));
            c
        })
        .collect();
    // All held (none can have been answered: nothing is up).
    assert!(
        wait_until(Duration::from_secs(20), || {
            engine
                .metric("continuity_held_clients_total{service=\"redis\"}")
                .unwrap_or(0.0)
                >= CLIENTS as f64
        }),
        "the clients were not all held:\n{}",
        engine.metrics()
    );
    let failures_before = passive_failures(&engine, None);

    redis.restart();
    let started = Instant::now();
    let mut errors = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        match read_line(c, Duration::from_secs(40)) {
            Ok(line) if line == "+PONG" => {}
            Ok(line) => errors.push(format!("client #{i}: {line}")),
            Err(e) => errors.push(format!("client #{i}: {e}")),
        }
    }
    println!(
        "{CLIENTS} held clients served in {:.2} s after the restart",
        started.elapsed().as_secs_f64()
    );
    assert!(
        errors.is_empty(),
        "{} of {CLIENTS} held clients not served, e.g. {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    let failures = passive_failures(&engine, None) - failures_before;
    println!(
        "connects that met a full backlog: {}",
        passive_failures(&engine, Some("congested"))
    );
    let log = engine.log_text();
    let flaps = log
        .lines()
        .filter(|l| l.contains("old=Up new=Down"))
        .count();
    assert_eq!(
        failures, 0.0,
        "the held clients' connects counted as {failures} failures of the recovered upstream \
         (it was marked down {flaps} time(s) in all):\n{log}"
    );
    assert_eq!(status(&engine), "healthy");
}
