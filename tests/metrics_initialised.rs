//! Counter series exist at 0 from the start, for every label set known then.
//!
//! Prometheus' `increase()` and `rate()` need two samples of a series: a
//! counter whose series first appears with the value 1 has its first event
//! missed, so an alert rule on
//! `increase(continuity_alerts_total{..}[10m]) > 0`
//! (docker/prometheus/alerts.yml) would not fire on the first one. This
//! scrapes the real binary right after start, before any traffic, and
//! requires a 0-valued series for every known label set of those families.

mod support;

use std::time::Duration;

use support::continuity::Continuity;
use support::http_upstream::HttpUpstream;
use support::*;

/// The value of the sample `name{labels}` (labels sorted by name, as the
/// text encoder writes them), if the exposition has it.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let prefix = format!("{name}{{{}}} ", inner.join(","));
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

fn require_zero(text: &str, name: &str, labels: &[(&str, &str)], missing: &mut Vec<String>) {
    match sample(text, name, labels) {
        Some(0.0) => {}
        got => missing.push(format!("{name}{labels:?}: {got:?}")),
    }
}

fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").is_err(),
                "promtool must be installed in CI (scripts/install-deps): {e}"
            );
            eprintln!("SKIPPED the lint: promtool is not installed ({e})");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn counter_series_exist_at_zero_before_the_first_event() {
    let redis = RedisServer::start();
    let api_a = HttpUpstream::start("api-a", None, None, false);
    let api_b = HttpUpstream::start("api-b", None, None, false);
    let (redis_listen, api_listen, plain_listen) = (
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
    );
    let engine = Continuity::builder()
        .service(&format!(
            "name = \"cache\"\nkind = \"redis\"\nlisten = \"{redis_listen}\"\n\
             upstreams = [ {{ name = \"r\", address = \"{}\", role = \"primary\" }} ]",
            redis.addr()
        ))
        // Queues on one route: its queue deliveries are counted.
        .service(&format!(
            "name = \"api\"\nkind = \"http\"\nlisten = \"{api_listen}\"\nhealth_path = \"/health\"\n\
             upstreams = [ {{ name = \"api-a\", url = \"{}\", role = \"primary\" }},\n\
                           {{ name = \"api-b\", url = \"{}\", role = \"secondary\" }} ]\n\
             [[service.route]]\npath_prefix = \"/submissions\"\non_outage = \"queue\"",
            api_a.url(),
            api_b.url()
        ))
        // Never queues: no queue-delivery series, retries only.
        .service(&format!(
            "name = \"plain\"\nkind = \"http\"\nlisten = \"{plain_listen}\"\nhealth_path = \"/health\"\n\
             upstreams = [ {{ name = \"plain-a\", url = \"{}\", role = \"primary\" }} ]",
            api_a.url()
        ))
        .start();

    // No traffic through any listener: the scrape right after start.
    let text = engine.metrics();
    assert!(text.contains("# TYPE "), "no exposition:\n{text}");
    let mut missing = Vec::new();

    // Escalation rules (the defaults) by rule and tier.
    require_zero(
        &text,
        "continuity_alerts_total",
        &[("rule", "neo4j_write_failure"), ("tier", "1")],
        &mut missing,
    );
    for kind in [
        "latency_degradation",
        "error_rate_increase",
        "connection_exhaustion",
    ] {
        require_zero(
            &text,
            "continuity_predictive_alerts_total",
            &[("prediction_type", kind)],
            &mut missing,
        );
    }
    require_zero(
        &text,
        "continuity_slow_queries_total",
        &[("service", "cache")],
        &mut missing,
    );
    for reason in ["missing_token", "invalid_token", "rate_limited"] {
        require_zero(
            &text,
            "continuity_auth_failures_total",
            &[("reason", reason)],
            &mut missing,
        );
    }
    for (service, upstream) in [("api", "api-a"), ("api", "api-b"), ("plain", "plain-a")] {
        for reason in ["connect", "http_5xx", "upstream_error", "rate_limited"] {
            require_zero(
                &text,
                "continuity_http_retries_total",
                &[
                    ("service", service),
                    ("upstream", upstream),
                    ("reason", reason),
                ],
                &mut missing,
            );
        }
    }
    for result in ["delivered", "failed", "retried"] {
        require_zero(
            &text,
            "continuity_http_queue_deliveries_total",
            &[("service", "api"), ("result", result)],
            &mut missing,
        );
    }
    assert!(
        missing.is_empty(),
        "series missing or not 0 right after start:\n{}\n---\n{text}",
        missing.join("\n")
    );

    // Bounded: only known label values. No slow-query series for services
    // without statements, no queue series for a service that never queues.
    for bad in [
        "continuity_slow_queries_total{service=\"api\"}",
        "continuity_slow_queries_total{service=\"plain\"}",
        "continuity_http_queue_deliveries_total{result=\"delivered\",service=\"plain\"}",
        "continuity_http_retries_total{reason=\"connect\",service=\"cache\"",
    ] {
        assert!(!text.contains(bad), "unexpected series {bad}:\n{text}");
    }
    // Every sample of these families is 0: nothing has happened yet.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let family = [
            "continuity_alerts_total{",
            "continuity_predictive_alerts_total{",
            "continuity_slow_queries_total{",
            "continuity_auth_failures_total{",
            "continuity_http_retries_total{",
            "continuity_http_queue_deliveries_total{",
        ]
        .iter()
        .any(|f| line.starts_with(f));
        if family {
            assert!(line.ends_with(" 0"), "not 0 before any event: {line}");
        }
    }
    promtool_check(&text);

    // The first event then counts as an increase from 0: one failed
    // authentication moves its series from 0 to 1.
    let (status, _) = engine.request("GET", "/api/ops/failover/status", None, Some("not-a-token"));
    assert_eq!(status, 401);
    let counted = wait_until(Duration::from_secs(10), || {
        engine.metric("continuity_auth_failures_total{reason=\"invalid_token\"}") == Some(1.0)
    });
    assert!(
        counted,
        "the failed authentication was not counted:\n{}",
        engine.metrics()
    );
}

