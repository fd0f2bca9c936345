//! WebSocket fan-out (`cargo bench --bench ws_fanout`): how long one
//! failover event takes to reach every subscriber of `/ws/ops/failover`.
//!
//! A real control plane on 127.0.0.1 (an engine with no services, the
//! router behind its auth middleware) and N real tokio-tungstenite clients
//! (default 500) connected with a viewer token, each having read its
//! snapshot. Each run publishes one `failover_activated` on the bus and
//! measures from just before `publish` to the moment the last client has
//! the frame in hand (its read returned). Clients and server share this
//! process and its runtime, so the figure includes the clients' own work
//! on the same cores: a pessimistic bound for a real deployment.
//!
//! Environment: `WS_FANOUT_CLIENTS` (500), `WS_FANOUT_RUNS` (21). Target:
//! the median run under 1 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use continuity_control::bus::Channel;
use continuity_control::config::{ControlConfig, TokenConfig, TokenRole};
use continuity_control::AppState;
use continuity_proxy::config::EngineConfig;
use continuity_proxy::Engine;
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "bench-viewer-token";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let clients = env("WS_FANOUT_CLIENTS", 500);
    let runs = env("WS_FANOUT_RUNS", 21);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(bench(clients, runs));
}

async fn bench(clients: usize, runs: usize) {
    let registry = prometheus::Registry::new();
    let engine = Engine::start(EngineConfig::default(), &registry)
        .await
        .unwrap_or_else(|e| panic!("engine: {e}"));
    let control = ControlConfig {
        tokens: vec![TokenConfig {
            name: "bench".to_string(),
            role: TokenRole::Viewer,
            sha256: Sha256::digest(TOKEN.as_bytes()).into(),
        }],
        ..ControlConfig::default()
    };
    let state =
        AppState::new(engine, Arc::new(control), registry).unwrap_or_else(|e| panic!("state: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(continuity_control::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));

    // Every client reports the instant each text frame arrives.
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let connect_start = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let tx = tx.clone();
        connecting.spawn(async move {
            let mut req = format!("ws://{addr}/ws/ops/failover")
                .into_client_request()
                .unwrap_or_else(|e| panic!("request: {e}"));
            let auth = format!("Bearer {TOKEN}")
                .parse()
                .unwrap_or_else(|e| panic!("header: {e}"));
            req.headers_mut().insert("authorization", auth);
            let (mut ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            // The snapshot.
            match ws.next().await {
                Some(Ok(Message::Text(_))) => {}
                other => panic!("no snapshot: {other:?}"),
            }
            tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(_) = msg {
                        let _ = tx.send(Instant::now());
                    }
                }
            });
        });
    }
    while let Some(r) = connecting.join_next().await {
        r.unwrap_or_else(|e| panic!("client: {e}"));
    }
    drop(tx);
    println!(
        "ws_fanout: {clients} clients connected in {:.0} ms; {} connected server-side",
        connect_start.elapsed().as_secs_f64() * 1e3,
        state.ws.clients()
    );

    let evidence = json!({
        "probe": { "error": "connection refused", "consecutive_failures": 3, "threshold": 3 },
    });
    let mut last_ms = Vec::with_capacity(runs);
    let mut median_client_ms = Vec::with_capacity(runs);
    for run in 0..runs {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let data = json!({
            "type": "failover_activated", "from": "redis-primary", "to": "redis-replica",
            "old_epoch": run, "new_epoch": run + 1, "trigger": "auto", "actor": "system",
            "reason": "primary unresponsive", "promoted": true, "evidence": evidence,
            "closed_connections": 12,
        });
        let t0 = Instant::now();
        state
            .bus
            .publish(Channel::Failover, "failover_activated", Some("redis"), data);
        let mut arrivals = Vec::with_capacity(clients);
        while arrivals.len() < clients {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(at)) => arrivals.push(at.saturating_duration_since(t0)),
                _ => panic!(
                    "run {run}: only {} of {clients} clients got the event",
                    arrivals.len()
                ),
            }
        }
        arrivals.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        last_ms.push(ms(arrivals[clients - 1]));
        median_client_ms.push(ms(arrivals[clients / 2]));
        println!(
            "run {run:2}: last client {:8.2} ms, median client {:8.2} ms, first {:8.2} ms",
            ms(arrivals[clients - 1]),
            ms(arrivals[clients / 2]),
            ms(arrivals[0])
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (min, max) = last_ms
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    println!(
        "ws_fanout: {clients} clients, {runs} runs: publish -> last client median {:.2} ms (min {:.2}, max {:.2}); median client median {:.2} ms; target < 1000 ms",
        median(last_ms),
        min,
        max,
        median(median_client_ms)
    );
}
