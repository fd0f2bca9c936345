//! Slow Cypher seen in the data path: the official Python `neo4j` driver
//! talks Bolt 5.4 to a real ArcadeDB through an in-process engine; a slow
//! `UNWIND` is recorded with its literals masked, a write the database
//! refuses becomes a `Neo4jWriteFailure`, and the observer never stops
//! (no `ProtocolError`) on the driver's traffic.

mod support;

use std::process::Command;
use std::time::Duration;

use continuity_proxy::config::{EngineConfig, Kind, Role, ServiceConfig, UpstreamConfig};
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::Engine;
use support::*;
use tokio::sync::broadcast;

/// Runs each query in one session of `database` (None: the default);
/// returns one line per query: its first value, or `ERR <code>`.
fn cypher(addr: &str, database: Option<&str>, queries: &[&str]) -> Vec<String> {
    let script = r#"
import sys
from neo4j import GraphDatabase
uri, user, password, db = sys.argv[1:5]
with GraphDatabase.driver(uri, auth=(user, password), connection_timeout=10) as d:
    with d.session(database=db or None) as s:
        for q in sys.argv[5:]:
            try:
                rec = s.run(q).single()
                print("" if rec is None else rec[0])
            except Exception as e:
                print("ERR", getattr(e, "code", e))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(format!("bolt://{addr}"))
        .args([ARCADEDB_USER, ARCADEDB_PASSWORD, database.unwrap_or("")])
        .args(queries)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn drain(events: &mut broadcast::Receiver<Event>) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        if matches!(
            e.kind,
            EventKind::SlowQuery { .. }
                | EventKind::Neo4jWriteFailure { .. }
                | EventKind::ProtocolError { .. }
        ) {
            out.push(e.kind);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_cypher_and_write_failures_through_the_proxy() {
    let Some(neo) = tokio::task::spawn_blocking(|| ArcadeDb::start_or_skip("slow_cypher"))
        .await
        .unwrap()
    else {
        return;
    };
    let direct = neo.bolt_addr();
    // Warm the JVM up directly, so that only the slow statement is slow.
    let warm = direct.clone();
    tokio::task::spawn_blocking(move || cypher(&warm, None, &["RETURN 1", "RETURN 1"]))
        .await
        .unwrap();

    let mut svc = ServiceConfig::new(
        "neo4j",
        Kind::Neo4j,
        vec![UpstreamConfig::at("neo4j-primary", &direct, Role::Primary)],
    );
    svc.listen = Some("127.0.0.1:0".parse().unwrap());
    assert_eq!(svc.slow_query, Duration::from_millis(100));
    let reg = prometheus::Registry::new();
    let (engine, mut events) = Engine::start_subscribed(
        EngineConfig {
            services: vec![svc],
            ..Default::default()
        },
        &reg,
    )
    .await
    .unwrap();
    let proxy = engine.listen_addrs()[0].1.to_string();

    let p = proxy.clone();
    let out = tokio::task::spawn_blocking(move || {
        cypher(
            &p,
            None,
            &[
                "UNWIND range(1, 3000000) AS x RETURN count(x)",
                "RETURN 'fast'",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out, ["3000000", "fast"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = drain(&mut events);
    let slow: Vec<_> = seen
        .iter()
        .filter_map(|k| match k {
            EventKind::SlowQuery {
                upstream,
                statement,
                duration_ms,
                command_kind,
            } => Some((upstream, statement.as_str(), *duration_ms, command_kind)),
            _ => None,
        })
        .collect();
    assert!(
        !seen
            .iter()
            .any(|k| matches!(k, EventKind::ProtocolError { .. })),
        "{seen:?}"
    );
    let unwind: Vec<_> = slow
        .iter()
        .filter(|s| s.1 == "UNWIND range(?, ?) AS x RETURN count(x)")
        .collect();
    assert_eq!(unwind.len(), 1, "{seen:?}");
    let (upstream, _, ms, kind) = unwind[0];
    assert_eq!((upstream.as_str(), kind.as_str()), ("neo4j-primary", "run"));
    assert!(*ms >= 100.0, "{ms}");

    // A write the database refuses (no such database); a statement that is
    // itself wrong is no write failure.
    let p = proxy.clone();
    let out = tokio::task::spawn_blocking(move || {
        let a = cypher(
            &p,
            Some("nope"),
            &["CREATE (n:Alert {level: 'red', n: 7}) RETURN n"],
        );
        let b = cypher(&p, None, &["CREATE (n:P {v: 1/0}) RETURN n"]);
        [a, b].concat()
    })
    .await
    .unwrap();
    assert!(
        out[0].starts_with("ERR Neo.ClientError.Database"),
        "{out:?}"
    );
    assert!(
        out[1].starts_with("ERR Neo.ClientError.Statement"),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = drain(&mut events);
    let failures: Vec<_> = seen
        .iter()
        .filter_map(|k| match k {
            EventKind::Neo4jWriteFailure {
                statement, code, ..
            } => Some((statement.as_str(), code.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        [(
            "CREATE (n:Alert {level: ?, n: ?}) RETURN n",
            "Neo.ClientError.Database.DatabaseNotFound"
        )],
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|k| matches!(k, EventKind::ProtocolError { .. })),
        "{seen:?}"
    );
    engine.shutdown(Duration::from_millis(100)).await;
}
