//! The REST routes against live services (real TCP upstreams), `/metrics`
//! through promtool, and CORS.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use continuity_control::config::ControlConfig;
use continuity_proxy::config::Role;
use continuity_proxy::snapshot::ServiceStatus;
use support::*;

// ---- routes against live services ------------------------------------------

#[tokio::test]
async fn trigger_and_recover_switch_and_answer_with_the_service() {
    let (a, b) = (tcp_server().await, tcp_server().await);
    let api = Api::start(
        vec![tcp_service(
            "cache",
            vec![
                upstream("cache-primary", &a, Role::Primary),
                upstream("cache-secondary", &b, Role::Secondary),
            ],
        )],
        control_config(),
    )
    .await;
    api.wait_status("cache", ServiceStatus::Healthy).await;

    let r = api
        .post(
            "/api/ops/failover/trigger/cache",
            Some(r#"{"reason":" drill "}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        sorted_keys(&v),
        [
            "active_upstream",
            "epoch",
            "fenced",
            "held_connections",
            "in_failover",
            "name",
            "since",
            "status"
        ]
    );
    assert_eq!(v["name"], "cache");
    assert_eq!(v["active_upstream"], "cache-secondary");
    assert_eq!(v["epoch"], 1);
    assert_eq!(v["in_failover"], true);
    assert_eq!(v["fenced"], serde_json::json!(["cache-primary"]));

    let s = api.get("/api/ops/failover/status").await.json();
    assert_eq!(s["failover_state"], "failover");
    assert_eq!(s["services"][0]["active_upstream"], "cache-secondary");
    assert_eq!(s["metrics"]["manual_failovers"], 1);
    assert_eq!(s["metrics"]["total_failovers"], 1);

    let r = api
        .post(
            "/api/ops/failover/recover/cache",
            Some(r#"{"reason":"drill over"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["active_upstream"], "cache-primary");
    assert_eq!(v["epoch"], 2);
    assert_eq!(v["in_failover"], false);
}

#[tokio::test]
async fn health_deep_service_and_pools() {
    let (a, b) = (tcp_server().await, tcp_server().await);
    let api = Api::start(
        vec![
            tcp_service(
                "cache",
                vec![
                    upstream("cache-primary", &a, Role::Primary),
                    upstream("cache-secondary", &b, Role::Secondary),
                ],
            ),
            tcp_service(
                "dead",
                vec![upstream("dead-primary", REFUSED, Role::Primary)],
            ),
        ],
        control_config(),
    )
    .await;
    api.wait_status("cache", ServiceStatus::Healthy).await;
    api.wait_status("dead", ServiceStatus::Down).await;

    let r = api.call("GET", "/api/ops/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["status"], "unhealthy", "a core service is down");
    assert_eq!(v["failover_state"], "emergency");
    let cache = &v["services"][0];
    assert_eq!(
        sorted_keys(cache),
        [
            "active_upstream",
            "category",
            "consecutive_failures",
            "kind",
            "latency_ms",
            "name",
            "status",
            "uptime_percent_1h",
            "uptime_percent_24h"
        ]
    );
    assert_eq!(cache["status"], "healthy");
    assert_eq!(cache["kind"], "tcp");
    assert_eq!(v["services"][1]["status"], "down");
    assert!(v["metrics"]["total_checks"].as_u64().is_some_and(|n| n > 0));
    assert!(v["metrics"]["failed_checks"]
        .as_u64()
        .is_some_and(|n| n > 0));

    let r = api.call("GET", "/api/ops/ready", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["services"].as_array().map(Vec::len), Some(2));

    let deep = api.get("/api/ops/health/deep").await;
    assert_eq!(deep.status, StatusCode::OK);
    let d = deep.json();
    let ups = &d["services"][0]["upstreams"];
    assert_eq!(ups.as_array().map(Vec::len), Some(2));
    for k in [
        "last_probe",
        "last_error",
        "probe_latency_ms",
        "consecutive_failures",
        "consecutive_successes",
        "pool_state",
        "fenced",
        "history",
    ] {
        assert!(ups[0].get(k).is_some(), "deep upstream lacks {k}");
    }
    assert!(ups[0]["probe_latency_ms"].get("p99").is_some());
    assert!(d["services"][1]["upstreams"][0]["last_error"].is_string());

    let one = api.get("/api/ops/health/service/dead").await.json();
    assert_eq!(one["name"], "dead");
    assert!(one["upstreams"].is_array());
    api.get("/api/ops/health/service/nosuch")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Two tcp services: the kind is ambiguous, so 404.
    api.get("/api/ops/health/service/tcp")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    let pools = api.get("/api/ops/redundancy/status").await.json();
    let list = pools["pools"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 3);
    for p in &list {
        for k in [
            "name",
            "service",
            "mode",
            "state",
            "role",
            "active",
            "fenced",
            "connections",
        ] {
            assert!(p.get(k).is_some(), "pool lacks {k}");
        }
    }
    let p = api.get("/api/ops/redundancy/pool/cache-secondary").await;
    assert_eq!(p.status, StatusCode::OK);
    let p = p.json();
    assert_eq!(
        (p["service"].as_str(), p["role"].as_str()),
        (Some("cache"), Some("secondary"))
    );
    assert_eq!(p["state"], "connected");
    api.get("/api/ops/redundancy/pool/cache")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn metrics_exposition_passes_promtool() {
    let (a, b) = (tcp_server().await, tcp_server().await);
    let api = Api::start(
        vec![
            tcp_service(
                "cache",
                vec![
                    upstream("cache-primary", &a, Role::Primary),
                    upstream("cache-secondary", &b, Role::Secondary),
                ],
            ),
            tcp_service(
                "dead",
                vec![upstream("dead-primary", REFUSED, Role::Primary)],
            ),
        ],
        control_config(),
    )
    .await;
    api.wait_status("cache", ServiceStatus::Healthy).await;
    api.wait_status("dead", ServiceStatus::Down).await;
    let _ = api
        .call("GET", "/api/ops/failover/status", None, None)
        .await; // one auth failure
    let r = api.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
    let t = &r.text;
    for needle in [
        "continuity_service_up{service=\"cache\"} 1",
        "continuity_service_up{service=\"dead\"} 0",
        "continuity_failover_state 3",
        "continuity_upstream_up{service=\"cache\",upstream=\"cache-secondary\"} 1",
        "continuity_upstream_up{service=\"dead\",upstream=\"dead-primary\"} 0",
        "continuity_service_epoch{service=\"cache\"} 0",
        "continuity_held_connections{service=\"dead\"} 0",
        "# HELP continuity_uptime_ratio ",
        "continuity_auth_failures_total{reason=\"missing_token\"} 1",
    ] {
        assert!(t.contains(needle), "missing {needle}:\n{t}");
    }
    promtool_check(t);
}

#[tokio::test]
async fn cors_only_when_origins_are_configured() {
    let preflight = || {
        Request::builder()
            .method("OPTIONS")
            .uri("/api/ops/failover/status")
            .header("origin", "https://ops.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .body(Body::empty())
            .expect("request")
    };
    let off = Api::empty().await;
    let r = off.send(CLIENT, preflight()).await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    let on = Api::start(
        vec![],
        ControlConfig {
            cors_origins: vec!["https://ops.example".to_string()],
            ..control_config()
        },
    )
    .await;
    let r = on.send(CLIENT, preflight()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://ops.example")
    );
}

/// `serve` on a real socket: peer addresses reach the limiter through
/// `ConnectInfo`, and the graceful shutdown future ends it.
#[tokio::test]
async fn serve_on_a_socket_and_shut_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::empty().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(continuity_control::serve(
        listener,
        api.state.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(get("/api/ops/health").await.starts_with("HTTP/1.1 200"));
    for _ in 0..5 {
        assert!(get("/api/ops/failover/status")
            .await
            .starts_with("HTTP/1.1 401"));
    }
    assert!(get("/api/ops/failover/status")
        .await
        .starts_with("HTTP/1.1 429"));
    let _ = stop.send(());
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown");
    assert!(matches!(done, Ok(Ok(()))));
}
