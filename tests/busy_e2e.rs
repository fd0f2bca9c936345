//! Busy is not dead (issue #18, item 4): with fast probe settings
//! (`timeout_ms = 500`, `failure_threshold = 2`) and the default
//! `busy_grace_ms = 3000`, a Redis primary that is only busy is not failed
//! over to its read-only replica, and a hung one still is.
//!
//! - `DEBUG SLEEP 2` on the primary: no failover, and a writer through the
//!   proxy sees no error (its write waits, then lands).
//! - A Lua script that keeps the primary busy (`-BUSY` to every other
//!   client): counted as alive, no failover.
//! - SIGSTOP: it still accepts TCP connections (the kernel does) but answers
//!   nothing; failed over once the grace has run (the time is printed; the
//!   figure is in BENCHMARKS.md).

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::continuity::Continuity;
use support::redis::{encode, read_reply};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.5\ntimeout_ms = 500\nfailure_threshold = 2\nconnect_timeout_ms = 300\nhold_down_seconds = 1";

fn engine(pair: &RedisPair) -> (Continuity, String) {
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
on_failover = "promote"
buffer_timeout_ms = 10000
upstreams = [
  {{ name = "redis-primary", address = "{p}", role = "primary" }},
  {{ name = "redis-replica", address = "{r}", role = "secondary" }},
]"#,
            p = pair.primary.addr(),
            r = pair.replica.addr()
        ))
        .start();
    assert!(wait_until(Duration::from_secs(10), || {
        engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
    }));
    (engine, listen)
}

fn epoch(engine: &Continuity) -> u64 {
    engine.get("/api/ops/failover/status").1["services"][0]["epoch"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Sends `args` to `addr` on a new connection and waits up to `limit` for
/// the reply, on a thread (the server may be blocked).
fn send_in_background(
    addr: String,
    args: Vec<String>,
    limit: Duration,
) -> std::thread::JoinHandle<Result<Resp, String>> {
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.write_all(&encode(&args)).map_err(|e| e.to_string())?;
        read_reply(&mut BufReader::new(&c)).map_err(|e| e.to_string())
    })
}

/// Asserts for `d` that the engine stays on the primary at epoch 0.
fn stays_for(engine: &Continuity, d: Duration, what: &str) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        assert_eq!(
            epoch(engine),
            0,
            "{what}: failed over\n{}",
            engine.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_primary_sleeping_less_than_the_grace_is_not_failed_over_and_no_write_fails() {
    let pair = RedisPair::start_with_args(&["--enable-debug-command", "yes"]);
    pair.replica.wait_for_link_up();
    let (engine, listen) = engine(&pair);

    let sleeper = send_in_background(
        pair.primary.addr(),
        vec!["DEBUG".into(), "SLEEP".into(), "2".into()],
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(100));
    // A write through the proxy while it sleeps: it waits, then lands.
    let write = send_in_background(
        listen.clone(),
        vec!["SET".into(), "during".into(), "sleep".into()],
        Duration::from_secs(10),
    );
    stays_for(&engine, Duration::from_millis(3500), "DEBUG SLEEP 2");
    assert_eq!(
        sleeper.join().expect("thread"),
        Ok(Resp::Simple("OK".into()))
    );
    assert_eq!(
        write.join().expect("thread"),
        Ok(Resp::Simple("OK".into())),
        "the write through the proxy"
    );
    assert_eq!(pair.primary.cmd(&["GET", "during"]).unwrap(), "sleep");
    // The probes saw it: unanswered, not counted.
    let (_, st) = engine.get("/api/ops/failover/status");
    assert_eq!(
        st["services"][0]["active_upstream"], "redis-primary",
        "{st:#}"
    );
    assert_eq!(redis_cmd(&listen, &["SET", "after", "1"]).unwrap(), "OK");
}

#[test]
fn a_primary_busy_with_a_script_counts_as_alive() {
    // -BUSY to other clients after 100 ms of script.
    let pair = RedisPair::start_with_args(&["--busy-reply-threshold", "100"]);
    pair.replica.wait_for_link_up();
    let (engine, _listen) = engine(&pair);
    let script = send_in_background(
        pair.primary.addr(),
        vec![
            "EVAL".into(),
            "local i = 0 while true do i = i + 1 end".into(),
            "0".into(),
        ],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let busy = pair.primary.cmd(&["PING"]);
    assert!(
        format!("{busy:?}").contains("BUSY"),
        "the primary answers -BUSY: {busy:?}"
    );
    stays_for(&engine, Duration::from_secs(5), "a busy script");
    let _ = pair.primary.cmd(&["SCRIPT", "KILL"]);
    let _ = script.join();
    assert_eq!(epoch(&engine), 0);
}

#[test]
fn a_hung_primary_is_failed_over_once_the_grace_has_run() {
    let mut pair = RedisPair::start();
    pair.replica.wait_for_link_up();
    let (engine, listen) = engine(&pair);
    let pid = pair.primary.pid().to_string();
    let stopped = Instant::now();
    let st = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(st.is_ok_and(|s| s.success()), "kill -STOP {pid}");
    let moved = wait_until(Duration::from_secs(15), || epoch(&engine) == 1);
    let took = stopped.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(
        moved,
        "a hung primary was not failed over\n{}",
        engine.log_text()
    );
    eprintln!("SIGSTOP to failover (status poll): {took:?}");
    assert!(
        took >= Duration::from_millis(3000),
        "failed over before the grace ran out: {took:?}"
    );
    let (_, st) = engine.get("/api/ops/failover/status");
    assert_eq!(
        st["services"][0]["active_upstream"], "redis-replica",
        "{st:#}"
    );
    assert_eq!(redis_cmd(&listen, &["SET", "after", "hang"]).unwrap(), "OK");
    pair.primary.kill();
}
