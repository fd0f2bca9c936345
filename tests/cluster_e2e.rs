//! Three real engines coordinating failover through a real three-member
//! etcd cluster (`[cluster]`, issue #17), in front of one Redis primary and
//! its replica: they join and agree, fail over once and together, keep
//! serving (degraded) while etcd is gone, rejoin with the agreed route
//! after a restart, a raft leader lost mid-failover does not make two
//! failovers, and a planned switchover sent to any engine moves them all
//! without losing an acknowledged write.
//!
//! Each test starts its own etcd cluster, Redis pair and engines.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::continuity::{Continuity, VIEWER_TOKEN};
use support::writer::{assert_all_present, wait_writes, Writer};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.1\nfailure_threshold = 2\nconnect_timeout_ms = 100\nhold_down_seconds = 1";
const LEASE_TTL_SECONDS: u64 = 2;
const NODES: [&str; 3] = ["engine-a", "engine-b", "engine-c"];
const PRIMARY: &str = "redis-primary";
const REPLICA: &str = "redis-replica";

/// One engine of the cluster and its proxy address.
struct Node {
    id: &'static str,
    engine: Continuity,
    listen: String,
}

/// A cluster name no other test of this run uses.
fn unique_cluster_name() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts one engine per entry of [`NODES`], each fronting `pair` with
/// `on_failover = "promote"` and a `[cluster]` on `etcd`.
fn start_engines(etcd: &EtcdCluster, pair: &RedisPair, cluster_name: &str) -> Vec<Node> {
    NODES
        .iter()
        .map(|id| {
            let listen = loopback(free_port());
            let engine = Continuity::builder()
                .health(HEALTH)
                .service(&format!(
                    r#"name = "redis"
kind = "redis"
listen = "{listen}"
on_failover = "promote"
buffer_timeout_ms = 3000
upstreams = [
  {{ name = "{PRIMARY}", address = "{p}", role = "primary" }},
  {{ name = "{REPLICA}", address = "{r}", role = "secondary" }},
]"#,
                    p = pair.primary.addr(),
                    r = pair.replica.addr()
                ))
                .tail(&format!(
                    r#"[cluster]
etcd_endpoints = {endpoints}
cluster_name = "{cluster_name}"
node_id = "{id}"
lease_ttl_seconds = {LEASE_TTL_SECONDS}"#,
                    endpoints = etcd.endpoints_toml()
                ))
                .start();
            Node { id, engine, listen }
        })
        .collect()
}

