//! The WebSocket channels (SPEC 5) against a real server on a port, with
//! tokio-tungstenite as the client: auth before any 101, snapshot first,
//! live bus and engine events in seq order, slow clients, ping, close and
//! shutdown.

#[path = "ws/harness.rs"]
mod harness;
mod support;

use std::time::{Duration, Instant};

use continuity_control::bus::Channel;
use continuity_proxy::config::Role;
use continuity_proxy::snapshot::ServiceStatus;
use futures_util::{SinkExt, StreamExt};
use harness::*;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn upgrade_needs_a_viewer_or_operator_token() {
    let server = Server::start(vec![]).await;
    for ch in ["health", "failover", "diagnostics"] {
        unauthorized(server.try_connect(&format!("/ws/ops/{ch}"), None).await);
    }
    unauthorized(server.try_connect("/ws/ops/health", Some("nope")).await);
    unauthorized(server.try_connect("/ws/ops/health?token=nope", None).await);
    assert_eq!(server.state().ws.clients(), 0);

    let server = Server::start(vec![]).await; // a fresh failure limiter (5 a minute)
    unauthorized(server.try_connect("/ws/ops/health?token=", None).await);
    let path = format!("/ws/ops/failover?token={VIEWER}");
    let mut ws = server.try_connect(&path, None).await.expect("?token=");
    assert_eq!(next_json(&mut ws).await["type"], "failover_event");
    let mut ws = server
        .try_connect("/ws/ops/diagnostics", Some(OPERATOR))
        .await
        .expect("operator");
    assert_eq!(next_json(&mut ws).await["type"], "diagnostic_event");
    // A reporter token reads nothing.
    match server.try_connect("/ws/ops/health", Some(REPORTER)).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("reporter: {:?}", other.map(|_| ())),
    }
    // `?token=` is for WebSockets only.
    let path = format!("/api/ops/failover/status?token={VIEWER}");
    server
        .api
        .call("GET", &path, None, None)
        .await
        .assert_error(axum::http::StatusCode::UNAUTHORIZED, "unauthorized");
    // A plain GET is told to upgrade, in the JSON envelope.
    let r = server.api.get("/ws/ops/health").await;
    r.assert_error(axum::http::StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn snapshot_first_then_live_events_in_seq_order() {
    let a = tcp_server().await;
    let server = Server::start(vec![tcp_service(
        "cache",
        vec![upstream("cache-a", &a, Role::Primary)],
    )])
    .await;
    server
        .api
        .wait_status("cache", ServiceStatus::Healthy)
        .await;
    let bus = &server.state().bus;
    for i in 0..3 {
        bus.publish(Channel::Health, "health_update", None, json!({ "i": i }));
        bus.publish(
            Channel::Diagnostics,
            "slow_query",
            Some("cache"),
            json!({ "i": i }),
        );
    }

    let mut health = server.connect("/ws/ops/health").await;
    let snap = next_json(&mut health).await;
    assert_eq!(snap["type"], "health_update");
    assert_eq!(snap["seq"], 3);
    // The same body as GET /api/ops/health.
    let rest = server.api.get("/api/ops/health").await.json();
    assert_eq!(sorted_keys(&snap["data"]), sorted_keys(&rest));
    assert_eq!(snap["data"]["services"][0]["name"], "cache");
    assert_eq!(snap["data"]["services"][0], rest["services"][0]);

    let mut failover = server.connect("/ws/ops/failover").await;
    let snap = next_json(&mut failover).await;
    assert_eq!(snap["type"], "failover_event");
    assert_eq!(snap["seq"], 0);
    let rest = server.api.get("/api/ops/failover/status").await.json();
    assert_eq!(sorted_keys(&snap["data"]), sorted_keys(&rest));

    let mut diag = server.connect("/ws/ops/diagnostics").await;
    let snap = next_json(&mut diag).await;
    assert_eq!(snap["type"], "diagnostic_event");
    assert_eq!(snap["seq"], 3);
    let events = snap["data"]["events"].as_array().expect("events");
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["type"], "slow_query");
    assert_eq!(events[2]["seq"], 3);

    for i in 3..8 {
        bus.publish(
            Channel::Health,
            "service_degraded",
            Some("cache"),
            json!({ "i": i }),
        );
    }
    bus.publish(
        Channel::Failover,
        "failover_activated",
        Some("cache"),
        json!({}),
    );
    bus.publish(Channel::Diagnostics, "etl_stall", None, json!({}));
    for want in 4..=8 {
        let m = next_json(&mut health).await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("service_degraded"), Some(want))
        );
        assert_eq!(m["service"], "cache");
    }
    let m = next_json(&mut failover).await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("failover_activated"), Some(1))
    );
    let m = next_json(&mut diag).await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("etl_stall"), Some(4))
    );
    assert!(m["service"].is_null());

    let text = server.api.get("/metrics").await.text;
    assert!(
        text.contains("continuity_ws_clients{channel=\"health\"} 1"),
        "{text}"
    );
    assert!(text.contains("continuity_ws_messages_total{channel=\"health\"} 6"));
    assert!(text.contains("continuity_ws_lagged_total{channel=\"failover\"} 0"));
    promtool_check(&text);
}

