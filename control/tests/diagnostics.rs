//! Diagnostics (issue #4 items 1-2): the classification table, the
//! `/api/ops/diagnostics/*` routes and their filters, the bus messages,
//! the metrics, and the running engine feeding real probe failures.

mod support;

use std::time::{Duration, Instant};

use continuity_control::bus::Channel;
use continuity_control::diagnostics::{
    self, classify, classify::classify_error, DiagCategory as C, DiagSeverity as S, ServiceInfo,
};
use continuity_proxy::config::{Category, Kind};
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::{ServiceStatus, UpstreamHealth};
use support::*;

fn svc(kind: Kind, category: Category) -> Option<ServiceInfo> {
    Some(ServiceInfo { kind, category })
}

fn down(error: &str) -> EventKind {
    EventKind::UpstreamStateChanged {
        upstream: "u1".into(),
        old: UpstreamHealth::Up,
        new: UpstreamHealth::Down,
        error: Some(error.into()),
        passive: false,
    }
}

fn upstream_error(code: &str) -> EventKind {
    EventKind::UpstreamError {
        upstream: "u1".into(),
        code: code.into(),
        message: "m".into(),
    }
}

fn slow_query(statement: &str, ms: f64) -> EventKind {
    EventKind::SlowQuery {
        upstream: "pg-primary".into(),
        statement: statement.into(),
        duration_ms: ms,
        command_kind: "simple_query".into(),
    }
}

/// (category, severity, class) of `kind` for a service `svc`.
fn table(kind: EventKind, svc: Option<ServiceInfo>) -> Option<(C, S, String)> {
    classify(&Event::new(Some("x"), kind), svc).map(|d| (d.category, d.severity, d.class))
}