/// `GET /api/ops/cluster` of `node` with the viewer token (Null if it does
/// not answer 200).
fn cluster_json(node: &Node) -> Value {
    match node
        .engine
        .try_request("GET", "/api/ops/cluster", None, Some(VIEWER_TOKEN))
    {
        Ok((200, text)) => serde_json::from_str(&text).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The `redis` service of a cluster JSON.
fn service(cluster: &Value) -> &Value {
    &cluster["services"][0]
}

/// `GET /api/ops/health` of `node`.
fn health(node: &Node) -> Value {
    node.engine.get("/api/ops/health").1
}

/// `services[0]` of `/api/ops/failover/status` of `node`.
fn failover_status(node: &Node) -> Value {
    node.engine.get("/api/ops/failover/status").1["services"][0].clone()
}

/// Every engine's cluster JSON and the tail of its log, for failure messages.
fn dump(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            let log = n.engine.log_text();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "===== {} cluster:\n{:#}\n----- {} log (last 40 lines):\n{}",
                n.id,
                cluster_json(n),
                n.id,
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for `cond`; panics with `what` and a dump of every engine.
fn must(nodes: &[Node], timeout: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    assert!(
        wait_until(timeout, cond),
        "{what}: not within {timeout:?}\n{}",
        dump(nodes)
    );
    started.elapsed()
}

/// Whether `node` is connected and serves the agreed route, which is
/// `active` at `epoch` and `serving`.
fn agrees_on(node: &Node, active: &str, epoch: u64) -> bool {
    let c = cluster_json(node);
    let s = service(&c);
    c["connected"] == true
        && s["agrees"] == true
        && s["local_active"] == active
        && s["local_epoch"] == epoch
        && s["route"]["active"] == active
        && s["route"]["epoch"] == epoch
        && s["route"]["phase"] == "serving"
}

/// Waits until every engine is connected, sees every member and agrees on
/// the route `active` at `epoch`.
fn wait_converged(nodes: &[Node], active: &str, epoch: u64, timeout: Duration) -> Duration {
    must(
        nodes,
        timeout,
        &format!("every engine connected, 3 members, agreeing on {active} epoch {epoch}"),
        || {
            nodes.iter().all(|n| {
                cluster_json(n)["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == NODES.len())
                    && agrees_on(n, active, epoch)
            })
        },
    )
}

/// `calls=` of one command in `INFO commandstats` (0 if never called).
fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    server
        .info("commandstats")
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Audit entries of `node` with `action`, newest first.
fn audit(node: &Node, action: &str) -> Vec<Value> {
    let (code, body) = node
        .engine
        .get(&format!("/api/ops/audit/logs?action={action}&limit=1000"));
    assert_eq!(code, 200, "{} audit/logs?action={action}: {body}", node.id);
    body["entries"].as_array().cloned().unwrap_or_default()
}

/// `cluster_decision` diagnostic entries of `node`.
fn decisions(node: &Node) -> Vec<Value> {
    audit(node, "diagnostic_event")
        .into_iter()
        .filter(|e| e["details"]["event"] == "cluster_decision")
        .collect()
}

/// The route key of the test's service in etcd, parsed.
fn route_in_etcd(etcd: &EtcdCluster, cluster_name: &str) -> Value {
    let raw = etcd
        .get(&format!("/continuity/{cluster_name}/route/redis"))
        .expect("the route key exists");
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("route key {raw:?}: {e}"))
}

/// Everything a test needs, started: etcd, Redis, three engines agreeing on
/// the primary at epoch 0.
fn setup() -> (EtcdCluster, RedisPair, Vec<Node>, String) {
    let started = Instant::now();
    let etcd = EtcdCluster::start(3);
    let pair = RedisPair::start();
    let name = unique_cluster_name();
    let nodes = start_engines(&etcd, &pair, &name);
    let took = wait_converged(&nodes, PRIMARY, 0, Duration::from_secs(15));
    eprintln!(
        "setup: etcd + redis + 3 engines agreeing in {:?} (convergence {took:?})",
        started.elapsed()
    );
    (etcd, pair, nodes, name)
}

#[test]
fn etcd_harness_kills_restarts_and_reads() {
    let started = Instant::now();
    let mut etcd = EtcdCluster::start(3);
    eprintln!("3-member etcd start: {:?}", started.elapsed());
    assert_eq!(etcd.endpoints().len(), 3);
    assert!(etcd.endpoints_toml().starts_with("[\"http://127.0.0.1:"));
    assert_eq!(etcd.get("/h/none"), None);

    let leader = etcd.leader();
    etcd.kill(leader);
    let next = etcd.leader();
    assert_ne!(next, leader, "a new raft leader is elected");
    // Two of three keep a quorum: writes and reads work.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.endpoints()[next]))
            .args(args)
            .output()
            .expect("etcdctl");
        assert!(out.status.success(), "{out:?}");
    };
    ctl(&["put", "/h/a", "1"]);
    ctl(&["put", "/h/b", "{\"x\": 2}"]);
    assert_eq!(etcd.get("/h/a").as_deref(), Some("1"));
    assert_eq!(
        etcd.get_prefix("/h/"),
        vec![
            ("/h/a".to_string(), "1".to_string()),
            ("/h/b".to_string(), "{\"x\": 2}".to_string())
        ]
    );

    let restarted = Instant::now();
    etcd.start_member(leader);
    eprintln!("member restart on its data dir: {:?}", restarted.elapsed());
    etcd.stop_all();
    let restarted = Instant::now();
    etcd.start_all();
    eprintln!("whole-cluster restart: {:?}", restarted.elapsed());
    assert_eq!(etcd.get("/h/a").as_deref(), Some("1"), "data survives");
}

#[test]
fn three_engines_join_and_agree_on_one_leader() {
    let (etcd, _pair, nodes, name) = setup();

    let leaders: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let c = cluster_json(n);
            assert_eq!(c["enabled"], true, "{c:#}");
            assert_eq!(c["cluster_name"], name.as_str());
            assert_eq!(c["node_id"], n.id);
            assert_eq!(c["lease_ttl_seconds"], LEASE_TTL_SECONDS);
            assert_eq!(c["reason"], Value::Null);
            let mut members: Vec<&str> = c["members"]
                .as_array()
                .expect("members[]")
                .iter()
                .filter_map(|m| m["node_id"].as_str())
                .collect();
            members.sort_unstable();
            assert_eq!(members, NODES, "{} members: {c:#}", n.id);
            let s = service(&c);
            assert_eq!(s["service"], "redis");
            assert_eq!(s["disagreement"], Value::Null, "{c:#}");
            assert_eq!(s["route"]["trigger"], "initial", "{c:#}");
            assert!(s["route_revision"].as_i64().is_some_and(|r| r > 0));
            s["leader"].clone()
        })
        .collect();
    // One leader, the same for every engine, and it is a member.
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "engines disagree on the leader: {leaders:?}"
    );
    let leader = leaders[0].as_str().expect("a leader").to_string();
    assert!(NODES.contains(&leader.as_str()), "leader {leader}");

    // Views of every engine are pooled: each engine reads all three, with
    // both upstreams up.
    assert!(wait_until(Duration::from_secs(5), || nodes.iter().all(
        |n| {
            let c = cluster_json(n);
            let views = service(&c)["views"].as_array().cloned().unwrap_or_default();
            views.len() == 3
                && views.iter().all(|v| {
                    v["upstreams"]
                        .as_array()
                        .is_some_and(|u| u.len() == 2 && u.iter().all(|u| u["health"] == "up"))
                })
        }
    )));

    // etcd holds what the engines say.
    let prefix = format!("/continuity/{name}/");
    let keys: Vec<String> = etcd
        .get_prefix(&prefix)
        .into_iter()
        .map(|(k, _)| k.trim_start_matches(&prefix).to_string())
        .collect();
    for id in NODES {
        assert!(keys.contains(&format!("members/{id}")), "{keys:?}");
        assert!(keys.contains(&format!("views/redis/{id}")), "{keys:?}");
    }
    assert_eq!(
        etcd.get(&format!("{prefix}leader/redis")).as_deref(),
        Some(leader.as_str())
    );
    let route = route_in_etcd(&etcd, &name);
    assert_eq!(route["active"], PRIMARY);
    assert_eq!(route["epoch"], 0);
    assert_eq!(route["phase"], "serving");

    for n in &nodes {
        let h = health(n);
        assert_eq!(h["cluster"]["node_id"], n.id, "{h:#}");
        assert_eq!(h["cluster"]["connected"], true, "{h:#}");
        assert_eq!(h["status"], "healthy", "{h:#}");
        assert_eq!(
            n.engine.metric("continuity_cluster_connected"),
            Some(1.0),
            "{}",
            n.id
        );
        assert_eq!(redis_cmd(&n.listen, &["PING"]).unwrap(), "PONG");
    }
}

