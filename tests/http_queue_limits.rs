//! The HTTP gateway's durable queue and its delivery under hostile input
//! (issue #12, items 3 and 6 and the garbled `queue.log` line), against the
//! real binary and real HTTP upstreams (scripts/http_upstream.py):
//!
//! - an upstream `Retry-After` of 2^64-1 seconds or of year 9999 neither
//!   kills the gateway nor stops queue delivery (`max_retry_after_seconds`);
//! - queued bodies live on disk, not in the engine's memory, and past
//!   `queue_max_bytes` a request to a queue route gets 503 + `Retry-After`;
//! - a garbled line in the middle of `queue.log` is moved to
//!   `queue.log.quarantine`, audited, and the engine starts.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::continuity::Continuity;
use support::http_client;
use support::http_upstream::HttpUpstream;
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nconnect_timeout_ms = 300\ntimeout_ms = 500";

fn eventually(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    assert!(wait_until(within, cond), "timed out waiting for {what}");
}

fn service_status(engine: &Continuity, name: &str) -> String {
    let (_, body) = engine.get(&format!("/api/ops/health/service/{name}"));
    body["status"].as_str().unwrap_or_default().to_string()
}

fn queue_dir(engine: &Continuity) -> PathBuf {
    engine
        .config_path()
        .parent()
        .expect("config dir")
        .join("data")
        .join("http-queue")
}

fn service(name: &str, listen: &str, upstream_url: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n\
         buffer_timeout_ms = 5000\n{extra}\n\
         upstreams = [ {{ name = \"{name}-a\", url = \"{upstream_url}\", role = \"primary\" }} ]\n\
         [[service.route]]\npath_prefix = \"/retryafter\"\non_outage = \"queue\"\n\
         [[service.route]]\npath_prefix = \"/submissions\"\non_outage = \"queue\""
    )
}

/// Resident set size of `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const HUGE: &str = "18446744073709551615";
/// `Fri, 31 Dec 9999 23:59:59 GMT`, URL-encoded for the upstream's query.
const YEAR_9999: &str = "Fri%2C%2031%20Dec%209999%2023%3A59%3A59%20GMT";

#[test]
fn a_huge_retry_after_neither_kills_the_gateway_nor_stops_queue_delivery() {
    let mut upstream = HttpUpstream::start("ndex-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&service(
            "ndex",
            &listen,
            &upstream.url(),
            "max_retry_after_seconds = 1",
        ))
        .start();
    eventually("ndex healthy", Duration::from_secs(15), || {
        service_status(&engine, "ndex") == "healthy"
    });

    // Live traffic on the lean path: a 429 with a Retry-After of 2^64-1 s.
    // The wait is capped at 1 s, which fits the hold budget: the GET waits
    // it out and is retried.
    let r = http_client::get(&listen, &format!("/retryafter/1/lean?ra={HUGE}"))
        .expect("lean GET answered");
    assert_eq!(r.status, 200, "{r:?}\n{}", engine.log_text());
    // The same through pingora (HTTP/1.0 is not the lean path's), with the
    // HTTP date of year 9999.
    let raw =
        format!("GET /retryafter/1/pingora?ra={YEAR_9999} HTTP/1.0\r\nHost: {listen}\r\n\r\n");
    let r = http_client::send_raw(&listen, raw.as_bytes()).expect("pingora GET answered");
    assert_eq!(r.status, 200, "{r:?}\n{}", engine.log_text());
    let raw = format!("GET /retryafter/1/pingora2?ra={HUGE} HTTP/1.0\r\nHost: {listen}\r\n\r\n");
    let r = http_client::send_raw(&listen, raw.as_bytes()).expect("pingora GET answered");
    assert_eq!(r.status, 200, "{r:?}\n{}", engine.log_text());

    // Queue four requests while the upstream is down; on delivery each gets
    // a 429 or 503 with a huge Retry-After first.
    upstream.kill();
    eventually("ndex down", Duration::from_secs(15), || {
        service_status(&engine, "ndex") == "down"
    });
    let paths = [
        format!("/retryafter/1/q1?ra={HUGE}"),
        format!("/retryafter/1/q2?status=503&ra={HUGE}"),
        format!("/retryafter/1/q3?ra={YEAR_9999}"),
        format!("/retryafter/1/q4?status=503&ra={YEAR_9999}"),
    ];
    let mut locations = Vec::new();
    for p in &paths {
        let r = http_client::request(&listen, "POST", p, &[], "{\"n\":1}").expect("queued POST");
        assert_eq!(r.status, 202, "{r:?}\n{}", engine.log_text());
        locations.push(r.header("location").expect("Location").to_string());
    }
    upstream.restart();
    for loc in &locations {
        eventually(&format!("{loc} delivered"), Duration::from_secs(60), || {
            engine.get(loc).1["state"] == "delivered"
        });
        let (_, entry) = engine.get(loc);
        assert_eq!(entry["result"]["status"], 200, "{entry}");
    }
    // The gateway still serves, and a later submission is delivered too.
    let r = http_client::get(&listen, "/after").expect("GET after");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !engine.log_text().contains("panicked"),
        "{}",
        engine.log_text()
    );
}

