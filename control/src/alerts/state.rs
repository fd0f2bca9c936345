//! The alert state machine: which conditions hold now, which alerts are
//! open, and the transitions between the two. Pure (times are passed in),
//! so the rules are tested without clocks; [`super::Alerts`] holds it
//! behind a mutex and carries out the [`Effect`]s it returns.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use continuity_proxy::snapshot::EngineSnapshot;
use serde_json::Value;

use super::conditions::Conditions;
use super::heartbeat::Heartbeats;
use super::model::{effective_routes, new_id, Alert, Effect, PredictiveAlert};
use super::predict::{Observation, Predictor};
use super::rules::{tier_color, Rule};

/// Resolved alerts are listed for this long, and at most [`MAX_RESOLVED`].
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(3600);
pub const MAX_RESOLVED: usize = 200;

pub struct Core {
    pub rules: Vec<Rule>,
    /// Open and recently resolved, oldest first.
    pub alerts: Vec<Alert>,
    pub predictions: Vec<PredictiveAlert>,
    pub heartbeats: Heartbeats,
    pub predictor: Predictor,
    conditions: Conditions,
    pub emergency: bool,
}

/// Why an acknowledgement is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    NotFound,
    Already(String),
}

impl Core {
    pub fn new(rules: Vec<Rule>, heartbeats: Heartbeats, predictor: Predictor) -> Core {
        Core {
            rules,
            alerts: Vec::new(),
            predictions: Vec::new(),
            heartbeats,
            predictor,
            conditions: Conditions::default(),
            emergency: false,
        }
    }

    pub fn neo4j_write_failure(&mut self, service: &str, detail: &str, now: Instant) {
        self.conditions.neo4j_write_failure(service, detail, now);
    }

    pub fn websocket_drop(&mut self, service: Option<&str>, ratio: f64, now: Instant) {
        self.conditions.websocket_drop(service, ratio, now);
    }

