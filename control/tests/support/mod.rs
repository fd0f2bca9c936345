//! Shared harness for the control-plane API tests: an engine with real
//! TCP upstreams (the `tcp` kind's probe is a connect), the control router
//! driven with `oneshot` from a chosen client address, and a promtool lint.

#![allow(dead_code)] // each test crate uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use continuity_control::config::{ControlConfig, TokenConfig, TokenRole};
use continuity_control::{router, AppState};
use continuity_proxy::config::{EngineConfig, Kind, Role, ServiceConfig, UpstreamConfig};
use continuity_proxy::snapshot::ServiceStatus;
use continuity_proxy::Engine;
pub use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub const VIEWER: &str = "viewer-token-0123";
pub const OPERATOR: &str = "operator-token-4567";
pub const REPORTER: &str = "reporter-token-89ab";
pub const CLIENT: &str = "192.0.2.10:50000";

pub fn token(name: &str, role: TokenRole, secret: &str) -> TokenConfig {
    TokenConfig {
        name: name.to_string(),
        role,
        sha256: Sha256::digest(secret.as_bytes()).into(),
    }
}

pub fn control_config() -> ControlConfig {
    ControlConfig {
        auth_failures_per_minute: 5,
        tokens: vec![
            token("dash", TokenRole::Viewer, VIEWER),
            token("ops-console", TokenRole::Operator, OPERATOR),
            token("etl", TokenRole::Reporter, REPORTER),
        ],
        ..ControlConfig::default()
    }
}

pub fn upstream(name: &str, address: &str, role: Role) -> UpstreamConfig {
    UpstreamConfig::at(name, address, role)
}

pub fn tcp_service(name: &str, upstreams: Vec<UpstreamConfig>) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, Kind::Tcp, upstreams);
    s.health.check_interval = Duration::from_millis(50);
    s.health.hold_down = Duration::ZERO;
    s
}

/// A real upstream: accepts and holds connections.
pub async fn tcp_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr.to_string()
}

/// A port nothing listens on: connects are refused.
pub const REFUSED: &str = "127.0.0.1:1";

pub struct Api {
    pub state: AppState,
    pub engine: Engine,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.code(), code, "{}", self.text);
        let msg = self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!msg.is_empty());
        assert!(!msg.contains("::"), "no Rust paths in messages: {msg}");
    }
}

impl Api {
    pub async fn start(services: Vec<ServiceConfig>, control: ControlConfig) -> Api {
        let registry = prometheus::Registry::new();
        let engine = Engine::start(
            EngineConfig {
                services,
                ..EngineConfig::default()
            },
            &registry,
        )
        .await
        .expect("engine starts");
        let state =
            AppState::new(engine.clone(), Arc::new(control), registry).expect("metrics register");
        Api { state, engine }
    }

    pub async fn empty() -> Api {
        Api::start(vec![], control_config()).await
    }

    pub async fn send(&self, from: &str, req: Request<Body>) -> Resp {
        let addr: SocketAddr = from.parse().expect("addr");
        let resp = router(self.state.clone())
            .layer(MockConnectInfo(addr))
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .expect("body");
        Resp {
            status,
            headers,
            text: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        self.call_from(CLIENT, method, path, bearer, body).await
    }

    pub async fn call_from(
        &self,
        from: &str,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(s) => {
                b = b.header("content-type", "application/json");
                Body::from(s.to_string())
            }
            None => Body::empty(),
        };
        self.send(from, b.body(body).expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, Some(VIEWER), None).await
    }

    pub async fn post(&self, path: &str, body: Option<&str>) -> Resp {
        self.call("POST", path, Some(OPERATOR), body).await
    }

    /// Waits until every service has a probe-based status other than unknown.
    pub async fn wait_status(&self, service: &str, want: ServiceStatus) {
        let start = Instant::now();
        loop {
            let snap = self.engine.snapshot();
            if snap.service(service).map(|s| s.status) == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{service} never became {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Pipes `text` through `promtool check metrics` when it is installed
/// (required when `CI=true`).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is required in CI: {e}"
            );
            eprintln!("promtool not found ({e}); skipping the lint");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
