//! The REST API's auth, error envelope and check order (SPEC 4) through
//! `router(state)` with a real engine (`oneshot`, no control socket).

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use continuity_control::config::ControlConfig;
use continuity_proxy::config::Role;
use support::*;

// ---- auth -----------------------------------------------------------------

#[tokio::test]
async fn no_token_and_unknown_token_are_401() {
    let api = Api::empty().await;
    let r = api
        .call("GET", "/api/ops/failover/status", None, None)
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(r.headers.contains_key("www-authenticate"));
    let r = api
        .call("GET", "/api/ops/failover/status", Some("nope"), None)
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // 401 comes before 404: an unknown route without a token says nothing.
    let r = api.call("GET", "/api/ops/nosuch", None, None).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn viewer_and_reporter_may_not_post_403_before_404() {
    let api = Api::empty().await;
    for tok in [VIEWER, REPORTER] {
        let r = api
            .call("POST", "/api/ops/failover/trigger/nosuch", Some(tok), None)
            .await;
        r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let r = api
        .call("GET", "/api/ops/failover/status", Some(REPORTER), None)
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn health_and_ready_are_public() {
    let api = Api::empty().await;
    let r = api.call("GET", "/api/ops/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        sorted_keys(&v),
        [
            "failover_state",
            "generated_at",
            "metrics",
            "services",
            "status"
        ]
    );
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["failover_state"], "normal");
    assert!(v["services"].as_array().is_some_and(Vec::is_empty));
    assert!(chrono::DateTime::parse_from_rfc3339(v["generated_at"].as_str().unwrap_or("")).is_ok());
    // No core service: vacuously ready.
    let r = api.call("GET", "/api/ops/ready", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_need_a_token_unless_public() {
    let api = Api::empty().await;
    let r = api.call("GET", "/metrics", None, None).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let r = api.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let public = Api::start(
        vec![],
        ControlConfig {
            metrics_public: true,
            ..control_config()
        },
    )
    .await;
    let r = public.call("GET", "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("continuity_failover_state 0"));
}

#[tokio::test]
async fn rate_limited_after_n_failures_from_one_address() {
    let api = Api::empty().await; // 5 failures per minute
    let attacker = "203.0.113.9:4000";
    for i in 0..5 {
        let r = api
            .call_from(
                attacker,
                "GET",
                "/api/ops/failover/status",
                Some("guess"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = api
        .call_from(
            attacker,
            "GET",
            "/api/ops/failover/status",
            Some("guess"),
            None,
        )
        .await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    // A valid token from the same address still gets in (issue 12: one bad
    // neighbour behind a shared NAT must not lock the operators out).
    let r = api
        .call_from(
            attacker,
            "GET",
            "/api/ops/failover/status",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Other clients and the public probes are unaffected.
    let r = api.get("/api/ops/failover/status").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .call_from(attacker, "GET", "/api/ops/health", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let m = api.get("/metrics").await;
    assert!(
        m.text
            .contains("continuity_auth_failures_total{reason=\"invalid_token\"} 5"),
        "{}",
        m.text
    );
    assert!(m
        .text
        .contains("continuity_auth_failures_total{reason=\"rate_limited\"} 1"));
}

// ---- errors and check order --------------------------------------------------

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json() {
    let api = Api::empty().await;
    api.get("/api/ops/nosuch")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    api.get("/")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    api.get("/api/ops/failover/trigger/redis")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn post_check_order_404_400_422_409() {
    let api = Api::start(
        vec![tcp_service(
            "lonely",
            vec![upstream("lonely-a", REFUSED, Role::Primary)],
        )],
        control_config(),
    )
    .await;
    // Unknown service before any body check.
    api.post("/api/ops/failover/trigger/nosuch", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    api.post("/api/ops/failover/recover/nosuch", Some("{"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let path = "/api/ops/failover/trigger/lonely";
    for bad in ["{", "reason: x", "[]", r#"{"reason": 5}"#] {
        api.post(path, Some(bad))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    for missing in [
        None,
        Some("{}"),
        Some(r#"{"reason":"  "}"#),
        Some(r#"{"reason":null}"#),
    ] {
        api.post(path, missing)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reason_required");
    }
    // No other upstream to switch to: the engine's 409.
    api.post(path, Some(r#"{"reason":"drill"}"#))
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    // The {type} may be the kind when one service has it.
    api.post(
        "/api/ops/failover/trigger/tcp",
        Some(r#"{"reason":"drill"}"#),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn body_too_large_is_413() {
    let api = Api::start(
        vec![tcp_service(
            "svc",
            vec![upstream("svc-a", REFUSED, Role::Primary)],
        )],
        control_config(),
    )
    .await;
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(70 * 1024));
    // Declared by Content-Length: refused before the body is read.
    let req = Request::post("/api/ops/failover/trigger/svc")
        .header("authorization", format!("Bearer {OPERATOR}"))
        .header("content-length", big.len().to_string())
        .body(Body::from(big.clone()))
        .expect("request");
    api.send(CLIENT, req)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Not declared (streamed): stopped by the extractor limit.
    let req = Request::post("/api/ops/failover/trigger/svc")
        .header("authorization", format!("Bearer {OPERATOR}"))
        .body(Body::from(big))
        .expect("request");
    api.send(CLIENT, req)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}
