//! Every WebSocket message type of SPEC 5, emitted by a real condition in
//! the real binary and received by a real WebSocket client: kill a Redis
//! primary, recover, declare an emergency, leave a vendor and a federal
//! service without upstream, let an ETL heartbeat stall, run a slow command.
//! (`predictive_alert` is driven by a real upstream made slower step by
//! step in `control/tests/alerts.rs`, which takes minutes of trend here.)

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::continuity::{Continuity, VIEWER_TOKEN};
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn collect(
    url: String,
    until: Instant,
    out: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(v) = serde_json::from_str(&t) {
                    out.lock().unwrap().push(v);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

#[test]
fn every_message_type_is_emitted_by_a_real_condition() {
    let mut pair = RedisPair::start_with_args(&["--enable-debug-command", "yes"]);
    let (redis_listen, vendor_listen, federal_listen) = (
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
    );
    let dead = loopback(free_port());
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 0")
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{redis_listen}"
upstreams = [
  {{ name = "redis-primary", address = "{}", role = "primary" }},
  {{ name = "redis-replica", address = "{}", role = "secondary" }},
]"#,
            pair.primary.addr(),
            pair.replica.addr()
        ))
        .service(&format!(
            r#"name = "lpr"
kind = "tcp"
category = "vendor"
listen = "{vendor_listen}"
upstreams = [ {{ name = "lpr-a", address = "{dead}", role = "primary" }} ]"#
        ))
        .service(&format!(
            r#"name = "ncic"
kind = "tcp"
category = "federal"
listen = "{federal_listen}"
upstreams = [ {{ name = "ncic-a", address = "{dead}", role = "primary" }} ]"#
        ))
        .service("name = \"etl\"\nkind = \"heartbeat\"\nstall_after_seconds = 1")
        .start();

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let until = Instant::now() + Duration::from_secs(12);
    let mut tasks = Vec::new();
    for channel in ["health", "failover", "diagnostics"] {
        let url = format!(
            "ws://{}/ws/ops/{channel}?token={VIEWER_TOKEN}",
            engine.control
        );
        tasks.push(rt.spawn(collect(url, until, seen.clone())));
    }
    std::thread::sleep(Duration::from_millis(700));

    // Conditions, one after the other.
    let (code, _) = engine.request(
        "POST",
        "/api/ops/heartbeat/etl",
        Some("{}"),
        Some(support::continuity::OPERATOR_TOKEN),
    );
    assert_eq!(code, 200);
    redis_cmd(&redis_listen, &["DEBUG", "SLEEP", "0.2"]).unwrap();
    pair.primary.kill();
    let _ = redis_cmd(&redis_listen, &["PING"]);
    std::thread::sleep(Duration::from_millis(800));
    pair.primary.restart();
    std::thread::sleep(Duration::from_millis(600));
    let (code, body) = engine.post("/api/ops/failover/recover/redis", r#"{"reason":"back"}"#);
    assert_eq!(code, 200, "{body}");
    let (code, body) = engine.post("/api/ops/emergency", r#"{"enabled":true,"reason":"drill"}"#);
    assert_eq!(code, 200, "{body}");
    let (code, body) = engine.post(
        "/api/ops/emergency",
        r#"{"enabled":false,"reason":"drill over"}"#,
    );
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_millis(1500));

    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    // The stalled pipeline shows as down in the health view, without
    // turning the engine state into an emergency by itself.
    let (_, health) = engine.get("/api/ops/health");
    let etl = health["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "etl"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(etl["status"], "down", "{health}");
    let messages = seen.lock().unwrap().clone();
    let types: BTreeSet<String> = messages
        .iter()
        .filter_map(|m| m["type"].as_str().map(str::to_string))
        .collect();
    let expected = [
        "health_update",
        "service_status_change",
        "service_degraded",
        "service_failure",
        "failover_event",
        "failover_activated",
        "recovery_completed",
        "emergency_state",
        "diagnostic_event",
        "slow_query",
        "vendor_unavailable",
        "federal_interruption",
        "etl_stall",
    ];
    let missing: Vec<_> = expected.iter().filter(|t| !types.contains(**t)).collect();
    assert!(missing.is_empty(), "missing {missing:?}; got {types:?}");
    // The envelope of SPEC 5 on every message.
    for m in &messages {
        for key in ["type", "seq", "timestamp", "service", "data"] {
            assert!(m.get(key).is_some(), "{key} missing in {m}");
        }
    }
    let slow = messages.iter().find(|m| m["type"] == "slow_query").unwrap();
    assert!(slow.to_string().contains("DEBUG SLEEP ?"), "{slow}");
}