#[test]
fn classification_table() {
    let pg = svc(Kind::Postgres, Category::Core);
    let redis = svc(Kind::Redis, Category::Core);
    let neo = svc(Kind::Neo4j, Category::Core);
    let federal = svc(Kind::Http, Category::Federal);
    let vendor = svc(Kind::Http, Category::Vendor);
    let cases: Vec<(EventKind, Option<ServiceInfo>, C, S, &str)> = vec![
        (down("connect: Connection refused (os error 111)"), pg, C::Network, S::Error, "connection_refused"),
        (down("Connection refused (os error 111)"), federal, C::Network, S::Error, "connection_refused"),
        (down("probe timed out after 2000 ms"), redis, C::Network, S::Error, "timeout"),
        (down("client connect timed out after 1000 ms"), redis, C::Network, S::Error, "timeout"),
        (down("failed to lookup address information: Name or service not known"), vendor, C::Network, S::Error, "dns_failure"),
        (down("Connection reset by peer (os error 104)"), neo, C::Network, S::Error, "connection_reset"),
        (down("No route to host (os error 113)"), pg, C::Network, S::Error, "network_unreachable"),
        (down("authentication failed: password authentication failed for user \"u\" (SQLSTATE 28P01)"), pg, C::Database, S::Error, "auth_failed"),
        (down("authentication failed: NOAUTH Authentication required."), redis, C::Database, S::Error, "auth_failed"),
        (down("protocol error: the database system is shutting down (SQLSTATE 57P03)"), pg, C::Database, S::Error, "sqlstate_57P03"),
        (down("protocol error: sorry, too many clients already (SQLSTATE 53300)"), pg, C::Database, S::Error, "sqlstate_53300"),
        (down("protocol error: server replied: LOADING Redis is loading the dataset in memory"), redis, C::Database, S::Error, "redis_loading"),
        (down("protocol error: not a Bolt server (handshake answer 48545450)"), neo, C::Database, S::Error, "protocol_error"),
        (down("HTTP 503 Service Unavailable"), federal, C::Federal, S::Error, "http_5xx"),
        (down("unexpected status 502 from upstream"), vendor, C::Vendor, S::Error, "http_5xx"),
        (down("HTTP 401 Unauthorized"), federal, C::Federal, S::Error, "auth_failed"),
        (down("something odd"), svc(Kind::Http, Category::Internal), C::Internal, S::Error, "unclassified"),
        (
            EventKind::UpstreamStateChanged { upstream: "u1".into(), old: UpstreamHealth::Down, new: UpstreamHealth::Up, error: None, passive: false },
            pg, C::Database, S::Info, "recovered",
        ),
        (EventKind::ServiceStatusChanged { old: ServiceStatus::Healthy, new: ServiceStatus::Down }, pg, C::Database, S::Critical, "service_down"),
        (EventKind::ServiceStatusChanged { old: ServiceStatus::Healthy, new: ServiceStatus::Down }, vendor, C::Vendor, S::Error, "service_down"),
        (EventKind::ServiceStatusChanged { old: ServiceStatus::Healthy, new: ServiceStatus::Degraded }, federal, C::Federal, S::Warning, "service_degraded"),
        (EventKind::ServiceStatusChanged { old: ServiceStatus::Down, new: ServiceStatus::Healthy }, pg, C::Database, S::Info, "service_recovered"),
        (EventKind::HoldTimedOut { waited_ms: 5000 }, redis, C::Database, S::Error, "hold_timeout"),
        (EventKind::FailoverBlocked { reason: "promotion of r2 failed".into() }, redis, C::Database, S::Critical, "failover_blocked"),
        (EventKind::EmergencyDeclared { enabled: true, actor: "ops".into(), reason: "drill".into() }, None, C::Internal, S::Critical, "emergency_declared"),
        (
            EventKind::Neo4jWriteFailure { upstream: "n1".into(), statement: "CREATE (n {a: ?})".into(), code: "Neo.ClientError.Cluster.NotALeader".into() },
            neo, C::Database, S::Critical, "neo4j_write_failure",
        ),
        (upstream_error("57P01"), pg, C::Database, S::Error, "sqlstate_57P01"),
        (upstream_error("08006"), pg, C::Database, S::Error, "sqlstate_08006"),
        (upstream_error("28P01"), pg, C::Database, S::Warning, "auth_failed"),
        (upstream_error("XX001"), pg, C::Database, S::Critical, "sqlstate_XX001"),
        (upstream_error("READONLY"), redis, C::Database, S::Error, "redis_readonly"),
        (upstream_error("OOM"), redis, C::Database, S::Critical, "redis_oom"),
        (upstream_error("LOADING"), redis, C::Database, S::Warning, "redis_loading"),
        (upstream_error("Neo.TransientError.General.DatabaseUnavailable"), neo, C::Database, S::Warning, "neo4j_database_unavailable"),
        (upstream_error("Neo.ClientError.Cluster.NotALeader"), neo, C::Database, S::Error, "neo4j_not_a_leader"),
        (upstream_error("Neo.ClientError.Security.Unauthorized"), neo, C::Database, S::Warning, "auth_failed"),
        (EventKind::ProtocolError { upstream: "u1".into(), reason: "resp: unknown reply type".into() }, redis, C::Internal, S::Info, "observer_stopped"),
    ];
    for (kind, info, cat, sev, class) in cases {
        let label = format!("{kind:?}");
        assert_eq!(
            table(kind, info),
            Some((cat, sev, class.to_string())),
            "{label}"
        );
    }
    // Not failures: no diagnosis.
    for kind in [
        slow_query("SELECT ?", 600.0),
        EventKind::UpstreamStateChanged {
            upstream: "u".into(),
            old: UpstreamHealth::Unknown,
            new: UpstreamHealth::Up,
            error: None,
            passive: false,
        },
        EventKind::ServiceStatusChanged {
            old: ServiceStatus::Unknown,
            new: ServiceStatus::Healthy,
        },
    ] {
        assert_eq!(table(kind, pg), None);
    }
    assert_eq!(
        classify_error("timed out", None),
        (C::Network, "timeout".into())
    );
}

async fn api() -> Api {
    let pg = tcp_server().await;
    Api::start(
        vec![tcp_service(
            "pg",
            vec![upstream(
                "pg-primary",
                &pg,
                continuity_proxy::config::Role::Primary,
            )],
        )],
        control_config(),
    )
    .await
}

