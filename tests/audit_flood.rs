//! Issue #12 item 7: unauthenticated clients must not be able to flood the
//! audit log, nor push failovers out of it.
//!
//! The real binary runs two Redis services on real `redis-server`s:
//! - `held`: both upstreams killed, and hundreds of clients at a time
//!   connect and are held until `buffer_timeout_ms` refuses them (thousands
//!   in all);
//! - `live`: under a per-request observer load (slow `DEBUG SLEEP`s, and
//!   connections that send garbage), failed over again and again: its
//!   primary is killed (automatic failover), restarted and recovered
//!   through the API, then triggered and recovered through the API, three
//!   times.
//!
//! Then every failover and every operator action is in the audit log (read
//! from the JSONL segments), hold timeouts appear only as per-interval
//! summaries (the last one written at shutdown) whose counts add up to the
//! engine's own counter, and `continuity audit verify` says `ok`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::continuity::Continuity;
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nrecovery_threshold = 2\nhold_down_seconds = 0\nconnect_timeout_ms = 300";

/// Held clients at once.
const FLOOD_WORKERS: usize = 200;
/// Threads sending slow `DEBUG SLEEP`s through `live` (a slow query each).
const SLOW_WORKERS: usize = 2;
/// Threads opening connections to `live` that send bytes its statement
/// observer does not understand (a protocol error event each).
const GARBAGE_WORKERS: usize = 4;
/// Failover rounds on `live` (each: 1 automatic failover, 1 manual one,
/// 2 recoveries, 3 operator actions).
const ROUNDS: usize = 3;

fn audit_dir(engine: &Continuity) -> PathBuf {
    engine
        .config_path()
        .parent()
        .expect("config dir")
        .join("data/audit")
}

/// Every entry of every segment, oldest first.
fn entries(dir: &Path) -> Vec<Value> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn count(entries: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    entries.iter().filter(|e| pred(e)).count()
}

/// The service's snapshot (status, active upstream, upstreams' health).
fn status_of(engine: &Continuity, service: &str) -> Value {
    engine.get(&format!("/api/ops/health/service/{service}")).1
}

