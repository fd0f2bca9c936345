use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use continuity_proxy::config::{Category, Kind};
use continuity_proxy::snapshot::{EngineSnapshot, ServiceStatus};

use super::*;
use crate::alerts::heartbeat::Report;
use crate::alerts::predict::PredictSettings;
use crate::alerts::rules::{default_rules, Route};
use crate::testutil::{engine_snapshot, service};

fn core(heartbeats: &[(String, Duration)], t0: Instant) -> Core {
    Core::new(
        default_rules(),
        Heartbeats::new(heartbeats, t0),
        Predictor::new(PredictSettings::default(), HashMap::new()),
    )
}

fn snap(down: &[(&str, Category)]) -> EngineSnapshot {
    let mut services = vec![service("ok", Kind::Redis, ServiceStatus::Healthy)];
    for (name, cat) in down {
        let mut s = service(name, Kind::Tcp, ServiceStatus::Down);
        s.category = *cat;
        s.consecutive_failures = 3;
        services.push(s);
    }
    engine_snapshot(services)
}

fn opened(effects: &[Effect]) -> Vec<&Alert> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Opened(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn resolved(effects: &[Effect]) -> Vec<&Alert> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Resolved(a) => Some(a),
            _ => None,
        })
        .collect()
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn unresponsive_over_10s_opens_once_and_resolves() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[], t0);
    let down = snap(&[("api", Category::Core)]);
    assert!(opened(&c.evaluate(&down, t0, w)).is_empty());
    assert!(opened(&c.evaluate(&down, t0 + S(9), w)).is_empty());
    let e = c.evaluate(&down, t0 + S(11), w);
    let o = opened(&e);
    assert_eq!(o.len(), 1, "{e:?}");
    assert_eq!((o[0].rule.as_str(), o[0].tier), ("service_unresponsive", 3));
    assert_eq!(o[0].service.as_deref(), Some("api"));
    assert_eq!(o[0].color, "yellow");
    // Not raised again while open.
    for s in 12..20 {
        assert!(opened(&c.evaluate(&down, t0 + S(s), w)).is_empty());
    }
    let up = snap(&[]);
    let e = c.evaluate(&up, t0 + S(21), w);
    assert_eq!(resolved(&e).len(), 1);
    assert!(c.alerts.iter().all(|a| !a.open && a.resolved_at.is_some()));
    // A new outage is a new alert, after the threshold again.
    assert!(opened(&c.evaluate(&down, t0 + S(22), w)).is_empty());
    assert_eq!(opened(&c.evaluate(&down, t0 + S(33), w)).len(), 1);
    assert_eq!(c.alerts.len(), 2);
}

#[test]
fn federal_offline_over_5_minutes_is_priority_1_with_liaison() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[], t0);
    let down = snap(&[("ndex", Category::Federal)]);
    c.evaluate(&down, t0, w);
    let e = c.evaluate(&down, t0 + S(299), w);
    assert!(opened(&e).iter().all(|a| a.rule != "federal_offline"));
    let e = c.evaluate(&down, t0 + S(301), w);
    let o = opened(&e);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].rule, "federal_offline");
    assert_eq!(o[0].tier, 1);
    assert!(o[0].routes.contains(&Route::CommandCenter));
    assert!(o[0].routes.contains(&Route::FederalLiaison));
}

#[test]
fn two_dependencies_failed_is_critical_and_heartbeats_do_not_count() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[], t0);
    let mut one = snap(&[("a", Category::Core)]);
    let mut hb = service("etl", Kind::Heartbeat, ServiceStatus::Down);
    hb.upstreams.clear();
    one.services.push(hb);
    assert!(opened(&c.evaluate(&one, t0, w)).is_empty());
    let two = snap(&[("a", Category::Core), ("b", Category::Vendor)]);
    let e = c.evaluate(&two, t0 + S(1), w);
    let o = opened(&e);
    assert_eq!(o.len(), 1, "{e:?}");
    assert_eq!(
        (o[0].rule.as_str(), o[0].tier, o[0].color),
        ("dependencies_failed", 2, "red")
    );
    assert_eq!(o[0].service, None);
    assert!(o[0].routes.contains(&Route::TacticalDashboard));
    assert!(!o[0].routes.contains(&Route::CommandCenter));
    assert_eq!(resolved(&c.evaluate(&one, t0 + S(2), w)).len(), 1);
}

