//! Secrets never leave the process unmasked (issue #12, item 9): what the
//! audit file masks is masked too in the WebSocket events, on stderr (at
//! debug), in the API answers that echo an operator's reason or a
//! pipeline's checkpoint, in alert webhook payloads, and in the queued
//! requests `GET /api/ops/queue/{id}` shows (query values of secret keys,
//! secret request and upstream answer headers such as `Set-Cookie`).
//! Against the real binary, a real Redis pair, a real webhook receiver
//! (scripts/http_upstream.py) and a real HTTP upstream (a socket server in
//! this process that sets a session cookie).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::continuity::{Continuity, VIEWER_TOKEN};
use support::http_client;
use support::http_upstream::HttpUpstream;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 0\nconnect_timeout_ms = 300\ntimeout_ms = 500";

/// Every secret a reason carries here, one per form the masker knows.
const SECRETS: [&str; 5] = [
    "hunter2",
    "dXNlcjpwYXNz",
    "SECRETAPIKEY",
    "s3cr3tpw",
    "tok-SECRET-9",
];

const REASON: &str = "drill password=hunter2 Authorization: Basic dXNlcjpwYXNz \
                      api_key=SECRETAPIKEY, db password: s3cr3tpw and ?token=tok-SECRET-9";

fn leaked(text: &str) -> Vec<&'static str> {
    SECRETS
        .iter()
        .copied()
        .filter(|s| text.contains(s))
        .collect()
}

/// The engine, run by hand so that its stderr is captured at `debug`
/// (the harness runs it at `info`): nothing logged at any level may
/// carry a secret.
struct DebugEngine {
    engine: Continuity,
    child: Child,
}

