//! Unit tests of the sampler's arithmetic with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use continuity_proxy::config::Kind;
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::{EngineSnapshot, ServiceStatus};

use super::*;
use crate::testutil::{engine_snapshot, service};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0)
        .single()
        .expect("valid")
}

fn setup(listen: bool) -> (Snapshots, ManualClock, EngineSnapshot) {
    let clock = ManualClock::new(t0());
    let snaps = Snapshots::default()
        .with_clock(Arc::new(clock.clone()))
        .with_buffer_timeouts([("redis".to_string(), Duration::from_secs(5))]);
    let mut snap = engine_snapshot(vec![service("redis", Kind::Redis, ServiceStatus::Unknown)]);
    snap.services[0].listen = listen.then(|| "127.0.0.1:16379".to_string());
    (snaps, clock, snap)
}

/// `secs` one-second steps in `status`.
fn run(
    s: &Snapshots,
    c: &ManualClock,
    snap: &mut EngineSnapshot,
    status: ServiceStatus,
    secs: u32,
) {
    snap.services[0].status = status;
    for _ in 0..secs {
        c.advance(Duration::from_secs(1));
        s.observe(snap);
    }
}

fn sla_service(s: &Snapshots, snap: &EngineSnapshot) -> SlaEntry {
    let mut r = s.sla(Month::of(t0()), snap);
    r.services.remove(0)
}

#[test]
fn absorbed_up_to_the_buffer_timeout_then_visible() {
    let (s, c, mut snap) = setup(true);
    s.observe(&snap);
    run(&s, &c, &mut snap, ServiceStatus::Unknown, 4);
    run(&s, &c, &mut snap, ServiceStatus::Healthy, 10);
    run(&s, &c, &mut snap, ServiceStatus::Down, 8);
    run(&s, &c, &mut snap, ServiceStatus::Healthy, 2);
    let w = s.window(Window::H1, &snap);
    let svc = &w.services[0];
    assert_eq!(
        svc.observed_seconds, 20.0,
        "unknown seconds are not observed"
    );
    assert_eq!(svc.down_seconds, 8.0);
    assert_eq!(svc.uptime_percent, 60.0);
    let e = sla_service(&s, &snap);
    assert_eq!(e.absorbed_seconds, 5.0);
    assert_eq!(e.client_visible_seconds, 3.0);
    assert_eq!(e.downtime_seconds, 8.0);
    assert_eq!(e.target_percent, 99.99);
    // 31 days of March: budget 267.84 s.
    assert!((e.error_budget_seconds - 267.84).abs() < 1e-6);
    assert!((e.error_budget_left_seconds - 264.84).abs() < 1e-6);
    assert!(e.met);
    assert_eq!(e.achieved_percent, 85.0);
}

#[test]
fn a_hold_timeout_makes_a_short_outage_visible() {
    let (s, c, mut snap) = setup(true);
    s.observe(&snap);
    run(&s, &c, &mut snap, ServiceStatus::Healthy, 5);
    run(&s, &c, &mut snap, ServiceStatus::Down, 2);
    s.note_event(&Event::new(
        Some("redis"),
        EventKind::HoldTimedOut { waited_ms: 5000 },
    ));
    run(&s, &c, &mut snap, ServiceStatus::Down, 1);
    run(&s, &c, &mut snap, ServiceStatus::Healthy, 1);
    let e = sla_service(&s, &snap);
    assert_eq!((e.absorbed_seconds, e.client_visible_seconds), (2.0, 1.0));
    assert_eq!(e.hold_timeouts, 1);
}

#[test]
fn unproxied_outages_are_all_visible_and_gaps_are_not_counted() {
    let (s, c, mut snap) = setup(false);
    s.observe(&snap);
    run(&s, &c, &mut snap, ServiceStatus::Down, 3);
    // The process was away for an hour: not attributed to anything.
    c.advance(Duration::from_secs(3600));
    s.observe(&snap);
    run(&s, &c, &mut snap, ServiceStatus::Healthy, 3);
    let e = sla_service(&s, &snap);
    assert_eq!((e.absorbed_seconds, e.client_visible_seconds), (0.0, 3.0));
    assert_eq!(e.observed_seconds, 6.0);
}

#[test]
fn buckets_split_at_minute_boundaries_and_show_the_worst_status() {
    let (s, c, mut snap) = setup(true);
    // Steps up to 3 ticks long are attributed.
    let s = s.with_tick(Duration::from_secs(10));
    c.set(t0() + chrono::Duration::seconds(50));
    s.observe(&snap);
    run(&s, &c, &mut snap, ServiceStatus::Healthy, 5);
    // One 20 s step across the minute boundary, seen as degraded.
    snap.services[0].status = ServiceStatus::Degraded;
    c.advance(Duration::from_secs(20));
    s.observe(&snap);
    // A status change event between ticks marks the bucket down.
    s.note_event(&Event::new(
        Some("redis"),
        EventKind::ServiceStatusChanged {
            old: ServiceStatus::Degraded,
            new: ServiceStatus::Down,
        },
    ));
    run(&s, &c, &mut snap, ServiceStatus::Healthy, 1);
    let w = s.window(Window::H1, &snap);
    let b = &w.services[0].buckets;
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!((b[0].observed_seconds, b[0].partial), (10.0, false));
    assert_eq!(b[0].status, BucketStatus::Degraded);
    assert_eq!((b[1].observed_seconds, b[1].partial), (16.0, true));
    assert_eq!(b[1].status, BucketStatus::Down);
    assert_eq!(w.services[0].down_seconds, 0.0);
}

#[test]
fn windows_and_months_parse() {
    assert_eq!(Window::parse("24h"), Some(Window::H24));
    assert_eq!(Window::parse("7d"), None);
    assert_eq!(
        Month::parse("2025-02"),
        Some(Month {
            year: 2025,
            month: 2
        })
    );
    for bad in [
        "2025-13", "2025-00", "25-01", "2025-1", "2025/01", "abcd-ef", "",
    ] {
        assert_eq!(Month::parse(bad), None, "{bad}");
    }
    let (a, b) = Month::parse("2024-02")
        .and_then(Month::bounds)
        .expect("bounds");
    assert_eq!(b - a, 29 * 86400);
}