/// `cluster_connection` entries of `node` that audit a lost session.
fn sessions_lost(node: &Node) -> Vec<Value> {
    audit(node, "diagnostic_event")
        .into_iter()
        .filter(|e| {
            e["details"]["event"] == "cluster_connection" && e["details"]["connected"] == false
        })
        .collect()
}

/// With every etcd member up (and etcd's default gRPC keepalive policy),
/// an engine's session lasts: no engine loses it over several lease TTLs.
#[test]
fn sessions_last_while_etcd_is_healthy() {
    let (_etcd, _pair, nodes, _name) = setup();
    let joined: Vec<Value> = nodes
        .iter()
        .map(|n| cluster_json(n)["members"].clone())
        .collect();
    std::thread::sleep(Duration::from_secs(4 * LEASE_TTL_SECONDS));
    for n in &nodes {
        let lost = sessions_lost(n);
        assert!(
            lost.is_empty(),
            "{} lost its etcd session {} times in {} s with etcd healthy; the first: {:#}\n{}",
            n.id,
            lost.len(),
            4 * LEASE_TTL_SECONDS,
            lost[0]["details"],
            dump(&nodes)
        );
    }
    for (n, before) in nodes.iter().zip(&joined) {
        assert_eq!(
            &cluster_json(n)["members"],
            before,
            "{}: a member rejoined (joined_at changed)",
            n.id
        );
    }
}

