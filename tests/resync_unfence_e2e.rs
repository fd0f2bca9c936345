//! After a promotion the old primary is fenced. Once it is rebuilt (postgres:
//! `pg_basebackup -R` from the new primary, as docs/runbook.md does) or made
//! a replica by hand (redis: `REPLICAOF`), the probes see a caught-up
//! replica and clear `diverged`; `resync` must then unfence it, so that
//! continuity can fail over to it again (`trigger`), without an engine
//! restart. Real binary, real servers.

mod support;

use std::time::Duration;

use support::continuity::Continuity;
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 1\nconnect_timeout_ms = 300";

fn pool(engine: &Continuity, name: &str) -> serde_json::Value {
    engine.get(&format!("/api/ops/redundancy/pool/{name}")).1
}

fn active(engine: &Continuity) -> serde_json::Value {
    engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"].clone()
}

/// The resync was audited as an operator action of this service.
fn assert_resync_audited(engine: &Continuity, reason: &str) {
    let (_, logs) = engine.get("/api/ops/audit/logs?action=manual_intervention");
    let found = logs["entries"].as_array().is_some_and(|entries| {
        entries.iter().any(|e| {
            e["details"]["operation"] == "redundancy_resync" && e["details"]["reason"] == reason
        })
    });
    assert!(
        found,
        "no redundancy_resync entry with reason {reason:?}: {logs}"
    );
}

#[test]
fn postgres_rebuilt_standby_is_unfenced_by_resync_and_can_take_a_failover() {
    let mut pair = PgPair::start();
    let proxy_port = free_port();
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "127.0.0.1:{proxy_port}"
on_failover = "promote"
buffer_timeout_ms = 15000
upstreams = [
  {{ name = "pg-primary", address = "{p}", role = "primary", user = "postgres" }},
  {{ name = "pg-standby", address = "{s}", role = "secondary", user = "postgres" }},
]"#,
            p = pair.primary.addr(),
            s = pair.standby.addr()
        ))
        .start();
    assert!(wait_until(Duration::from_secs(10), || {
        engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
    }));
    try_psql(
        proxy_port,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
    )
    .unwrap();

    // Planned switchover: pg-standby is promoted, pg-primary fenced.
    let (code, body) = engine.post(
        "/api/ops/redundancy/failover/pg-primary",
        r#"{"reason":"maintenance of the primary host"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["active_upstream"], "pg-standby");
    assert_eq!(body["fenced"], true, "{body}");
    try_psql(proxy_port, "INSERT INTO t VALUES (2)").unwrap();

    // Rebuilt as a standby of the new primary; the probes see it stream.
    pair.primary.rebuild_as_standby_of(&pair.standby);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let p = pool(&engine, "pg-primary");
            p["observed_role"] == "replica" && p["diverged"] == false && p["health"] == "up"
        }),
        "{}",
        pool(&engine, "pg-primary")
    );

    // resync unfences the rebuilt standby.
    let reason = "rebuilt pg-primary as a standby of pg-standby";
    let (code, body) = engine.post(
        "/api/ops/redundancy/resync/pg-primary",
        &format!(r#"{{"reason":"{reason}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["fenced"], false, "resync left it fenced: {body}");
    assert_eq!(body["diverged"], false, "{body}");
    let (_, status) = engine.get("/api/ops/failover/status");
    assert_eq!(
        status["services"][0]["fenced"],
        serde_json::json!([]),
        "{status}"
    );
    assert_resync_audited(&engine, reason);

    // And continuity can fail over to it again.
    let (code, body) = engine.post(
        "/api/ops/failover/trigger/pg",
        r#"{"reason":"fail over to the rebuilt standby"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(10), || active(&engine) == "pg-primary"),
        "{}",
        engine.get("/api/ops/failover/status").1
    );
    assert_eq!(pair.primary.psql("SELECT pg_is_in_recovery()"), "f");
    try_psql(proxy_port, "INSERT INTO t VALUES (3)").unwrap();
    assert_eq!(pair.primary.psql("SELECT count(*) FROM t"), "3");
}

#[test]
fn redis_replica_made_by_hand_is_unfenced_by_resync_and_can_take_a_failover() {
    let mut pair = RedisPair::start();
    pair.replica.wait_for_link_up();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
on_failover = "promote"
buffer_timeout_ms = 15000
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
    pair.primary.kill();
    assert!(wait_until(Duration::from_secs(10), || active(&engine)
        == "redis-replica"));
    assert_eq!(
        redis_cmd(&listen, &["SET", "during", "outage"]).unwrap(),
        "OK"
    );

    // The old primary comes back and an operator makes it a replica by hand:
    // the probes clear `diverged`, the fence stays.
    pair.primary.restart();
    pair.primary
        .cmd(&["REPLICAOF", "127.0.0.1", &pair.replica.port().to_string()])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let p = pool(&engine, "redis-primary");
            p["observed_role"] == "replica" && p["diverged"] == false && p["health"] == "up"
        }),
        "{}",
        pool(&engine, "redis-primary")
    );

    let reason = "redis-primary replicates from redis-replica";
    let (code, body) = engine.post(
        "/api/ops/redundancy/resync/redis-primary",
        &format!(r#"{{"reason":"{reason}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["fenced"], false, "resync left it fenced: {body}");
    assert_resync_audited(&engine, reason);

    let (code, body) = engine.post(
        "/api/ops/failover/trigger/redis",
        r#"{"reason":"fail over to the resynced replica"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(wait_until(Duration::from_secs(10), || active(&engine)
        == "redis-primary"));
    assert_eq!(redis_cmd(&listen, &["GET", "during"]).unwrap(), "outage");
    assert_eq!(
        redis_cmd(&listen, &["SET", "after", "trigger"]).unwrap(),
        "OK"
    );
}