    /// Re-evaluates every rule against `snap` and opens or resolves
    /// alerts accordingly; detects heartbeat stalls first.
    pub fn evaluate(
        &mut self,
        snap: &EngineSnapshot,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Vec<Effect> {
        self.emergency = snap.emergency_declared;
        let mut effects = self.heartbeats.check(now, wall);
        self.conditions.track(snap, now, wall);
        let hits = self
            .conditions
            .hits(&self.rules, &self.heartbeats, snap, now);
        let keys: HashSet<(String, Option<String>)> = hits
            .iter()
            .filter_map(|h| {
                self.rules
                    .get(h.rule)
                    .map(|r| (r.name.clone(), h.service.clone()))
            })
            .collect();
        for a in self.alerts.iter_mut().filter(|a| a.open) {
            if !keys.contains(&(a.rule.clone(), a.service.clone())) {
                a.open = false;
                a.resolved_at = Some(wall);
                effects.push(Effect::Resolved(a.clone()));
            }
        }
        for hit in hits {
            let Some(rule) = self.rules.get(hit.rule) else {
                continue;
            };
            let open = self
                .alerts
                .iter()
                .any(|a| a.open && a.rule == rule.name && a.service == hit.service);
            if open {
                continue;
            }
            let alert = Alert {
                kind: "escalation",
                id: new_id("alert"),
                rule: rule.name.clone(),
                condition: rule.condition,
                severity: rule.severity,
                tier: rule.tier,
                color: tier_color(rule.tier),
                routes: effective_routes(&rule.routes, self.emergency),
                service: hit.service,
                opened_at: wall,
                acknowledged_by: None,
                acknowledged_at: None,
                resolved_at: None,
                open: true,
                message: hit.message,
                details: hit.details,
            };
            self.alerts.push(alert.clone());
            effects.push(Effect::Opened(alert));
        }
        self.prune(wall);
        effects
    }

    /// Opens, refreshes or resolves predictions from one predictor run.
    pub fn apply_predictions(&mut self, obs: Vec<Observation>, wall: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = Vec::new();
        for o in obs {
            let open = self
                .predictions
                .iter_mut()
                .find(|p| p.open && p.service == o.service && p.prediction_type == o.kind);
            match (open, o.prediction) {
                (Some(p), Some(pred)) => p.update(&pred, wall),
                (None, Some(pred)) => {
                    let p = PredictiveAlert::new(
                        &o.service,
                        o.category,
                        o.kind,
                        &pred,
                        wall,
                        self.emergency,
                    );
                    self.predictions.push(p.clone());
                    effects.push(Effect::Predicted(p));
                }
                (Some(p), None) => {
                    p.open = false;
                    p.resolved_at = Some(wall);
                    effects.push(Effect::PredictionResolved(p.clone()));
                }
                (None, None) => {}
            }
        }
        effects
    }

    /// An emergency routes every open alert to every dashboard.
    pub fn reroute_all(&mut self) -> Vec<Alert> {
        self.emergency = true;
        let mut changed = Vec::new();
        for a in self.alerts.iter_mut().filter(|a| a.open) {
            let routes = effective_routes(&a.routes, true);
            if routes != a.routes {
                a.routes = routes;
                changed.push(a.clone());
            }
        }
        for p in self.predictions.iter_mut().filter(|p| p.open) {
            p.routes = effective_routes(&p.routes, true);
        }
        changed
    }

    /// Checks that `id` can be acknowledged (404, 409) without doing it.
    pub fn can_ack(&self, id: &str) -> Result<(), AckError> {
        let by = if let Some(a) = self.alerts.iter().find(|a| a.id == id) {
            &a.acknowledged_by
        } else if let Some(p) = self.predictions.iter().find(|p| p.id == id) {
            &p.acknowledged_by
        } else {
            return Err(AckError::NotFound);
        };
        match by {
            Some(by) => Err(AckError::Already(by.clone())),
            None => Ok(()),
        }
    }

    /// Acknowledges `id`; returns the alert as JSON.
    pub fn ack(&mut self, id: &str, actor: &str, wall: DateTime<Utc>) -> Result<Value, AckError> {
        self.can_ack(id)?;
        if let Some(a) = self.alerts.iter_mut().find(|a| a.id == id) {
            a.acknowledged_by = Some(actor.to_string());
            a.acknowledged_at = Some(wall);
            return Ok(serde_json::to_value(&*a).unwrap_or_default());
        }
        if let Some(p) = self.predictions.iter_mut().find(|p| p.id == id) {
            p.acknowledged_by = Some(actor.to_string());
            p.acknowledged_at = Some(wall);
            return Ok(serde_json::to_value(&*p).unwrap_or_default());
        }
        Err(AckError::NotFound)
    }

    /// Every alert, newest first; only open ones when `open_only`.
    pub fn list(&self, open_only: bool) -> Vec<(DateTime<Utc>, Value)> {
        let esc = self
            .alerts
            .iter()
            .filter(|a| a.open || !open_only)
            .map(|a| (a.opened_at, serde_json::to_value(a).unwrap_or_default()));
        let pred = self
            .predictions
            .iter()
            .filter(|p| p.open || !open_only)
            .map(|p| (p.opened_at, serde_json::to_value(p).unwrap_or_default()));
        let mut all: Vec<_> = esc.chain(pred).collect();
        all.sort_by_key(|b| std::cmp::Reverse(b.0));
        all
    }

    fn prune(&mut self, wall: DateTime<Utc>) {
        let keep = chrono::Duration::from_std(RESOLVED_RETENTION).unwrap_or_default();
        let fresh = |r: Option<DateTime<Utc>>| r.is_none_or(|t| wall - t <= keep);
        self.alerts.retain(|a| fresh(a.resolved_at));
        self.predictions.retain(|p| fresh(p.resolved_at));
        while self.alerts.iter().filter(|a| !a.open).count() > MAX_RESOLVED {
            match self.alerts.iter().position(|a| !a.open) {
                Some(i) => drop(self.alerts.remove(i)),
                None => break,
            }
        }
        while self.predictions.iter().filter(|p| !p.open).count() > MAX_RESOLVED {
            match self.predictions.iter().position(|p| !p.open) {
                Some(i) => drop(self.predictions.remove(i)),
                None => break,
            }
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