/// Services a reload adds get their series at 0 too, before any traffic.
#[test]
fn a_reload_creates_the_added_services_series_at_zero() {
    let redis = RedisServer::start();
    let api = HttpUpstream::start("late-a", None, None, false);
    let engine = Continuity::builder()
        .service(&format!(
            "name = \"cache\"\nkind = \"redis\"\nlisten = \"{}\"\n\
             upstreams = [ {{ name = \"r\", address = \"{}\", role = \"primary\" }} ]",
            loopback(free_port()),
            redis.addr()
        ))
        .start();
    let added = format!(
        "\n[[service]]\nname = \"late-cache\"\nkind = \"redis\"\nlisten = \"{}\"\n\
         upstreams = [ {{ name = \"lr\", address = \"{}\", role = \"primary\" }} ]\n\
         \n[[service]]\nname = \"late-api\"\nkind = \"http\"\nlisten = \"{}\"\nhealth_path = \"/health\"\n\
         on_outage = \"queue\"\n\
         upstreams = [ {{ name = \"late-a\", url = \"{}\", role = \"primary\" }} ]\n",
        loopback(free_port()),
        redis.addr(),
        loopback(free_port()),
        api.url()
    );
    let path = engine.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, format!("{text}{added}")).expect("write config");
    let (code, body) = engine.post("/api/ops/config/reload", r#"{"reason":"add late"}"#);
    assert_eq!(code, 200, "{body}");

    let want = [
        "continuity_slow_queries_total{service=\"late-cache\"} 0",
        "continuity_http_retries_total{reason=\"connect\",service=\"late-api\",upstream=\"late-a\"} 0",
        "continuity_http_retries_total{reason=\"rate_limited\",service=\"late-api\",upstream=\"late-a\"} 0",
        "continuity_http_queue_deliveries_total{result=\"delivered\",service=\"late-api\"} 0",
        "continuity_http_queue_deliveries_total{result=\"retried\",service=\"late-api\"} 0",
    ];
    let mut text = String::new();
    let all = wait_until(Duration::from_secs(20), || {
        text = engine.metrics();
        want.iter().all(|w| text.lines().any(|l| l == *w))
    });
    let missing: Vec<&&str> = want
        .iter()
        .filter(|w| !text.lines().any(|l| l == **w))
        .collect();
    assert!(all, "after the reload, missing: {missing:?}\n---\n{text}");
}
