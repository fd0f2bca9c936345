//! Predictive alerts (the design's `PredictiveAlert`): per service, time
//! series of latency, error rate and connection use; every `every` an
//! ordinary least-squares line is fitted over the last `window`, and if it
//! reaches the threshold within the horizon with R² >= `min_r2`, a
//! prediction is made (confidence = R²). The method is documented in
//! `docs/alerting.md`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use continuity_proxy::config::{Category, Kind};
use continuity_proxy::snapshot::{EngineSnapshot, ServiceSnapshot, ServiceStatus};
use serde::Serialize;

/// Predictor settings; `Default` is the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictSettings {
    /// Samples older than this are not fitted.
    pub window: Duration,
    /// Fewer samples in the window: no fit.
    pub min_points: usize,
    /// How often the fit runs.
    pub every: Duration,
    /// A crossing further away than this is no prediction.
    pub horizon: Duration,
    /// A crossing further away than this many times the time the samples
    /// span is no prediction either (no wild extrapolation).
    pub max_extrapolation: f64,
    pub min_r2: f64,
    /// Error rate (0-1) that counts as failure.
    pub error_rate_threshold: f64,
    /// Connection use (0-1 of `max_connections`) that counts as exhaustion.
    pub connection_threshold: f64,
    /// Latency threshold for services whose own is unknown.
    pub default_latency_threshold_ms: f64,
    /// The error rate at a sample is taken over this span of probes.
    pub rate_span: Duration,
}

impl Default for PredictSettings {
    fn default() -> Self {
        PredictSettings {
            window: Duration::from_secs(600),
            min_points: 10,
            every: Duration::from_secs(10),
            horizon: Duration::from_secs(3600),
            max_extrapolation: 6.0,
            min_r2: 0.6,
            error_rate_threshold: 0.5,
            connection_threshold: 0.9,
            default_latency_threshold_ms: 1000.0,
            rate_span: Duration::from_secs(60),
        }
    }
}

/// What the predictor knows of a service beyond its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServiceLimits {
    /// The service's `latency_threshold_ms`.
    pub latency_threshold_ms: Option<f64>,
    pub max_connections: Option<u32>,
}

/// A least-squares line `y = intercept + slope * x`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    /// Coefficient of determination, 0 to 1 (0 for a flat series).
    pub r_squared: f64,
    pub n: usize,
    /// max x - min x.
    pub span: f64,
}

/// Ordinary least squares over `(x, y)`. `None` with fewer than two
/// points or when every x is the same.
pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        sxx += (x - mx) * (x - mx);
        sxy += (x - mx) * (y - my);
        syy += (y - my) * (y - my);
    }
    if sxx <= f64::EPSILON || !sxx.is_finite() || !sxy.is_finite() {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    // R² = 1 - SS_res/SS_tot = SS_reg/SS_tot; a flat series explains nothing.
    let r_squared = if syy <= f64::EPSILON * nf {
        0.0
    } else {
        ((sxy * sxy) / (sxx * syy)).clamp(0.0, 1.0)
    };
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    Some(Fit {
        slope,
        intercept,
        r_squared,
        n,
        span: hi - lo,
    })
}

impl Fit {
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }

    /// Time from `x_now` until the line reaches `threshold`, when it is
    /// rising and still below it at `x_now`.
    pub fn time_to(&self, threshold: f64, x_now: f64) -> Option<f64> {
        let now = self.at(x_now);
        if self.slope <= 0.0 || now >= threshold {
            return None;
        }
        Some((threshold - now) / self.slope)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    LatencyDegradation,
    ErrorRateIncrease,
    ConnectionExhaustion,
}

impl PredictionType {
    /// Every type; each has its `continuity_predictive_alerts_total`
    /// series at 0 from the start.
    pub const ALL: [PredictionType; 3] = [
        PredictionType::LatencyDegradation,
        PredictionType::ErrorRateIncrease,
        PredictionType::ConnectionExhaustion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::LatencyDegradation => "latency_degradation",
            PredictionType::ErrorRateIncrease => "error_rate_increase",
            PredictionType::ConnectionExhaustion => "connection_exhaustion",
        }
    }

    /// How indicators name the metric.
    pub fn label(self) -> &'static str {
        match self {
            PredictionType::LatencyDegradation => "Latency",
            PredictionType::ErrorRateIncrease => "Error rate",
            PredictionType::ConnectionExhaustion => "Connection use",
        }
    }

    pub fn metric(self) -> (&'static str, &'static str) {
        match self {
            PredictionType::LatencyDegradation => ("latency_ms", "ms"),
            PredictionType::ErrorRateIncrease => ("error_rate", "%"),
            PredictionType::ConnectionExhaustion => ("connection_use", "%"),
        }
    }

    pub fn recommended_actions(self, service: &str) -> Vec<String> {
        let list: [String; 3] = match self {
            PredictionType::LatencyDegradation => [
                format!("Check load and slow queries on {service} (/api/ops/diagnostics/slow-queries)"),
                "Verify the network path to the active upstream".to_string(),
                format!("Verify the secondary is healthy and prepare a failover (POST /api/ops/failover/trigger/{service})"),
            ],
            PredictionType::ErrorRateIncrease => [
                format!("Review probe errors of {service} in /api/ops/health/deep"),
                "Check the upstream's own logs for the failing requests".to_string(),
                format!("Consider a manual failover of {service} before the failure threshold trips"),
            ],
            PredictionType::ConnectionExhaustion => [
                "Increase connection pool size (max_connections)".to_string(),
                "Review connection leak sources".to_string(),
                "Enable connection timeout".to_string(),
            ],
        };
        list.into()
    }
}

