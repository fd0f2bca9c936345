//! The HTTP gateway (issue #6) against the real binary and real HTTP
//! upstreams (scripts/http_upstream.py processes, killed with SIGKILL):
//! failover under load without a non-2xx GET, the durable queue across a
//! kill -9 of the engine, 429 + Retry-After, body limits, smuggling, the
//! outage modes, TLS to the upstream with mTLS, and an HTTPS/h2 listener.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::continuity::Continuity;
use support::http_client::{self, KeepAlive};
use support::http_upstream::{HttpUpstream, TestPki};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nconnect_timeout_ms = 300\ntimeout_ms = 500";

fn upstreams(list: &[(&str, &str, &str)]) -> String {
    let ups: Vec<String> = list
        .iter()
        .map(|(n, url, role)| {
            format!("  {{ name = \"{n}\", url = \"{url}\", role = \"{role}\" }},")
        })
        .collect();
    format!("upstreams = [\n{}\n]", ups.join("\n"))
}

fn eventually(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    assert!(wait_until(within, cond), "timed out waiting for {what}");
}

fn service_status(engine: &Continuity, name: &str) -> String {
    let (_, body) = engine.get(&format!("/api/ops/health/service/{name}"));
    body["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn gets_never_fail_while_the_primary_is_killed_under_load() {
    let mut primary = HttpUpstream::start("api-a", None, None, false);
    let secondary = HttpUpstream::start("api-b", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"lpr\"\nkind = \"http\"\ncategory = \"vendor\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n{}",
            upstreams(&[("lpr-a", &primary.url(), "primary"), ("lpr-b", &secondary.url(), "secondary")])
        ))
        .start();
    eventually("lpr healthy", Duration::from_secs(10), || {
        service_status(&engine, "lpr") == "healthy"
    });
    let first = http_client::get(&listen, "/plates?token=s3cr3t").expect("first GET");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["server"], "api-a");
    assert_eq!(first.json()["path"], "/plates?token=s3cr3t");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, ok, listen) = (stop.clone(), ok.clone(), listen.clone());
        workers.push(std::thread::spawn(move || {
            let mut bad = Vec::new();
            // Half the workers keep one connection, half open one per request.
            let mut ka = (w % 2 == 0).then(|| KeepAlive::connect(&listen).expect("connect"));
            while !stop.load(Ordering::Relaxed) {
                let r = match ka.as_mut() {
                    Some(c) => c.get("/plates/ABC123"),
                    None => http_client::get(&listen, "/plates/ABC123"),
                };
                match r {
                    Ok(r) if (200..300).contains(&r.status) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => bad.push(format!("{} {}", r.status, r.body)),
                    Err(e) => bad.push(format!("error: {e}")),
                }
            }
            bad
        }));
    }
    eventually("load running", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > 50
    });
    primary.kill();
    let killed_at = ok.load(Ordering::Relaxed);
    eventually(
        "load continuing on the secondary",
        Duration::from_secs(10),
        || ok.load(Ordering::Relaxed) > killed_at + 200,
    );
    stop.store(true, Ordering::Relaxed);
    let bad: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    assert!(
        bad.is_empty(),
        "non-2xx GETs during failover: {bad:?}\n{}",
        engine.log_text()
    );
    let after = http_client::get(&listen, "/plates/XYZ").expect("GET after");
    assert_eq!(after.json()["server"], "api-b");
    let (_, fo) = engine.get("/api/ops/failover/status");
    let svc = fo["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "lpr"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(svc["active_upstream"], "lpr-b", "{fo}");
    // The access log has one line per request, with the token masked.
    let log = engine.log_text();
    assert!(
        log.contains("continuity::access"),
        "no access log line:\n{log}"
    );
    assert!(
        log.contains("token=***") && !log.contains("s3cr3t"),
        "token not masked"
    );
    let m = engine.metrics();
    assert!(
        m.contains("continuity_http_requests_total{"),
        "no request metric"
    );
    assert!(
        m.contains("continuity_http_request_duration_seconds_bucket{"),
        "no latency histogram"
    );
}

