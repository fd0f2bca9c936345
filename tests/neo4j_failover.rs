//! Neo4j (Bolt) failover: two real ArcadeDB servers speaking Bolt 5.4 stand
//! in for a Neo4j primary and secondary. The official Python `neo4j` driver
//! talks through the proxy before and after the first one is killed.

mod support;

use std::process::Command;
use std::time::Duration;

use support::continuity::Continuity;
use support::*;

/// Runs one Cypher statement through the Python driver; returns its first
/// value as text, or the driver's error.
fn cypher(addr: &str, query: &str) -> Result<String, String> {
    let script = r#"
import sys
from neo4j import GraphDatabase
uri, user, password, query = sys.argv[1:5]
with GraphDatabase.driver(uri, auth=(user, password), connection_timeout=10) as d:
    with d.session() as s:
        rec = s.run(query).single()
        print("" if rec is None else rec[0])
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(format!("bolt://{addr}"))
        .args([ARCADEDB_USER, ARCADEDB_PASSWORD, query])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn bolt_client_works_before_and_after_the_first_instance_dies() {
    let Some(_) = ArcadeDb::is_available().then_some(()).or_else(|| {
        assert!(
            !ArcadeDb::in_ci(),
            "arcadedb-embedded must be installed in CI"
        );
        eprintln!(
            "SKIPPED: python3 cannot import arcadedb_embedded (scripts/install-deps installs it)"
        );
        None
    }) else {
        return;
    };
    let (mut first, second) = ArcadeDb::start_two();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.3\nfailure_threshold = 2\nhold_down_seconds = 1")
        .service(&format!(
            r#"name = "neo4j"
kind = "neo4j"
listen = "{listen}"
buffer_timeout_ms = 5000
upstreams = [
  {{ name = "neo4j-primary", address = "{a}", role = "primary" }},
  {{ name = "neo4j-secondary", address = "{b}", role = "secondary" }},
]"#,
            a = first.bolt_addr(),
            b = second.bolt_addr()
        ))
        .start();
    assert!(wait_until(Duration::from_secs(10), || {
        engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
    }));
    // Mark each instance so we can tell which one answered.
    cypher(
        &first.bolt_addr(),
        "CREATE (n:Whoami {name: 'first'}) RETURN n.name",
    )
    .unwrap();
    cypher(
        &second.bolt_addr(),
        "CREATE (n:Whoami {name: 'second'}) RETURN n.name",
    )
    .unwrap();
    let q = "MATCH (n:Whoami) RETURN n.name";
    assert_eq!(cypher(&listen, q).unwrap(), "first");

    first.kill();
    assert_eq!(cypher(&listen, q).unwrap(), "second");
    assert_eq!(
        cypher(&listen, "CREATE (n:After {v: 1}) RETURN n.v").unwrap(),
        "1"
    );
    let (_, status) = engine.get("/api/ops/failover/status");
    assert_eq!(status["services"][0]["active_upstream"], "neo4j-secondary");
    assert_eq!(
        status["services"][0]["fenced"],
        serde_json::json!(["neo4j-primary"])
    );
}