#[test]
fn neo4j_write_failure_is_an_emergency_until_clear_after() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[], t0);
    let ok = snap(&[]);
    c.neo4j_write_failure("graph", "Neo.ClientError.Cluster.NotALeader", t0);
    let e = c.evaluate(&ok, t0, w);
    let o = opened(&e);
    assert_eq!(o.len(), 1);
    assert_eq!((o[0].tier, o[0].routes.len()), (1, 4));
    assert!(o[0].message.contains("NotALeader"));
    assert!(c.evaluate(&ok, t0 + S(299), w).is_empty());
    assert_eq!(resolved(&c.evaluate(&ok, t0 + S(301), w)).len(), 1);
}

#[test]
fn websocket_drop_over_20_percent() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[], t0);
    let ok = snap(&[]);
    c.websocket_drop(None, 0.2, t0);
    assert!(c.evaluate(&ok, t0, w).is_empty(), "20% is not over 20%");
    c.websocket_drop(None, 0.25, t0);
    assert_eq!(opened(&c.evaluate(&ok, t0, w)).len(), 1);
    c.websocket_drop(None, 0.05, t0 + S(1));
    assert_eq!(resolved(&c.evaluate(&ok, t0 + S(1), w)).len(), 1);
    // A ratio nobody refreshes stops counting after the window.
    c.websocket_drop(Some("broker"), 0.5, t0 + S(2));
    assert_eq!(opened(&c.evaluate(&ok, t0 + S(2), w)).len(), 1);
    assert_eq!(resolved(&c.evaluate(&ok, t0 + S(63), w)).len(), 1);
}

#[test]
fn emergency_routes_everything_everywhere() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[], t0);
    c.websocket_drop(None, 0.9, t0);
    c.evaluate(&snap(&[]), t0, w);
    let changed = c.reroute_all();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].routes.len(), 4);
    assert!(c.reroute_all().is_empty(), "already everywhere");
    let mut s = snap(&[]);
    s.emergency_declared = true;
    c.neo4j_write_failure("graph", "x", t0);
    c.websocket_drop(Some("b"), 0.9, t0);
    let e = c.evaluate(&s, t0, w);
    assert!(opened(&e).iter().all(|a| a.routes.len() >= 4), "{e:?}");
}

#[test]
fn ack_once_then_conflict() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[], t0);
    c.websocket_drop(None, 0.9, t0);
    c.evaluate(&snap(&[]), t0, w);
    let id = c.alerts[0].id.clone();
    assert_eq!(c.can_ack("nope"), Err(AckError::NotFound));
    assert_eq!(c.can_ack(&id), Ok(()));
    let v = c.ack(&id, "ops", w).expect("ack");
    assert_eq!(v["acknowledged_by"], "ops");
    assert_eq!(c.ack(&id, "other", w), Err(AckError::Already("ops".into())));
    let listed = c.list(true);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1["type"], "escalation");
}

#[test]
fn heartbeat_stall_opens_etl_alert_and_next_beat_resolves() {
    let t0 = Instant::now();
    let w = Utc::now();
    let mut c = core(&[("etl".to_string(), S(5))], t0);
    let ok = snap(&[]);
    assert!(c.evaluate(&ok, t0 + S(4), w).is_empty());
    let e = c.evaluate(&ok, t0 + S(6), w);
    assert!(matches!(e.first(), Some(Effect::Stalled(_))), "{e:?}");
    let o = opened(&e);
    assert_eq!(o.len(), 1);
    assert_eq!((o[0].rule.as_str(), o[0].tier), ("etl_stall", 3));
    assert!(o[0].routes.contains(&Route::OpsCenter));
    assert_eq!(c.evaluate(&ok, t0 + S(7), w).len(), 0);
    let (_, resumed) = c
        .heartbeats
        .beat("etl", Report::default(), t0 + S(8), w)
        .expect("known");
    assert!(matches!(resumed, Some(Effect::Resumed(_))));
    assert_eq!(resolved(&c.evaluate(&ok, t0 + S(8), w)).len(), 1);
}
