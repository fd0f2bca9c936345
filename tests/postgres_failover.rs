//! PostgreSQL primary and streaming standby behind the real binary: kill -9
//! the primary, the standby is promoted with `pg_promote()`, psql through
//! the proxy works before and after, and the old primary stays fenced.

mod support;

use std::time::Duration;

use support::continuity::Continuity;
use support::*;

fn psql_via(port: u16, sql: &str) -> Result<String, String> {
    try_psql(port, sql)
}

#[test]
fn kill_primary_promotes_the_standby_and_fences_the_old_primary() {
    let mut pair = PgPair::start();
    let proxy_port = free_port();
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 1\nconnect_timeout_ms = 300")
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "127.0.0.1:{proxy_port}"
on_failover = "promote"
buffer_timeout_ms = 8000
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

    // psql through the proxy before.
    psql_via(
        proxy_port,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    assert_eq!(psql_via(proxy_port, "SELECT count(*) FROM t").unwrap(), "1");
    pair.wait_for_standby_to_catch_up();

    pair.kill_primary();

    // A client connecting after the kill is held through the promotion and
    // never sees an error; the standby is now writable.
    psql_via(proxy_port, "INSERT INTO t VALUES (2)").unwrap();
    assert_eq!(psql_via(proxy_port, "SELECT count(*) FROM t").unwrap(), "2");
    assert_eq!(pair.standby.psql("SELECT pg_is_in_recovery()"), "f");
    let (_, status) = engine.get("/api/ops/failover/status");
    let svc = &status["services"][0];
    assert_eq!(svc["active_upstream"], "pg-standby");
    assert_eq!(svc["epoch"], 1);
    assert_eq!(svc["fenced"], serde_json::json!(["pg-primary"]));

    // The old primary restarts as a diverged primary: no traffic, and
    // recover is refused until it is rebuilt as a standby.
    pair.restart_primary();
    std::thread::sleep(Duration::from_millis(800));
    psql_via(proxy_port, "INSERT INTO t VALUES (3)").unwrap();
    assert_eq!(pair.primary.psql("SELECT count(*) FROM t"), "1");
    let (code, body) = engine.post("/api/ops/failover/recover/pg", r#"{"reason":"try"}"#);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_resynced");
    let (_, deep) = engine.get("/api/ops/health/service/postgres");
    let primary = deep["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "pg-primary"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(primary["fenced"], true, "{deep}");
}

#[test]
fn held_psql_gets_sqlstate_08006_when_nothing_comes_back() {
    let proxy_port = free_port();
    let dead = loopback(free_port());
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.2\nfailure_threshold = 1")
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "127.0.0.1:{proxy_port}"
buffer_timeout_ms = 600
upstreams = [ {{ name = "pg-dead", address = "{dead}", role = "primary" }} ]"#
        ))
        .start();
    // psql itself says why, with the message continuity sent.
    let err = psql_via(proxy_port, "SELECT 1").unwrap_err();
    assert!(
        err.contains("continuity: no upstream available for pg"),
        "{err}"
    );
    // And the SQLSTATE on the wire is 08006.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let svc = continuity_proxy::config::ServiceConfig::new(
        "pg",
        continuity_proxy::config::Kind::Postgres,
        vec![],
    );
    let up = continuity_proxy::config::UpstreamConfig::at(
        "via-proxy",
        &format!("127.0.0.1:{proxy_port}"),
        continuity_proxy::config::Role::Primary,
    );
    let err = rt
        .block_on(continuity_proxy::health::postgres::simple_query(
            &svc, &up, "SELECT 1",
        ))
        .unwrap_err();
    assert!(err.to_string().contains("08006"), "{err}");
    let (_, health) = engine.get("/api/ops/health");
    assert_eq!(health["services"][0]["status"], "down");
    assert_eq!(health["failover_state"], "emergency");
}
