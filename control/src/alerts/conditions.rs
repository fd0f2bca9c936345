//! Which escalation conditions hold now: since when each service has been
//! unresponsive, the Neo4j write failures and WebSocket drop ratios that
//! were reported, and the heartbeat stalls, checked against every rule.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use continuity_proxy::config::Category;
use continuity_proxy::snapshot::{EngineSnapshot, ServiceSnapshot, ServiceStatus};
use serde_json::{json, Value};

use super::heartbeat::Heartbeats;
use super::rules::{Condition, Rule};

/// One condition that holds now: rule (index) and service.
#[derive(Debug)]
pub struct Hit {
    pub rule: usize,
    pub service: Option<String>,
    pub message: String,
    pub details: Value,
}

#[derive(Debug, Default)]
pub struct Conditions {
    /// Since when each service has been unresponsive (monotonic, wall).
    unresponsive: HashMap<String, (Instant, DateTime<Utc>)>,
    neo4j: HashMap<String, (Instant, DateTime<Utc>, String)>,
    ws_drop: HashMap<Option<String>, (Instant, f64)>,
}

impl Conditions {
    pub fn neo4j_write_failure(&mut self, service: &str, detail: &str, now: Instant) {
        self.neo4j
            .insert(service.to_string(), (now, Utc::now(), detail.to_string()));
    }

    pub fn websocket_drop(&mut self, service: Option<&str>, ratio: f64, now: Instant) {
        if ratio.is_finite() {
            self.ws_drop
                .insert(service.map(str::to_string), (now, ratio.clamp(0.0, 1.0)));
        }
    }

    /// Remembers since when each service has been unresponsive: its status
    /// is down, or the last probe of its active upstream failed. The start
    /// is the first failed probe of the current streak when the probe
    /// history shows it.
    pub fn track(&mut self, snap: &EngineSnapshot, now: Instant, wall: DateTime<Utc>) {
        let mut seen = HashSet::new();
        for s in snap.services.iter().filter(|s| !s.upstreams.is_empty()) {
            if !(s.status == ServiceStatus::Down || s.consecutive_failures > 0) {
                continue;
            }
            seen.insert(s.name.clone());
            self.unresponsive.entry(s.name.clone()).or_insert_with(|| {
                let first_failure = s
                    .upstreams
                    .iter()
                    .find(|u| u.active)
                    .and_then(|u| u.history.iter().rev().take_while(|p| !p.ok).last())
                    .map(|p| p.at)
                    .filter(|at| *at <= wall);
                match first_failure {
                    Some(at) => {
                        let ago = (wall - at).to_std().unwrap_or_default();
                        (now.checked_sub(ago).unwrap_or(now), at)
                    }
                    None => (now, wall),
                }
            });
        }
        self.unresponsive.retain(|name, _| seen.contains(name));
    }

    pub fn hits(
        &mut self,
        rules: &[Rule],
        heartbeats: &Heartbeats,
        snap: &EngineSnapshot,
        now: Instant,
    ) -> Vec<Hit> {
        let mut hits = Vec::new();
        let proxied = || snap.services.iter().filter(|s| !s.upstreams.is_empty());
        let mut neo4j_keep = Duration::ZERO;
        for (i, rule) in rules.iter().enumerate() {
            match rule.condition {
                Condition::ServiceUnresponsive | Condition::FederalOffline => {
                    let federal = rule.condition == Condition::FederalOffline;
                    for s in proxied().filter(|s| rule.covers(&s.name)) {
                        if federal
                            && (s.category != Category::Federal || s.status != ServiceStatus::Down)
                        {
                            continue;
                        }
                        let Some((since, at)) = self.unresponsive.get(&s.name) else {
                            continue;
                        };
                        let held = now.saturating_duration_since(*since);
                        if held >= rule.threshold {
                            hits.push(outage_hit(i, rule, s, held, *at));
                        }
                    }
                }
                Condition::DependenciesFailed => {
                    let down: Vec<&str> = proxied()
                        .filter(|s| rule.covers(&s.name) && s.status == ServiceStatus::Down)
                        .map(|s| s.name.as_str())
                        .collect();
                    if down.len() >= rule.count as usize {
                        hits.push(Hit {
                            rule: i,
                            service: None,
                            message: format!(
                                "{} dependencies failed: {}",
                                down.len(),
                                down.join(", ")
                            ),
                            details: json!({ "failed": down, "count": rule.count }),
                        });
                    }
                }
                Condition::Neo4jWriteFailure => {
                    neo4j_keep = neo4j_keep.max(rule.threshold);
                    for (svc, (t, at, detail)) in &self.neo4j {
                        if rule.covers(svc) && now.saturating_duration_since(*t) <= rule.threshold {
                            hits.push(Hit {
                                rule: i,
                                service: Some(svc.clone()),
                                message: format!("Neo4j write failure on {svc}: {detail}"),
                                details: json!({ "detail": detail, "last_failure_at": at }),
                            });
                        }
                    }
                }
                Condition::EtlStall => {
                    for h in heartbeats.stalled().filter(|h| rule.covers(&h.name)) {
                        hits.push(Hit {
                            rule: i,
                            service: Some(h.name.clone()),
                            message: format!(
                                "ETL pipeline {} stalled: no heartbeat for over {}s",
                                h.name,
                                h.stall_after.as_secs_f64()
                            ),
                            details: h.to_json(now),
                        });
                    }
                }
                Condition::WebsocketDrop => {
                    for (svc, (t, ratio)) in &self.ws_drop {
                        let fresh = now.saturating_duration_since(*t) <= rule.threshold;
                        let covered = svc.as_deref().is_none_or(|s| rule.covers(s));
                        if fresh && covered && *ratio > rule.ratio {
                            let who = svc.as_deref().unwrap_or("continuity's own channels");
                            hits.push(Hit {
                                rule: i,
                                service: svc.clone(),
                                message: format!(
                                    "WebSocket clients dropped: {:.0}% within a minute on {who} (over {:.0}%)",
                                    ratio * 100.0,
                                    rule.ratio * 100.0
                                ),
                                details: json!({ "drop_ratio": ratio, "threshold_ratio": rule.ratio }),
                            });
                        }
                    }
                }
            }
        }
        self.neo4j
            .retain(|_, (t, _, _)| now.saturating_duration_since(*t) <= neo4j_keep);
        hits
    }
}

fn outage_hit(
    i: usize,
    rule: &Rule,
    s: &ServiceSnapshot,
    held: Duration,
    since: DateTime<Utc>,
) -> Hit {
    let error = s
        .upstreams
        .iter()
        .find(|u| u.active)
        .and_then(|u| u.last_error.clone());
    let what = if rule.condition == Condition::FederalOffline {
        "federal endpoint offline"
    } else {
        "unresponsive"
    };
    Hit {
        rule: i,
        service: Some(s.name.clone()),
        message: format!(
            "{} {what} for {:.0}s (over {}s): status {}, {} consecutive probe failures{}",
            s.name,
            held.as_secs_f64(),
            rule.threshold.as_secs_f64(),
            s.status.as_str(),
            s.consecutive_failures,
            error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ),
        details: json!({
            "status": s.status,
            "since": since,
            "seconds": held.as_secs_f64(),
            "threshold_seconds": rule.threshold.as_secs_f64(),
            "active_upstream": s.active_upstream,
            "consecutive_failures": s.consecutive_failures,
            "last_error": error,
            "category": s.category,
        }),
    }
}