#[tokio::test]
async fn engine_events_flow_through_the_bridge() {
    let (cache_a, cache_a_task) = closable_server().await;
    let cache_b = tcp_server().await;
    let (ledger, ledger_task) = closable_server().await;
    let server = Server::start(vec![
        tcp_service(
            "cache",
            vec![
                upstream("cache-a", &cache_a, Role::Primary),
                upstream("cache-b", &cache_b, Role::Secondary),
            ],
        ),
        tcp_service("ledger", vec![upstream("ledger-a", &ledger, Role::Primary)]),
    ])
    .await;
    let state = server.state().clone();
    tokio::spawn(continuity_control::bridge::run(
        state.bus.clone(),
        state.engine.clone(),
        state.engine.subscribe(),
    ));
    server
        .api
        .wait_status("cache", ServiceStatus::Healthy)
        .await;
    server
        .api
        .wait_status("ledger", ServiceStatus::Healthy)
        .await;

    let mut health = server.connect("/ws/ops/health").await;
    let mut failover = server.connect("/ws/ops/failover").await;
    let h0 = next_json(&mut health).await["seq"].as_u64().expect("seq");
    let f0 = next_json(&mut failover).await["seq"].as_u64().expect("seq");

    cache_a_task.abort();
    ledger_task.abort();
    let m = until(&mut failover, "failover_activated", "cache", f0).await;
    assert_eq!(m["data"]["to"], "cache-b");
    let m = until(&mut health, "service_failure", "ledger", h0).await;
    assert_eq!(m["data"]["new"], "down");
}

#[tokio::test]
async fn a_slow_client_lags_or_is_cut_while_others_get_everything() {
    let server = Server::start(vec![]).await;
    let mut fast = server.connect("/ws/ops/health").await;
    let mut slow = server.connect_tiny("/ws/ops/health").await;
    let mut stuck = server.connect_tiny("/ws/ops/health").await;
    let first = next_json(&mut fast).await["seq"].as_u64().expect("seq");
    next_json(&mut slow).await;
    next_json(&mut stuck).await;
    server.wait_clients(3).await;

    const N: u64 = 3000;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < N as usize {
            let m = next_json(&mut fast).await;
            assert_eq!(
                m["type"], "health_update",
                "the fast client never lags: {m}"
            );
            seqs.push(m["seq"].as_u64().expect("seq"));
        }
        (seqs, fast)
    });
    let bus = server.state().bus.clone();
    let pad = "x".repeat(2048);
    let mut slowest = Duration::ZERO;
    for i in 0..N {
        let t = Instant::now();
        bus.publish(
            Channel::Health,
            "health_update",
            None,
            json!({ "i": i, "pad": pad }),
        );
        slowest = slowest.max(t.elapsed());
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(
        slowest < Duration::from_millis(50),
        "a publish took {slowest:?}"
    );
    let (seqs, _fast) = reader.await.expect("fast reader");
    assert_eq!(seqs, (first + 1..=first + N).collect::<Vec<_>>());

    // The slow one now reads: what it gets is in order and ends with a
    // lagged notice (or it was cut).
    let (mut last, mut lagged) = (first, None);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), slow.next()).await;
        let Ok(Some(Ok(msg))) = next else { break };
        let Message::Text(t) = msg else { continue };
        let m: Value = serde_json::from_str(&t).expect("JSON");
        let seq = m["seq"].as_u64().expect("seq");
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
        if m["type"] == "lagged" {
            lagged = Some(m);
            break;
        }
    }
    eprintln!("slow client: lagged notice {lagged:?}, last seq {last}");
    if let Some(m) = &lagged {
        assert!(m["service"].is_null());
        let missed = m["data"]["missed"].as_u64().expect("missed");
        assert!(missed > 0 && missed <= N, "{m}");
        let text = server.api.get("/metrics").await.text;
        assert!(
            text.contains("continuity_ws_lagged_total{channel=\"health\"} 1"),
            "{text}"
        );
    }

    // The one that never reads is cut after the send timeout: counted as
    // a drop, within a minute, among the 3 clients seen.
    server
        .wait_clients(if lagged.is_some() { 2 } else { 1 })
        .await;
    let ratio = server.state().ws.drop_ratio_last_minute();
    assert!(ratio >= 1.0 / 3.0 - 1e-9, "{ratio}");
    drop(stuck.close(None).await);
}

#[tokio::test]
async fn ping_is_answered_and_close_ends_the_client_normally() {
    let server = Server::start(vec![]).await;
    let mut ws = server.connect("/ws/ops/diagnostics").await;
    next_json(&mut ws).await;
    server.wait_clients(1).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("pong in time")
            .expect("open")
            .expect("ok");
        if let Message::Pong(p) = m {
            break p;
        }
    };
    assert_eq!(&pong[..], b"are you there");

    ws.close(None).await.expect("close");
    let mut saw_close = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        saw_close |= matches!(m, Message::Close(_));
    }
    assert!(saw_close, "the server answers the close handshake");
    server.wait_clients(0).await;
    assert_eq!(server.state().ws.drop_ratio_last_minute(), 0.0);
}

#[tokio::test]
async fn shutdown_closes_every_client_with_going_away() {
    let server = Server::start(vec![]).await;
    let mut clients = Vec::new();
    for ch in ["health", "failover", "diagnostics"] {
        let mut ws = server.connect(&format!("/ws/ops/{ch}")).await;
        next_json(&mut ws).await;
        clients.push(ws);
    }
    server.wait_clients(3).await;
    server.state().ws.shutdown();
    for ws in &mut clients {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("close in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    server.wait_clients(0).await;
    assert_eq!(server.state().ws.drop_ratio_last_minute(), 0.0);
}
