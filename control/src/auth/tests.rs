//! Auth middleware tests on a small router (no engine needed).

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use prometheus::{IntCounterVec, Opts};
use tower::ServiceExt;

use super::*;

const VIEWER: &str = "viewer-secret";
const OPERATOR: &str = "operator-secret";
const REPORTER: &str = "reporter-secret";

fn token(name: &str, role: TokenRole, secret: &str) -> TokenConfig {
    TokenConfig {
        name: name.to_string(),
        role,
        sha256: Sha256::digest(secret.as_bytes()).into(),
    }
}

fn config(metrics_public: bool, failures_per_minute: u32) -> ControlConfig {
    ControlConfig {
        metrics_public,
        auth_failures_per_minute: failures_per_minute,
        tokens: vec![
            token("dash", TokenRole::Viewer, VIEWER),
            token("ops-console", TokenRole::Operator, OPERATOR),
            token("etl", TokenRole::Reporter, REPORTER),
        ],
        ..ControlConfig::default()
    }
}

fn failures() -> IntCounterVec {
    IntCounterVec::new(Opts::new("t_auth_failures_total", "test"), &["reason"]).expect("metric")
}

async fn who(actor: Actor) -> String {
    actor.name
}

fn app(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/api/ops/health", get(|| async { "public" }))
        .route("/metrics", get(|| async { "metrics" }))
        .route("/api/ops/failover/status", get(who))
        .route("/api/ops/failover/trigger/{t}", post(who))
        .route("/api/ops/heartbeat/{name}", post(who))
        .layer(axum::middleware::from_fn_with_state(auth, require))
}

struct Harness {
    auth: Arc<Auth>,
    failures: IntCounterVec,
}

impl Harness {
    fn new(metrics_public: bool, failures_per_minute: u32) -> Harness {
        let failures = failures();
        let auth = Arc::new(Auth::new(
            &config(metrics_public, failures_per_minute),
            64 * 1024,
            failures.clone(),
        ));
        Harness { auth, failures }
    }