#[test]
fn a_queued_post_survives_kill_9_of_the_engine_and_is_delivered_once() {
    let mut upstream = HttpUpstream::start("ndex-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"ndex\"\nkind = \"http\"\ncategory = \"federal\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n\
             buffer_timeout_ms = 1000\nqueue_max_depth = 2\n{}\n\
             [[service.route]]\npath_prefix = \"/submissions\"\non_outage = \"queue\"",
            upstreams(&[("ndex-a", &upstream.url(), "primary")])
        ))
        .start();
    eventually("ndex healthy", Duration::from_secs(10), || {
        service_status(&engine, "ndex") == "healthy"
    });
    // While up, a submission goes straight through.
    let live = http_client::request(&listen, "POST", "/submissions/live", &[], "{\"case\":1}")
        .expect("live POST");
    assert_eq!(live.status, 200, "{live:?}");

    upstream.kill();
    eventually("ndex down", Duration::from_secs(10), || {
        service_status(&engine, "ndex") == "down"
    });
    let body = "{\"case\":\"2026-000123\",\"narrative\":\"suspicious vehicle\"}";
    let queued = http_client::request(
        &listen,
        "POST",
        "/submissions/sar",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer client-secret"),
        ],
        body,
    )
    .expect("queued POST");
    assert_eq!(queued.status, 202, "{queued:?}\n{}", engine.log_text());
    let location = queued.header("location").expect("Location").to_string();
    let id = queued.json()["id"].as_str().expect("id").to_string();
    assert_eq!(location, format!("/api/ops/queue/{id}"));
    let (status, entry) = engine.get(&location);
    assert_eq!(status, 200);
    assert_eq!(entry["state"], "queued", "{entry}");
    assert!(
        !entry.to_string().contains("client-secret"),
        "secret in {entry}"
    );
    assert!(
        engine
            .metric("continuity_http_queue_depth{service=\"ndex\"}")
            .unwrap_or(0.0)
            >= 1.0
    );

    // The other routes hold, then 503 with Retry-After.
    let held = http_client::get(&listen, "/query").expect("held GET");
    assert_eq!(held.status, 503, "{held:?}");
    assert!(held.header("retry-after").is_some());

    // Past queue_max_depth: 503.
    let second = http_client::request(&listen, "POST", "/submissions/2", &[], "{}").expect("2nd");
    assert_eq!(second.status, 202);
    let third = http_client::request(&listen, "POST", "/submissions/3", &[], "{}").expect("3rd");
    assert_eq!(third.status, 503, "{third:?}");
    assert!(third.header("retry-after").is_some());

    // kill -9 the engine, bring it back, then the upstream.
    engine.kill();
    engine.restart();
    let (status, entry) = engine.get(&location);
    assert_eq!(status, 200, "queue entry lost across kill -9: {entry}");
    upstream.restart();
    eventually("delivery", Duration::from_secs(20), || {
        engine.get(&location).1["state"] == "delivered"
    });
    let (_, entry) = engine.get(&location);
    assert_eq!(entry["result"]["status"], 200, "{entry}");
    let result_body = entry["result"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(result_body.contains("suspicious vehicle"), "{result_body}");
    eventually("queue drained", Duration::from_secs(10), || {
        engine.metric("continuity_http_queue_depth{service=\"ndex\"}") == Some(0.0)
    });
    let records = upstream.records();
    let sar: Vec<_> = records
        .iter()
        .filter(|r| r["path"] == "/submissions/sar")
        .collect();
    assert_eq!(
        sar.len(),
        1,
        "delivered more or less than once: {records:?}"
    );
    assert_eq!(sar[0]["idempotency_key"], id.as_str());
    assert_eq!(sar[0]["body"], body);
}

