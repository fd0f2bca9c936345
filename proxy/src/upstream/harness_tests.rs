//! The failover state machine of one service, run in process by the
//! harness (upstream/harness.rs) under a paused clock.

use std::time::Duration;

use crate::config::{Failback, FailoverMode, OnFailover};
use crate::health::ObservedRole;
use crate::snapshot::{ServiceStatus, UpstreamHealth};
use crate::upstream::harness::Harness;

#[tokio::test(start_paused = true)]
async fn fails_over_after_failure_threshold_failures_not_before() {
    let mut h = Harness::builder().failure_threshold(3).build();
    h.up_all().await;
    h.fail(0, 2).await;
    assert_eq!(h.active(), 0, "two failures of three: stay");
    assert_eq!(h.health(0), UpstreamHealth::Up);
    assert_eq!(h.epoch(), 0);
    h.fail(0, 1).await;
    assert_eq!(h.health(0), UpstreamHealth::Down);
    assert_eq!(h.active(), 1, "the third failure switches");
    assert_eq!(h.switches(), vec![(0, 1)]);
}

#[tokio::test(start_paused = true)]
async fn each_switch_bumps_the_epoch_and_fences_the_old_upstream() {
    let mut h = Harness::builder().upstreams(3).failure_threshold(1).build();
    h.up_all().await;
    h.refused(0).await;
    assert_eq!((h.active(), h.epoch()), (1, 1));
    assert!(h.fenced(0), "the old primary is fenced");
    assert!(!h.fenced(1));
    h.refused(1).await;
    assert_eq!((h.active(), h.epoch()), (2, 2));
    assert!(h.fenced(0) && h.fenced(1) && !h.fenced(2));
    assert_eq!(h.switches(), vec![(0, 1), (1, 2)]);
    // A fenced upstream takes no connection even when it is up again.
    h.ok(0, 5).await;
    let route = h.svc.route.load_full();
    assert!(!h.svc.usable(&route, 0));
    assert_eq!(h.active(), 2);
}

#[tokio::test(start_paused = true)]
async fn hold_down_blocks_a_second_switch_until_it_elapses() {
    let mut h = Harness::builder()
        .upstreams(3)
        .failure_threshold(1)
        .hold_down(Duration::from_secs(30))
        .build();
    h.up_all().await;
    h.fail(0, 1).await;
    assert_eq!(h.active(), 1);
    h.fail(1, 1).await;
    assert_eq!(h.health(1), UpstreamHealth::Down);
    assert_eq!(h.active(), 1, "within hold-down: no second switch");
    tokio::time::advance(Duration::from_secs(29)).await;
    h.fail(1, 1).await;
    assert_eq!(h.active(), 1, "29 s of 30: still held down");
    tokio::time::advance(Duration::from_secs(1)).await;
    h.fail(1, 1).await;
    assert_eq!((h.active(), h.epoch()), (2, 2), "hold-down over: switch");
    assert_eq!(h.switches(), vec![(0, 1), (1, 2)]);
}

#[tokio::test(start_paused = true)]
async fn recovery_needs_recovery_threshold_successes() {
    let h = Harness::builder()
        .failure_threshold(1)
        .recovery_threshold(3)
        .build();
    h.up_all().await;
    h.fail(1, 1).await;
    assert_eq!(h.health(1), UpstreamHealth::Down);
    h.ok(1, 2).await;
    assert_eq!(h.health(1), UpstreamHealth::Down, "two of three successes");
    h.fail(1, 1).await;
    h.ok(1, 2).await;
    assert_eq!(
        h.health(1),
        UpstreamHealth::Down,
        "a failure restarts the count"
    );
    h.ok(1, 1).await;
    assert_eq!(h.health(1), UpstreamHealth::Up);
}

#[tokio::test(start_paused = true)]
async fn manual_mode_never_switches() {
    let mut h = Harness::builder()
        .failure_threshold(1)
        .failover(FailoverMode::Manual)
        .build();
    h.up_all().await;
    h.fail(0, 10).await;
    h.refused(0).await;
    assert_eq!(h.health(0), UpstreamHealth::Down);
    assert_eq!((h.active(), h.epoch()), (0, 0));
    assert!(h.switches().is_empty());
    assert_eq!(h.svc.status(), ServiceStatus::Down);
}

#[tokio::test(start_paused = true)]
async fn auto_failback_in_route_mode() {
    let mut h = Harness::builder()
        .failure_threshold(1)
        .recovery_threshold(2)
        .failback(Failback::Auto)
        .build();
    h.up_all().await;
    h.fail(0, 1).await;
    assert_eq!(h.active(), 1);
    h.ok(0, 1).await;
    assert_eq!(h.active(), 1, "one success of two: not yet");
    h.ok(0, 1).await;
    assert_eq!(
        (h.active(), h.epoch()),
        (0, 2),
        "back to the configured primary"
    );
    assert!(!h.fenced(0));
    assert_eq!(h.switches(), vec![(0, 1), (1, 2)]);
}

#[tokio::test(start_paused = true)]
async fn no_auto_failback_in_promote_mode() {
    let mut h = Harness::builder()
        .failure_threshold(1)
        .recovery_threshold(1)
        .failback(Failback::Auto)
        .on_failover(OnFailover::Promote)
        .build();
    h.up_all().await;
    // Seen as a primary already: the failover promotes nothing.
    h.ok_as(1, ObservedRole::Primary).await;
    h.fail(0, 1).await;
    assert_eq!(h.active(), 1);
    h.ok_as(0, ObservedRole::Replica).await;
    h.ok(0, 3).await;
    assert_eq!(h.health(0), UpstreamHealth::Up);
    assert_eq!(h.active(), 1, "promote mode: failback by hand only");
    assert_eq!(h.switches(), vec![(0, 1)]);
}

