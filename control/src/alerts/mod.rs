//! Alerting (SPEC 9, issue #4 items 5 and 6): escalation rules and their
//! routing by tier, webhook delivery with retries, predictive alerts,
//! operator acknowledgement and emergency, and heartbeat (ETL) stalls.
//! See `docs/alerting.md`.
//!
//! - [`rules`]: the design's table ([`default_rules`]) and `[[alerts.rule]]`
//!   ([`parse_rules`]);
//! - `conditions`: which conditions hold (unresponsive since when, reported
//!   Neo4j write failures and WebSocket drops, stalls) against each rule;
//! - `state`: the pure state machine (conditions -> open/resolved alerts);
//! - [`predict`]: least-squares trend fits -> `PredictiveAlert`s;
//! - [`heartbeat`]: heartbeat services and stall detection;
//! - [`webhook`]: HTTP(S) POST with retries and backoff;
//! - `routes`: the REST routes; `effects`: bus, audit and webhooks.
//!
//! [`Alerts`] is the handle (in [`AppState`]); [`spawn`] runs the
//! evaluator every `eval_interval`.

mod conditions;
mod effects;
pub mod heartbeat;
pub mod model;
pub mod predict;
mod routes;
pub mod rules;
mod state;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use continuity_proxy::config::{Kind, ServiceConfig};
use continuity_proxy::events::{Event, EventKind};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;

pub use model::{Alert, PredictiveAlert};
pub use predict::{PredictSettings, ServiceLimits};
pub use rules::{default_rules, parse_rules, AlertSeverity, Condition, Route, Rule};
pub use state::AckError;
pub use webhook::DeliverySettings;

use crate::AppState;
use heartbeat::Heartbeats;
use predict::{PredictionType, Predictor};
use state::Core;
use webhook::Webhook;

pub const PREDICTIVE_ALERTS_TOTAL: &str = "continuity_predictive_alerts_total";
pub const ALERTS_TOTAL: &str = "continuity_alerts_total";

/// Everything the alert engine is configured with. `Default`: the
/// design's rules, no webhook, no heartbeat service.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    /// `[alerts] webhook_url` / `OPS_ALERT_WEBHOOK_URL`.
    pub webhook_url: Option<String>,
    /// Federal priority-1 alerts also go here.
    pub liaison_webhook_url: Option<String>,
    /// PEM trust anchors for `https` webhooks (else the system bundle).
    pub webhook_ca_file: Option<PathBuf>,
    pub delivery: DeliverySettings,
    /// Replace the defaults as a whole (SPEC 2).
    pub rules: Vec<Rule>,
    /// Heartbeat services: name and `stall_after_seconds`.
    pub heartbeats: Vec<(String, Duration)>,
    /// Per-service thresholds for the predictor.
    pub services: HashMap<String, ServiceLimits>,
    pub eval_interval: Duration,
    pub predict: PredictSettings,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            webhook_url: None,
            liaison_webhook_url: None,
            webhook_ca_file: None,
            delivery: DeliverySettings::default(),
            rules: default_rules(),
            heartbeats: Vec::new(),
            services: HashMap::new(),
            eval_interval: Duration::from_secs(1),
            predict: PredictSettings::default(),
        }
    }
}

