//! One engine cut off from the primary cannot move the service (issue #17):
//! three engines on a real three-member etcd cluster in front of one Redis
//! pair, `on_failover = "promote"`; engine-c reaches the primary through a
//! relay of the test's, which then refuses its connections. engine-c sees
//! the primary down, the other two do not: nobody fails over, nothing is
//! promoted, engine-c says it disagrees, and it agrees again once the relay
//! is back. With `on_failover = "route"`, engine-c's own clients go to the
//! secondary meanwhile, and the service still does not move.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::continuity::{Continuity, VIEWER_TOKEN};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.1\nfailure_threshold = 2\nconnect_timeout_ms = 100\nhold_down_seconds = 1";

/// A TCP relay to `target` on `port`; `stop` closes the listener and every
/// relayed connection, so connects to `port` are refused.
struct Relay {
    port: u16,
    target: String,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(port: u16, target: &str) -> Relay {
        let mut r = Relay {
            port,
            target: target.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            thread: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        self.stop.store(false, Ordering::SeqCst);
        let listener = TcpListener::bind(loopback(self.port)).expect("relay binds");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, conns, target) = (self.stop.clone(), self.conns.clone(), self.target.clone());
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(upstream) = TcpStream::connect(&target) else {
                            continue;
                        };
                        for s in [&client, &upstream] {
                            if let Ok(c) = s.try_clone() {
                                conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                            }
                        }
                        pipe(client.try_clone().ok(), upstream.try_clone().ok());
                        pipe(Some(upstream), Some(client));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        assert!(wait_for_port_closed(
            &loopback(self.port),
            Duration::from_secs(2)
        ));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` on a thread until either end closes.
fn pipe(from: Option<TcpStream>, to: Option<TcpStream>) {
    let (Some(mut from), Some(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn cluster_json(engine: &Continuity) -> Value {
    match engine.try_request("GET", "/api/ops/cluster", None, Some(VIEWER_TOKEN)) {
        Ok((200, text)) => serde_json::from_str(&text).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn on_primary(engine: &Continuity) -> bool {
    let c = cluster_json(engine);
    let s = &c["services"][0];
    c["connected"] == true
        && s["local_active"] == "redis-primary"
        && s["local_epoch"] == 0
        && s["route"]["active"] == "redis-primary"
        && s["route"]["epoch"] == 0
}

fn dump(engines: &[Continuity]) -> String {
    engines
        .iter()
        .map(|e| format!("===== cluster:\n{:#}", cluster_json(e)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn replicaof_calls(server: &RedisServer) -> u64 {
    server
        .info("commandstats")
        .lines()
        .find(|l| l.starts_with("cmdstat_replicaof:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// engine-a, engine-b and engine-c in front of `primary` and `secondary`
/// with `on_failover`; engine-c reaches the primary through `relay` only.
fn start_engines(
    etcd: &EtcdCluster,
    relay: &Relay,
    primary: &RedisServer,
    secondary: &RedisServer,
    on_failover: &str,
) -> (Vec<Continuity>, Vec<String>) {
    let cluster_name = format!("cut-{}-{on_failover}", std::process::id());
    let mut listens = Vec::new();
    let engines = ["engine-a", "engine-b", "engine-c"]
        .iter()
        .map(|id| {
            let listen = loopback(free_port());
            listens.push(listen.clone());
            let primary = if *id == "engine-c" {
                loopback(relay.port)
            } else {
                primary.addr()
            };
            Continuity::builder()
                .health(HEALTH)
                .service(&format!(
                    r#"name = "redis"
kind = "redis"
listen = "{listen}"
on_failover = "{on_failover}"
buffer_timeout_ms = 2000
upstreams = [
  {{ name = "redis-primary", address = "{primary}", role = "primary" }},
  {{ name = "redis-replica", address = "{r}", role = "secondary" }},
]"#,
                    r = secondary.addr()
                ))
                .tail(&format!(
                    "[cluster]\netcd_endpoints = {}\ncluster_name = \"{cluster_name}\"\nnode_id = \"{id}\"\nlease_ttl_seconds = 2",
                    etcd.endpoints_toml()
                ))
                .start()
        })
        .collect();
    (engines, listens)
}

#[test]
fn an_engine_cut_off_from_the_primary_alone_does_not_fail_over() {
    let etcd = EtcdCluster::start(3);
    let pair = RedisPair::start();
    let mut relay = Relay::start(free_port(), &pair.primary.addr());
    let (engines, _) = start_engines(&etcd, &relay, &pair.primary, &pair.replica, "promote");
    assert!(
        wait_until(Duration::from_secs(20), || engines.iter().all(on_primary)),
        "every engine on redis-primary at epoch 0\n{}",
        dump(&engines)
    );

    relay.stop();
    let cut = &engines[2];
    assert!(
        wait_until(Duration::from_secs(10), || {
            cluster_json(cut)["services"][0]["disagreement"].is_string()
        }),
        "engine-c reports its disagreement\n{}",
        dump(&engines)
    );
    let said = cluster_json(cut)["services"][0]["disagreement"].clone();
    assert!(
        said.as_str()
            .is_some_and(|s| s.contains("redis-primary down")),
        "{said}"
    );
    // For well over the hold-down and several decision rounds: nobody
    // moves, nothing is promoted.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(
            engines.iter().all(on_primary),
            "a failover on one engine's evidence\n{}",
            dump(&engines)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(replicaof_calls(&pair.replica), 0, "nothing was promoted");
    assert!(pair.replica.info("replication").contains("role:slave"));

    // The relay back: engine-c sees the primary again and agrees.
    relay.spawn();
    assert!(
        wait_until(Duration::from_secs(10), || {
            cluster_json(cut)["services"][0]["disagreement"].is_null()
        }),
        "engine-c agrees again\n{}",
        dump(&engines)
    );
    assert!(engines.iter().all(on_primary), "{}", dump(&engines));
}

/// With `on_failover = "route"`, the cut-off engine's clients go to the
/// secondary alone while the service stays on the primary for every
/// engine; with `"promote"` (above) they are held instead (the secondary is
/// a read-only replica until the cluster promotes it).
#[test]
fn a_cut_off_engine_sends_its_own_clients_to_the_secondary_in_route_mode() {
    let etcd = EtcdCluster::start(3);
    // Two independent Redis servers: route mode promotes nothing.
    let primary = RedisServer::start();
    let secondary = RedisServer::start();
    let mut relay = Relay::start(free_port(), &primary.addr());
    let (engines, listens) = start_engines(&etcd, &relay, &primary, &secondary, "route");
    assert!(
        wait_until(Duration::from_secs(20), || engines.iter().all(on_primary)),
        "every engine on redis-primary at epoch 0\n{}",
        dump(&engines)
    );

    relay.stop();
    let cut = &engines[2];
    assert!(
        wait_until(Duration::from_secs(10), || {
            cluster_json(cut)["services"][0]["disagreement"].is_string()
        }),
        "engine-c reports its disagreement\n{}",
        dump(&engines)
    );
    // A new client of engine-c is served, by the secondary; engine-a's
    // clients still write to the primary; nobody moved the service.
    assert_eq!(
        redis_cmd(&listens[2], &["SET", "via", "engine-c"]).unwrap(),
        "OK"
    );
    assert_eq!(secondary.cmd(&["GET", "via"]).unwrap(), "engine-c");
    assert_eq!(
        redis_cmd(&listens[0], &["SET", "via-a", "engine-a"]).unwrap(),
        "OK"
    );
    assert_eq!(primary.cmd(&["GET", "via-a"]).unwrap(), "engine-a");
    assert!(engines.iter().all(on_primary), "{}", dump(&engines));

    // The relay back: engine-c's new clients go to the primary again.
    relay.spawn();
    assert!(
        wait_until(Duration::from_secs(10), || {
            cluster_json(cut)["services"][0]["disagreement"].is_null()
        }),
        "engine-c agrees again\n{}",
        dump(&engines)
    );
    assert_eq!(redis_cmd(&listens[2], &["SET", "back", "1"]).unwrap(), "OK");
    assert_eq!(primary.cmd(&["GET", "back"]).unwrap(), "1");
    assert!(engines.iter().all(on_primary), "{}", dump(&engines));
}