#[test]
fn a_dead_primary_is_failed_over_once_for_every_engine() {
    let (_etcd, mut pair, nodes, _name) = setup();
    for (i, n) in nodes.iter().enumerate() {
        let key = format!("before:{i}");
        assert_eq!(redis_cmd(&n.listen, &["SET", &key, "1"]).unwrap(), "OK");
    }
    pair.replica.wait_for_link_up();
    assert_eq!(command_calls(&pair.replica, "replicaof"), 0);

    let killed = Instant::now();
    pair.primary.kill();
    let took = wait_converged(&nodes, REPLICA, 1, Duration::from_secs(10));
    eprintln!(
        "primary killed: every engine serves from the replica at epoch 1 after {:?} (last check {took:?})",
        killed.elapsed()
    );

    for n in &nodes {
        let st = failover_status(n);
        assert_eq!(st["active_upstream"], REPLICA, "{}: {st:#}", n.id);
        assert_eq!(st["epoch"], 1, "{}: {st:#}", n.id);
        assert_eq!(
            st["fenced"],
            serde_json::json!([PRIMARY]),
            "{}: {st:#}",
            n.id
        );
        let key = format!("after:{}", n.id);
        assert_eq!(
            redis_cmd(&n.listen, &["SET", &key, "v"]).unwrap(),
            "OK",
            "SET through {}",
            n.id
        );
        assert_eq!(pair.replica.cmd(&["GET", &key]).unwrap(), "v");
    }
    assert!(pair.replica.info("replication").contains("role:master"));
    assert_eq!(
        command_calls(&pair.replica, "replicaof"),
        1,
        "exactly one REPLICAOF NO ONE\n{}",
        pair.replica.info("commandstats")
    );

    // The audit: one decision, on the engine that made it; every engine
    // audits applying it with the route's revision.
    let c = cluster_json(&nodes[0]);
    let route = service(&c)["route"].clone();
    let route_revision = service(&c)["route_revision"].clone();
    let decider = route["decided_by"]
        .as_str()
        .expect("decided_by")
        .to_string();
    let mut decided = 0;
    for n in &nodes {
        let ds = decisions(n);
        if n.id == decider {
            assert_eq!(ds.len(), 1, "{}: {ds:#?}", n.id);
            let d = &ds[0]["details"];
            assert_eq!(d["node_id"], n.id);
            assert_eq!(d["from"], PRIMARY);
            assert_eq!(d["to"], REPLICA);
            assert_eq!(d["epoch"], 1);
            assert_eq!(d["trigger"], "auto");
        }
        decided += ds.len();
        let activated = audit(n, "failover_activated");
        assert_eq!(activated.len(), 1, "{}: {activated:#?}", n.id);
        let d = &activated[0]["details"];
        assert_eq!(d["new_epoch"], 1, "{}: {d:#}", n.id);
        assert_eq!(d["to"], REPLICA, "{}: {d:#}", n.id);
        assert_eq!(
            d["evidence"]["cluster"]["revision"], route_revision,
            "{}: failover_activated {d:#} vs route revision {route_revision}",
            n.id
        );
        assert_eq!(d["evidence"]["cluster"]["decided_by"], decider.as_str());
    }
    assert_eq!(decided, 1, "one cluster_decision across all engines");
}