#[test]
fn queued_bodies_stay_on_disk_and_past_the_byte_budget_the_client_gets_503() {
    // Nothing listens here: the service is down from the start.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let mut engine = Continuity::builder()
        .health(HEALTH)
        .service(&service(
            "rms",
            &listen,
            &dead,
            "max_body_bytes = 2097152\nqueue_max_bytes = 104000000",
        ))
        .start();
    eventually("rms down", Duration::from_secs(15), || {
        service_status(&engine, "rms") == "down"
    });
    let one_mib = "x".repeat(1024 * 1024);
    // Warm up (allocator arenas, the first request's buffers), then measure.
    let r = http_client::request(&listen, "POST", "/submissions/warm", &[], &one_mib)
        .expect("warm-up POST");
    assert_eq!(r.status, 202, "{r:?}\n{}", engine.log_text());
    let before = rss_bytes(engine.pid());
    // 98 more 1 MiB bodies: 99 MiB of a budget just under 100 MiB.
    let mut ids = Vec::new();
    for i in 0..98 {
        let body = format!("{i:04}{}", &one_mib[4..]);
        let r = http_client::request(&listen, "POST", &format!("/submissions/{i}"), &[], &body)
            .expect("queued POST");
        assert_eq!(r.status, 202, "{r:?}\n{}", engine.log_text());
        ids.push(r.json()["id"].as_str().expect("id").to_string());
    }
    let after = rss_bytes(engine.pid());
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS {} -> {} MiB after queueing 98 MiB of bodies",
        before >> 20,
        after >> 20
    );
    assert!(
        grown < 48 * 1024 * 1024,
        "RSS grew by {} MiB for 98 MiB of queued bodies ({} -> {} MiB)",
        grown >> 20,
        before >> 20,
        after >> 20
    );
    // What is waiting, in bytes: the metric and the queue summary.
    let waiting = 99 * 1024 * 1024;
    let (_, summary) = engine.get("/api/ops/queue");
    assert_eq!(
        summary["services"][0]["pending_bytes"], waiting,
        "{summary}"
    );
    eventually("queue bytes metric", Duration::from_secs(10), || {
        engine.metric("continuity_http_queue_bytes{service=\"rms\"}") == Some(waiting as f64)
    });
    // Past the byte budget: 503 with Retry-After, code queue_full.
    let r = http_client::request(&listen, "POST", "/submissions/over", &[], &one_mib)
        .expect("POST over budget");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert_eq!(r.json()["error"]["code"], "queue_full", "{r:?}");
    // A small one still fits.
    let r =
        http_client::request(&listen, "POST", "/submissions/small", &[], "{}").expect("small POST");
    assert_eq!(r.status, 202, "{r:?}");

    // The log holds no body; the bodies are files of their own.
    let dir = queue_dir(&engine);
    let log = std::fs::read(dir.join("queue.log")).expect("queue.log");
    assert!(
        log.len() < 1024 * 1024,
        "queue.log is {} bytes: bodies are in the log",
        log.len()
    );
    // Restart recovery: every entry is there, with its body.
    engine.kill();
    engine.restart();
    for id in &ids {
        let (status, entry) = engine.get(&format!("/api/ops/queue/{id}"));
        assert_eq!(status, 200, "{id} lost: {entry}");
        assert_eq!(entry["state"], "queued", "{entry}");
    }
    let (_, summary) = engine.get("/api/ops/queue");
    assert_eq!(summary["services"][0]["depth"], 100, "{summary}");
}

