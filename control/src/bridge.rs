//! Engine events -> operations bus (SPEC 5): the health and failover
//! channels, and the vendor/federal outage messages of the diagnostics
//! channel. Runs as one task per engine; a lag on the engine's bus is
//! reported on the failover channel, never ignored.

use continuity_proxy::config::Category;
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::{FailoverState, ServiceStatus};
use continuity_proxy::Engine;
use serde_json::json;
use tokio::sync::broadcast;

use crate::bus::{Channel, OpsBus};

/// Publishes the bus messages one engine event stands for.
pub fn publish(bus: &OpsBus, engine: &Engine, event: &Event) {
    let service = event.service.as_deref();
    let data = serde_json::to_value(&event.kind).unwrap_or_else(|_| json!({}));
    match &event.kind {
        EventKind::ServiceStatusChanged { new, .. } => {
            bus.publish(
                Channel::Health,
                "service_status_change",
                service,
                data.clone(),
            );
            match new {
                ServiceStatus::Degraded => {
                    bus.publish(Channel::Health, "service_degraded", service, data.clone());
                }
                ServiceStatus::Down => {
                    bus.publish(Channel::Health, "service_failure", service, data.clone());
                    let category = service
                        .and_then(|name| engine.snapshot().service(name).map(|s| s.category));
                    match category {
                        Some(Category::Vendor) => {
                            bus.publish(Channel::Diagnostics, "vendor_unavailable", service, data);
                        }
                        Some(Category::Federal) => {
                            bus.publish(
                                Channel::Diagnostics,
                                "federal_interruption",
                                service,
                                data,
                            );
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        EventKind::UpstreamStateChanged { .. } => {
            let snap = service.and_then(|name| engine.snapshot().service(name).cloned());
            bus.publish(
                Channel::Health,
                "health_update",
                service,
                json!({ "event": data, "service": snap }),
            );
        }
        EventKind::FailoverActivated { .. } => {
            bus.publish(Channel::Failover, "failover_activated", service, data);
        }
        EventKind::RecoveryCompleted { .. } => {
            bus.publish(Channel::Failover, "recovery_completed", service, data);
        }
        // Redis memory fallback (docs/fallback.md): `data.fallback = "memory"`.
        EventKind::FallbackActivated { .. } => {
            bus.publish(Channel::Failover, "failover_activated", service, data);
        }
        EventKind::FallbackDeactivated { .. } => {
            bus.publish(Channel::Failover, "recovery_completed", service, data);
        }
        EventKind::FailoverStateChanged { new, .. } => {
            bus.publish(Channel::Failover, "failover_event", service, data.clone());
            if *new == FailoverState::Emergency {
                bus.publish(Channel::Failover, "emergency_state", service, data);
            }
        }
        EventKind::EmergencyDeclared { .. } => {
            bus.publish(Channel::Failover, "emergency_state", service, data);
        }
        // A cluster decision and this engine's etcd link: `failover_event`
        // with `data.type` = `cluster_decision` | `cluster_connection`.
        EventKind::FailoverBlocked { .. }
        | EventKind::ClusterDecision { .. }
        | EventKind::ClusterConnection { .. } => {
            bus.publish(Channel::Failover, "failover_event", service, data);
        }
        // The diagnostics engine publishes `diagnostic_event` and `slow_query`.
        EventKind::HoldTimedOut { .. }
        | EventKind::SlowQuery { .. }
        | EventKind::Neo4jWriteFailure { .. }
        | EventKind::UpstreamError { .. }
        | EventKind::ProtocolError { .. } => {}
    }
}

/// Runs until the engine's bus closes.
pub async fn run(bus: OpsBus, engine: Engine, mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(event) => publish(&bus, &engine, &event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "ops bridge lagged behind the engine");
                bus.publish(
                    Channel::Failover,
                    "failover_event",
                    None,
                    json!({ "event": "bridge_lagged", "missed_events": missed }),
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
