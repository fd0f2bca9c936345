//! A real Prometheus scrapes the real engine: the exposition parses, the
//! lint is clean (`promtool check metrics`), and `continuity_service_up`
//! can be queried from Prometheus itself.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::continuity::Continuity;
use support::*;

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{name} must be installed in CI (scripts/install-deps)"
        );
        eprintln!("SKIPPED: {name} is not installed (scripts/install-deps installs it)");
    }
    found
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[test]
fn promtool_is_clean_and_prometheus_scrapes_service_up() {
    if !tool("promtool") || !tool("prometheus") {
        return;
    }
    let redis = RedisServer::start();
    let api = support::http_upstream::HttpUpstream::start("api-a", None, None, false);
    let api_listen = loopback(free_port());
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .control("metrics_public = true")
        .health("check_interval_seconds = 0.2")
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
upstreams = [ {{ name = "r", address = "{}", role = "primary" }} ]"#,
            redis.addr()
        ))
        // The HTTP gateway's series go through promtool too.
        .service(&format!(
            "name = \"api\"\nkind = \"http\"\nlisten = \"{api_listen}\"\nhealth_path = \"/health\"\n\
             upstreams = [ {{ name = \"api-a\", url = \"{}\", role = \"primary\" }} ]\n\
             [[service.route]]\npath_prefix = \"/submissions\"\non_outage = \"queue\"",
            api.url()
        ))
        .start();
    for path in ["/x", "/submissions/1", "/status/404"] {
        let ok = wait_until(Duration::from_secs(10), || {
            support::http_client::get(&api_listen, path).is_ok_and(|r| r.status < 500)
        });
        assert!(ok, "GET {path} through the gateway");
    }
    // Traffic, so the inline histograms have samples.
    for _ in 0..20 {
        redis_cmd(&listen, &["PING"]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));

    // The exposition, without a token (metrics_public), through promtool.
    let (code, _) = engine.request("GET", "/metrics", None, None);
    assert_eq!(code, 200);
    let text = engine.try_request("GET", "/metrics", None, None).unwrap().1;
    for name in [
        "continuity_health_checks_total",
        "continuity_probe_latency_seconds_bucket",
        "continuity_inline_latency_seconds_bucket",
        "continuity_uptime_ratio",
        "continuity_service_up",
        "continuity_failovers_total",
        "continuity_failover_state",
        "continuity_proxy_connections_total",
        "continuity_proxy_bytes_total",
        "continuity_held_connections",
        "continuity_audit_entries_total",
        "continuity_audit_chain_verified",
        "continuity_http_requests_total",
        "continuity_http_request_duration_seconds_bucket",
        "continuity_http_queue_depth",
        "continuity_http_queue_oldest_age_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scraping it every 500 ms.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: continuity\n    static_configs:\n      - targets: ['{}']\n",
            engine.control
        ),
    )
    .unwrap();
    let prom_addr = loopback(free_port());
    let _prom = ChildGuard::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let mut last = String::new();
    let found = wait_until(Duration::from_secs(30), || {
        last =
            http_get(&prom_addr, "/api/v1/query?query=continuity_service_up").unwrap_or_default();
        last.contains(r#""service":"redis""#) && last.contains(r#""1"]"#)
    });
    assert!(
        found,
        "Prometheus never returned continuity_service_up: {last}"
    );
}
