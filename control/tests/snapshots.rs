//! Health snapshots, uptime and SLA (issue #4): a real redis-server killed
//! for a chosen time, 30 days of history from a manual clock, persistence
//! across a reopen, and the routes' shapes and errors.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, TimeZone, Utc};
use continuity_control::snapshots::{ManualClock, Month, Retention, Snapshots, Window};
use continuity_proxy::config::{Category, Kind, Role, ServiceConfig, UpstreamConfig};
use continuity_proxy::snapshot::{EngineSnapshot, ServiceStatus};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `redis-server` on `port`, returned once it accepts connections.
fn redis(port: u16, dir: &std::path::Path) -> Redis {
    let child = Command::new("redis-server")
        .arg("--dir")
        .arg(dir)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let r = Redis(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    r
}

fn redis_service(name: &str, port: u16, listen: bool, buffer_ms: u64) -> ServiceConfig {
    let up = UpstreamConfig::at(
        &format!("{name}-r"),
        &format!("127.0.0.1:{port}"),
        Role::Primary,
    );
    let mut s = ServiceConfig::new(name, Kind::Redis, vec![up]);
    s.listen = listen.then(|| "127.0.0.1:0".parse().expect("addr"));
    s.buffer_timeout = Duration::from_millis(buffer_ms);
    s.health.check_interval = Duration::from_millis(100);
    s.health.failure_threshold = 1;
    s.health.recovery_threshold = 1;
    s.health.hold_down = Duration::ZERO;
    s
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_outage_shows_as_that_much_lost_uptime_and_survives_a_reopen() {
    let port = free_port();
    let rdir = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("tmp");
    let snap_dir = data.path().join("snapshots");
    let mut server = Some(redis(port, rdir.path()));
    let services = vec![
        redis_service("cache", port, true, 10_000),
        redis_service("sessions", port, true, 500),
        redis_service("monitor", port, false, 5_000),
    ];
    let timeouts: Vec<(String, Duration)> = services
        .iter()
        .map(|s| (s.name.clone(), s.buffer_timeout))
        .collect();
    let mut api = Api::start(services, control_config()).await;
    api.state.snapshots = Snapshots::open(&snap_dir, Retention::default())
        .expect("open")
        .with_tick(Duration::from_millis(100))
        .with_buffer_timeouts(timeouts.clone());
    let sampler = api.state.snapshots.spawn_sampler(api.engine.clone());
    for s in ["cache", "sessions", "monitor"] {
        api.wait_status(s, ServiceStatus::Healthy).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The outage: kill -9, a client held past its 500 ms, restart after 3 s.
    let killed = Instant::now();
    drop(server.take());
    let sessions = api
        .engine
        .listen_addrs()
        .into_iter()
        .find(|(n, _)| n == "sessions")
        .map(|(_, a)| a)
        .expect("sessions listens");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(sessions).await.expect("connect");
    c.write_all(b"PING\r\n").await.expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(reply.starts_with("-ERR continuity"), "{reply}");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed())).await;
    let _server = redis(port, rdir.path());
    let outage = killed.elapsed().as_secs_f64();
    for s in ["cache", "sessions", "monitor"] {
        api.wait_status(s, ServiceStatus::Healthy).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    let w = api.get("/api/ops/health/snapshots?window=1h").await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.text);
    let w = w.json();
    assert_eq!(w["window"], "1h");
    let live = api.engine.snapshot();
    for name in ["cache", "sessions", "monitor"] {
        let s = by_name(&w["services"], name);
        let (down, observed) = (f(&s["down_seconds"]), f(&s["observed_seconds"]));
        assert!(
            (down - outage).abs() < 0.5,
            "{name}: {down} s down for a {outage} s outage"
        );
        let expect = (observed - down) / observed * 100.0;
        assert!((f(&s["uptime_percent"]) - expect).abs() < 0.01, "{s}");
        let buckets = s["buckets"].as_array().expect("buckets");
        assert!(buckets.iter().any(|b| b["status"] == "down"), "{s}");
        assert_eq!(
            buckets.last().map(|b| &b["partial"]),
            Some(&Value::Bool(true))
        );
        let sum = |k: &str| {
            buckets
                .iter()
                .map(|b| b[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        assert!(sum("checks") > 20 && sum("failures") >= 1, "{s}");
        assert!(buckets.iter().any(|b| b["latency_p50_ms"].is_number()));
        // The engine counts probe rounds, we count seconds: close, not equal.
        let engine = live.service(name).expect("live").uptime_percent_1h;
        eprintln!("{name}: {down:.3} s down of {observed:.3} s for a {outage:.3} s outage; uptime {} (engine {engine})", s["uptime_percent"]);
        assert!(
            (engine - f(&s["uptime_percent"])).abs() < 15.0,
            "{name}: engine {engine}"
        );
    }

    let sla = api.get("/api/ops/sla").await;
    assert_eq!(sla.status, StatusCode::OK, "{}", sla.text);
    let sla = sla.json();
    assert_eq!(sla["month"], Month::of(Utc::now()).label());
    let cache = by_name(&sla["services"], "cache");
    assert_eq!(f(&cache["client_visible_seconds"]), 0.0, "{cache}");
    assert!(
        (f(&cache["absorbed_seconds"]) - outage).abs() < 0.5,
        "{cache}"
    );
    let monitor = by_name(&sla["services"], "monitor");
    assert_eq!(f(&monitor["absorbed_seconds"]), 0.0, "{monitor}");
    let sess = by_name(&sla["services"], "sessions");
    assert!(sess["hold_timeouts"].as_u64() >= Some(1), "{sess}");
    assert!(f(&sess["absorbed_seconds"]) <= 0.65, "{sess}");
    assert!(
        (f(&sess["client_visible_seconds"]) - (outage - 0.5)).abs() < 0.6,
        "{sess}"
    );
    for s in [cache, monitor, sess] {
        let parts = f(&s["client_visible_seconds"]) + f(&s["absorbed_seconds"]);
        assert!((parts - f(&s["downtime_seconds"])).abs() < 0.01, "{s}");
        assert!(f(&s["achieved_percent"]) >= f(&s["uptime_percent"]));
    }
    let core = &sla["categories"][0];
    assert_eq!(
        (&core["category"], &core["services"]),
        (&Value::from("core"), &Value::from(3))
    );

    // Flush, reopen the directory: the history is there.
    sampler.abort();
    api.state.snapshots.flush().await.expect("flush");
    let before = api.state.snapshots.window(Window::H1, &live);
    let reopened = Snapshots::open(&snap_dir, Retention::default()).expect("reopen");
    let after = reopened.window(Window::H1, &live);
    for (a, b) in before.services.iter().zip(&after.services) {
        assert_eq!(a.name, b.name);
        assert!(
            (a.down_seconds - b.down_seconds).abs() < 0.01,
            "{a:?} {b:?}"
        );
        assert!((a.observed_seconds - b.observed_seconds).abs() < 0.01);
        assert_eq!(a.buckets.len(), b.buckets.len());
    }
    api.engine.shutdown(Duration::from_millis(100)).await;
}

fn april(day: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 4, day, h, m, 0)
        .single()
        .expect("date")
}

/// One-minute steps until `until`; services listed in `down` are down
/// while `down_when` says so.
fn steps(
    s: &Snapshots,
    clock: &ManualClock,
    snap: &mut EngineSnapshot,
    until: DateTime<Utc>,
    down_when: impl Fn(usize, DateTime<Utc>) -> bool,
) {
    while s.now() < until {
        clock.advance(Duration::from_secs(60));
        let now = s.now();
        for (i, svc) in snap.services.iter_mut().enumerate() {
            let down = down_when(i, now);
            svc.status = if down {
                ServiceStatus::Down
            } else {
                ServiceStatus::Healthy
            };
            svc.total_checks += 1;
            svc.failed_checks += u64::from(down);
        }
        s.observe(snap);
    }
}

#[tokio::test]
async fn thirty_days_from_a_manual_clock_compact_persist_and_prune() {
    // Only the shape of the engine's snapshot is used; the manual clock and
    // the statuses set below drive the store.
    let core = tcp_service("core-db", vec![upstream("u1", REFUSED, Role::Primary)]);
    let mut vendor = tcp_service("vendor-api", vec![upstream("u2", REFUSED, Role::Primary)]);
    vendor.category = Category::Vendor;
    let api = Api::start(vec![core, vendor], control_config()).await;
    let mut snap = api.engine.snapshot();
    snap.services[0].listen = Some("127.0.0.1:1".into()); // proxied: holds absorb
    let dir = tempfile::tempdir().expect("tmp");
    let clock = ManualClock::new(april(1, 0, 0));
    let open = || {
        Snapshots::open(dir.path(), Retention::default())
            .expect("open")
            .with_clock(Arc::new(clock.clone()))
            .with_tick(Duration::from_secs(60))
            .with_buffer_timeouts([("core-db".to_string(), Duration::from_secs(120))])
    };
    let s = open();
    s.observe(&snap);
    // core-db: 90 min down on the 10th; vendor-api: 30 min on the 20th.
    let outage = |i: usize, t: DateTime<Utc>| match i {
        0 => t > april(10, 10, 0) && t <= april(10, 11, 30),
        _ => t > april(20, 3, 0) && t <= april(20, 3, 30),
    };
    let end = april(30, 23, 0) + chrono::Duration::hours(1);
    steps(&s, &clock, &mut snap, end, outage);

    let w = s.window(Window::D30, &snap);
    let db = &w.services[0];
    assert_eq!(db.buckets.len(), 720);
    assert_eq!(db.down_seconds, 5400.0);
    assert_eq!(db.observed_seconds, 30.0 * 86400.0 - 3600.0);
    let expect = (db.observed_seconds - 5400.0) / db.observed_seconds * 100.0;
    assert!((db.uptime_percent - expect).abs() < 1e-4);
    assert!(db.buckets.last().is_some_and(|b| b.partial));
    assert_eq!(
        db.buckets.iter().filter(|b| b.down_seconds > 0.0).count(),
        2
    );
    assert_eq!(s.window(Window::H24, &snap).services[0].buckets.len(), 1440);
    assert_eq!(s.window(Window::H1, &snap).services[0].buckets.len(), 60);

    let sla = s.sla(
        Month {
            year: 2025,
            month: 4,
        },
        &snap,
    );
    let (dbs, vs) = (&sla.services[0], &sla.services[1]);
    assert_eq!(
        (dbs.downtime_seconds, dbs.absorbed_seconds),
        (5400.0, 120.0)
    );
    assert_eq!(dbs.client_visible_seconds, 5280.0);
    assert!((dbs.error_budget_seconds - 259.2).abs() < 1e-6);
    assert!(!dbs.met && dbs.error_budget_left_seconds < 0.0);
    assert_eq!(
        (vs.client_visible_seconds, vs.absorbed_seconds),
        (1800.0, 0.0)
    );
    assert!((vs.error_budget_seconds - 25920.0).abs() < 1e-6 && vs.met);
    assert_eq!(sla.categories.len(), 4);
    assert_eq!(sla.categories[2].client_visible_seconds, 1800.0);

    // Persist, compact, reopen.
    s.flush().await.expect("flush");
    let text = std::fs::read_to_string(dir.path().join("buckets.jsonl")).expect("file");
    let lines = text.lines().count();
    assert!(text.contains(r#""res":"hour""#) && text.contains(r#""res":"minute""#));
    assert!(
        lines < 2 * (25 * 60 + 31 * 24),
        "{lines} lines: not compacted"
    );
    // A torn tail and garbage are skipped, never a panic.
    std::fs::write(
        dir.path().join("buckets.jsonl"),
        format!("{text}garbage\n{{\"service\":1}}\n{{\"serv"),
    )
    .expect("write");
    let r = open();
    let w2 = r.window(Window::D30, &snap);
    assert_eq!(w2.services[0].down_seconds, 5400.0);
    assert_eq!(w2.services[0].buckets.len(), 720);
    assert_eq!(r.window(Window::H24, &snap).services[0].buckets.len(), 1440);
    let sla2 = r.sla(
        Month {
            year: 2025,
            month: 4,
        },
        &snap,
    );
    assert_eq!(sla2.services[0].client_visible_seconds, 5280.0);
    assert_eq!(sla2.services[1].client_visible_seconds, 1800.0);

    // Ten weeks later: April is past the 62-day hour retention.
    clock.set(april(30, 0, 0) + chrono::Duration::days(70));
    r.observe(&snap);
    r.flush().await.expect("flush");
    let sla3 = open().sla(
        Month {
            year: 2025,
            month: 4,
        },
        &snap,
    );
    assert_eq!(sla3.services[0].observed_seconds, 0.0);
    let left = std::fs::read_to_string(dir.path().join("buckets.jsonl")).expect("file");
    assert!(left.lines().count() <= 4, "{left}");
    api.engine.shutdown(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn routes_shapes_defaults_and_errors() {
    let up = tcp_server().await;
    let api = Api::start(
        vec![tcp_service(
            "db",
            vec![upstream("db-1", &up, Role::Primary)],
        )],
        control_config(),
    )
    .await;
    let sampler = api
        .state
        .snapshots
        .clone()
        .with_tick(Duration::from_millis(50));
    let task = sampler.spawn_sampler(api.engine.clone());
    api.wait_status("db", ServiceStatus::Healthy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = api.get("/api/ops/health/snapshots").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["window"], "1h");
    let s = &v["services"][0];
    assert_eq!(s["name"], "db");
    assert!(s["uptime_percent"].is_number());
    let b = &s["buckets"][0];
    for k in [
        "start",
        "checks",
        "failures",
        "latency_p50_ms",
        "latency_p99_ms",
        "status",
        "partial",
    ] {
        assert!(b.get(k).is_some(), "{k} missing in {b}");
    }
    assert!(DateTime::parse_from_rfc3339(b["start"].as_str().unwrap_or("")).is_ok());
    for w in ["24h", "30d"] {
        let r = api
            .get(&format!("/api/ops/health/snapshots?window={w}"))
            .await;
        assert_eq!(r.json()["window"], w);
    }
    api.get("/api/ops/health/snapshots?window=7d")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    api.call("GET", "/api/ops/health/snapshots", None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    let v = api.get("/api/ops/sla?month=2025-02").await.json();
    assert_eq!(v["month"], "2025-02");
    assert_eq!(v["month_seconds"], 28.0 * 86400.0);
    let cats: Vec<&str> = v["categories"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["category"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(cats, ["core", "federal", "vendor", "internal"]);
    for (c, t) in [(0, 99.99), (1, 99.5), (2, 99.0), (3, 99.9)] {
        assert_eq!(f(&v["categories"][c]["target_percent"]), t);
    }
    let svc = &v["services"][0];
    for k in [
        "name",
        "category",
        "target_percent",
        "achieved_percent",
        "error_budget_seconds",
        "error_budget_left_seconds",
        "error_budget_left_percent",
        "downtime_seconds",
        "client_visible_seconds",
        "absorbed_seconds",
    ] {
        assert!(svc.get(k).is_some(), "{k} missing in {svc}");
    }
    let now = api.get("/api/ops/sla").await.json();
    assert_eq!(now["month"], Month::of(Utc::now()).label());
    assert!(f(&now["services"][0]["observed_seconds"]) > 0.0);
    for bad in ["2025-13", "2025-1", "x", "2025-02-01"] {
        api.get(&format!("/api/ops/sla?month={bad}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    task.abort();
    api.engine.shutdown(Duration::from_millis(50)).await;
}
