//! The design's federal endpoint recovery sequence through the real binary:
//! a `category = "federal"` HTTP service goes offline; the health API shows
//! degraded mode; submissions are queued; past the offline threshold the
//! command center is alerted at priority 1 (webhook) and the federal liaison
//! is notified through its own webhook; when the endpoint returns, the
//! backlog is delivered in order. The threshold is 1 s here instead of
//! 300 s (`[[alerts.rule]] threshold_seconds`).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::continuity::{Continuity, VIEWER_TOKEN};
use support::http_client;
use support::http_upstream::HttpUpstream;
use support::*;

#[test]
fn a_federal_outage_escalates_notifies_the_liaison_and_delivers_the_backlog() {
    let mut ncic = HttpUpstream::start("ncic-a", None, None, false);
    let command_center = HttpUpstream::start("command-center", None, None, false);
    let liaison = HttpUpstream::start("federal-liaison", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.2\nfailure_threshold = 2\nconnect_timeout_ms = 300\ntimeout_ms = 500")
        .tail(&format!(
            "[alerts]\nwebhook_url = \"{}/hooks/ops\"\nliaison_webhook_url = \"{}/hooks/liaison\"\n\n\
             [[alerts.rule]]\nname = \"federal-offline\"\ncondition = \"federal_offline\"\nthreshold_seconds = 1\n",
            command_center.url(),
            liaison.url()
        ))
        .service(&format!(
            "name = \"ncic\"\nkind = \"http\"\ncategory = \"federal\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n\
             on_outage = \"queue\"\n\
             upstreams = [ {{ name = \"ncic-a\", url = \"{}\", role = \"primary\" }} ]",
            ncic.url()
        ))
        .start();
    let healthy = wait_until(Duration::from_secs(10), || {
        engine.get("/api/ops/health").1["status"] == "healthy"
    });
    assert!(healthy, "{}", engine.log_text());

    // The command center's live channel, as a dashboard would hold it.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = format!(
        "ws://{}/ws/ops/diagnostics?token={VIEWER_TOKEN}",
        engine.control
    );
    let (sink, until) = (seen.clone(), Instant::now() + Duration::from_secs(20));
    let listener = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Runtime::new() else {
            return;
        };
        rt.block_on(async move {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                return;
            };
            while Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, ws.next()).await {
                    Ok(Some(Ok(m))) => {
                        if let Ok(t) = m.into_text() {
                            sink.lock().unwrap().push(t.to_string());
                        }
                    }
                    _ => return,
                }
            }
        });
    });
    std::thread::sleep(Duration::from_millis(500));

    ncic.kill();
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, h) = engine.get("/api/ops/health");
        h["status"] == "degraded" && h["failover_state"] == "degraded"
    }));
    let (_, h) = engine.get("/api/ops/health");
    let svc = &h["services"][0];
    assert_eq!(
        (svc["name"].as_str(), svc["status"].as_str()),
        (Some("ncic"), Some("down")),
        "{h}"
    );

    let mut ids = Vec::new();
    for n in 0..3 {
        let r = http_client::request(
            &listen,
            "POST",
            &format!("/queries/{n}"),
            &[],
            &format!("{{\"n\":{n}}}"),
        )
        .expect("POST");
        assert_eq!(r.status, 202, "{r:?}");
        ids.push(r.json()["id"].as_str().expect("id").to_string());
    }

    // Priority 1 to the command center, and the liaison's own webhook.
    let escalated = wait_until(Duration::from_secs(15), || {
        !command_center.records().is_empty() && !liaison.records().is_empty()
    });
    assert!(escalated, "no webhook calls:\n{}", engine.log_text());
    let to_ops = command_center.records();
    let payload: serde_json::Value =
        serde_json::from_str(to_ops[0]["body"].as_str().unwrap_or("{}")).unwrap_or_default();
    let alert = &payload["alert"];
    assert_eq!(alert["rule"], "federal-offline", "{alert}");
    assert_eq!(alert["severity"], "priority_1", "{alert}");
    assert_eq!(alert["service"], "ncic", "{alert}");
    let routes = alert["routes"].to_string();
    assert!(
        routes.contains("command_center") && routes.contains("federal_liaison"),
        "{routes}"
    );
    assert_eq!(liaison.records()[0]["path"], "/hooks/liaison");
    let pushed = wait_until(Duration::from_secs(5), || {
        seen.lock().unwrap().iter().any(|m| {
            m.contains("federal-offline") && m.contains("priority_1") && m.contains("ncic")
        })
    });
    assert!(
        pushed,
        "no priority-1 escalation on the WebSocket: {:?}",
        seen.lock().unwrap()
    );

    // The endpoint returns: the backlog goes out in order, exactly once each.
    ncic.restart();
    let delivered = wait_until(Duration::from_secs(20), || {
        ids.iter()
            .all(|id| engine.get(&format!("/api/ops/queue/{id}")).1["state"] == "delivered")
    });
    assert!(delivered, "{}", engine.log_text());
    let got: Vec<String> = ncic
        .records()
        .iter()
        .filter_map(|r| r["idempotency_key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(got, ids, "delivered out of order or more than once");
    assert!(wait_until(Duration::from_secs(10), || {
        engine.get("/api/ops/health").1["status"] == "healthy"
    }));
    drop(engine);
    let _ = listener.join();
}