impl DebugEngine {
    fn start(engine: Continuity) -> DebugEngine {
        let log = std::fs::File::create(&engine.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_continuity"))
            .arg("run")
            .arg("--config")
            .arg(&engine.config)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn continuity");
        let e = DebugEngine { engine, child };
        assert!(
            wait_until(Duration::from_secs(20), || e
                .engine
                .try_request("GET", "/api/ops/health", None, None)
                .is_ok_and(|(s, _)| s == 200)),
            "continuity did not answer /api/ops/health:\n{}",
            e.engine.log_text()
        );
        e
    }
}

impl Drop for DebugEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn collect(url: String, until: Instant, out: Arc<Mutex<Vec<String>>>) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => out.lock().unwrap().push(t.to_string()),
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

fn service_status(engine: &Continuity, name: &str) -> String {
    let (_, body) = engine.get(&format!("/api/ops/health/service/{name}"));
    body["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn operator_reasons_are_masked_in_ws_events_stderr_and_api_answers() {
    let pair = RedisPair::start();
    // The alert webhook: the stall's alert is posted there.
    let hook = HttpUpstream::start("hook", None, None, false);
    let listen = loopback(free_port());
    let e = DebugEngine::start(
        Continuity::builder()
            .health(HEALTH)
            .service(&format!(
                r#"name = "redis"
kind = "redis"
listen = "{listen}"
upstreams = [
  {{ name = "redis-primary", address = "{}", role = "primary" }},
  {{ name = "redis-replica", address = "{}", role = "secondary" }},
]"#,
                pair.primary.addr(),
                pair.replica.addr()
            ))
            .service("name = \"etl\"\nkind = \"heartbeat\"\nstall_after_seconds = 1")
            .tail(&format!(
                "[alerts]\nwebhook_url = \"{}/hooks/ops\"",
                hook.url()
            ))
            .prepare(),
    );
    let engine = &e.engine;
    assert!(
        wait_until(Duration::from_secs(15), || service_status(engine, "redis")
            == "healthy"),
        "redis never healthy:\n{}",
        engine.log_text()
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for channel in ["failover", "diagnostics"] {
        let url = format!(
            "ws://{}/ws/ops/{channel}?token={VIEWER_TOKEN}",
            engine.control
        );
        tasks.push(rt.spawn(collect(url, until, seen.clone())));
    }
    // Both clients have had their snapshot before anything happens.
    assert!(
        wait_until(Duration::from_secs(15), || seen.lock().unwrap().len() >= 2),
        "WebSocket clients got no snapshot"
    );

    let body = serde_json::json!({ "reason": REASON }).to_string();
    let (code, answer) = engine.post("/api/ops/failover/trigger/redis", &body);
    assert_eq!(code, 200, "{answer}");
    assert!(leaked(&answer.to_string()).is_empty(), "{answer}");
    let (code, answer) = engine.post(
        "/api/ops/emergency",
        &serde_json::json!({ "enabled": true, "reason": REASON }).to_string(),
    );
    assert_eq!(code, 200, "{answer}");
    assert!(leaked(&answer.to_string()).is_empty(), "{answer}");
    // Not a reason: a pipeline's checkpoint text, which the stall that
    // follows carries to the diagnostics channel (masked on the way out).
    let (code, answer) = engine.post(
        "/api/ops/heartbeat/etl",
        r#"{"processed": 7, "checkpoint": "batch-7 token=tok-SECRET-9"}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert!(leaked(&answer.to_string()).is_empty(), "{answer}");
    // A reload of the unchanged file: its reason is logged on stderr.
    let (code, answer) = engine.post("/api/ops/config/reload", &body);
    assert_eq!(code, 200, "{answer}");
    assert!(leaked(&answer.to_string()).is_empty(), "{answer}");

    // The reason reaches the WebSocket clients, masked: the switch on the
    // failover channel, the emergency on the diagnostics channel.
    let has = |kind: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|m| m.contains(&format!("\"type\":\"{kind}\"")) && m.contains("drill"))
    };
    assert!(
        wait_until(Duration::from_secs(20), || has("failover_activated")
            && has("diagnostic_event")
            && seen.lock().unwrap().iter().any(|m| m
                .contains("\"type\":\"etl_stall\"")
                && m.contains("batch-7"))),
        "no failover_activated / diagnostic_event with the reason, or no etl_stall: {:?}",
        seen.lock().unwrap()
    );
    // Let whatever else the two operations cause arrive too.
    std::thread::sleep(Duration::from_secs(1));
    // Every place a secret got out, reported together.
    let mut leaks: Vec<String> = Vec::new();
    let messages = seen.lock().unwrap().clone();
    for m in messages.iter().filter(|m| !leaked(m).is_empty()) {
        leaks.push(format!("WS event: {m}"));
    }
    // The API answers that echo reasons.
    for path in [
        "/api/ops/diagnostics/events",
        "/api/ops/diagnostics/report",
        "/api/ops/diagnostics/alerts",
        "/api/ops/audit/logs",
    ] {
        let (code, v) = engine.request("GET", path, None, Some(VIEWER_TOKEN));
        assert_eq!(code, 200, "{path}: {v}");
        let text = v.to_string();
        if !leaked(&text).is_empty() {
            leaks.push(format!("GET {path}: {text}"));
        }
    }
    // The alert webhook.
    assert!(
        wait_until(Duration::from_secs(15), || hook
            .records()
            .iter()
            .any(|r| r["body"].as_str().is_some_and(|b| b.contains("batch-7")))),
        "the stall's alert never reached the webhook: {:?}",
        hook.records()
    );
    for r in hook.records() {
        let body = r["body"].as_str().unwrap_or_default().to_string();
        if !leaked(&body).is_empty() {
            leaks.push(format!("webhook: {body}"));
        }
    }
    // stderr, at debug.
    let log = engine.log_text();
    for l in log.lines().filter(|l| !leaked(l).is_empty()) {
        leaks.push(format!("stderr: {l}"));
    }
    assert!(leaks.is_empty(), "secrets got out:\n{}", leaks.join("\n"));

    // ... and the reason is there, masked, not dropped.
    let activated = messages
        .iter()
        .find(|m| m.contains("\"type\":\"failover_activated\""))
        .unwrap();
    for masked in [
        "password=***",
        "Authorization: Basic ***",
        "api_key=***",
        "password: ***",
        "token=***",
    ] {
        assert!(activated.contains(masked), "{masked} not in {activated}");
    }
    let stall = messages
        .iter()
        .find(|m| m.contains("\"type\":\"etl_stall\"") && m.contains("batch-7"))
        .unwrap();
    assert!(stall.contains("batch-7 token=***"), "{stall}");
    let (_, events) = engine.get("/api/ops/diagnostics/events");
    assert!(
        events.to_string().contains("drill password=***"),
        "the reason is not in the diagnostics events: {events}"
    );
    drop(rt);
}

/// A real HTTP/1.1 upstream whose answers set a session cookie; `/health`
/// answers 503 until `healthy` is set.
struct CookieUpstream {
    addr: String,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

const COOKIE_SECRET: &str = "SESSIONSECRET77";

impl CookieUpstream {
    fn start() -> CookieUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let healthy = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (healthy.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let h = h.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, &h);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        CookieUpstream {
            addr,
            healthy,
            stop,
        }
    }
}

impl Drop for CookieUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Answers requests on one connection (keep-alive) until it closes.
fn serve(conn: TcpStream, healthy: &AtomicBool) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let answer = if path == "/health" {
            if healthy.load(Ordering::SeqCst) {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string()
            } else {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_string()
            }
        } else {
            let text = "{\"accepted\":true}";
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Set-Cookie: session={COOKIE_SECRET}; Path=/; HttpOnly\r\n\
                 X-Upstream-Token: {COOKIE_SECRET}\r\n\
                 Content-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        out.write_all(answer.as_bytes())?;
    }
}

#[test]
fn a_queued_request_is_shown_with_its_secrets_masked() {
    let upstream = CookieUpstream::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"ndex\"\nkind = \"http\"\ncategory = \"federal\"\nlisten = \"{listen}\"\n\
             health_path = \"/health\"\non_outage = \"queue\"\n\
             upstreams = [ {{ name = \"ndex-a\", url = \"http://{}\", role = \"primary\" }} ]",
            upstream.addr
        ))
        .start();
    assert!(
        wait_until(Duration::from_secs(15), || service_status(&engine, "ndex")
            == "down"),
        "ndex never down:\n{}",
        engine.log_text()
    );
    let queued = http_client::request(
        &listen,
        "POST",
        "/submissions/sar?case=7&api_key=SECRETAPIKEY&password=hunter2",
        &[
            ("Content-Type", "application/json"),
            ("X-Auth-Token", "tok-SECRET-9"),
        ],
        "{\"case\":7}",
    )
    .expect("queued POST");
    assert_eq!(queued.status, 202, "{queued:?}\n{}", engine.log_text());
    let location = queued.header("location").expect("Location").to_string();

    let (code, entry) = engine.request("GET", &location, None, Some(VIEWER_TOKEN));
    assert_eq!(code, 200, "{entry}");
    assert_eq!(entry["state"], "queued", "{entry}");
    assert_eq!(
        entry["path"], "/submissions/sar?case=7&api_key=***&password=***",
        "{entry}"
    );
    assert!(leaked(&entry.to_string()).is_empty(), "{entry}");

    upstream.healthy.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(30), || engine
            .request("GET", &location, None, Some(VIEWER_TOKEN))
            .1["state"]
            == "delivered"),
        "never delivered:\n{}",
        engine.log_text()
    );
    let (code, entry) = engine.request("GET", &location, None, Some(VIEWER_TOKEN));
    assert_eq!(code, 200, "{entry}");
    let text = entry.to_string();
    assert!(!text.contains(COOKIE_SECRET), "upstream secret in {entry}");
    assert!(leaked(&text).is_empty(), "{entry}");
    let header = |name: &str| {
        entry["result"]["headers"]
            .as_array()
            .and_then(|hs| {
                hs.iter().find(|h| {
                    h["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
            })
            .map(|h| h["value"].clone())
    };
    assert_eq!(header("set-cookie"), Some("***".into()), "{entry}");
    assert_eq!(header("x-upstream-token"), Some("***".into()), "{entry}");
    assert_eq!(
        header("content-type"),
        Some("application/json".into()),
        "{entry}"
    );
    assert_eq!(entry["result"]["status"], 200, "{entry}");
    assert_eq!(entry["result"]["body"], "{\"accepted\":true}", "{entry}");
}
