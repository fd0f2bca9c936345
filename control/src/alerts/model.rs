//! The two kinds of alert `GET /api/ops/diagnostics/alerts` lists, and the
//! side effects the alert state asks its caller to carry out.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use serde_json::Value;

use super::predict::{Prediction, PredictionType};
use super::rules::{tier_color, AlertSeverity, Condition, Route, DASHBOARDS};

/// An escalation: a rule whose condition holds (SPEC 9).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Always `escalation`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub rule: String,
    pub condition: Condition,
    pub severity: AlertSeverity,
    pub tier: u8,
    pub color: &'static str,
    pub routes: Vec<Route>,
    pub service: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// `false` once resolved.
    pub open: bool,
    pub message: String,
    /// The evidence behind the alert.
    pub details: Value,
}

/// The design's `PredictiveAlert`, with the lifecycle fields of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct PredictiveAlert {
    /// Always `predictive`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub category: &'static str,
    pub prediction_type: PredictionType,
    pub service: String,
    pub severity: AlertSeverity,
    pub tier: u8,
    pub color: &'static str,
    pub routes: Vec<Route>,
    /// R² of the fit.
    pub confidence: f64,
    pub predicted_failure_time: DateTime<Utc>,
    pub indicators: Vec<String>,
    pub recommended_actions: Vec<String>,
    pub trend: Trend,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub open: bool,
    pub message: String,
}

/// The numbers behind a prediction, for machines.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Trend {
    pub metric: &'static str,
    pub unit: &'static str,
    pub threshold: f64,
    pub current: f64,
    pub slope_per_minute: f64,
    pub r_squared: f64,
    pub samples: usize,
    pub window_seconds: f64,
    pub seconds_to_threshold: f64,
}

/// Predictions are warnings: tier 3.
pub const PREDICTIVE_TIER: u8 = 3;

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::thread_rng().gen::<u64>())
}

/// The routes of a new alert: its rule's, or every dashboard as well
/// while an emergency is declared.
pub fn effective_routes(routes: &[Route], emergency: bool) -> Vec<Route> {
    let mut r = routes.to_vec();
    if emergency {
        for d in DASHBOARDS {
            if !r.contains(&d) {
                r.push(d);
            }
        }
    }
    r
}

fn round(v: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (v * m).round() / m
}

impl PredictiveAlert {
    pub fn new(
        service: &str,
        category: &'static str,
        kind: PredictionType,
        p: &Prediction,
        now: DateTime<Utc>,
        emergency: bool,
    ) -> PredictiveAlert {
        let routes = effective_routes(&super::rules::tier_routes(PREDICTIVE_TIER), emergency);
        let mut a = PredictiveAlert {
            kind: "predictive",
            id: new_id("pred"),
            category,
            prediction_type: kind,
            service: service.to_string(),
            severity: AlertSeverity::Warning,
            tier: PREDICTIVE_TIER,
            color: tier_color(PREDICTIVE_TIER),
            routes,
            confidence: 0.0,
            predicted_failure_time: now,
            indicators: Vec::new(),
            recommended_actions: kind.recommended_actions(service),
            trend: trend(kind, p),
            opened_at: now,
            acknowledged_by: None,
            acknowledged_at: None,
            resolved_at: None,
            open: true,
            message: String::new(),
        };
        a.update(p, now);
        a
    }

    /// Refreshes the numbers of an open prediction (no new alert).
    pub fn update(&mut self, p: &Prediction, now: DateTime<Utc>) {
        let t = trend(self.prediction_type, p);
        let secs = p.seconds_to_threshold.clamp(0.0, 1.0e9);
        self.confidence = round(p.fit.r_squared, 3);
        self.predicted_failure_time = now + chrono::Duration::milliseconds((secs * 1000.0) as i64);
        let (label, unit) = (self.prediction_type.label(), t.unit);
        let scale = if unit == "%" { 100.0 } else { 1.0 };
        let sep = if unit == "%" { "" } else { " " };
        let fmt = |v: f64| format!("{:.1}{sep}{unit}", v * scale);
        self.indicators = vec![
            format!(
                "{label} trend: {:+.1}{sep}{unit}/min (least squares over {:.0}s, {} samples, R² {:.2})",
                t.slope_per_minute * scale,
                t.window_seconds,
                t.samples,
                p.fit.r_squared
            ),
            format!(
                "Current {}: {} (threshold {})",
                label.to_lowercase(),
                fmt(t.current),
                fmt(t.threshold)
            ),
            format!("Predicted threshold crossing in {}", human(secs)),
        ];
        self.message = format!(
            "{}: {} predicted to reach {} in {} (confidence {:.2})",
            self.service,
            label.to_lowercase(),
            fmt(t.threshold),
            human(secs),
            p.fit.r_squared
        );
        self.trend = t;
    }
}

fn trend(kind: PredictionType, p: &Prediction) -> Trend {
    let (metric, unit) = kind.metric();
    Trend {
        metric,
        unit,
        threshold: p.threshold,
        current: round(p.current, 4),
        slope_per_minute: round(p.fit.slope * 60.0, 4),
        r_squared: round(p.fit.r_squared, 4),
        samples: p.fit.n,
        window_seconds: round(p.fit.span, 1),
        seconds_to_threshold: round(p.seconds_to_threshold, 1),
    }
}

fn human(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0}s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

/// What the alert state asks its caller to do once its lock is released:
/// publish on the bus, audit, POST to the webhooks.
#[derive(Debug, Clone)]
pub enum Effect {
    Opened(Alert),
    Resolved(Alert),
    /// An emergency was declared: these open alerts now go everywhere.
    Rerouted(Vec<Alert>),
    /// A heartbeat service went silent (the heartbeat's status).
    Stalled(Value),
    /// A stalled heartbeat service reported again.
    Resumed(Value),
    Predicted(PredictiveAlert),
    PredictionResolved(PredictiveAlert),
}