/// The design's diagnostic category of a service.
pub fn category_of(s: &ServiceSnapshot) -> &'static str {
    match (s.category, s.kind) {
        (Category::Federal, _) => "federal",
        (Category::Vendor, _) => "vendor",
        (_, Kind::Redis | Kind::Postgres | Kind::Neo4j | Kind::Elasticsearch) => "database",
        (_, Kind::Heartbeat) => "internal",
        _ => "network",
    }
}

/// One fitted trend that reaches its threshold in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub fit: Fit,
    pub threshold: f64,
    /// The fitted value now.
    pub current: f64,
    pub seconds_to_threshold: f64,
}

/// The result of one fit of one series: `prediction` is `None` when the
/// trend does not reach the threshold in time (which resolves an open
/// prediction). Series with too few samples yield no observation at all.
#[derive(Debug, Clone)]
pub struct Observation {
    pub service: String,
    pub category: &'static str,
    pub kind: PredictionType,
    pub prediction: Option<Prediction>,
}

#[derive(Debug, Default)]
struct Series {
    points: VecDeque<(Instant, f64)>,
}

impl Series {
    fn push(&mut self, at: Instant, v: f64, window: Duration) {
        if v.is_finite() {
            self.points.push_back((at, v));
        }
        while self
            .points
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > window)
        {
            self.points.pop_front();
        }
    }

    /// Points as (seconds relative to `now`, value).
    fn relative(&self, now: Instant) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .map(|(t, v)| (-now.saturating_duration_since(*t).as_secs_f64(), *v))
            .collect()
    }
}

#[derive(Debug, Default)]
struct ServiceSeries {
    latency: Series,
    error_rate: Series,
    connections: Series,
    /// (at, total_checks, failed_checks) over `rate_span`.
    counters: VecDeque<(Instant, u64, u64)>,
}

/// The per-service series and the fit schedule.
#[derive(Debug)]
pub struct Predictor {
    settings: PredictSettings,
    limits: HashMap<String, ServiceLimits>,
    series: HashMap<String, ServiceSeries>,
    last_run: Option<Instant>,
}

impl Predictor {
    pub fn new(settings: PredictSettings, limits: HashMap<String, ServiceLimits>) -> Predictor {
        Predictor {
            settings,
            limits,
            series: HashMap::new(),
            last_run: None,
        }
    }

    /// Takes one sample of every service with upstreams.
    pub fn sample(&mut self, snap: &EngineSnapshot, now: Instant) {
        let window = self.settings.window;
        self.series
            .retain(|name, _| snap.services.iter().any(|s| &s.name == name));
        for s in snap.services.iter().filter(|s| !s.upstreams.is_empty()) {
            let series = self.series.entry(s.name.clone()).or_default();
            let serving = matches!(s.status, ServiceStatus::Healthy | ServiceStatus::Degraded);
            if let (true, Some(ms)) = (serving, s.latency_ms) {
                series.latency.push(now, ms, window);
            }
            series
                .counters
                .push_back((now, s.total_checks, s.failed_checks));
            while series.counters.len() > 2
                && series.counters.get(1).is_some_and(|(t, _, _)| {
                    now.saturating_duration_since(*t) >= self.settings.rate_span
                })
            {
                series.counters.pop_front();
            }
            if let (Some(first), Some(last)) = (series.counters.front(), series.counters.back()) {
                let total = last.1.saturating_sub(first.1);
                if total > 0 {
                    let failed = last.2.saturating_sub(first.2) as f64;
                    series.error_rate.push(now, failed / total as f64, window);
                }
            }
            let max = self.limits.get(&s.name).and_then(|l| l.max_connections);
            if let Some(max) = max.filter(|m| *m > 0) {
                let used = s.active_connections as f64 / f64::from(max);
                series.connections.push(now, used, window);
            }
        }
    }

    /// Fits every series when a run is due (every `every`).
    pub fn run(&mut self, snap: &EngineSnapshot, now: Instant) -> Vec<Observation> {
        if self
            .last_run
            .is_some_and(|t| now.saturating_duration_since(t) < self.settings.every)
        {
            return Vec::new();
        }
        self.last_run = Some(now);
        let mut out = Vec::new();
        for s in &snap.services {
            let Some(series) = self.series.get(&s.name) else {
                continue;
            };
            let latency = self
                .limits
                .get(&s.name)
                .and_then(|l| l.latency_threshold_ms)
                .unwrap_or(self.settings.default_latency_threshold_ms);
            let all = [
                (PredictionType::LatencyDegradation, &series.latency, latency),
                (
                    PredictionType::ErrorRateIncrease,
                    &series.error_rate,
                    self.settings.error_rate_threshold,
                ),
                (
                    PredictionType::ConnectionExhaustion,
                    &series.connections,
                    self.settings.connection_threshold,
                ),
            ];
            for (kind, series, threshold) in all {
                if series.points.len() < self.settings.min_points.max(2) {
                    continue;
                }
                let Some(f) = fit(&series.relative(now)) else {
                    continue;
                };
                out.push(Observation {
                    service: s.name.clone(),
                    category: category_of(s),
                    kind,
                    prediction: self.judge(f, threshold),
                });
            }
        }
        out
    }

    /// A prediction when the line reaches `threshold` soon enough, with
    /// enough confidence.
    pub fn judge(&self, f: Fit, threshold: f64) -> Option<Prediction> {
        let t = f.time_to(threshold, 0.0)?;
        let limit = self
            .settings
            .horizon
            .as_secs_f64()
            .min(f.span * self.settings.max_extrapolation);
        (f.r_squared >= self.settings.min_r2 && t <= limit).then_some(Prediction {
            fit: f,
            threshold,
            current: f.at(0.0),
            seconds_to_threshold: t,
        })
    }
}

#[cfg(test)]
#[path = "predict_tests.rs"]
mod tests;
