//! The `[cluster]` failover of a PostgreSQL pair (issue #17): three real
//! engines on a real three-member etcd cluster in front of one PostgreSQL
//! primary and its streaming standby, `on_failover = "promote"`. Killing
//! the primary makes exactly one `pg_promote()` (the standby's timeline
//! moves from 1 to 2, and its log has no second, failing `pg_promote()`),
//! every engine serves the standby at the same
//! epoch, and a write through each engine lands on it. A planned
//! switchover sent to one engine moves all three without losing a row.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::continuity::{Continuity, VIEWER_TOKEN};
use support::writer::{pg_writer, wait_pg_rows};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.1\nfailure_threshold = 2\nconnect_timeout_ms = 100\nhold_down_seconds = 1";
const NODES: [&str; 3] = ["engine-a", "engine-b", "engine-c"];

fn cluster_json(engine: &Continuity) -> Value {
    match engine.try_request("GET", "/api/ops/cluster", None, Some(VIEWER_TOKEN)) {
        Ok((200, text)) => serde_json::from_str(&text).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Connected, and serving the agreed route `active` at `epoch`.
fn agrees_on(engine: &Continuity, active: &str, epoch: u64) -> bool {
    let c = cluster_json(engine);
    let s = &c["services"][0];
    c["connected"] == true
        && s["agrees"] == true
        && s["local_active"] == active
        && s["local_epoch"] == epoch
        && s["route"]["phase"] == "serving"
}

fn dump(engines: &[Continuity]) -> String {
    engines
        .iter()
        .map(|e| {
            let log = e.log_text();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "===== cluster:\n{:#}\n----- log (last 30 lines):\n{}",
                cluster_json(e),
                lines[lines.len().saturating_sub(30)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The timeline of the server's current WAL position (1 before any
/// promotion; each `pg_promote()` starts the next one).
fn timeline(port: u16) -> u64 {
    psql(port, "SELECT timeline_id FROM pg_control_checkpoint()")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Three engines in front of `pair` (promote) on `etcd`, agreeing on the
/// primary at epoch 0; with their listen ports.
fn start_engines(
    etcd: &EtcdCluster,
    pair: &PgPair,
    cluster_name: &str,
) -> (Vec<Continuity>, Vec<u16>) {
    let mut listens = Vec::new();
    let engines: Vec<Continuity> = NODES
        .iter()
        .map(|id| {
            let port = free_port();
            listens.push(port);
            Continuity::builder()
                .health(HEALTH)
                .service(&format!(
                    r#"name = "postgres"
kind = "postgres"
listen = "127.0.0.1:{port}"
on_failover = "promote"
buffer_timeout_ms = 8000
upstreams = [
  {{ name = "pg-primary", address = "{p}", role = "primary", user = "postgres" }},
  {{ name = "pg-standby", address = "{s}", role = "secondary", user = "postgres" }},
]"#,
                    p = pair.primary.addr(),
                    s = pair.standby.addr()
                ))
                .tail(&format!(
                    "[cluster]\netcd_endpoints = {}\ncluster_name = \"{cluster_name}\"\nnode_id = \"{id}\"\nlease_ttl_seconds = 2",
                    etcd.endpoints_toml()
                ))
                .start()
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || engines
            .iter()
            .all(|e| agrees_on(e, "pg-primary", 0))),
        "engines agreeing on pg-primary at epoch 0\n{}",
        dump(&engines)
    );
    (engines, listens)
}

#[test]
fn a_dead_postgres_primary_is_promoted_once_for_every_engine() {
    let etcd = EtcdCluster::start(3);
    let mut pair = PgPair::start();
    let cluster_name = format!("pg-{}", std::process::id());
    let (engines, listens) = start_engines(&etcd, &pair, &cluster_name);
    let standby_port = pair.standby_port();
    assert!(pair.standby.is_in_recovery());
    let before = timeline(standby_port);

    let killed = Instant::now();
    pair.kill_primary();
    assert!(
        wait_until(Duration::from_secs(20), || engines
            .iter()
            .all(|e| agrees_on(e, "pg-standby", 1))),
        "every engine on pg-standby at epoch 1\n{}",
        dump(&engines)
    );
    eprintln!(
        "all three engines on the standby {:?} after the kill",
        killed.elapsed()
    );

    // Promoted once: out of recovery, one timeline on.
    assert!(!pair.standby.is_in_recovery(), "the standby was promoted");
    assert_eq!(timeline(standby_port), before + 1, "one promotion");
    // A second pg_promote() would fail on the new primary, and its log
    // would say so.
    let log = std::fs::read_to_string(pair.standby.log_path()).unwrap_or_default();
    assert!(
        !log.contains("recovery is not in progress"),
        "pg_promote() called more than once:\n{log}"
    );
    // A write through every engine lands on the new primary.
    psql(standby_port, "CREATE TABLE IF NOT EXISTS t17 (who text)");
    for (id, port) in NODES.iter().zip(&listens) {
        let sql = format!("INSERT INTO t17 VALUES ('{id}')");
        try_psql(*port, &sql)
            .unwrap_or_else(|e| panic!("INSERT through {id}: {e}\n{}", dump(&engines)));
    }
    assert_eq!(psql(standby_port, "SELECT count(*) FROM t17").trim(), "3");
    // One decision for the cluster, the same epoch everywhere.
    let decided: Vec<String> = engines
        .iter()
        .map(|e| cluster_json(e)["services"][0]["route"]["decided_by"].to_string())
        .collect();
    assert!(decided.windows(2).all(|w| w[0] == w[1]), "{decided:?}");
}

#[test]
fn a_planned_postgres_switchover_sent_to_one_engine_loses_no_acknowledged_row() {
    let etcd = EtcdCluster::start(3);
    let pair = PgPair::start();
    let cluster_name = format!("pgp-{}", std::process::id());
    let (engines, listens) = start_engines(&etcd, &pair, &cluster_name);
    // One writer through each engine, into its own table.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = listens
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let table = format!("tp{i}");
            try_psql(*port, &format!("CREATE TABLE {table} (id bigint)"))
                .unwrap_or_else(|e| panic!("CREATE TABLE through engine {i}: {e}"));
            (table.clone(), pg_writer(*port, &table, stop.clone()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));

    let (code, body) = engines[1].post(
        "/api/ops/redundancy/failover/pg-primary",
        r#"{"reason":"planned maintenance, CHG-2"}"#,
    );
    assert_eq!(code, 200, "{body:#}\n{}", dump(&engines));
    assert!(
        body["position"]
            .as_str()
            .is_some_and(|p| p.starts_with("postgres lsn")),
        "{body:#}"
    );
    eprintln!(
        "planned switchover in the cluster: pause {} ms",
        body["pause_ms"]
    );
    assert!(
        wait_until(Duration::from_secs(10), || engines
            .iter()
            .all(|e| agrees_on(e, "pg-standby", 1))),
        "every engine on pg-standby at epoch 1\n{}",
        dump(&engines)
    );
    // Every writer goes on through its engine, now onto the new primary.
    let standby_port = pair.standby_port();
    let tables: Vec<String> = writers.iter().map(|(t, _)| t.clone()).collect();
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    wait_pg_rows(standby_port, &tables, 3);
    stop.store(true, Ordering::Relaxed);

    // Promoted; the old primary fenced on every engine (it cannot follow
    // the new timeline); every acknowledged row of every writer is there.
    assert!(!pair.standby.is_in_recovery(), "the standby was promoted");
    for e in &engines {
        let st = &e.get("/api/ops/failover/status").1["services"][0];
        assert_eq!(st["fenced"], serde_json::json!(["pg-primary"]), "{st:#}");
    }
    for (table, w) in writers {
        let (acked, errors) = w.join().expect("writer thread");
        assert!(
            errors.is_empty(),
            "{table}: the writer saw errors: {errors:?}"
        );
        let found: std::collections::HashSet<u64> =
            psql(standby_port, &format!("SELECT id FROM {table}"))
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
        let missing: Vec<u64> = acked
            .iter()
            .filter(|i| !found.contains(i))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "{table}: acknowledged rows missing: {missing:?}"
        );
        eprintln!(
            "{table}: {} acknowledged rows, all on the new primary",
            acked.len()
        );
    }
}