/// Recovery time runs from the active upstream going down to the switch
/// away from it: here 2 s, while no other upstream was usable.
#[tokio::test(start_paused = true)]
async fn recovery_time_is_measured_on_the_paused_clock() {
    use std::sync::atomic::Ordering::Relaxed;
    let h = Harness::builder()
        .failure_threshold(1)
        .recovery_threshold(1)
        .build();
    h.up_all().await;
    h.fail(1, 1).await;
    h.fail(0, 1).await;
    assert_eq!(h.active(), 0, "nothing usable to switch to");
    tokio::time::advance(Duration::from_secs(2)).await;
    h.ok(1, 1).await;
    assert_eq!(h.active(), 1);
    let c = &h.svc.counters;
    assert_eq!((c.auto.load(Relaxed), c.recoveries.load(Relaxed)), (1, 1));
    assert_eq!(c.recovery_us_sum.load(Relaxed), 2_000_000);
}

/// A yellow Elasticsearch cluster makes the service `degraded` (the
/// upstream counts as slow); green makes it healthy again. Moved from
/// proxy/tests/http_probes.rs: it reaches the runtime's internals.
#[tokio::test]
async fn yellow_makes_the_service_degraded() {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::config::{Kind, Role, ServiceConfig, UpstreamConfig};
    use crate::events;
    use crate::health;
    use crate::metrics::ProxyMetrics;
    use crate::upstream::service::ServiceRt;
    use crate::upstream::state::FailoverCounters;

    let status = Arc::new(Mutex::new("yellow"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = status.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let body = format!("{{\"status\":\"{}\"}}", s.lock().unwrap());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = c.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
            });
        }
    });
    let up = UpstreamConfig::url("u", &format!("http://{addr}"), Role::Primary);
    let mut cfg = ServiceConfig::new("svc", Kind::Elasticsearch, vec![up.clone()]);
    cfg.health.timeout = Duration::from_secs(5);
    cfg.health.connect_timeout = Duration::from_secs(2);
    cfg.health.recovery_threshold = 1;
    let svc = ServiceRt::new(
        cfg,
        events::bus(),
        ProxyMetrics::new(&prometheus::Registry::new()),
        Arc::new(FailoverCounters::default()),
        Duration::from_secs(1),
    );
    let out = health::run_probe(&svc.cfg, &up).await;
    assert!(out.ok && out.degraded.is_some(), "{out:?}");
    svc.on_probe(0, out).await;
    assert_eq!(svc.status(), ServiceStatus::Degraded);

    *status.lock().unwrap() = "green";
    let out = health::run_probe(&svc.cfg, &up).await;
    svc.on_probe(0, out).await;
    assert_eq!(svc.status(), ServiceStatus::Healthy);
}

/// Busy is not dead (issue #18): probes that connect but get no answer
/// (timeout 500 ms, one every 500 ms) do not count for 3 s from the first
/// of them, then the upstream is down at once; an answer in between starts
/// the grace again. Ordinary timeouts still count against the threshold.
#[tokio::test(start_paused = true)]
async fn an_upstream_that_answers_nothing_is_graced_then_failed_over() {
    let grace = Duration::from_millis(3000);
    let probe = Duration::from_millis(500);
    let mut h = Harness::builder()
        .failure_threshold(2)
        .busy_grace(grace)
        .build();
    h.up_all().await;
    // DEBUG SLEEP 2: four silent probes back to back (2 s), then answers.
    for _ in 0..4 {
        h.unanswered(0, probe).await;
    }
    assert_eq!(h.health(0), UpstreamHealth::Up, "busy 2 s < 3 s grace");
    h.ok(0, 1).await;
    // Silent again (SIGSTOP): the grace starts over, counted from the
    // first unanswered probe's start; down at the first probe past it.
    let silent = tokio::time::Instant::now();
    loop {
        h.unanswered(0, probe).await;
        if silent.elapsed() >= grace {
            break;
        }
        assert_eq!(h.active(), 0, "silent {:?} < grace", silent.elapsed());
    }
    assert!(silent.elapsed() >= grace);
    assert_eq!(h.health(0), UpstreamHealth::Down, "hung past the grace");
    assert_eq!(h.active(), 1);
    assert_eq!(h.switches(), vec![(0, 1)]);
}

#[tokio::test(start_paused = true)]
async fn busy_answers_count_as_alive_and_timeouts_are_not_graced() {
    let h = Harness::builder()
        .failure_threshold(2)
        .busy_grace(Duration::from_secs(3))
        .build();
    h.up_all().await;
    for _ in 0..10 {
        h.busy(0).await;
    }
    assert_eq!(
        (h.health(0), h.active()),
        (UpstreamHealth::Up, 0),
        "-BUSY is alive"
    );
    // A connect that times out is not busy: the threshold as always.
    h.fail(0, 2).await;
    assert_eq!(h.active(), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_grace_an_unanswered_probe_is_an_ordinary_failure() {
    let h = Harness::builder()
        .failure_threshold(2)
        .busy_grace(Duration::ZERO)
        .build();
    h.up_all().await;
    h.unanswered(0, Duration::from_millis(500)).await;
    assert_eq!(h.active(), 0);
    h.unanswered(0, Duration::from_millis(500)).await;
    assert_eq!(h.active(), 1);
}
