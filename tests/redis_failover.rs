//! Redis primary and replica behind the real binary: kill -9 the primary
//! under a steady load, with `promote` and with `route`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::continuity::Continuity;
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 1\nconnect_timeout_ms = 300";

fn engine(pair: &RedisPair, mode: &str) -> (Continuity, String) {
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
on_failover = "{mode}"
buffer_timeout_ms = 3000
upstreams = [
  {{ name = "redis-primary", address = "{p}", role = "primary" }},
  {{ name = "redis-replica", address = "{r}", role = "secondary" }},
]"#,
            p = pair.primary.addr(),
            r = pair.replica.addr()
        ))
        .start();
    wait_until(Duration::from_secs(10), || {
        engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
    });
    (engine, listen)
}

/// A client writing through the proxy every few ms on one connection,
/// reconnecting after an error; counts successes and errors.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, o, e, addr) = (stop.clone(), ok.clone(), errors.clone(), addr.to_string());
        let handle = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                match redis_cmd(&addr, &["SET", &format!("load:{i}"), "x"]) {
                    Ok(r) if r == "OK" => o.fetch_add(1, Ordering::Relaxed),
                    _ => e.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            ok,
            errors,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// The number of SET calls a server has executed (probes only PING/ROLE).
fn sets_executed(server: &RedisServer) -> u64 {
    server
        .info("commandstats")
        .lines()
        .find(|l| l.starts_with("cmdstat_set:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn promote_on_kill_reattaches_idle_connections_closes_busy_ones_and_fences_the_old_primary() {
    let mut pair = RedisPair::start();
    let (engine, listen) = engine(&pair, "promote");
    assert_eq!(redis_cmd(&listen, &["SET", "before", "1"]).unwrap(), "OK");

    // Connections bound to the primary before the kill: one idle, one
    // waiting for a reply (a blocking command).
    let mut old = TcpStream::connect(&listen).unwrap();
    old.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = old.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    let mut busy = TcpStream::connect(&listen).unwrap();
    busy.write_all(b"BLPOP nothing 0\r\n").unwrap();

    let load = Load::start(&listen);
    std::thread::sleep(Duration::from_millis(300));
    pair.replica.wait_for_link_up();
    pair.primary.kill();

    // A client that connects after the kill never sees an error.
    for i in 0..40 {
        let reply = redis_cmd(&listen, &["SET", &format!("after:{i}"), "v"]);
        assert_eq!(
            reply.as_deref().ok(),
            Some("OK"),
            "new client {i} saw {reply:?}"
        );
    }
    let (ok, errors) = load.finish();
    assert!(ok > 10, "load made progress: {ok}");
    // At most the request in flight on the connection to the dead primary.
    assert!(errors <= 1, "steady load saw {errors} errors");

    // Writes now land on the promoted replica.
    assert_eq!(pair.replica.cmd(&["GET", "after:39"]).unwrap(), "v");
    assert!(pair.replica.info("replication").contains("role:master"));

    // The connection waiting for a reply from the old primary was closed;
    // the idle one was re-attached to the new primary (issue #18 item 3,
    // tests/reattach_e2e.rs).
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(busy.read(&mut buf), Ok(0) | Err(_)),
        "the busy connection to the old primary is still open"
    );
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    old.write_all(b"INFO replication\r\n").unwrap();
    let n = old.read(&mut buf).unwrap();
    assert!(n > 0, "the idle connection was closed");
    let mut info = buf[..n].to_vec();
    let role = |i: &[u8]| {
        let t = String::from_utf8_lossy(i);
        t.contains("role:master") || t.contains("role:slave")
    };
    while !role(&info) {
        let n = old.read(&mut buf).unwrap();
        assert!(n > 0, "the idle connection was closed");
        info.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&info).contains("role:master"),
        "the idle connection is not on the new primary"
    );

    let (_, status) = engine.get("/api/ops/failover/status");
    let svc = &status["services"][0];
    assert_eq!(svc["active_upstream"], "redis-replica");
    assert_eq!(svc["epoch"], 1);
    assert_eq!(svc["fenced"], serde_json::json!(["redis-primary"]));
    assert_eq!(status["metrics"]["auto_failovers"], 1);

    // The old primary comes back: it gets no traffic.
    pair.primary.restart();
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..20 {
        assert_eq!(
            redis_cmd(&listen, &["SET", &format!("fenced:{i}"), "v"]).unwrap(),
            "OK"
        );
    }
    assert_eq!(sets_executed(&pair.primary), 0, "fenced primary got writes");

    // It came back as a stale master: recover is refused until it is resynced.
    let (code, body) = engine.post("/api/ops/failover/recover/redis", r#"{"reason":"try"}"#);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_resynced");

    // Resync it from the new primary, then recover switches back.
    pair.primary
        .cmd(&["REPLICAOF", "127.0.0.1", &pair.replica.port().to_string()])
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || pair
        .primary
        .link_is_up()));
    assert!(wait_until(Duration::from_secs(5), || {
        pair.primary.cmd(&["GET", "fenced:19"]).ok().as_deref() == Some("v")
    }));
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = engine.post(
        "/api/ops/failover/recover/redis",
        r#"{"reason":"resynced"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["active_upstream"], "redis-primary");
    assert_eq!(body["epoch"], 2);
    assert_eq!(redis_cmd(&listen, &["SET", "back", "1"]).unwrap(), "OK");
    assert_eq!(pair.primary.cmd(&["GET", "back"]).unwrap(), "1");
    // The counter that proved the fence reads real traffic once it is lifted.
    assert!(sets_executed(&pair.primary) > 0);
    // The replica was demoted so there are not two primaries.
    assert!(wait_until(Duration::from_secs(5), || pair
        .replica
        .info("replication")
        .contains("role:slave")));
}

#[test]
fn route_mode_reads_from_the_replica_and_recover_needs_an_operator() {
    let mut pair = RedisPair::start();
    pair.primary.cmd(&["SET", "k", "from-primary"]).unwrap();
    pair.replica.wait_for_link_up();
    assert!(wait_until(Duration::from_secs(5), || {
        pair.replica.cmd(&["GET", "k"]).ok().as_deref() == Some("from-primary")
    }));
    let (engine, listen) = engine(&pair, "route");
    pair.primary.kill();
    // Route mode: the replica serves reads and stays read-only.
    assert_eq!(redis_cmd(&listen, &["GET", "k"]).unwrap(), "from-primary");
    assert!(pair.replica.info("replication").contains("role:slave"));

    pair.primary.restart();
    pair.primary.cmd(&["SET", "k", "restarted"]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // Fenced: still served by the replica until an operator recovers.
    assert_eq!(redis_cmd(&listen, &["GET", "k"]).unwrap(), "from-primary");

    let (code, body) = engine.post(
        "/api/ops/failover/recover/redis",
        r#"{"reason":"primary back"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(redis_cmd(&listen, &["GET", "k"]).unwrap(), "restarted");

    // A manual trigger moves it again; the counters say so.
    let (code, body) = engine.post("/api/ops/failover/trigger/redis", r#"{"reason":"drill"}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["active_upstream"], "redis-replica");
    let (_, status) = engine.get("/api/ops/failover/status");
    assert_eq!(status["metrics"]["manual_failovers"], 1);
    assert_eq!(status["metrics"]["auto_failovers"], 1);
}

#[test]
fn external_promotion_is_followed_within_a_probe_interval() {
    let pair = RedisPair::start();
    let (engine, listen) = engine(&pair, "route");
    // Sentinel-style: someone else promotes the replica and demotes the primary.
    pair.replica.promote();
    pair.primary
        .cmd(&["REPLICAOF", "127.0.0.1", &pair.replica.port().to_string()])
        .unwrap();
    assert!(wait_until(Duration::from_secs(3), || {
        engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"]
            == "redis-replica"
    }));
    assert_eq!(redis_cmd(&listen, &["SET", "w", "1"]).unwrap(), "OK");
    assert_eq!(pair.replica.cmd(&["GET", "w"]).unwrap(), "1");
}