impl AlertSettings {
    /// Takes the heartbeat services (`stall_after`) and every service's
    /// `latency_threshold_ms` and `max_connections` from the engine config.
    pub fn with_services(mut self, services: &[ServiceConfig]) -> AlertSettings {
        for s in services {
            if s.kind == Kind::Heartbeat {
                if let Some(after) = s.stall_after {
                    self.heartbeats.push((s.name.clone(), after));
                }
                continue;
            }
            self.services.insert(
                s.name.clone(),
                ServiceLimits {
                    latency_threshold_ms: Some(s.health.latency_threshold.as_secs_f64() * 1000.0),
                    max_connections: s.max_connections,
                },
            );
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("[alerts] {key}: {message}")]
    Webhook { key: &'static str, message: String },
    #[error("alert metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

struct Metrics {
    deliveries: IntCounterVec,
    predictive: IntCounterVec,
    alerts: IntCounterVec,
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        Ok(Metrics {
            deliveries: webhook::deliveries_counter()?,
            predictive: IntCounterVec::new(
                Opts::new(
                    PREDICTIVE_ALERTS_TOTAL,
                    "Predictive alerts raised, by prediction type.",
                ),
                &["prediction_type"],
            )?,
            alerts: IntCounterVec::new(
                Opts::new(ALERTS_TOTAL, "Escalation alerts opened, by rule and tier."),
                &["rule", "tier"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.deliveries.clone()))?;
        registry.register(Box::new(self.predictive.clone()))?;
        registry.register(Box::new(self.alerts.clone()))
    }
}

struct Inner {
    core: Mutex<Core>,
    webhook: Option<Webhook>,
    liaison: Option<Webhook>,
    metrics: Metrics,
    eval_interval: Duration,
}

/// The alert engine; cheap to clone (every clone is the same engine).
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

impl Default for Alerts {
    fn default() -> Self {
        // Unregistered metrics; no webhook, so nothing can fail.
        Alerts::build(AlertSettings::default(), None)
            .unwrap_or_else(|e| unreachable!("default alert settings cannot fail: {e}"))
    }
}

impl Alerts {
    /// Builds the engine and registers its metrics into `registry` (the
    /// one `AppState` uses). Fails on a webhook URL or CA file that cannot
    /// be used, or on a metric name already registered.
    pub fn new(settings: AlertSettings, registry: &Registry) -> Result<Alerts, AlertsError> {
        Alerts::build(settings, Some(registry))
    }

    fn build(s: AlertSettings, registry: Option<&Registry>) -> Result<Alerts, AlertsError> {
        let metrics = Metrics::new()?;
        let hook = |key: &'static str, url: &Option<String>| {
            url.as_deref()
                .map(|u| {
                    Webhook::new(
                        u,
                        s.webhook_ca_file.as_deref(),
                        s.delivery.clone(),
                        metrics.deliveries.clone(),
                    )
                    .map_err(|message| AlertsError::Webhook { key, message })
                })
                .transpose()
        };
        let webhook = hook("webhook_url", &s.webhook_url)?;
        let liaison = hook("liaison_webhook_url", &s.liaison_webhook_url)?;
        if let Some(r) = registry {
            metrics.register(r)?;
        }
        // Every rule's and every prediction type's series at 0 from the
        // start: Prometheus' increase() does not count the event that
        // creates a series.
        for rule in &s.rules {
            let tier = rule.tier.to_string();
            metrics
                .alerts
                .with_label_values(&[rule.name.as_str(), tier.as_str()]);
        }
        for kind in PredictionType::ALL {
            metrics.predictive.with_label_values(&[kind.as_str()]);
        }
        let now = Instant::now();
        let core = Core::new(
            s.rules,
            Heartbeats::new(&s.heartbeats, now),
            Predictor::new(s.predict, s.services),
        );
        Ok(Alerts {
            inner: Arc::new(Inner {
                core: Mutex::new(core),
                webhook,
                liaison,
                metrics,
                eval_interval: s.eval_interval,
            }),
        })
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.inner.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Bolt `FAILURE` to a write on `service` (or a failed write probe):
    /// the `neo4j_write_failure` rule opens its alert on the next
    /// evaluation, and keeps it open until `clear_after_seconds` pass
    /// without another report.
    pub fn neo4j_write_failure(&self, service: &str, detail: &str) {
        self.core()
            .neo4j_write_failure(service, detail, Instant::now());
    }

    /// Takes what it needs from one engine event: a
    /// `Neo4jWriteFailure` becomes [`Alerts::neo4j_write_failure`].
    /// [`spawn`] feeds every event here.
    pub fn observe(&self, event: &Event) {
        if let (EventKind::Neo4jWriteFailure { upstream, code, .. }, Some(service)) =
            (&event.kind, event.service.as_deref())
        {
            self.neo4j_write_failure(service, &format!("{code} from {upstream}"));
        }
    }

    /// The share (0-1) of continuity's own WebSocket clients dropped within
    /// the last minute; report it periodically (it counts for the rule's
    /// `window_seconds`).
    pub fn websocket_drop_ratio(&self, ratio: f64) {
        self.core().websocket_drop(None, ratio, Instant::now());
    }

    /// The same for a `websocket` service's clients (its probe).
    pub fn service_websocket_drop_ratio(&self, service: &str, ratio: f64) {
        self.core()
            .websocket_drop(Some(service), ratio, Instant::now());
    }

    /// Open alerts (escalations and predictions), newest first, as the
    /// API shows them (for `/api/ops/diagnostics/report`).
    pub fn open_alerts(&self) -> Vec<Value> {
        self.core().list(true).into_iter().map(|(_, v)| v).collect()
    }

    /// Open and recently resolved alerts, newest first.
    pub fn all_alerts(&self) -> Vec<Value> {
        self.core()
            .list(false)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Predictive alerts raised since start (`predictive_alerts_generated`).
    pub fn predictive_alerts_generated(&self) -> u64 {
        use prometheus::core::Collector;
        self.inner
            .metrics
            .predictive
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// One evaluation: rules, stalls, predictor; then the effects.
    pub async fn evaluate(&self, state: &AppState) {
        let snap = state.engine.snapshot();
        let (now, wall) = (Instant::now(), Utc::now());
        let effects = {
            let mut core = self.core();
            let mut effects = core.evaluate(&snap, now, wall);
            core.predictor.sample(&snap, now);
            let obs = core.predictor.run(&snap, now);
            effects.extend(core.apply_predictions(obs, wall));
            effects
        };
        effects::run(state, self, effects).await;
    }
}

/// Starts the webhook workers and the evaluator of `state.alerts`, which
/// runs every `eval_interval` until the task is aborted, and reads the
/// engine's events for the conditions the data plane reports (a Bolt
/// `FAILURE` to a write).
pub fn spawn(state: AppState) -> JoinHandle<()> {
    let alerts = state.alerts.clone();
    for hook in [&alerts.inner.webhook, &alerts.inner.liaison]
        .into_iter()
        .flatten()
    {
        if hook.start().is_some() {
            tracing::info!(webhook = %hook.origin(), "alert webhook delivery started");
        }
    }
    let mut events = Some(state.engine.subscribe());
    tokio::spawn(async move {
        let period = alerts.inner.eval_interval.max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => alerts.evaluate(&state).await,
                ev = event => match ev {
                    Ok(ev) => alerts.observe(&ev),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "alert engine lagged behind the engine's events");
                    }
                    Err(broadcast::error::RecvError::Closed) => events = None,
                },
            }
        }
    })
}

/// `GET /api/ops/diagnostics/alerts`, `POST /api/ops/alerts/{id}/ack`,
/// `POST /api/ops/emergency`, `POST /api/ops/heartbeat/{name}`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(routes::list))
        .routes(utoipa_axum::routes!(routes::ack))
        .routes(utoipa_axum::routes!(routes::emergency))
        .routes(utoipa_axum::routes!(routes::heartbeat))
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    /// Prometheus' `increase()` does not count the event that creates a
    /// series, so every configured rule's `continuity_alerts_total` series
    /// exists at 0 from the start: an alert rule on it (the Neo4j write
    /// failure in docker/prometheus/alerts.yml) then sees the first alert.
    #[test]
    fn every_rule_has_its_alerts_series_at_zero_from_the_start() {
        let registry = Registry::new();
        let _alerts = Alerts::new(AlertSettings::default(), &registry).expect("alerts");
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == ALERTS_TOTAL)
            .expect("continuity_alerts_total is exported before any alert");
        let mut series: Vec<(String, String, f64)> = family
            .get_metric()
            .iter()
            .map(|m| {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                (label("rule"), label("tier"), m.get_counter().get_value())
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<(String, String, f64)> = default_rules()
            .iter()
            .map(|r| (r.name.clone(), r.tier.to_string(), 0.0))
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(series, want);
        assert!(series.contains(&("neo4j_write_failure".into(), "1".into(), 0.0)));
    }
}
