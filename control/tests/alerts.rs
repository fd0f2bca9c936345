//! Alerting end to end (SPEC 9): webhook delivery to a real local HTTP
//! receiver with retries, open-once/resolve against a real TCP upstream,
//! acknowledgement, emergency, heartbeat stalls, and a latency prediction
//! from a real redis-server made slower step by step through a relay.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use continuity_control::alerts::{self, parse_rules, AlertSettings, Alerts};
use continuity_control::audit::Action;
use continuity_proxy::config::{Category, Kind, Role, ServiceConfig};
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::ServiceStatus;
use harness::*;
use support::*;

#[tokio::test]
async fn webhook_retries_503_then_delivers_once() {
    let hook = Receiver::start(2).await;
    let settings = AlertSettings {
        webhook_url: Some(hook.url.clone()),
        delivery: fast_delivery(5),
        eval_interval: Duration::from_millis(50),
        ..AlertSettings::default()
    };
    let t = Setup::new(vec![], settings, false).await;
    let _eval = alerts::spawn(t.api.state.clone());
    // What the data plane reports for a Bolt FAILURE to a write.
    t.api.state.alerts.observe(&Event::new(
        Some("graph"),
        EventKind::Neo4jWriteFailure {
            upstream: "graph-a".into(),
            statement: "CREATE (n:Case {id: ?})".into(),
            code: "Neo.TransientError.Transaction.Terminated".into(),
        },
    ));
    let got = hook.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    for body in got.iter().map(|r| &r.body) {
        assert_eq!(body["event"], "alert_opened");
        assert_eq!(body["alert"]["rule"], "neo4j_write_failure");
        assert_eq!(body["alert"]["tier"], 1);
        assert_eq!(body["alert"]["service"], "graph");
        let msg = body["alert"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("Neo.TransientError.Transaction.Terminated from graph-a"),
            "{msg}"
        );
        assert_eq!(body["alert"]["id"], got[0].body["alert"]["id"]);
    }
    // Open: never raised again, so nothing more arrives.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.requests().len(), 3);
    let metrics = t.api.get("/metrics").await.text;
    assert!(
        metrics.contains("continuity_alert_webhook_deliveries_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("continuity_alert_webhook_deliveries_total{result=\"retry\"} 2"));
    assert!(metrics.contains("continuity_alert_webhook_deliveries_total{result=\"failed\"} 0"));
    assert!(metrics.contains("continuity_alerts_total{rule=\"neo4j_write_failure\",tier=\"1\"} 1"));
    promtool_check(&metrics);
}

#[tokio::test]
async fn webhook_gives_up_after_the_last_attempt() {
    let hook = Receiver::start(usize::MAX).await;
    let settings = AlertSettings {
        webhook_url: Some(hook.url.clone()),
        delivery: fast_delivery(3),
        ..AlertSettings::default()
    };
    let t = Setup::new(vec![], settings, false).await;
    let _eval = alerts::spawn(t.api.state.clone());
    t.api.state.alerts.websocket_drop_ratio(0.5);
    assert_eq!(hook.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    wait_until(Duration::from_secs(5), || async {
        t.api
            .get("/metrics")
            .await
            .text
            .contains("deliveries_total{result=\"failed\"} 1")
    })
    .await;
    let metrics = t.api.get("/metrics").await.text;
    assert!(
        metrics.contains("deliveries_total{result=\"retry\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("deliveries_total{result=\"delivered\"} 0"));
}

#[tokio::test]
async fn federal_priority_1_also_goes_to_the_liaison() {
    let (hook, liaison) = (Receiver::start(0).await, Receiver::start(0).await);
    let mut ndex = tcp_service("ndex", vec![upstream("ndex-a", REFUSED, Role::Primary)]);
    ndex.category = Category::Federal;
    let settings = AlertSettings {
        webhook_url: Some(hook.url.clone()),
        liaison_webhook_url: Some(liaison.url.clone()),
        rules: rules("[[rule]]\nname='fed'\ncondition='federal_offline'\nthreshold_seconds=0.2\n"),
        delivery: fast_delivery(2),
        eval_interval: Duration::from_millis(50),
        ..AlertSettings::default()
    };
    let t = Setup::new(vec![ndex], settings, false).await;
    let _eval = alerts::spawn(t.api.state.clone());
    let got = liaison.wait_for(1, Duration::from_secs(10)).await;
    let alert = &got[0].body["alert"];
    assert_eq!(
        (alert["rule"].as_str(), alert["tier"].as_u64()),
        (Some("fed"), Some(1))
    );
    assert_eq!(alert["severity"], "priority_1");
    let routes = alert["routes"].to_string();
    for r in ["command_center", "tactical_dashboard", "federal_liaison"] {
        assert!(routes.contains(r), "{routes}");
    }
    assert_eq!(
        hook.wait_for(1, Duration::from_secs(5)).await[0].body,
        got[0].body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_once_while_down_and_resolved_when_upstream_returns() {
    let mut up = Upstream::start().await;
    let api_svc = tcp_service(
        "api",
        vec![upstream("api-a", &up.addr.to_string(), Role::Primary)],
    );
    let settings = AlertSettings {
        rules: rules("[[rule]]\nname='slow-to-answer'\ncondition='service_unresponsive'\nthreshold_seconds=0.3\n"),
        eval_interval: Duration::from_millis(50),
        ..AlertSettings::default()
    };
    let t = Setup::new(vec![api_svc], settings, true).await;
    t.api.wait_status("api", ServiceStatus::Healthy).await;
    let mut rx = t.api.state.bus.subscribe();
    let _eval = alerts::spawn(t.api.state.clone());
    up.close();
    let opened = next_event(&mut rx, "alert_opened", Duration::from_secs(10)).await;
    assert_eq!(opened.service.as_deref(), Some("api"));
    let alert = &opened.data["alert"];
    assert_eq!(
        (alert["rule"].as_str(), alert["tier"].as_u64()),
        (Some("slow-to-answer"), Some(3))
    );
    assert_eq!(
        alert["routes"],
        serde_json::json!(["rtcc_live_dashboard", "ops_center"])
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let listed = t
        .api
        .get("/api/ops/diagnostics/alerts?open=true")
        .await
        .json();
    assert_eq!(
        listed["alerts"].as_array().map(Vec::len),
        Some(1),
        "not raised twice: {listed}"
    );
    up.reopen().await;
    let resolved = next_event(&mut rx, "alert_resolved", Duration::from_secs(10)).await;
    assert_eq!(resolved.data["alert"]["id"], alert["id"]);
    let drained = drain(&mut rx);
    assert!(
        drained.iter().all(|m| m.data["event"] != "alert_opened"),
        "raised twice"
    );
    let v = t.api.get("/api/ops/diagnostics/alerts").await.json();
    let a = &v["alerts"][0];
    assert_eq!(
        (a["open"].as_bool(), a["id"].clone()),
        (Some(false), alert["id"].clone())
    );
    assert!(a["resolved_at"].is_string());
    assert_eq!(v["open"], 0);
    let esc = audited(&t, Action::Escalation);
    let events: Vec<&str> = esc
        .iter()
        .filter_map(|e| e["details"]["event"].as_str())
        .collect();
    assert_eq!(events, ["alert_resolved", "alert_opened"], "newest first");
}

#[tokio::test]
async fn ack_200_then_409_and_the_error_codes() {
    let t = Setup::new(vec![], AlertSettings::default(), true).await;
    t.api
        .state
        .alerts
        .neo4j_write_failure("graph", "write refused");
    t.api.state.alerts.evaluate(&t.api.state).await;
    let id = t.api.get("/api/ops/diagnostics/alerts").await.json()["alerts"][0]["id"]
        .as_str()
        .expect("an alert")
        .to_string();
    let path = format!("/api/ops/alerts/{id}/ack");
    let reason = Some(r#"{"reason":"on it"}"#);
    t.api
        .call("POST", &path, None, reason)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    for tok in [VIEWER, REPORTER] {
        t.api
            .call("POST", &path, Some(tok), reason)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let unknown = "/api/ops/alerts/alert-0000/ack";
    t.api
        .post(unknown, reason)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    t.api
        .post(unknown, Some("{}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    t.api
        .post(&path, Some("{"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    t.api
        .post(&path, Some(r#"{"reason":"  "}"#))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reason_required");
    let r = t.api.post(&path, reason).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (v["id"].as_str(), v["acknowledged_by"].as_str()),
        (Some(id.as_str()), Some("ops-console"))
    );
    assert!(v["acknowledged_at"].is_string());
    t.api
        .post(&path, reason)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    let listed = t.api.get("/api/ops/diagnostics/alerts").await.json();
    assert_eq!(listed["alerts"][0]["acknowledged_by"], "ops-console");
    let mi = audited(&t, Action::ManualIntervention);
    assert_eq!(mi.len(), 1, "only the accepted ack is audited: {mi:?}");
    assert_eq!(mi[0]["details"]["operation"], "alert_ack");
    assert_eq!(mi[0]["details"]["reason"], "on it");
    assert_eq!(mi[0]["actor"], "ops-console");
    assert_eq!(mi[0]["service"], "graph");
}

#[tokio::test]
async fn emergency_declare_and_clear_are_audited_and_reroute() {
    let t = Setup::new(vec![], AlertSettings::default(), true).await;
    t.api.state.alerts.websocket_drop_ratio(0.4);
    t.api.state.alerts.evaluate(&t.api.state).await;
    let open = t.api.get("/api/ops/diagnostics/alerts").await.json();
    assert_eq!(
        open["alerts"][0]["routes"].as_array().map(Vec::len),
        Some(2)
    );
    let e = "/api/ops/emergency";
    t.api
        .call("POST", e, None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    for tok in [VIEWER, REPORTER] {
        let r = t
            .api
            .call(
                "POST",
                e,
                Some(tok),
                Some(r#"{"enabled":true,"reason":"x"}"#),
            )
            .await;
        r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    for bad in [
        "",
        "{}",
        r#"{"reason":"x"}"#,
        r#"{"enabled":"yes","reason":"x"}"#,
        "[true]",
    ] {
        t.api
            .post(e, Some(bad))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    for blank in [r#"{"enabled":true}"#, r#"{"enabled":true,"reason":" "}"#] {
        t.api
            .post(e, Some(blank))
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reason_required");
    }
    assert!(audited(&t, Action::ManualIntervention).is_empty());
    let r = t
        .api
        .post(
            e,
            Some(r#"{"enabled":true,"reason":"multi-site outage drill"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (
            v["failover_state"].as_str(),
            v["emergency_declared"].as_bool()
        ),
        (Some("emergency"), Some(true))
    );
    assert_eq!(v["rerouted_alerts"].as_array().map(Vec::len), Some(1));
    let routes =
        t.api.get("/api/ops/diagnostics/alerts").await.json()["alerts"][0]["routes"].to_string();
    for d in [
        "rtcc_live_dashboard",
        "ops_center",
        "tactical_dashboard",
        "command_center",
    ] {
        assert!(routes.contains(d), "{routes}");
    }
    let health = t.api.get("/api/ops/failover/status").await.json();
    assert_eq!(health["failover_state"], "emergency");
    let r = t
        .api
        .post(e, Some(r#"{"enabled":false,"reason":"drill over"}"#))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (
            v["failover_state"].as_str(),
            v["emergency_declared"].as_bool()
        ),
        (Some("normal"), Some(false))
    );
    let mi = audited(&t, Action::ManualIntervention);
    let ops: Vec<(&str, &str, bool)> = mi
        .iter()
        .map(|m| {
            let d = &m["details"];
            (
                d["operation"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or(""),
                d["enabled"] == true,
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("emergency_clear", "drill over", false),
            ("emergency_declare", "multi-site outage drill", true)
        ]
    );
    let esc = audited(&t, Action::Escalation);
    assert!(
        esc.iter()
            .any(|e| e["details"]["event"] == "alerts_rerouted"),
        "{esc:?}"
    );
}

#[tokio::test]
async fn heartbeat_stall_raises_etl_stall_and_the_next_heartbeat_resumes() {
    let mut etl = ServiceConfig::new("etl", Kind::Heartbeat, vec![]);
    etl.stall_after = Some(Duration::from_millis(800));
    let settings = AlertSettings {
        eval_interval: Duration::from_millis(50),
        ..AlertSettings::default()
    }
    .with_services(std::slice::from_ref(&etl));
    let t = Setup::new(vec![etl], settings, true).await;
    let hb = "/api/ops/heartbeat/etl";
    t.api
        .call("POST", hb, None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    t.api
        .call("POST", hb, Some(VIEWER), None)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let nope = t
        .api
        .call("POST", "/api/ops/heartbeat/nope", Some(REPORTER), None)
        .await;
    nope.assert_error(StatusCode::NOT_FOUND, "not_found");
    for bad in [r#"{"processed":-1}"#, r#"{"checkpoint":5}"#, "[1]", "{"] {
        let r = t.api.call("POST", hb, Some(REPORTER), Some(bad)).await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    let r = t
        .api
        .call(
            "POST",
            hb,
            Some(REPORTER),
            Some(r#"{"processed":120,"checkpoint":"batch-41"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (v["processed"].as_u64(), v["stalled"].as_bool()),
        (Some(120), Some(false))
    );
    let mut rx = t.api.state.bus.subscribe();
    let _eval = alerts::spawn(t.api.state.clone());
    let stall = next_event(&mut rx, "etl_stall", Duration::from_secs(5)).await;
    assert_eq!(
        (stall.service.as_deref(), stall.data["state"].as_str()),
        (Some("etl"), Some("stalled"))
    );
    assert_eq!(stall.data["checkpoint"], "batch-41");
    let opened = next_event(&mut rx, "alert_opened", Duration::from_secs(5)).await;
    assert_eq!(opened.data["alert"]["rule"], "etl_stall");
    assert_eq!(opened.data["alert"]["severity"], "high");
    // No reason needed; an operator token works as well as a reporter's.
    let r = t.api.post(hb, Some(r#"{"processed":130}"#)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let resumed = next_event(&mut rx, "etl_stall", Duration::from_secs(1)).await;
    assert_eq!(resumed.data["state"], "resumed");
    let listed = t.api.get("/api/ops/diagnostics/alerts").await.json();
    assert_eq!(
        listed["alerts"][0]["open"], false,
        "resolved by the heartbeat itself: {listed}"
    );
    let diag = audited(&t, Action::DiagnosticEvent);
    let events: Vec<&str> = diag
        .iter()
        .filter_map(|e| e["details"]["event"].as_str())
        .collect();
    assert_eq!(
        events,
        ["etl_resumed", "etl_stall"],
        "heartbeats themselves are not audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_prediction_from_a_redis_made_slower_step_by_step() {
    let Some(redis) = Redis::start() else {
        eprintln!("redis-server not installed; skipping");
        return;
    };
    let relay = DelayRelay::start(redis.port).await;
    let mut svc = ServiceConfig::new(
        "cache",
        Kind::Redis,
        vec![upstream("cache-a", &relay.addr.to_string(), Role::Primary)],
    );
    svc.health.check_interval = Duration::from_millis(100);
    svc.health.timeout = Duration::from_secs(5);
    let mut settings = AlertSettings {
        eval_interval: Duration::from_millis(100),
        ..AlertSettings::default()
    }
    .with_services(std::slice::from_ref(&svc));
    settings.predict.window = Duration::from_secs(8);
    settings.predict.every = Duration::from_millis(500);
    settings.predict.max_extrapolation = 3.0;
    let t = Setup::new(vec![svc], settings, true).await;
    t.api.wait_status("cache", ServiceStatus::Healthy).await;
    let mut rx = t.api.state.bus.subscribe();
    let _eval = alerts::spawn(t.api.state.clone());
    // +25 ms per response every second; a probe is two round trips
    // (PING, ROLE), so latency grows ~50 ms/s and reaches 1000 ms ~20 s in.
    let start = Instant::now();
    let wall_start = chrono::Utc::now();
    let delay = relay.delay.clone();
    let ramp = tokio::spawn(async move {
        for step in 1..=40u64 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            delay.store(25 * step, Ordering::SeqCst);
        }
    });
    let p = next_event(&mut rx, "predictive_alert", Duration::from_secs(19)).await;
    ramp.abort();
    let raised_after = start.elapsed().as_secs_f64();
    let d = &p.data;
    assert_eq!(p.service.as_deref(), Some("cache"));
    assert_eq!(
        (d["prediction_type"].as_str(), d["category"].as_str()),
        (Some("latency_degradation"), Some("database"))
    );
    assert!(
        d["confidence"]
            .as_f64()
            .is_some_and(|c| (0.6..=1.0).contains(&c)),
        "{d}"
    );
    assert!(
        d["indicators"].as_array().is_some_and(|i| i.len() == 3),
        "{d}"
    );
    assert!(d["recommended_actions"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    let predicted =
        chrono::DateTime::parse_from_rfc3339(d["predicted_failure_time"].as_str().unwrap_or(""))
            .expect("rfc3339")
            .with_timezone(&chrono::Utc);
    let predicted_secs = (predicted - wall_start).num_milliseconds() as f64 / 1000.0;
    eprintln!("raised after {raised_after:.1}s; predicted crossing at +{predicted_secs:.1}s (expected ~+20s): {d}");
    assert!(predicted_secs > raised_after, "in the future");
    assert!(
        (12.0..=30.0).contains(&predicted_secs),
        "plausible crossing time: {predicted_secs}"
    );
    let listed = t
        .api
        .get("/api/ops/diagnostics/alerts?type=predictive")
        .await
        .json();
    assert_eq!(listed["alerts"][0]["id"], d["id"]);
    let metrics = t.api.get("/metrics").await.text;
    assert!(
        metrics.contains(
            "continuity_predictive_alerts_total{prediction_type=\"latency_degradation\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn rule_keys_are_validated_for_the_config_loader() {
    let errs = parse_rules(&[toml::Value::String("x".into())]).expect_err("not a table");
    assert_eq!(errs, ["alerts.rule[0]: must be a table"]);
    assert!(Alerts::new(
        AlertSettings {
            webhook_url: Some("ftp://nope".into()),
            ..AlertSettings::default()
        },
        &prometheus::Registry::new()
    )
    .is_err());
}

mod harness {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use continuity_control::alerts::{parse_rules, AlertSettings, Alerts, DeliverySettings, Rule};
    use continuity_control::audit::{Action, AuditFilter, AuditLog, AuditSettings};
    use continuity_control::bus::OpsMessage;
    use continuity_proxy::config::ServiceConfig;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::broadcast::{self, error::RecvError};
    use tokio::task::JoinHandle;

    use crate::support::{control_config, Api};

    pub fn fast_delivery(attempts: u32) -> DeliverySettings {
        DeliverySettings {
            attempts,
            backoff: Duration::from_millis(40),
            timeout: Duration::from_secs(2),
            queue: 64,
        }
    }

    pub fn rules(src: &str) -> Vec<Rule> {
        let t: toml::Table = toml::from_str(src).expect("toml");
        parse_rules(t["rule"].as_array().expect("rules")).expect("valid rules")
    }

    /// An engine with `services`, the control state with these alert
    /// settings, and (with `audit`) an audit log in a temporary directory.
    pub struct Setup {
        pub api: Api,
        pub audit: Option<AuditLog>,
        _dir: tempfile::TempDir,
    }

    impl Setup {
        pub async fn new(
            services: Vec<ServiceConfig>,
            settings: AlertSettings,
            audit: bool,
        ) -> Setup {
            let mut api = Api::start(services, control_config()).await;
            api.state.alerts = Alerts::new(settings, &api.state.registry).expect("alerts");
            let dir = tempfile::tempdir().expect("tempdir");
            let mut log = None;
            if audit {
                let s = AuditSettings {
                    dir: dir.path().to_path_buf(),
                    ..AuditSettings::default()
                };
                let (l, _) = AuditLog::open(s, &api.state.registry).await.expect("audit");
                api.state = api.state.clone().with_audit(l.clone());
                log = Some(l);
            }
            Setup {
                api,
                audit: log,
                _dir: dir,
            }
        }
    }

    /// Entries of one action, newest first.
    pub fn audited(t: &Setup, action: Action) -> Vec<Value> {
        let f = AuditFilter {
            action: Some(action),
            ..AuditFilter::default()
        };
        t.audit.as_ref().expect("audit log").query(&f)
    }

    /// The next bus message of that type (or with that `data.event`).
    pub async fn next_event(
        rx: &mut broadcast::Receiver<Arc<OpsMessage>>,
        what: &str,
        within: Duration,
    ) -> Arc<OpsMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => panic!("no {what} within {within:?}"),
                Ok(Ok(m)) if m.kind == what || m.data["event"] == what => return m,
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => panic!("bus closed"),
            }
        }
    }

    pub fn drain(rx: &mut broadcast::Receiver<Arc<OpsMessage>>) -> Vec<Arc<OpsMessage>> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    pub async fn wait_until<F, Fut>(within: Duration, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + within;
        while !f().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One POST the receiver got, and what it answered.
    #[derive(Debug, Clone)]
    pub struct Req {
        pub status: u16,
        pub line: String,
        pub body: Value,
    }

    /// A real HTTP/1.1 webhook receiver: answers 503 to the first
    /// `fail_first` requests, then 200.
    pub struct Receiver {
        pub url: String,
        log: Arc<Mutex<Vec<Req>>>,
    }

    impl Receiver {
        pub async fn start(fail_first: usize) -> Receiver {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!(
                "http://{}/hooks/continuity?key=s3cret",
                l.local_addr().expect("addr")
            );
            let log = Arc::new(Mutex::new(Vec::new()));
            let seen = log.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while let Ok((mut s, _)) = l.accept().await {
                    let Some((line, body)) = read_request(&mut s).await else {
                        continue;
                    };
                    let status = if n < fail_first { 503 } else { 200 };
                    n += 1;
                    seen.lock().expect("log").push(Req { status, line, body });
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                }
            });
            Receiver { url, log }
        }

        pub fn requests(&self) -> Vec<Req> {
            self.log.lock().expect("log").clone()
        }

        pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Req> {
            wait_until(within, || async { self.requests().len() >= n }).await;
            let got = self.requests();
            for r in &got {
                assert_eq!(r.line, "POST /hooks/continuity?key=s3cret HTTP/1.1");
            }
            got
        }
    }

    async fn read_request(s: &mut TcpStream) -> Option<(String, Value)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())?;
                assert!(head
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"));
                while buf.len() < end + 4 + len {
                    let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
                    buf.extend_from_slice(&chunk[..n]);
                }
                let line = head.lines().next().unwrap_or_default().to_string();
                return Some((
                    line,
                    serde_json::from_slice(&buf[end + 4..end + 4 + len]).ok()?,
                ));
            }
            let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A TCP upstream that can be closed and reopened on the same port.
    pub struct Upstream {
        pub addr: SocketAddr,
        task: Option<JoinHandle<()>>,
    }

    fn serve(l: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        })
    }

    impl Upstream {
        pub async fn start() -> Upstream {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            Upstream {
                addr,
                task: Some(serve(l)),
            }
        }

        pub fn close(&mut self) {
            if let Some(t) = self.task.take() {
                t.abort();
            }
        }

        pub async fn reopen(&mut self) {
            for _ in 0..250 {
                if let Ok(l) = TcpListener::bind(self.addr).await {
                    self.task = Some(serve(l));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("cannot rebind {}", self.addr);
        }
    }

    /// A relay in front of a real upstream that holds every answer back
    /// by `delay` milliseconds.
    pub struct DelayRelay {
        pub addr: SocketAddr,
        pub delay: Arc<AtomicU64>,
    }

    impl DelayRelay {
        pub async fn start(port: u16) -> DelayRelay {
            use std::sync::atomic::Ordering;
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            let delay = Arc::new(AtomicU64::new(0));
            let d = delay.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = l.accept().await {
                    let d = d.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                            return;
                        };
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        let up = tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut cr, &mut sw).await;
                        });
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = sr.read(&mut buf).await {
                            tokio::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst)))
                                .await;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        up.abort();
                    });
                }
            });
            DelayRelay { addr, delay }
        }
    }

    /// A real redis-server on a free port; `None` if it is not installed.
    pub struct Redis {
        pub port: u16,
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Redis {
        pub fn start() -> Option<Redis> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let dir = tempfile::tempdir().ok()?;
            let child = Command::new("redis-server")
                .arg("--dir")
                .arg(dir.path())
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let redis = Redis {
                port,
                child,
                _dir: dir,
            };
            let start = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "redis-server did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(redis)
        }
    }
}
