//! `neo4j://` stays on the proxy (issue #18, item 2). A `neo4j://` driver
//! asks its first server for a routing table (`ROUTE`) and then sends its
//! queries to the addresses in it. Through the proxy, ArcadeDB answers with
//! its own Bolt port, so the driver would leave the proxy after its first
//! query; the proxy rewrites the table to its own address, as Neo4j's
//! server-side routing does. One long-lived Python driver (the official
//! `neo4j` package) runs queries before and after the primary is killed:
//! every query is run by the proxy's address, and the driver follows the
//! failover without being told.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::continuity::Continuity;
use support::*;

/// One driver, kept open: each line sent is a query, each line back the
/// answer as JSON: `{"value", "server"}` (the address the driver ran it
/// at, from the result summary) or `{"error"}`.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn start(uri: &str) -> Driver {
        let script = r#"
import json, sys
from neo4j import GraphDatabase
uri, user, password = sys.argv[1:4]
with GraphDatabase.driver(uri, auth=(user, password), connection_timeout=10,
                          max_transaction_retry_time=15) as d:
    for line in sys.stdin:
        try:
            records, summary, _ = d.execute_query(line.strip(), routing_="w")
            a = summary.server.address
            print(json.dumps({"value": str(records[0][0]) if records else None,
                              "server": "%s:%s" % (a.host, a.port)}), flush=True)
        except Exception as e:
            print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, uri, ARCADEDB_USER, ARCADEDB_PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Driver {
            child,
            stdin,
            stdout,
        }
    }

    fn query(&mut self, q: &str) -> Value {
        writeln!(self.stdin, "{q}").expect("send a query");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("an answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_neo4j_scheme_driver_stays_on_the_proxy_through_a_failover() {
    if !ArcadeDb::is_available() {
        assert!(
            !ArcadeDb::in_ci(),
            "arcadedb-embedded must be installed in CI"
        );
        eprintln!("SKIPPED: python3 cannot import arcadedb_embedded");
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
    let mark = |addr: &str, name: &str| {
        let mut d = Driver::start(&format!("bolt://{addr}"));
        let r = d.query(&format!(
            "CREATE (n:Whoami {{name: '{name}'}}) RETURN n.name"
        ));
        assert_eq!(r["value"], name, "{r}");
    };
    mark(&first.bolt_addr(), "first");
    mark(&second.bolt_addr(), "second");

    let mut driver = Driver::start(&format!("neo4j://{listen}"));
    let q = "MATCH (n:Whoami) RETURN n.name";
    for _ in 0..3 {
        let r = driver.query(q);
        assert_eq!(r["value"], "first", "{r}");
        assert_eq!(
            r["server"], listen,
            "the driver ran a query outside the proxy (the routing table was not rewritten): {r}"
        );
    }

    first.kill();
    let r = driver.query(q);
    assert_eq!(r["value"], "second", "after the failover: {r}");
    assert_eq!(r["server"], listen, "{r}");
    let r = driver.query("CREATE (n:After {v: 1}) RETURN n.v");
    assert_eq!(
        (r["value"].as_str(), r["server"].as_str()),
        (Some("1"), Some(listen.as_str())),
        "{r}"
    );
    let (_, status) = engine.get("/api/ops/failover/status");
    assert_eq!(status["services"][0]["active_upstream"], "neo4j-secondary");
}
