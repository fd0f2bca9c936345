//! Live reconfiguration (SPEC 1) against the real binary: SIGHUP and
//! `POST /api/ops/config/reload` add a service, remove an upstream while a
//! client stays connected to the other one, move an upstream to a new
//! address, and refuse an invalid file while the old config keeps running.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::continuity::Continuity;
use support::redis::{encode, read_reply, Resp};
use support::*;

const HEALTH: &str =
    "check_interval_seconds = 0.2\nfailure_threshold = 2\nconnect_timeout_ms = 300";

fn service(name: &str, listen: &str, upstreams: &[(&str, &str, &str)]) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|(n, a, r)| format!("  {{ name = \"{n}\", address = \"{a}\", role = \"{r}\" }},"))
        .collect();
    format!(
        "name = \"{name}\"\nkind = \"redis\"\nlisten = \"{listen}\"\nupstreams = [\n{}\n]",
        ups.join("\n")
    )
}

fn eventually(within: Duration, cond: impl FnMut() -> bool) {
    assert!(wait_until(within, cond), "not within {within:?}");
}

fn rewrite(engine: &Continuity, f: impl FnOnce(String) -> String) {
    let path = engine.config_path();
    let text = std::fs::read_to_string(path).expect("read config");
    std::fs::write(path, f(text)).expect("write config");
}

fn healthy(engine: &Continuity, name: &str) -> bool {
    let (_, h) = engine.get("/api/ops/health");
    h["services"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["name"] == name && s["status"] == "healthy")
    })
}

fn audited(engine: &Continuity, severity: &str) -> Vec<serde_json::Value> {
    let (code, logs) = engine.get(&format!(
        "/api/ops/audit/logs?action=config_change&severity={severity}"
    ));
    assert_eq!(code, 200, "{logs}");
    logs["entries"].as_array().cloned().unwrap_or_default()
}

/// PING on an open client connection through the proxy.
fn ping(stream: &mut TcpStream) -> bool {
    if stream.write_all(&encode(&["PING"])).is_err() {
        return false;
    }
    let Ok(clone) = stream.try_clone() else {
        return false;
    };
    matches!(read_reply(&mut BufReader::new(clone)), Ok(Resp::Simple(s)) if s == "PONG")
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect through the proxy");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

#[test]
fn sighup_adds_a_service_to_a_running_engine() {
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let (l1, l2) = (loopback(free_port()), loopback(free_port()));
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&service("cache-a", &l1, &[("a-1", &r1.addr(), "primary")]))
        .start();
    eventually(Duration::from_secs(10), || healthy(&engine, "cache-a"));
    assert!(
        redis_cmd(&l2, &["PING"]).is_err(),
        "nothing listens on {l2} yet"
    );
    let mut client = connect(&l1);
    assert!(ping(&mut client));

    let added = service("cache-b", &l2, &[("b-1", &r2.addr(), "primary")]);
    rewrite(&engine, |t| format!("{t}\n[[service]]\n{added}\n"));
    assert!(proc::signal_pid(engine.pid(), "HUP"));

    eventually(Duration::from_secs(10), || {
        redis_cmd(&l2, &["PING"]).is_ok_and(|r| r == "PONG")
    });
    eventually(Duration::from_secs(10), || healthy(&engine, "cache-b"));
    assert!(ping(&mut client), "the unchanged service's client was kept");
    let entries = audited(&engine, "info");
    let entry = entries
        .iter()
        .find(|e| e.to_string().contains("cache-b"))
        .unwrap_or_else(|| panic!("no config_change entry: {entries:?}"));
    assert_eq!(entry["actor"], "system", "{entry}");
    assert!(entry.to_string().contains("SIGHUP"), "{entry}");
}

#[test]
fn removing_an_upstream_keeps_clients_of_the_other_one() {
    let (keep, gone) = (RedisServer::start(), RedisServer::start());
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&service(
            "cache",
            &listen,
            &[
                ("up-keep", &keep.addr(), "primary"),
                ("up-gone", &gone.addr(), "secondary"),
            ],
        ))
        .start();
    eventually(Duration::from_secs(10), || healthy(&engine, "cache"));
    let mut client = connect(&listen);
    assert!(ping(&mut client));

    let gone_addr = gone.addr();
    rewrite(&engine, |t| {
        t.lines()
            .filter(|l| !l.contains(&gone_addr))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let (code, body) = engine.post("/api/ops/config/reload", r#"{"reason":"retire up-gone"}"#);
    assert_eq!(code, 200, "{body}");
    assert!(body.to_string().contains("up-gone"), "{body}");

    assert!(ping(&mut client), "the same connection still answers");
    let (_, status) = engine.get("/api/ops/redundancy/status");
    let text = status.to_string();
    assert!(
        text.contains("up-keep") && !text.contains("up-gone"),
        "{text}"
    );
    assert!(redis_cmd(&listen, &["PING"]).is_ok_and(|r| r == "PONG"));
    let entries = audited(&engine, "info");
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "ops" && e.to_string().contains("retire up-gone")),
        "{entries:?}"
    );
}

#[test]
fn an_invalid_config_is_refused_and_the_old_one_keeps_running() {
    let r = RedisServer::start();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&service("cache", &listen, &[("c-1", &r.addr(), "primary")]))
        .start();
    eventually(Duration::from_secs(10), || healthy(&engine, "cache"));
    let mut client = connect(&listen);
    assert!(ping(&mut client));

    let (code, body) = engine.post("/api/ops/config/reload", r#"{"reason":"  "}"#);
    assert_eq!(code, 422, "{body}");

    rewrite(&engine, |t| {
        format!("{t}\n[[service]]\nname = \"cache\"\nbogus_key = 1\n")
    });
    let (code, body) = engine.post("/api/ops/config/reload", r#"{"reason":"bad edit"}"#);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");

    assert!(ping(&mut client), "the open connection is untouched");
    assert!(redis_cmd(&listen, &["PING"]).is_ok_and(|r| r == "PONG"));
    assert!(healthy(&engine, "cache"));
    let refused = audited(&engine, "error");
    assert!(
        refused.iter().any(|e| e.to_string().contains("bad edit")),
        "{refused:?}"
    );
}

#[test]
fn a_changed_upstream_address_takes_new_connections() {
    let (one, two) = (RedisServer::start(), RedisServer::start());
    one.cmd(&["SET", "where", "one"]).unwrap();
    two.cmd(&["SET", "where", "two"]).unwrap();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .top("drain_timeout_ms = 500")
        .service(&service(
            "cache",
            &listen,
            &[("main", &one.addr(), "primary")],
        ))
        .start();
    eventually(Duration::from_secs(10), || healthy(&engine, "cache"));
    assert_eq!(redis_cmd(&listen, &["GET", "where"]).unwrap(), "one");
    let mut old_client = connect(&listen);
    assert!(ping(&mut old_client));

    let (from, to) = (one.addr(), two.addr());
    rewrite(&engine, |t| t.replace(&from, &to));
    assert!(proc::signal_pid(engine.pid(), "HUP"));

    eventually(Duration::from_secs(10), || {
        redis_cmd(&listen, &["GET", "where"]).is_ok_and(|r| r == "two")
    });
    // The connection to the old address is closed after drain_timeout_ms.
    eventually(Duration::from_secs(5), || !ping(&mut old_client));
    let (_, deep) = engine.get("/api/ops/health/deep");
    assert!(deep.to_string().contains(&to), "{deep}");
}