fn active(engine: &Continuity, service: &str) -> String {
    status_of(engine, service)["active_upstream"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn upstream_health(engine: &Continuity, service: &str, upstream: &str) -> String {
    status_of(engine, service)["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == upstream).cloned())
        .map(|u| u["health"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn metric(engine: &Continuity, prefix: &str) -> u64 {
    engine.metric(prefix).unwrap_or(0.0) as u64
}

/// The sum of every sample whose line starts with `prefix`.
fn metric_sum(engine: &Continuity, prefix: &str) -> u64 {
    engine
        .metrics()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Background threads that stop when told and count what they did.
struct Crowd {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Crowd {
    fn start(workers: usize, job: impl Fn() -> bool + Send + Sync + 'static) -> Crowd {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let job = Arc::new(job);
        let handles = (0..workers)
            .map(|_| {
                let (stop, done, job) = (stop.clone(), done.clone(), job.clone());
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            if job() {
                                done.fetch_add(1, Ordering::Relaxed);
                            } else {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    })
                    .expect("spawn worker")
            })
            .collect();
        Crowd {
            stop,
            done,
            handles,
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// One held client: connect, send a command, wait for the refusal and the
/// close. True once the engine has answered and closed.
fn held_client(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got > 0,
            Ok(n) => got += n,
            Err(_) => return false,
        }
    }
}

/// A client of `live` whose first command is not RESP the observer
/// understands (`*1` then an integer): redis answers an error and closes,
/// the engine's statement observer reports a protocol error.
fn garbage_client(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"*1\r\n:5\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

fn verify_offline(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_continuity"))
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .expect("run continuity audit verify");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn post_ok(engine: &Continuity, path: &str, reason: &str) {
    let body = serde_json::json!({ "reason": reason }).to_string();
    let (code, resp) = engine.post(path, &body);
    assert_eq!(code, 200, "POST {path}: {resp}");
}

fn wait_for(what: &str, engine: &Continuity, within: Duration, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(within, cond),
        "timed out waiting for {what}\n{}",
        engine.log_text()
    );
}

#[test]
fn a_flood_of_held_clients_neither_floods_the_audit_log_nor_pushes_failovers_out() {
    let mut held_a = RedisServer::start();
    let mut held_b = RedisServer::start();
    let debug = ["--enable-debug-command", "yes"];
    let mut live_a = RedisServer::with_args(&debug).start();
    let live_b = RedisServer::with_args(&debug).start();
    let held_listen = loopback(free_port());
    let live_listen = loopback(free_port());
    let mut engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "held"
kind = "redis"
listen = "{held_listen}"
buffer_timeout_ms = 400
upstreams = [
  {{ name = "held-a", address = "{}", role = "primary" }},
  {{ name = "held-b", address = "{}", role = "secondary" }},
]"#,
            held_a.addr(),
            held_b.addr()
        ))
        .service(&format!(
            r#"name = "live"
kind = "redis"
listen = "{live_listen}"
on_failover = "route"
failback = "manual"
slow_query_ms = 3
upstreams = [
  {{ name = "live-a", address = "{}", role = "primary" }},
  {{ name = "live-b", address = "{}", role = "secondary" }},
]"#,
            live_a.addr(),
            live_b.addr()
        ))
        .start();
    wait_for(
        "both services healthy",
        &engine,
        Duration::from_secs(20),
        || {
            let (_, h) = engine.get("/api/ops/health");
            h["services"]
                .as_array()
                .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["status"] == "healthy"))
        },
    );

    // `held` loses both upstreams: from now on its clients are held.
    held_a.kill();
    held_b.kill();
    wait_for("held down", &engine, Duration::from_secs(20), || {
        status_of(&engine, "held")["status"] == "down"
    });

    let flood_addr = held_listen.clone();
    let flood = Crowd::start(FLOOD_WORKERS, move || held_client(&flood_addr));
    let slow_addr = live_listen.clone();
    let slow_load = Crowd::start(SLOW_WORKERS, move || {
        redis_cmd(&slow_addr, &["DEBUG", "SLEEP", "0.005"]).is_ok()
    });
    let garbage_addr = live_listen.clone();
    let garbage_load = Crowd::start(GARBAGE_WORKERS, move || garbage_client(&garbage_addr));
    let flood_started = Instant::now();

    for round in 0..ROUNDS {
        // An automatic failover...
        live_a.kill();
        wait_for(
            "auto failover to live-b",
            &engine,
            Duration::from_secs(30),
            || active(&engine, "live") == "live-b",
        );
        live_a.restart();
        wait_for("live-a up again", &engine, Duration::from_secs(30), || {
            upstream_health(&engine, "live", "live-a") == "up"
        });
        // ... recovered by an operator, then a drill: trigger and recover.
        post_ok(
            &engine,
            "/api/ops/failover/recover/live",
            &format!("round {round}: primary back"),
        );
        post_ok(
            &engine,
            "/api/ops/failover/trigger/live",
            &format!("round {round}: drill"),
        );
        post_ok(
            &engine,
            "/api/ops/failover/recover/live",
            &format!("round {round}: drill over"),
        );
        assert_eq!(active(&engine, "live"), "live-a");
    }
    // Keep flooding a little longer, so that summaries span intervals.
    while flood_started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = flood.finish();
    let slow_sent = slow_load.finish();
    let garbage_sent = garbage_load.finish();
    let flood_secs = flood_started.elapsed().as_secs();

    let auto = metric(
        &engine,
        "continuity_failovers_total{service=\"live\",trigger=\"auto\"}",
    );
    let manual = metric(
        &engine,
        "continuity_failovers_total{service=\"live\",trigger=\"manual\"}",
    );
    assert_eq!(
        (auto, manual),
        (ROUNDS as u64, ROUNDS as u64),
        "failovers the engine counted"
    );
    let slow = metric_sum(&engine, "continuity_slow_queries_total{");
    eprintln!(
        "held clients refused: {refused} in {flood_secs} s; observer load: {slow_sent} DEBUG SLEEPs \
         ({slow} slow queries counted), {garbage_sent} garbage connections"
    );
    assert!(
        slow > 0 && garbage_sent > 0,
        "no observer load: {slow} slow queries, {garbage_sent} garbage connections"
    );
    assert!(
        refused >= 1000,
        "the flood was too small to mean anything: {refused} held clients refused"
    );

    // Every failover, recovery and operator action reaches the log.
    let dir = audit_dir(&engine);
    let is = |e: &Value, action: &str| e["action"] == action && e["service"] == "live";
    let expected = (2 * ROUNDS, 2 * ROUNDS, 3 * ROUNDS);
    let mut seen = (0, 0, 0);
    let complete = wait_until(Duration::from_secs(90), || {
        let all = entries(&dir);
        seen = (
            count(&all, |e| is(e, "failover_activated")),
            count(&all, |e| is(e, "failover_recovered")),
            count(&all, |e| is(e, "manual_intervention")),
        );
        seen == expected
    });
    assert!(
        complete,
        "(failover_activated, failover_recovered, manual_intervention) of live in the audit log: {seen:?}, expected {expected:?}"
    );

    // The flood is summarised: one entry per service per interval at most,
    // not one per held client.
    let hold_entries = |all: &[Value]| -> Vec<Value> {
        all.iter()
            .filter(|e| {
                e["service"] == "held"
                    && matches!(
                        e["details"]["event"].as_str(),
                        Some("hold_timed_out" | "hold_timeouts")
                    )
            })
            .cloned()
            .collect()
    };
    let total = metric(&engine, "continuity_hold_timeouts_total{service=\"held\"}");
    // A summary is written every 10 s while the engine runs...
    let mut holds = Vec::new();
    let periodic = wait_until(Duration::from_secs(40), || {
        holds = hold_entries(&entries(&dir));
        !holds.is_empty()
    });
    assert!(periodic, "no hold-timeout entry while the engine runs");
    let bound = (flood_secs / 10 + 3) as usize;
    assert!(
        holds.len() <= bound,
        "{} hold-timeout audit entries for {total} held clients refused in {flood_secs} s (at most {bound} expected: one per interval)",
        holds.len()
    );
    // ... and the last one at shutdown: together they count every refusal.
    assert_eq!(
        engine.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        engine.log_text()
    );
    holds = hold_entries(&entries(&dir));
    let summed: u64 = holds
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(holds.len() <= bound, "{} hold-timeout entries", holds.len());
    assert_eq!(
        summed, total,
        "hold-timeout summaries count {summed} held clients, the engine refused {total}: {holds:?}"
    );
    for h in &holds {
        let d = &h["details"];
        assert_eq!(d["event"], "hold_timeouts", "{h}");
        assert!(d["first_at"].is_string() && d["last_at"].is_string(), "{h}");
        let sample = d["clients_sample"].as_array().expect("clients_sample");
        assert!(!sample.is_empty() && sample.len() <= 8, "{h}");
        assert!(sample.iter().all(|c| c == "127.0.0.1"), "{h}");
    }

    let all = entries(&dir);
    assert_eq!(
        count(&all, |e| e["details"]["event"] == "audit_recorder_lagged"),
        0,
        "the recorder lost events"
    );
    let (code, out) = verify_offline(&dir);
    assert_eq!(code, Some(0), "audit verify: {out}");
    assert!(out.contains("ok:"), "{out}");
    eprintln!(
        "audit entries: {} ({} hold-timeout summaries)",
        all.len(),
        holds.len()
    );
}