#[tokio::test]
async fn events_route_filters_and_rejects_bad_filters() {
    let api = api().await;
    let d = &api.state.diagnostics;
    let bus = &api.state.bus;
    let before = chrono::Utc::now();
    d.ingest(
        bus,
        &Event::new(
            Some("pg"),
            down("connect: Connection refused (os error 111)"),
        ),
    );
    d.ingest(bus, &Event::new(Some("pg"), upstream_error("57P01")));
    d.ingest(bus, &Event::new(Some("other"), upstream_error("READONLY")));
    d.ingest(
        bus,
        &Event::new(
            None,
            EventKind::EmergencyDeclared {
                enabled: true,
                actor: "a".into(),
                reason: "r".into(),
            },
        ),
    );

    let all = api.get("/api/ops/diagnostics/events").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let events = all.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 4);
    // Newest first, every field present.
    assert_eq!(events[0]["class"], "emergency_declared");
    assert_eq!(
        sorted_keys(&events[3]),
        ["at", "category", "class", "id", "message", "service", "severity", "upstream"]
    );
    assert_eq!(events[3]["category"], "network");
    assert_eq!(events[3]["upstream"], "u1");

    for (path, n) in [
        ("/api/ops/diagnostics/events?category=database", 2),
        (
            "/api/ops/diagnostics/events?category=database&service=pg",
            1,
        ),
        ("/api/ops/diagnostics/events?severity=critical", 1),
        (
            "/api/ops/diagnostics/events?severity=error&category=network",
            1,
        ),
        ("/api/ops/diagnostics/events?service=nobody", 0),
        ("/api/ops/diagnostics/events?limit=2", 2),
        ("/api/ops/diagnostics/events?since=2099-01-01T00:00:00Z", 0),
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.json()["events"].as_array().unwrap().len(), n, "{path}");
    }
    let since = format!(
        "/api/ops/diagnostics/events?since={}",
        before
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .replace('+', "%2B")
    );
    assert_eq!(
        api.get(&since).await.json()["events"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    for bad in [
        "/api/ops/diagnostics/events?category=weather",
        "/api/ops/diagnostics/events?severity=fatal",
        "/api/ops/diagnostics/events?since=yesterday",
        "/api/ops/diagnostics/events?limit=0",
        "/api/ops/diagnostics/events?limit=-3",
        "/api/ops/diagnostics/slow-queries?limit=x",
    ] {
        api.get(bad)
            .await
            .assert_error(axum::http::StatusCode::BAD_REQUEST, "bad_request");
    }
    api.call("GET", "/api/ops/diagnostics/events", None, None)
        .await
        .assert_error(axum::http::StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn slow_queries_report_and_bus_messages() {
    let api = api().await;
    let d = &api.state.diagnostics;
    let bus = &api.state.bus;
    let mut rx = bus.subscribe();
    d.ingest(
        bus,
        &Event::new(Some("pg"), slow_query("SELECT pg_sleep(?)", 612.5)),
    );
    d.ingest(bus, &Event::new(Some("pg"), slow_query("SELECT ?", 700.0)));
    d.ingest(
        bus,
        &Event::new(
            Some("pg"),
            down("connect: Connection refused (os error 111)"),
        ),
    );
    d.ingest(
        bus,
        &Event::new(
            Some("pg"),
            down("connect: Connection refused (os error 111)"),
        ),
    );
    d.ingest(bus, &Event::new(Some("pg"), upstream_error("57P01")));
    d.count_predictive_alert();

    let r = api.get("/api/ops/diagnostics/slow-queries").await;
    assert_eq!(r.status, 200);
    let q = r.json()["slow_queries"].as_array().unwrap().clone();
    assert_eq!(q.len(), 2);
    assert_eq!(q[1]["statement"], "SELECT pg_sleep(?)");
    assert_eq!(q[1]["service"], "pg");
    assert_eq!(q[1]["upstream"], "pg-primary");
    assert_eq!(q[1]["duration_ms"], 612.5);
    assert!(q[1]["at"].as_str().is_some());
    assert_eq!(
        api.get("/api/ops/diagnostics/slow-queries?service=x")
            .await
            .json()["slow_queries"],
        serde_json::json!([])
    );

    let r = api.get("/api/ops/diagnostics/report").await;
    assert_eq!(r.status, 200);
    let rep = r.json();
    assert_eq!(
        sorted_keys(&rep),
        ["alerts", "generated_at", "metrics", "top_error_classes"]
    );
    let m = &rep["metrics"];
    assert_eq!(m["total_events"], 3);
    assert_eq!(m["slow_queries_detected"], 2);
    assert_eq!(m["predictive_alerts_generated"], 1);
    assert_eq!(m["events_by_category"]["network"], 2);
    assert_eq!(m["events_by_category"]["database"], 1);
    assert_eq!(m["events_by_category"]["federal"], 0);
    assert_eq!(m["events_by_severity"]["error"], 3);
    assert_eq!(m["events_by_severity"]["critical"], 0);
    assert_eq!(rep["alerts"], serde_json::json!([]));
    let top = rep["top_error_classes"].as_array().unwrap();
    assert_eq!(top[0]["class"], "connection_refused");
    assert_eq!(top[0]["count"], 2);
    assert_eq!(top[1]["class"], "sqlstate_57P01");

    // The bus got slow_query and diagnostic_event on the diagnostics channel.
    let mut kinds = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        assert_eq!(msg.channel, Channel::Diagnostics);
        assert_eq!(msg.service.as_deref(), Some("pg"));
        kinds.push((msg.kind.clone(), msg.seq));
    }
    let types: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        types,
        [
            "slow_query",
            "slow_query",
            "diagnostic_event",
            "diagnostic_event",
            "diagnostic_event"
        ]
    );
    assert!(
        kinds.windows(2).all(|w| w[0].1 < w[1].1),
        "seq increases: {kinds:?}"
    );
}

#[tokio::test]
async fn rings_are_bounded() {
    let api = api().await;
    let d = &api.state.diagnostics;
    for i in 0..(diagnostics::EVENTS_CAP + 10) {
        d.ingest(
            &api.state.bus,
            &Event::new(Some("pg"), upstream_error(&format!("CODE{}", i % 300))),
        );
    }
    for _ in 0..(diagnostics::SLOW_CAP + 10) {
        d.ingest(
            &api.state.bus,
            &Event::new(Some("pg"), slow_query("SELECT ?", 1.0)),
        );
    }
    let all = d.events(&diagnostics::Filter {
        limit: Some(usize::MAX),
        ..Default::default()
    });
    assert_eq!(all.len(), diagnostics::EVENTS_CAP);
    let slow = d.slow_queries(&diagnostics::Filter {
        limit: Some(usize::MAX),
        ..Default::default()
    });
    assert_eq!(slow.len(), diagnostics::SLOW_CAP);
    let rep = d.report(0);
    assert_eq!(
        rep["metrics"]["total_events"],
        (diagnostics::EVENTS_CAP + 10) as u64
    );
    assert!(rep["top_error_classes"].as_array().unwrap().len() <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_engine_probe_failures_become_events_and_metrics() {
    let svc = tcp_service(
        "refusing",
        vec![upstream(
            "dead",
            REFUSED,
            continuity_proxy::config::Role::Primary,
        )],
    );
    let api = Api::start(vec![svc], control_config()).await;
    let handle = diagnostics::spawn(&api.state, api.engine.subscribe());
    let start = Instant::now();
    let events = loop {
        let r = api
            .get("/api/ops/diagnostics/events?service=refusing")
            .await;
        let events = r.json()["events"].as_array().unwrap().clone();
        let has = |class: &str, sev: &str| {
            events
                .iter()
                .any(|e| e["class"] == class && e["severity"] == sev)
        };
        // A failed probe (warning), then the upstream down (error) and the
        // service down (critical: a core service).
        if has("connection_refused", "warning")
            && has("connection_refused", "error")
            && has("service_down", "critical")
        {
            break events;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(events.iter().all(|e| e["service"] == "refusing"));
    let metrics = api.get("/metrics").await.text;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "continuity_diagnostic_events_total{category=\"network\",severity=\"warning\"}",
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        line.split(' ').next_back().unwrap().parse::<f64>().unwrap() >= 1.0,
        "{line}"
    );
    assert!(metrics
        .contains("continuity_diagnostic_events_total{category=\"federal\",severity=\"info\"} 0"));
    promtool_check(&metrics);
    handle.abort();
}
