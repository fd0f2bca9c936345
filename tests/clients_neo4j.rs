//! The Neo4j Python driver (the official `neo4j` package) through the proxy
//! (issue #18, item 1), with a `bolt://` URI and a `neo4j://` URI (routing:
//! the proxy rewrites the routing table to its own address, see
//! tests/neo4j_routing.rs), in front of two ArcadeDB servers (real Bolt
//! servers; see tests/support/arcadedb.rs).
//!
//! Normal traffic: auto-commit queries (`session.run`), explicit
//! transactions (`session.begin_transaction()`), managed transactions
//! (`session.execute_write`) and `driver.execute_query`. Then a kill -9 of
//! the first server while each driver has a transaction open and an idle
//! pooled connection: every exception each API saw is recorded (and
//! printed; docs/clients.md reports them), the API is called again, as an
//! application would, until it works, and the test asserts that it does and
//! that the answers come from the second server. One pair of ArcadeDB
//! servers for the whole file (a JVM start costs 3-8 s).

mod support;

use std::time::Duration;

use serde_json::json;
use support::continuity::Continuity;
use support::python::{has_module, PyClient as Client, PyDriver};
use support::*;

/// The driver side: one line `{"op": ...}` in, one JSON line out.
/// argv: uri, user, password.
const SCRIPT: &str = r#"
import json, sys, time, uuid
from neo4j import GraphDatabase

uri, user, password = sys.argv[1:4]
d = GraphDatabase.driver(uri, auth=(user, password), connection_timeout=10,
                         max_transaction_retry_time=15)

def err(e):
    return "%s: %s" % (type(e).__name__, str(e).strip().replace("\n", " / "))

def fresh():
    return uuid.uuid4().hex[:8]

def auto():
    v = fresh()
    with d.session() as s:
        got = s.run("CREATE (n:Auto {v: $v}) RETURN n.v", v=v).single()[0]
    if got != v:
        raise AssertionError("got %r, wanted %r" % (got, v))
    return got

def explicit():
    v = fresh()
    with d.session() as s:
        tx = s.begin_transaction()
        tx.run("CREATE (n:Explicit {v: $v})", v=v).consume()
        got = tx.run("MATCH (n:Explicit {v: $v}) RETURN n.v", v=v).single()[0]
        tx.commit()
    if got != v:
        raise AssertionError("got %r, wanted %r" % (got, v))
    return got

def managed():
    v = fresh()
    with d.session() as s:
        got = s.execute_write(lambda tx: tx.run("CREATE (n:Managed {v: $v}) RETURN n.v", v=v).single()[0])
    if got != v:
        raise AssertionError("got %r, wanted %r" % (got, v))
    return got

def execute_query():
    records, summary, _ = d.execute_query("MATCH (n:Whoami) RETURN n.name")
    a = summary.server.address
    return {"whoami": [r[0] for r in records], "server": "%s:%s" % (a.host, a.port)}

state = {}

def arm():
    # A transaction open on its connection when the server dies.
    s = d.session()
    tx = s.begin_transaction()
    tx.run("CREATE (n:Open {v: 1})").consume()
    state["open"] = (s, tx)
    # And an idle connection in the pool (the open transaction holds one).
    auto()
    return "transaction open"

def open_tx_commit():
    s, tx = state.pop("open")
    try:
        tx.run("CREATE (n:Open {v: 2})").consume()
        tx.commit()
        return "committed"
    finally:
        s.close()

OPS = {"auto": auto, "explicit": explicit, "managed": managed,
       "execute_query": execute_query, "arm": arm, "open_tx_commit": open_tx_commit}

for line in sys.stdin:
    msg = json.loads(line)
    op = msg["op"]
    if op == "until_ok":
        feature = msg["feature"]
        errors, value, ok = [], None, False
        for _ in range(6):
            try:
                value, ok = OPS[feature](), True
                break
            except Exception as e:
                errors.append(err(e))
                time.sleep(0.2)
        out = {"ok": ok, "value": value, "errors": errors}
    else:
        try:
            out = {"ok": True, "value": OPS[op]()}
        except Exception as e:
            out = {"ok": False, "error": err(e)}
    print(json.dumps(out, default=str), flush=True)
