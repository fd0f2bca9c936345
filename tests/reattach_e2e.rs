//! Pooled Redis connections survive a failover (issue #18 item 3): an idle
//! client connection is re-attached to the new primary with its session
//! replayed (AUTH, HELLO, SELECT, CLIENT SETNAME, CLIENT SETINFO) instead
//! of being closed; one that is not idle (a reply outstanding, in MULTI or
//! WATCH, subscribed, tracking) is closed as before. Real redis-server
//! pairs, a real kill -9, raw RESP clients and a redis-py pool.

mod support;

use std::io::Read;
use std::time::Duration;

use support::continuity::Continuity;
use support::python::{has_module, PyDriver};
use support::redis::{bulk, ok, RespConn};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 1\nconnect_timeout_ms = 300";

fn engine(pair: &RedisPair, extra: &str) -> (Continuity, String) {
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
on_failover = "promote"
buffer_timeout_ms = 10000
{extra}
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

/// Kills the primary and waits until the engine serves from the replica.
fn kill_primary(pair: &mut RedisPair, engine: &Continuity) {
    // Everything written so far is on the replica before the kill.
    pair.primary.cmd(&["WAIT", "1", "2000"]).expect("WAIT");
    pair.primary.kill();
    assert!(
        wait_until(Duration::from_secs(10), || {
            engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"]
                == "redis-replica"
        }),
        "no failover:\n{}",
        engine.log_text()
    );
}

/// `continuity_reattached_connections_total{outcome}` of the service.
fn reattached(engine: &Continuity, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    engine
        .metrics()
        .lines()
        .find(|l| l.starts_with("continuity_reattached_connections_total{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn idle_connections_follow_a_kill_9_with_their_session_and_busy_ones_are_closed() {
    let mut pair = RedisPair::start();
    pair.replica.wait_for_link_up();
    let (engine, listen) = engine(&pair, "");

    // Idle, with replayable state: AUTH (the default user takes any
    // password), SELECT, CLIENT SETNAME.
    let mut idle: Vec<RespConn> = (0..12)
        .map(|i| {
            let mut c = RespConn::open(&listen);
            ok(c.call(&["AUTH", "default", "any"]));
            ok(c.call(&["SELECT", "3"]));
            ok(c.call(&["CLIENT", "SETNAME", &format!("idle{i}")]));
            ok(c.call(&["SET", &format!("pre{i}"), "v"]));
            c
        })
        .collect();
    // Idle, speaking RESP3.
    let mut resp3: Vec<RespConn> = (0..3)
        .map(|i| {
            let mut c = RespConn::open(&listen);
            let hello = c.first_line(&["HELLO", "3"]);
            assert!(hello.starts_with('%'), "{hello:?}");
            // The rest of HELLO's map: read until the connection is quiet.
            c.r.get_ref()
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut sink = [0u8; 4096];
            while matches!(c.r.read(&mut sink), Ok(n) if n > 0) {}
            c.r.get_ref()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            assert_eq!(
                c.first_line(&["HSET", &format!("h{i}"), "f", "v"]),
                ":1\r\n"
            );
            c
        })
        .collect();
    // Not idle, or with state that cannot be replayed: closed.
    let mut multi = RespConn::open(&listen);
    ok(multi.call(&["MULTI"]));
    let mut watch = RespConn::open(&listen);
    ok(watch.call(&["WATCH", "k"]));
    let mut sub = RespConn::open(&listen);
    sub.call(&["SUBSCRIBE", "ch"]);
    let mut tracking = RespConn::open(&listen);
    ok(tracking.call(&["CLIENT", "TRACKING", "on"]));
    let mut blocked = RespConn::open(&listen);
    blocked.send(&["BLPOP", "nothing", "0"]);
    std::thread::sleep(Duration::from_millis(200));

    kill_primary(&mut pair, &engine);

    for (i, c) in idle.iter_mut().enumerate() {
        assert_eq!(bulk(c.call(&["CLIENT", "GETNAME"])), format!("idle{i}"));
        assert_eq!(bulk(c.call(&["GET", &format!("pre{i}")])), "v", "db 3");
        ok(c.call(&["SET", &format!("post{i}"), "w"]));
    }
    for (i, c) in resp3.iter_mut().enumerate() {
        // A map, not an array: the connection still speaks RESP3.
        assert_eq!(c.first_line(&["HGETALL", &format!("h{i}")]), "%1\r\n");
    }
    // The writes landed in db 3 of the new primary.
    for i in 0..12 {
        let key = format!("post{i}");
        let got = pair.replica.cmd(&[
            "EVAL",
            "redis.call('SELECT', 3); return redis.call('GET', KEYS[1])",
            "1",
            &key,
        ]);
        assert_eq!(got.as_deref().ok(), Some("w"), "{key}: {got:?}");
    }
    for (what, c) in [
        ("MULTI", &mut multi),
        ("WATCH", &mut watch),
        ("SUBSCRIBE", &mut sub),
        ("CLIENT TRACKING", &mut tracking),
        ("BLPOP in flight", &mut blocked),
    ] {
        assert!(c.closed(), "{what}: the connection should be closed");
    }
    assert_eq!(reattached(&engine, "reattached"), 15.0);
    assert_eq!(reattached(&engine, "ineligible"), 5.0);
    assert_eq!(reattached(&engine, "failed"), 0.0);
}

/// An idle connection whose server closed it while the route still names
/// that server (`CLIENT KILL`, its idle `timeout`) is closed too: the
/// server meant it.
#[test]
fn a_connection_the_server_closes_on_purpose_is_closed() {
    let pair = RedisPair::start();
    let (engine, listen) = engine(&pair, "");
    let mut c = RespConn::open(&listen);
    ok(c.call(&["CLIENT", "SETNAME", "victim"]));
    let killed = pair
        .primary
        .cmd(&["CLIENT", "KILL", "SKIPME", "yes", "ID", &{
            let list = pair.primary.cmd(&["CLIENT", "LIST"]).unwrap();
            list.lines()
                .find(|l| l.contains("name=victim"))
                .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .expect("the proxied connection is listed")
                .to_string()
        }]);
    assert_eq!(killed.as_deref().ok(), Some("1"), "{killed:?}");
    assert!(c.closed());
    assert_eq!(reattached(&engine, "reattached"), 0.0);
}

/// The issue's test: a redis-py pool of 20 idle connections across a
/// kill -9 of the primary. With re-attachment every pooled connection
/// answers on the socket it had (no reconnect) and no command fails; with
/// `reattach_idle = false` the pool reconnects every one of them.
#[test]
fn a_redis_py_pool_of_20_idle_connections_sees_no_error_across_a_kill_9() {
    if !has_module("redis") {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-py must be installed in CI"
        );
        eprintln!("SKIPPED: python3 cannot import redis");
        return;
    }
    for reattach in [true, false] {
        let mut pair = RedisPair::start();
        pair.replica.wait_for_link_up();
        let extra = if reattach {
            ""
        } else {
            "reattach_idle = false"
        };
        let (engine, listen) = engine(&pair, extra);
        let (host, port) = listen.rsplit_once(':').unwrap();
        let mut py = PyDriver::start(POOL_SCRIPT, &[host, port]);
        let before = py.answer();
        assert_eq!(
            before["errors"].as_array().map(Vec::len),
            Some(0),
            "{before}"
        );
        kill_primary(&mut pair, &engine);
        let after = py.ask("go");
        eprintln!("reattach_idle = {reattach}: before {before}, after {after}");
        if reattach {
            assert_eq!(after["errors"], serde_json::json!([]), "{after}");
            assert_eq!(
                after["ports"], before["ports"],
                "a pooled connection was reopened"
            );
            assert_eq!(after["names"], serde_json::json!(vec!["app"; 20]));
            assert_eq!(reattached(&engine, "reattached"), 20.0);
        } else {
            assert_ne!(
                after["ports"], before["ports"],
                "closed connections are reopened"
            );
        }
        // Every write after the failover is on the new primary, in db 2.
        let n = pair
            .replica
            .cmd(&[
                "EVAL",
                "redis.call('SELECT', 2); return #redis.call('KEYS', 'after:*')",
                "0",
            ])
            .unwrap();
        if reattach {
            assert_eq!(n, "20");
        }
    }
}

/// 20 pooled connections (db 2, client name "app", no retries: what the
/// application itself would see), each used once, then idle. On "go",
/// each is checked out again and writes once.
const POOL_SCRIPT: &str = r#"
import json, sys, redis
from redis.retry import Retry
from redis.backoff import NoBackoff
host, port = sys.argv[1], int(sys.argv[2])
pool = redis.ConnectionPool(host=host, port=port, db=2, client_name="app",
                            max_connections=20, retry=Retry(NoBackoff(), 0),
                            socket_timeout=10)
def round(tag):
    errors, ports, names = [], [], []
    conns = []
    for i in range(20):
        try:
            c = pool.get_connection()
            conns.append(c)
        except Exception as e:
            errors.append("checkout: %s: %s" % (type(e).__name__, e))
    for i, c in enumerate(conns):
        try:
            c.send_command("SET", "%s:%d" % (tag, i), i)
            c.read_response()
            c.send_command("CLIENT", "GETNAME")
            names.append(c.read_response().decode())
            ports.append(c._sock.getsockname()[1])
        except Exception as e:
            errors.append("%s: %s" % (type(e).__name__, e))
    for c in conns:
        pool.release(c)
    return {"errors": errors, "ports": sorted(ports), "names": names}
print(json.dumps(round("before")), flush=True)
for line in sys.stdin:
    print(json.dumps(round("after")), flush=True)
"#;