#[test]
fn outage_modes_hold_and_fail() {
    let mut upstream = HttpUpstream::start("cad-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"cad\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n\
             buffer_timeout_ms = 8000\non_outage = \"hold\"\n{}\n\
             [[service.route]]\npath_prefix = \"/fast-fail\"\non_outage = \"fail\"",
            upstreams(&[("cad-a", &upstream.url(), "primary")])
        ))
        .start();
    eventually("cad healthy", Duration::from_secs(10), || {
        service_status(&engine, "cad") == "healthy"
    });
    upstream.kill();
    eventually("cad down", Duration::from_secs(10), || {
        service_status(&engine, "cad") == "down"
    });
    let started = Instant::now();
    let failed = http_client::get(&listen, "/fast-fail/x").expect("fail route");
    assert_eq!(failed.status, 503);
    assert!(failed.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fail route waited"
    );

    // A held request is answered once the upstream is back.
    let l = listen.clone();
    let held = std::thread::spawn(move || http_client::get(&l, "/incidents/42"));
    std::thread::sleep(Duration::from_millis(500));
    upstream.restart();
    let r = held.join().expect("thread").expect("held GET");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/incidents/42");
}

#[test]
fn a_429_with_retry_after_is_honoured_and_not_counted_as_a_failure() {
    let upstream = HttpUpstream::start("shot-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"shotspotter\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\nbuffer_timeout_ms = 5000\n{}",
            upstreams(&[("shot-a", &upstream.url(), "primary")])
        ))
        .start();
    eventually("healthy", Duration::from_secs(10), || {
        service_status(&engine, "shotspotter") == "healthy"
    });
    // An idempotent GET waits out Retry-After (1 s) and is retried.
    let started = Instant::now();
    let r = http_client::get(&listen, "/ratelimit/1").expect("GET");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // A POST is not repeated: the 429 and its Retry-After reach the client.
    let p = http_client::request(&listen, "POST", "/ratelimit/2", &[], "{}").expect("POST");
    assert_eq!(p.status, 429, "{p:?}");
    assert!(p.header("retry-after").is_some());
    // Within that Retry-After window a non-idempotent request is answered
    // 429 locally, without reaching the upstream.
    let before = upstream.records().len();
    let q = http_client::request(&listen, "POST", "/other", &[], "{}").expect("POST");
    assert_eq!(q.status, 429, "{q:?}");
    assert_eq!(
        upstream.records().len(),
        before,
        "request reached a rate-limited upstream"
    );
    // Quota is not ill health.
    assert_eq!(service_status(&engine, "shotspotter"), "healthy");
    let passive = engine
        .metrics()
        .lines()
        .filter(|l| l.starts_with("continuity_passive_failures_total{") && l.contains("shot-a"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(passive, 0.0);
}

#[test]
fn body_limits_and_smuggling_attempts_are_refused() {
    let upstream = HttpUpstream::start("rms-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"rms\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\nmax_body_bytes = 1024\n{}",
            upstreams(&[("rms-a", &upstream.url(), "primary")])
        ))
        .start();
    eventually("healthy", Duration::from_secs(10), || {
        service_status(&engine, "rms") == "healthy"
    });
    let small =
        http_client::request(&listen, "POST", "/reports", &[], &"x".repeat(1000)).expect("small");
    assert_eq!(small.status, 200);
    let big =
        http_client::request(&listen, "POST", "/reports", &[], &"x".repeat(2048)).expect("big");
    assert_eq!(big.status, 413, "{big:?}");
    // Chunked, no length announced: cut at the limit.
    let chunk = "x".repeat(800);
    let raw = format!(
        "POST /reports/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let r = http_client::send_raw(&listen, raw.as_bytes()).expect("chunked");
    assert_eq!(r.status, 413, "{r:?}");
    // CL.TE and TE.CL smuggling shapes.
    for raw in [
        "POST /reports/smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /reports/smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        "POST /reports/smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!",
        "POST /reports/smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ] {
        let r = http_client::send_raw(&listen, raw.as_bytes()).expect("smuggle");
        assert_eq!(r.status, 400, "{raw:?} -> {r:?}");
    }
    let records = upstream.records();
    assert!(
        records.iter().all(|r| !r["path"]
            .as_str()
            .unwrap_or_default()
            .starts_with("/reports/smuggle")
            && r["path"] != "/admin"
            && r["path"] != "/reports/chunked"),
        "refused requests reached the upstream: {records:?}"
    );
    assert!(records
        .iter()
        .all(|r| r["body"].as_str().is_none_or(|b| b.len() <= 1024)));
}

#[test]
fn tls_to_the_upstream_with_mtls_and_an_https_h2_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let upstream = HttpUpstream::start("etrace-a", None, Some(&pki), true);
    let listen_port = free_port();
    let listen = format!("127.0.0.1:{listen_port}");
    let h2c_port = free_port();
    let svc = |name: &str, listen: &str, client: bool, extra: &str| {
        let cert = if client {
            format!(
                ", client_cert = \"{}\", client_key = \"{}\"",
                pki.client_cert.display(),
                pki.client_key.display()
            )
        } else {
            String::new()
        };
        format!(
            "name = \"{name}\"\nkind = \"http\"\ncategory = \"federal\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n{extra}\n\
             upstreams = [ {{ name = \"{name}-a\", url = \"{}\", role = \"primary\", ca_file = \"{}\"{cert} }} ]",
            upstream.url(),
            pki.ca.display()
        )
    };
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&svc(
            "etrace",
            &listen,
            true,
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                pki.server_cert.display(),
                pki.server_key.display()
            ),
        ))
        .service(&svc(
            "etrace-nocert",
            &format!("127.0.0.1:{h2c_port}"),
            false,
            "",
        ))
        .start();
    eventually("etrace healthy", Duration::from_secs(10), || {
        service_status(&engine, "etrace") == "healthy"
    });
    // HTTPS + HTTP/2 to the gateway, mTLS to the upstream.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&pki.ca)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(format!("https://localhost:{listen_port}/trace/gun-123"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.ends_with("200 2"),
        "curl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"server\": \"etrace-a\"") || text.contains("\"server\":\"etrace-a\""),
        "{text}"
    );
    // Without a client certificate the upstream refuses the handshake: the
    // probe and real traffic both fail, so the service is down.
    eventually("etrace-nocert down", Duration::from_secs(10), || {
        service_status(&engine, "etrace-nocert") == "down"
    });
    // Cleartext HTTP/2 (prior knowledge) on the plain listener.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg(format!("http://127.0.0.1:{h2c_port}/x"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text,
        "503 2",
        "h2c: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn only_requests_that_are_safe_to_repeat_are_retried() {
    let upstream = HttpUpstream::start("rms-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        // A high threshold: the 503s below must not take the upstream down.
        .health("check_interval_seconds = 0.2\nfailure_threshold = 50\ntimeout_ms = 500")
        .service(&format!(
            "name = \"rms\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n{}",
            upstreams(&[("rms-a", &upstream.url(), "primary")])
        ))
        .start();
    eventually("healthy", Duration::from_secs(10), || {
        service_status(&engine, "rms") == "healthy"
    });
    let sent = |path: &str| {
        upstream
            .records()
            .iter()
            .filter(|r| r["path"] == path)
            .count()
    };
    // A POST reached the upstream and got 503: passed on, never replayed.
    let r = http_client::request(&listen, "POST", "/status/503?p=post", &[], "{}").expect("POST");
    assert_eq!(r.status, 503);
    assert_eq!(sent("/status/503?p=post"), 1);
    // The same POST with an Idempotency-Key, and a PUT, are retried (4 attempts).
    let r = http_client::request(
        &listen,
        "POST",
        "/status/503?p=key",
        &[("Idempotency-Key", "k-1")],
        "{}",
    )
    .expect("POST with key");
    assert_eq!(r.status, 503);
    assert_eq!(sent("/status/503?p=key"), 4);
    let r = http_client::request(&listen, "PUT", "/status/503?p=put", &[], "{}").expect("PUT");
    assert_eq!(r.status, 503);
    assert_eq!(sent("/status/503?p=put"), 4);
    let m = engine.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("continuity_http_retries_total{")
                && l.contains("reason=\"http_5xx\"")
                && !l.ends_with(" 0")),
        "no retry counted"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_a_reload_keeps_serving() {
    let upstream = HttpUpstream::start("cad-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let body = format!(
        "name = \"cad\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n{}",
        upstreams(&[("cad-a", &upstream.url(), "primary")])
    );
    let mut engine = Continuity::builder()
        .health(HEALTH)
        .top("drain_timeout_ms = 5000")
        .service(&body)
        .start();
    eventually("healthy", Duration::from_secs(10), || {
        service_status(&engine, "cad") == "healthy"
    });
    // Reload with a new route: the listener keeps serving throughout.
    let text = std::fs::read_to_string(engine.config_path()).expect("config");
    let text = text.replace(
        "health_path = \"/health\"",
        "health_path = \"/health\"\non_outage = \"fail\"",
    );
    std::fs::write(engine.config_path(), text).expect("write config");
    let (status, report) = engine.post("/api/ops/config/reload", r#"{"reason":"add fail mode"}"#);
    assert_eq!(status, 200, "{report}");
    let r = http_client::get(&listen, "/after-reload").expect("GET after reload");
    assert_eq!(r.status, 200, "{r:?}");
    // A slow request in flight when SIGTERM arrives still gets its answer.
    let l = listen.clone();
    let slow = std::thread::spawn(move || http_client::get(&l, "/slow/1500"));
    std::thread::sleep(Duration::from_millis(400));
    let code = engine.terminate(Duration::from_secs(10));
    let r = slow.join().expect("thread").expect("slow GET");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(code, Some(0), "{}", engine.log_text());
}

#[test]
fn with_manual_failover_traffic_never_goes_to_the_secondary_on_its_own() {
    let mut primary = HttpUpstream::start("ncic-a", None, None, false);
    let secondary = HttpUpstream::start("ncic-b", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"ncic\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n\
             failover = \"manual\"\nbuffer_timeout_ms = 500\n{}",
            upstreams(&[
                ("ncic-a", &primary.url(), "primary"),
                ("ncic-b", &secondary.url(), "secondary")
            ])
        ))
        .start();
    eventually("healthy", Duration::from_secs(10), || {
        service_status(&engine, "ncic") == "healthy"
    });
    primary.kill();
    let r = http_client::request(&listen, "PUT", "/records/1", &[], "{}").expect("PUT");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        secondary.records().is_empty(),
        "sent to the secondary without a failover: {:?}",
        secondary.records()
    );
    // The operator's trigger moves it.
    let (status, body) = engine.post("/api/ops/failover/trigger/ncic", r#"{"reason":"drill"}"#);
    assert_eq!(status, 200, "{body}");
    let r = http_client::request(&listen, "PUT", "/records/2", &[], "{}").expect("PUT");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["server"], "ncic-b");
}

#[test]
fn max_connections_bounds_requests_in_flight() {
    let upstream = HttpUpstream::start("lpr-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"lpr\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\nmax_connections = 1\n{}",
            upstreams(&[("lpr-a", &upstream.url(), "primary")])
        ))
        .start();
    eventually("healthy", Duration::from_secs(10), || {
        service_status(&engine, "lpr") == "healthy"
    });
    let l = listen.clone();
    let slow = std::thread::spawn(move || http_client::get(&l, "/slow/1500"));
    eventually("one request in flight", Duration::from_secs(5), || {
        engine.metric("continuity_proxy_active_connections{service=\"lpr\"}") == Some(1.0)
    });
    let r = http_client::get(&listen, "/fast").expect("second GET");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["error"]["code"], "overloaded");
    assert_eq!(slow.join().expect("thread").expect("slow").status, 200);
    let r = http_client::get(&listen, "/fast").expect("third GET");
    assert_eq!(r.status, 200, "{r:?}");
    eventually("gauge back to 0", Duration::from_secs(5), || {
        engine.metric("continuity_proxy_active_connections{service=\"lpr\"}") == Some(0.0)
    });
}