#[test]
fn a_delivered_body_from_disk_reaches_the_upstream_intact() {
    let mut upstream = HttpUpstream::start("cad-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&service("cad", &listen, &upstream.url(), ""))
        .start();
    eventually("cad healthy", Duration::from_secs(15), || {
        service_status(&engine, "cad") == "healthy"
    });
    upstream.kill();
    eventually("cad down", Duration::from_secs(15), || {
        service_status(&engine, "cad") == "down"
    });
    let body = format!("{{\"narrative\":\"{}\"}}", "é".repeat(100_000));
    let r =
        http_client::request(&listen, "POST", "/submissions/big", &[], &body).expect("queued POST");
    assert_eq!(r.status, 202, "{r:?}");
    let loc = r.header("location").expect("Location").to_string();
    let id = r.json()["id"].as_str().expect("id").to_string();
    upstream.restart();
    eventually("delivered", Duration::from_secs(30), || {
        engine.get(&loc).1["state"] == "delivered"
    });
    let (_, entry) = engine.get(&loc);
    assert_eq!(entry["result"]["status"], 200, "{entry}");
    let echoed: serde_json::Value =
        serde_json::from_str(entry["result"]["body"].as_str().unwrap_or_default())
            .expect("echo JSON");
    assert_eq!(echoed["body"], body.as_str());
    let records = upstream.records();
    let sent: Vec<_> = records
        .iter()
        .filter(|r| r["path"] == "/submissions/big")
        .collect();
    assert_eq!(sent.len(), 1, "{records:?}");
    assert_eq!(sent[0]["idempotency_key"], id.as_str());
    assert_eq!(sent[0]["body"], body.as_str());
}

#[test]
fn a_garbled_line_in_the_middle_of_queue_log_is_quarantined_and_the_engine_starts() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let mut engine = Continuity::builder()
        .health(HEALTH)
        .service(&service("sar", &listen, &dead, ""))
        .start();
    eventually("sar down", Duration::from_secs(15), || {
        service_status(&engine, "sar") == "down"
    });
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = http_client::request(
            &listen,
            "POST",
            &format!("/submissions/{i}"),
            &[],
            "{\"case\":1}",
        )
        .expect("queued POST");
        assert_eq!(r.status, 202, "{r:?}");
        ids.push(r.json()["id"].as_str().expect("id").to_string());
    }
    assert_eq!(engine.terminate(Duration::from_secs(20)), Some(0));

    let dir = queue_dir(&engine);
    let log_path = dir.join("queue.log");
    let text = std::fs::read_to_string(&log_path).expect("queue.log");
    let mut lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    let garbled = "{\"op\":\"enqueue\",\"id\":\u{0}\u{0} disk rot";
    lines.insert(2, garbled);
    let mut broken = lines.join("\n");
    broken.push('\n');
    std::fs::write(&log_path, &broken).expect("write queue.log");

    engine.restart();
    for id in &ids {
        let (status, entry) = engine.get(&format!("/api/ops/queue/{id}"));
        assert_eq!(status, 200, "{id} lost: {entry}\n{}", engine.log_text());
    }
    let quarantine = std::fs::read_to_string(dir.join("queue.log.quarantine"))
        .expect("queue.log.quarantine written");
    assert!(quarantine.contains("disk rot"), "{quarantine}");
    // The live log no longer holds it: a second start quarantines nothing new.
    let live = std::fs::read_to_string(&log_path).expect("queue.log");
    assert!(!live.contains("disk rot"), "{live}");
    // Audited.
    let (_, api) = engine.get("/api/ops/audit/logs?limit=1000");
    let found = api["entries"].as_array().is_some_and(|entries| {
        entries
            .iter()
            .any(|e| e["details"]["event"] == "queue_log_line_quarantined")
    });
    assert!(found, "no audit entry: {api}");
    assert!(
        engine.log_text().contains("quarantine"),
        "{}",
        engine.log_text()
    );
    engine.restart();
    let again = std::fs::read_to_string(dir.join("queue.log.quarantine")).expect("quarantine");
    assert_eq!(again, quarantine, "quarantined twice");
}