    async fn send_from(
        &self,
        from: &str,
        method: &str,
        path: &str,
        bearer: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = HttpRequest::builder().method(method).uri(path);
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let addr: SocketAddr = from.parse().expect("addr");
        let resp = app(self.auth.clone())
            .layer(MockConnectInfo(addr))
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn send(&self, method: &str, path: &str, bearer: Option<&str>) -> (StatusCode, String) {
        self.send_from("192.0.2.1:5000", method, path, bearer).await
    }

    fn failures(&self, reason: &str) -> u64 {
        self.failures.with_label_values(&[reason]).get()
    }
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("json error body");
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn missing_and_unknown_tokens_are_401() {
    let h = Harness::new(false, 10);
    let (s, b) = h.send("GET", "/api/ops/failover/status", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(&b), "unauthorized");
    let (s, b) = h
        .send("GET", "/api/ops/failover/status", Some("nope"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(&b), "unauthorized");
    assert_eq!(h.failures(auth_reason::MISSING_TOKEN), 1);
    assert_eq!(h.failures(auth_reason::INVALID_TOKEN), 1);
}

#[tokio::test]
async fn malformed_header_is_401() {
    let h = Harness::new(false, 10);
    for value in ["Basic abc", "Bearer", "Bearer   ", "token"] {
        let req = HttpRequest::get("/api/ops/failover/status")
            .header("authorization", value)
            .body(Body::empty())
            .expect("request");
        let resp = app(h.auth.clone()).oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{value}");
    }
}

#[tokio::test]
async fn scheme_is_case_insensitive_and_actor_is_token_name() {
    let h = Harness::new(false, 10);
    let req = HttpRequest::get("/api/ops/failover/status")
        .header("authorization", format!("bearer {VIEWER}"))
        .body(Body::empty())
        .expect("request");
    let resp = app(h.auth.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let (s, b) = h
        .send("POST", "/api/ops/failover/trigger/redis", Some(OPERATOR))
        .await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "ops-console"));
}

#[tokio::test]
async fn roles() {
    let h = Harness::new(false, 10);
    let cases = [
        ("GET", "/api/ops/failover/status", VIEWER, StatusCode::OK),
        ("GET", "/api/ops/failover/status", OPERATOR, StatusCode::OK),
        (
            "GET",
            "/api/ops/failover/status",
            REPORTER,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/api/ops/failover/trigger/x",
            VIEWER,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/api/ops/failover/trigger/x",
            REPORTER,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/api/ops/failover/trigger/x",
            OPERATOR,
            StatusCode::OK,
        ),
        ("POST", "/api/ops/heartbeat/etl", REPORTER, StatusCode::OK),
        ("POST", "/api/ops/heartbeat/etl", OPERATOR, StatusCode::OK),
        (
            "POST",
            "/api/ops/heartbeat/etl",
            VIEWER,
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, tok, want) in cases {
        let (s, b) = h.send(method, path, Some(tok)).await;
        assert_eq!(s, want, "{method} {path} with {tok}");
        if want == StatusCode::FORBIDDEN {
            assert_eq!(code_of(&b), "forbidden");
        }
    }
    // A 403 is not an authentication failure: it does not feed the limiter.
    assert_eq!(h.failures(auth_reason::INVALID_TOKEN), 0);
}

#[tokio::test]
async fn health_is_public_metrics_only_when_configured() {
    let h = Harness::new(false, 10);
    assert_eq!(
        h.send("GET", "/api/ops/health", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        h.send("GET", "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.send("GET", "/metrics", Some(VIEWER)).await.0,
        StatusCode::OK
    );
    let public = Harness::new(true, 10);
    assert_eq!(public.send("GET", "/metrics", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn rate_limited_after_n_failures_per_client() {
    let h = Harness::new(false, 3);
    let a = "198.51.100.7:40000";
    for _ in 0..3 {
        let (s, _) = h
            .send_from(a, "GET", "/api/ops/failover/status", Some("guess"))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, b) = h
        .send_from(a, "GET", "/api/ops/failover/status", Some("guess"))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code_of(&b), "rate_limited");
    // A missing token is a failure too.
    let (s, _) = h
        .send_from(a, "GET", "/api/ops/failover/status", None)
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // A good token from the same address still gets in (a bad neighbour
    // behind the same NAT must not lock the operators out), and its
    // successes are not counted: the address stays limited for failures.
    for _ in 0..5 {
        let (s, b) = h
            .send_from(a, "GET", "/api/ops/failover/status", Some(VIEWER))
            .await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "dash"));
        let (s, b) = h
            .send_from(a, "POST", "/api/ops/failover/trigger/x", Some(OPERATOR))
            .await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "ops-console"));
    }
    // A good token with the wrong role is 403 (not 429, not a failure).
    let (s, _) = h
        .send_from(a, "POST", "/api/ops/failover/trigger/x", Some(VIEWER))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .send_from(a, "GET", "/api/ops/failover/status", Some("guess"))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // Public routes and other clients are unaffected.
    let (s, _) = h.send_from(a, "GET", "/api/ops/health", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h
        .send_from(
            "198.51.100.8:1",
            "GET",
            "/api/ops/failover/status",
            Some(VIEWER),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.failures(auth_reason::RATE_LIMITED), 3);
    assert_eq!(h.failures(auth_reason::INVALID_TOKEN), 3);
    assert_eq!(h.failures(auth_reason::MISSING_TOKEN), 0);
}

#[tokio::test]
async fn declared_oversize_body_is_413_after_auth() {
    let h = Harness::new(false, 10);
    let big = 64 * 1024 + 1;
    let req = |tok: &str| {
        HttpRequest::post("/api/ops/failover/trigger/redis")
            .header("authorization", format!("Bearer {tok}"))
            .header("content-length", big.to_string())
            .body(Body::from(vec![b' '; big]))
            .expect("request")
    };
    let resp = app(h.auth.clone())
        .oneshot(req(OPERATOR))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = app(h.auth.clone())
        .oneshot(req(VIEWER))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[test]
fn find_matches_only_exact_digest() {
    let h = Harness::new(false, 10);
    assert_eq!(
        h.auth.find(OPERATOR).map(|t| t.name.as_str()),
        Some("ops-console")
    );
    assert!(h.auth.find("operator-secre").is_none());
    assert!(h.auth.find("").is_none());
}