"#;

#[test]
fn neo4j_driver_bolt_and_neo4j_schemes_through_the_proxy_and_a_kill_9() {
    if !ArcadeDb::is_available() || !has_module("neo4j") {
        assert!(
            !ArcadeDb::in_ci(),
            "arcadedb-embedded and the neo4j driver must be installed in CI"
        );
        eprintln!("SKIPPED: python3 cannot import arcadedb_embedded or neo4j");
        return;
    }
    let (mut first, second) = ArcadeDb::start_two();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.3\nfailure_threshold = 2\nhold_down_seconds = 1")
        .service(&format!(
            r#"name = "neo4j"
kind = "neo4j"
listen = "{listen}"
buffer_timeout_ms = 8000
upstreams = [
  {{ name = "neo4j-primary", address = "{a}", role = "primary" }},
  {{ name = "neo4j-secondary", address = "{b}", role = "secondary" }},
]"#,
            a = first.bolt_addr(),
            b = second.bolt_addr()
        ))
        .start();
    assert!(
        wait_until(Duration::from_secs(10), || {
            engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
        }),
        "the neo4j service did not become healthy:\n{}",
        engine.log_text()
    );
    // Mark each server so that an answer says which one ran it.
    for (server, name) in [(&first, "first"), (&second, "second")] {
        let script = format!(
            "from neo4j import GraphDatabase\n\
             with GraphDatabase.driver('{}', auth=('{ARCADEDB_USER}', '{ARCADEDB_PASSWORD}')) as d:\n\
             \x20   d.execute_query(\"CREATE (n:Whoami {{name: '{name}'}})\")\n",
            server.bolt_uri()
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "marking {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut clients: Vec<Client> = ["bolt", "neo4j"]
        .iter()
        .map(|scheme| Client {
            py: PyDriver::start(
                SCRIPT,
                &[
                    &format!("{scheme}://{listen}"),
                    ARCADEDB_USER,
                    ARCADEDB_PASSWORD,
                ],
            ),
            label: format!("neo4j driver {scheme}://"),
        })
        .collect();

    // Normal traffic.
    for c in &mut clients {
        assert_eq!(c.ok("auto").as_str().map(str::len), Some(8));
        assert_eq!(c.ok("explicit").as_str().map(str::len), Some(8));
        assert_eq!(c.ok("managed").as_str().map(str::len), Some(8));
        let v = c.ok("execute_query");
        assert_eq!(v["whoami"], json!(["first"]), "{v}");
        assert_eq!(
            v["server"], listen,
            "{}: ran outside the proxy: {v}",
            c.label
        );
        assert_eq!(c.ok("arm"), "transaction open");
    }

    first.kill();
    assert!(
        wait_until(Duration::from_secs(20), || {
            engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"]
                == "neo4j-secondary"
        }),
        "no failover to the second server:\n{}",
        engine.log_text()
    );

    for c in &mut clients {
        let mut seen = vec![];
        // The first call meets the idle pooled connection; the open
        // transaction is continued last.
        for feature in ["auto", "explicit", "managed", "execute_query"] {
            let (errors, value) = c.until_ok(feature);
            if feature == "execute_query" {
                assert_eq!(value["whoami"], json!(["second"]), "{value}");
                assert_eq!(value["server"], listen, "{}: {value}", c.label);
            }
            seen.push((feature.to_string(), errors.join(" | ")));
        }
        let open = c.record("open_tx_commit");
        seen.push((
            "transaction open at the kill, then run + commit".to_string(),
            if open["ok"] == true {
                "no exception".to_string()
            } else {
                open["error"].as_str().unwrap_or("?").to_string()
            },
        ));
        eprintln!("--- {} across kill -9 of the first server:", c.label);
        for (feature, errors) in &seen {
            let errors = if errors.is_empty() {
                "no exception"
            } else {
                errors
            };
            eprintln!("  {feature}: {errors}");
        }
    }
    let (_, status) = engine.get("/api/ops/failover/status");
    assert_eq!(status["services"][0]["active_upstream"], "neo4j-secondary");
}