#[test]
fn without_etcd_engines_keep_serving_degraded_and_refuse_to_decide() {
    let (mut etcd, _pair, nodes, _name) = setup();

    let stopped = Instant::now();
    etcd.stop_all();
    let within = Duration::from_secs(LEASE_TTL_SECONDS + 5);
    must(
        &nodes,
        within,
        "every engine reports connected:false",
        || {
            nodes.iter().all(|n| {
                let c = cluster_json(n);
                let h = health(n);
                c["connected"] == false
                    && c["reason"].is_string()
                    && h["cluster"]["connected"] == false
                    && h["status"] == "degraded"
            })
        },
    );
    eprintln!(
        "etcd stopped: every engine degraded after {:?}",
        stopped.elapsed()
    );
    for n in &nodes {
        assert_eq!(
            n.engine.metric("continuity_cluster_connected"),
            Some(0.0),
            "{}",
            n.id
        );
        assert_eq!(
            redis_cmd(&n.listen, &["PING"]).unwrap(),
            "PONG",
            "{} keeps proxying",
            n.id
        );
        assert_eq!(
            redis_cmd(&n.listen, &["SET", "cut-off", n.id]).unwrap(),
            "OK"
        );
        let (code, body) = n
            .engine
            .post("/api/ops/failover/trigger/redis", r#"{"reason":"x"}"#);
        assert_eq!(code, 409, "{}: trigger without etcd: {body}", n.id);
        let st = failover_status(n);
        assert_eq!(st["active_upstream"], PRIMARY, "{}: {st:#}", n.id);
        assert_eq!(st["epoch"], 0, "{}: {st:#}", n.id);
    }

    // force=true: this engine alone, while the cluster cannot agree.
    let (code, body) = nodes[0].engine.post(
        "/api/ops/failover/trigger/redis?force=true",
        r#"{"reason":"forced while etcd is down"}"#,
    );
    assert_eq!(code, 200, "forced trigger: {body}");
    assert_eq!(body["active_upstream"], REPLICA, "{body:#}");
    for n in &nodes[1..] {
        assert_eq!(failover_status(n)["active_upstream"], PRIMARY, "{}", n.id);
    }

    let restarted = Instant::now();
    etcd.start_all();
    let etcd_up = restarted.elapsed();
    must(
        &nodes,
        Duration::from_secs(10),
        "every engine back to connected:true and healthy",
        || {
            nodes.iter().all(|n| {
                cluster_json(n)["connected"] == true
                    && health(n)["cluster"]["connected"] == true
                    && n.engine.metric("continuity_cluster_connected") == Some(1.0)
            })
        },
    );
    eprintln!(
        "etcd back (healthy in {etcd_up:?}): every engine connected after {:?}",
        restarted.elapsed()
    );
    // Reconnected, the forced engine's route (ahead of the agreed one) is
    // written as the agreed route and every engine applies it
    // (docs/cluster.md, "By hand during an etcd outage").
    wait_converged(&nodes, REPLICA, 1, Duration::from_secs(5));
    let c = cluster_json(&nodes[1]);
    let route = &service(&c)["route"];
    assert_eq!(route["decided_by"], nodes[0].id, "{c:#}");
    assert_eq!(route["actor"], "force", "{c:#}");
    let ds = decisions(&nodes[0]);
    assert_eq!(ds.len(), 1, "{ds:#?}");
    assert_eq!(ds[0]["details"]["evidence"]["forced"], true, "{ds:#?}");
    let forced: Vec<Value> = audit(&nodes[0], "manual_intervention")
        .into_iter()
        .filter(|e| e["details"]["force"] == true)
        .collect();
    assert_eq!(forced.len(), 1, "{forced:#?}");
    for n in &nodes[1..] {
        assert!(decisions(n).is_empty(), "{} decided", n.id);
    }
}

#[test]
fn a_restarted_engine_serves_the_agreed_route_from_its_first_client() {
    let (_etcd, mut pair, mut nodes, _name) = setup();
    pair.primary.kill();
    wait_converged(&nodes, REPLICA, 1, Duration::from_secs(10));
    // The old primary comes back empty, as a master: an engine that served
    // its configured route would write to it.
    pair.primary.restart();
    let primary_sets = command_calls(&pair.primary, "set");

    let restarted = Instant::now();
    nodes[1].engine.restart();
    let control_up = restarted.elapsed();
    // The very first client of the restarted engine.
    assert_eq!(
        redis_cmd(&nodes[1].listen, &["SET", "first-after-restart", "1"]).unwrap(),
        "OK",
        "{}",
        dump(&nodes)
    );
    assert_eq!(
        pair.replica.cmd(&["GET", "first-after-restart"]).unwrap(),
        "1",
        "the first write after the restart landed on the agreed upstream"
    );
    assert_eq!(
        command_calls(&pair.primary, "set"),
        primary_sets,
        "the fenced old primary got a write"
    );
    let st = failover_status(&nodes[1]);
    assert_eq!(st["active_upstream"], REPLICA, "{st:#}");
    assert_eq!(st["epoch"], 1, "{st:#}");
    let took = wait_converged(&nodes, REPLICA, 1, Duration::from_secs(10));
    eprintln!(
        "engine restarted: control plane up in {control_up:?}, first SET served from the replica, converged after {:?} (last check {took:?})",
        restarted.elapsed()
    );
    // Rejoining decided nothing.
    assert_eq!(command_calls(&pair.replica, "replicaof"), 1);
    let c = cluster_json(&nodes[1]);
    assert_eq!(service(&c)["route"]["epoch"], 1, "{c:#}");
}

#[test]
fn one_etcd_follower_down_leaves_the_engines_connected() {
    let (mut etcd, _pair, nodes, name) = setup();
    let raft_leader = etcd.leader();
    let follower = (raft_leader + 1) % etcd.len();

    let killed = Instant::now();
    etcd.kill(follower);
    // etcd itself serves: etcdctl, given the same three endpoints, reads.
    assert!(etcd
        .get(&format!("/continuity/{name}/route/redis"))
        .is_some());
    // Two of three members keep etcd's quorum: an engine whose session
    // ran over the killed member may reconnect, within a lease TTL.
    let took = must(
        &nodes,
        Duration::from_secs(LEASE_TTL_SECONDS + 3),
        "every engine connected with one etcd follower down",
        || nodes.iter().all(|n| cluster_json(n)["connected"] == true),
    );
    // And it stays so.
    std::thread::sleep(Duration::from_secs(LEASE_TTL_SECONDS + 1));
    for n in &nodes {
        let h = health(n);
        assert_eq!(
            h["cluster"]["connected"],
            true,
            "{}: {h:#}\n{}",
            n.id,
            dump(&nodes)
        );
        assert_eq!(h["status"], "healthy", "{}: {h:#}", n.id);
    }
    eprintln!(
        "etcd follower killed: every engine connected {took:?} later, still after {:?}",
        killed.elapsed()
    );
}

/// Fault injection: the state a decider leaves when its etcd session ends
/// between its two compare-and-swaps (`promoting` written, `serving` not)
/// and it rejoins within its lease TTL, so that it is still a member.
#[test]
fn a_promotion_left_unfinished_by_a_live_decider_does_not_hold_clients_forever() {
    let (etcd, _pair, nodes, name) = setup();
    let c = cluster_json(&nodes[0]);
    let decider = service(&c)["leader"]
        .as_str()
        .expect("a service leader")
        .to_string();
    let route = serde_json::json!({
        "active": REPLICA,
        "epoch": 1,
        "fenced": [PRIMARY],
        "phase": "promoting",
        "decided_by": decider,
        "trigger": "auto",
        "actor": "system",
        "reason": "fault injection: the decider's session ended before it marked the route serving",
        "at": chrono_now(),
    });
    etcd.put(
        &format!("/continuity/{name}/route/redis"),
        &route.to_string(),
    );

    let took = must(
        &nodes,
        Duration::from_secs(10),
        "the unfinished promotion is finished (or undone): route serving, every engine agreeing",
        || {
            nodes.iter().all(|n| {
                let c = cluster_json(n);
                let s = service(&c);
                s["route"]["phase"] == "serving" && s["agrees"] == true
            })
        },
    );
    eprintln!("unfinished promotion resolved after {took:?}");
    for n in &nodes {
        let key = format!("p:{}", n.id);
        assert_eq!(redis_cmd(&n.listen, &["SET", &key, "1"]).unwrap(), "OK");
    }
}

/// Now as RFC 3339, without a date crate: `date` from coreutils.
fn chrono_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn losing_the_etcd_leader_during_a_failover_makes_one_failover() {
    let (mut etcd, mut pair, nodes, name) = setup();
    let raft_leader = etcd.leader();

    let started = Instant::now();
    etcd.kill(raft_leader);
    pair.primary.kill();
    // etcd elects a new leader and serves (etcdctl, same three endpoints).
    let route_key = format!("/continuity/{name}/route/redis");
    assert!(wait_until(Duration::from_secs(5), || etcd
        .try_get(&route_key)
        .is_ok_and(|v| v.is_some())));
    let took = wait_converged(&nodes, REPLICA, 1, Duration::from_secs(20));
    eprintln!(
        "etcd leader and redis primary killed: converged on the replica at epoch 1 after {:?} (last check {took:?})",
        started.elapsed()
    );
    // Let any late second decision land before counting.
    std::thread::sleep(Duration::from_secs(LEASE_TTL_SECONDS + 1));
    for n in &nodes {
        assert!(agrees_on(n, REPLICA, 1), "{}\n{}", n.id, dump(&nodes));
        let st = failover_status(n);
        assert_eq!(st["active_upstream"], REPLICA, "{}: {st:#}", n.id);
        assert_eq!(st["epoch"], 1, "{}: {st:#}", n.id);
        assert_eq!(
            audit(n, "failover_activated").len(),
            1,
            "{}: one failover",
            n.id
        );
        assert_eq!(redis_cmd(&n.listen, &["SET", "e", n.id]).unwrap(), "OK");
    }
    assert_eq!(
        command_calls(&pair.replica, "replicaof"),
        1,
        "exactly one REPLICAOF NO ONE\n{}",
        pair.replica.info("commandstats")
    );
    let decided: usize = nodes.iter().map(|n| decisions(n).len()).sum();
    assert_eq!(decided, 1, "one cluster_decision across all engines");
    let route = route_in_etcd(&etcd, &name);
    assert_eq!(route["active"], REPLICA, "{route:#}");
    assert_eq!(route["epoch"], 1, "{route:#}");
    assert_eq!(route["phase"], "serving", "{route:#}");

    // The killed member rejoins; nothing moves.
    etcd.start_member(raft_leader);
    std::thread::sleep(Duration::from_secs(1));
    for n in &nodes {
        assert!(agrees_on(n, REPLICA, 1), "{}\n{}", n.id, dump(&nodes));
    }
}

/// `role:` and, for a replica, `master_port:` of `INFO replication`.
fn replication_role(server: &RedisServer) -> (String, Option<u16>) {
    let info = server.info("replication");
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    (
        field("role:").unwrap_or_default(),
        field("master_port:").and_then(|p| p.parse().ok()),
    )
}

#[test]
fn a_planned_switchover_sent_to_one_engine_moves_every_engine_and_loses_no_write() {
    let (_etcd, pair, nodes, _name) = setup();
    pair.replica.wait_for_link_up();
    // One writer through each engine, counting its acknowledged writes.
    let writers: Vec<Writer> = nodes
        .iter()
        .map(|n| Writer::start(&n.listen, n.id))
        .collect();
    for w in &writers {
        wait_writes(w, 50);
    }

    // Sent to one engine that is not necessarily the leader.
    let (code, body) = nodes[1].engine.post(
        &format!("/api/ops/redundancy/failover/{PRIMARY}"),
        r#"{"reason":"planned maintenance of the primary, CHG-1"}"#,
    );
    assert_eq!(code, 200, "planned switchover: {body:#}\n{}", dump(&nodes));
    assert!(body["pause_ms"].is_u64(), "{body:#}");
    assert!(
        body["position"]
            .as_str()
            .is_some_and(|p| p.starts_with("redis offset")),
        "{body:#}"
    );
    wait_converged(&nodes, REPLICA, 1, Duration::from_secs(10));
    for w in &writers {
        wait_writes(w, 50);
    }

    // Every engine on the replica at epoch 1, the old primary a replica of
    // it (demoted, not fenced), one REPLICAOF NO ONE.
    for n in &nodes {
        let st = failover_status(n);
        assert_eq!(st["active_upstream"], REPLICA, "{}: {st:#}", n.id);
        assert_eq!(st["epoch"], 1, "{}: {st:#}", n.id);
        assert_eq!(st["fenced"], serde_json::json!([]), "{}: {st:#}", n.id);
    }
    assert_eq!(replication_role(&pair.replica).0, "master");
    assert!(
        wait_until(Duration::from_secs(5), || replication_role(&pair.primary)
            == ("slave".to_string(), Some(pair.replica.port()))),
        "the old primary replicates from the new one: {:?}",
        replication_role(&pair.primary)
    );
    assert_eq!(command_calls(&pair.replica, "replicaof"), 1);
    // Demoted, so not left behind: no engine calls it diverged.
    for n in &nodes {
        let (_, pool) = n.engine.get(&format!("/api/ops/redundancy/pool/{PRIMARY}"));
        assert_eq!(pool["diverged"], false, "{}: {pool:#}", n.id);
    }

    // Audit: one decision (planned, with the pause and position) on the
    // engine that received it; every engine audits applying it.
    let mut decided = 0;
    for n in &nodes {
        let ds = decisions(n);
        if n.id == nodes[1].id {
            assert_eq!(ds.len(), 1, "{}: {ds:#?}", n.id);
            let d = &ds[0]["details"];
            assert_eq!(d["node_id"], n.id);
            assert_eq!(
                (d["from"].as_str(), d["to"].as_str()),
                (Some(PRIMARY), Some(REPLICA))
            );
            assert_eq!(d["trigger"], "manual");
            assert_eq!(d["evidence"]["planned"], true, "{d:#}");
            assert!(d["evidence"]["pause_ms"].is_u64(), "{d:#}");
        }
        decided += ds.len();
        let activated = audit(n, "failover_activated");
        assert_eq!(activated.len(), 1, "{}: {activated:#?}", n.id);
        assert_eq!(activated[0]["details"]["new_epoch"], 1);
    }
    assert_eq!(decided, 1, "one cluster_decision across all engines");

    // Back, with `recover` sent to a third engine: the old primary is a
    // caught-up replica again, so it is a planned switchover too.
    let (code, body) = nodes[2].engine.post(
        "/api/ops/failover/recover/redis",
        r#"{"reason":"maintenance done, CHG-1"}"#,
    );
    assert_eq!(code, 200, "recover: {body:#}\n{}", dump(&nodes));
    wait_converged(&nodes, PRIMARY, 2, Duration::from_secs(10));
    for w in &writers {
        wait_writes(w, 50);
    }
    assert_eq!(replication_role(&pair.primary).0, "master");
    assert!(
        wait_until(Duration::from_secs(5), || replication_role(&pair.replica)
            == ("slave".to_string(), Some(pair.primary.port()))),
        "the replica follows the primary again: {:?}",
        replication_role(&pair.replica)
    );
    for n in &nodes {
        for up in [PRIMARY, REPLICA] {
            let (_, pool) = n.engine.get(&format!("/api/ops/redundancy/pool/{up}"));
            assert_eq!(pool["diverged"], false, "{} {up}: {pool:#}", n.id);
        }
    }

    // Every acknowledged write of every engine's client is on the primary
    // (it went there, or to the replica and back by replication); no
    // client was refused.
    pair.replica.wait_for_link_up();
    for (w, n) in writers.into_iter().zip(&nodes) {
        let (acked, retries, refused) = w.finish();
        eprintln!(
            "{}: {} writes acknowledged, {retries} reconnects",
            n.id,
            acked.len()
        );
        assert!(refused.is_empty(), "{}: refused: {refused:?}", n.id);
        assert_all_present(&pair.primary, n.id, &acked);
    }
}

#[test]
fn a_planned_switchover_to_an_upstream_that_is_not_a_replica_is_refused_for_all() {
    let (etcd, pair, nodes, name) = setup();
    // The replica leaves replication: nothing to catch up with.
    pair.replica.promote();
    let (code, body) = nodes[0].engine.post(
        &format!("/api/ops/redundancy/failover/{PRIMARY}"),
        r#"{"reason":"should be refused"}"#,
    );
    assert_eq!(code, 409, "{body:#}");
    assert!(
        body.to_string().contains("planned switchover refused"),
        "{body:#}"
    );
    // Nothing was written: the route is the first engine's, still epoch 0.
    let route = route_in_etcd(&etcd, &name);
    assert_eq!(
        (route["active"].as_str(), route["epoch"].as_u64()),
        (Some(PRIMARY), Some(0))
    );
    for n in &nodes {
        assert!(agrees_on(n, PRIMARY, 0), "{}\n{}", n.id, dump(&nodes));
    }
}
