//! Carries out what the alert state decided, outside its lock: publish on
//! the diagnostics channel, append to the audit log, queue webhook POSTs.
//! The evaluator cannot refuse anything, so a failed audit append is
//! logged (the operator routes audit through `AppState::record` instead,
//! before they act).

use continuity_proxy::snapshot::ServiceStatus;
use serde_json::{json, Value};

use super::model::{Alert, Effect};
use super::rules::Route;
use super::Alerts;
use crate::audit::{Action, NewEntry, Severity};
use crate::bus::Channel;
use crate::AppState;

/// The audit severity of an alert tier.
pub fn tier_severity(tier: u8) -> Severity {
    match tier {
        1 => Severity::Critical,
        2 => Severity::Error,
        3 => Severity::Warning,
        _ => Severity::Info,
    }
}

pub async fn run(state: &AppState, alerts: &Alerts, effects: Vec<Effect>) {
    for e in effects {
        one(state, alerts, e).await;
    }
}

async fn audit(state: &AppState, entry: NewEntry) {
    if let Some(log) = &state.audit {
        if let Err(e) = log.append(entry).await {
            tracing::error!(error = %e, "alert audit append failed");
        }
    }
}

fn entry(action: Action, severity: Severity, service: Option<&str>, details: Value) -> NewEntry {
    let e = NewEntry::new(action, severity, "system", details);
    match service {
        Some(s) => e.service(s),
        None => e,
    }
}

/// Queues `payload` for the webhook, and for the liaison when routed there,
/// masked with the audit log's masker: an alert's evidence may quote a
/// pipeline's checkpoint or an upstream's error text.
pub fn send(state: &AppState, alerts: &Alerts, routes: &[Route], payload: Value) {
    let payload = state.masker().masked(&payload).unwrap_or(payload);
    if routes.contains(&Route::FederalLiaison) {
        if let Some(l) = &alerts.inner.liaison {
            l.enqueue(payload.clone());
        }
    }
    if let Some(w) = &alerts.inner.webhook {
        w.enqueue(payload);
    }
}

fn alert_event(event: &str, a: &Alert) -> Value {
    json!({ "event": event, "alert": a })
}

fn escalation_details(event: &str, a: &Alert) -> Value {
    json!({
        "event": event, "alert_id": a.id, "rule": a.rule, "condition": a.condition,
        "severity": a.severity, "tier": a.tier, "routes": a.routes,
        "message": a.message, "evidence": a.details,
    })
}

/// Audit first (fsynced), then the bus, then the webhooks.
async fn one(state: &AppState, alerts: &Alerts, e: Effect) {
    let publish = |kind: &str, service: Option<&str>, data: &Value| {
        state
            .bus
            .publish(Channel::Diagnostics, kind, service, data.clone());
    };
    match e {
        Effect::Opened(a) => {
            let tier = a.tier.to_string();
            let m = &alerts.inner.metrics.alerts;
            m.with_label_values(&[a.rule.as_str(), tier.as_str()]).inc();
            tracing::warn!(alert = %a.id, rule = %a.rule, tier = a.tier, message = %a.message, "alert opened");
            let details = escalation_details("alert_opened", &a);
            let svc = a.service.as_deref();
            let sev = tier_severity(a.tier);
            audit(state, entry(Action::Escalation, sev, svc, details)).await;
            let data = alert_event("alert_opened", &a);
            publish("diagnostic_event", svc, &data);
            send(state, alerts, &a.routes, data);
        }
        Effect::Resolved(a) => {
            tracing::info!(alert = %a.id, rule = %a.rule, "alert resolved");
            let mut details = escalation_details("alert_resolved", &a);
            details["opened_at"] = json!(a.opened_at);
            details["resolved_at"] = json!(a.resolved_at);
            let svc = a.service.as_deref();
            audit(
                state,
                entry(Action::Escalation, Severity::Info, svc, details),
            )
            .await;
            let data = alert_event("alert_resolved", &a);
            publish("diagnostic_event", svc, &data);
            send(state, alerts, &a.routes, data);
        }
        Effect::Rerouted(list) => {
            if list.is_empty() {
                return;
            }
            let ids: Vec<&str> = list.iter().map(|a| a.id.as_str()).collect();
            let details = json!({
                "event": "alerts_rerouted", "reason": "emergency declared",
                "alert_ids": ids, "routes": super::rules::DASHBOARDS,
            });
            audit(
                state,
                entry(Action::Escalation, Severity::Critical, None, details),
            )
            .await;
            for a in &list {
                let data = alert_event("alert_rerouted", a);
                publish("diagnostic_event", a.service.as_deref(), &data);
                send(state, alerts, &a.routes, data);
            }
        }
        Effect::Stalled(v) | Effect::Resumed(v) => {
            let stalled = v["state"] == "stalled";
            let name = v["name"].as_str().map(str::to_string);
            let (event, sev) = if stalled {
                tracing::warn!(pipeline = ?name, "ETL pipeline stalled");
                ("etl_stall", Severity::Error)
            } else {
                tracing::info!(pipeline = ?name, "ETL pipeline resumed");
                ("etl_resumed", Severity::Info)
            };
            if let Some(n) = name.as_deref() {
                let status = if stalled {
                    ServiceStatus::Down
                } else {
                    ServiceStatus::Healthy
                };
                if let Err(e) = state.engine.report_status(n, status).await {
                    tracing::debug!(pipeline = n, error = %e, "heartbeat status not reported");
                }
            }
            let mut details = v.clone();
            details["event"] = json!(event);
            audit(
                state,
                entry(Action::DiagnosticEvent, sev, name.as_deref(), details),
            )
            .await;
            publish("etl_stall", name.as_deref(), &v);
        }
        Effect::Predicted(p) => {
            let m = &alerts.inner.metrics.predictive;
            m.with_label_values(&[p.prediction_type.as_str()]).inc();
            tracing::warn!(alert = %p.id, message = %p.message, "predictive alert");
            let details = json!({
                "event": "predictive_alert", "alert_id": p.id,
                "prediction_type": p.prediction_type, "confidence": p.confidence,
                "predicted_failure_time": p.predicted_failure_time,
                "indicators": p.indicators, "trend": p.trend,
            });
            let svc = Some(p.service.as_str());
            audit(
                state,
                entry(Action::DiagnosticEvent, Severity::Warning, svc, details),
            )
            .await;
            let data = serde_json::to_value(&p).unwrap_or_default();
            publish("predictive_alert", svc, &data);
            send(
                state,
                alerts,
                &p.routes,
                json!({ "event": "predictive_alert", "alert": data }),
            );
        }
        Effect::PredictionResolved(p) => {
            let data = json!({ "event": "predictive_alert_resolved", "alert": p });
            publish("diagnostic_event", Some(&p.service), &data);
            send(state, alerts, &p.routes, data);
        }
    }
}
