//! Diagnostics (issue #4 items 1 and 2, SPEC 4 and 5): every failure the
//! engine sees, from a probe or from real traffic, classified by the rule
//! table in [`classify`] (`docs/diagnostics.md`) into a [`DiagnosticEvent`];
//! and the slow statements the data path timed. Both are kept in bounded
//! rings, published on the diagnostics channel (`diagnostic_event`,
//! `slow_query`) and counted (`continuity_diagnostic_events_total`,
//! `continuity_slow_queries_total`).
//!
//! [`spawn`] runs one task per engine: engine events as they come, and
//! every [`POLL_EVERY`] the upstreams' probe histories (a failed probe
//! that does not cross a threshold is no engine event, but it is a
//! failure the engine saw).

pub mod classify;
pub mod model;
mod routes;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use continuity_proxy::config::Kind;
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::EngineSnapshot;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use classify::{classify, ServiceInfo};
pub use model::{DiagCategory, DiagSeverity, Diagnosis, DiagnosticEvent, Filter, SlowQuery};
pub use routes::routes;

use crate::bus::{Channel, OpsBus};
use crate::AppState;

/// Diagnostic events kept (oldest dropped first).
pub const EVENTS_CAP: usize = 10_000;
/// Slow queries kept.
pub const SLOW_CAP: usize = 1_000;
/// Distinct error classes counted for `top_error_classes` (beyond: `other`).
const CLASSES_CAP: usize = 256;
/// How often probe histories are read.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

pub mod names {
    pub const DIAGNOSTIC_EVENTS_TOTAL: &str = "continuity_diagnostic_events_total";
    pub const SLOW_QUERIES_TOTAL: &str = "continuity_slow_queries_total";
}

#[derive(Debug, Clone)]
struct ClassStat {
    category: DiagCategory,
    count: u64,
    last_seen: DateTime<Utc>,
}

#[derive(Default)]
struct Store {
    events: VecDeque<DiagnosticEvent>,
    slow: VecDeque<SlowQuery>,
    total: u64,
    by_category: [u64; 5],
    by_severity: [u64; 4],
    slow_total: u64,
    classes: HashMap<String, ClassStat>,
    next_id: u64,
    /// Per upstream, the newest probe already looked at.
    probes_seen: HashMap<String, DateTime<Utc>>,
    services: HashMap<String, ServiceInfo>,
}

struct Metrics {
    events: IntCounterVec,
    slow: IntCounterVec,
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                names::DIAGNOSTIC_EVENTS_TOTAL,
                "Diagnostic events, by category (network, database, federal, vendor, internal) and severity.",
            ),
            &["category", "severity"],
        )?;
        for c in DiagCategory::ALL {
            for s in DiagSeverity::ALL {
                events.with_label_values(&[c.as_str(), s.as_str()]);
            }
        }
        let slow = IntCounterVec::new(
            Opts::new(
                names::SLOW_QUERIES_TOTAL,
                "Statements slower than the service's slow_query_ms, seen in the data path.",
            ),
            &["service"],
        )?;
        Ok(Metrics { events, slow })
    }
}

#[derive(Default)]
struct Inner {
    store: Mutex<Store>,
    metrics: OnceLock<Metrics>,
    predictive: AtomicU64,
}

/// The diagnostics engine (cheap to clone; every clone is the same).
#[derive(Clone, Default)]
pub struct Diagnostics {
    inner: Arc<Inner>,
}

impl Diagnostics {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the two metric families into `registry` (once; later
    /// calls do nothing). Until then nothing is counted in Prometheus,
    /// though the report counts everything.
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        if self.inner.metrics.get().is_some() {
            return Ok(());
        }
        let m = Metrics::new()?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.slow.clone()))?;
        let _ = self.inner.metrics.set(m);
        Ok(())
    }

    /// Learns each service's kind and category (for the rule table), and
    /// creates `continuity_slow_queries_total` at 0 for each service whose
    /// kind has statements (what `protocol::observe::Tap` parses): Prometheus'
    /// increase() does not count the event that creates a series.
    pub fn learn_services(&self, snap: &EngineSnapshot) {
        if let Some(m) = self.inner.metrics.get() {
            for s in &snap.services {
                if matches!(s.kind, Kind::Postgres | Kind::Redis | Kind::Neo4j) {
                    m.slow.with_label_values(&[s.name.as_str()]);
                }
            }
        }
        let mut st = self.store();
        for s in &snap.services {
            let info = ServiceInfo {
                kind: s.kind,
                category: s.category,
            };
            st.services.insert(s.name.clone(), info);
        }
    }

    fn service_info(&self, service: Option<&str>) -> Option<ServiceInfo> {
        service.and_then(|s| self.store().services.get(s).copied())
    }

    /// Keeps, counts and publishes one diagnosis. Other modules (the alert
    /// engine, heartbeats) may record their own through this too.
    pub fn record(&self, bus: &OpsBus, service: Option<&str>, d: Diagnosis) -> DiagnosticEvent {
        self.record_at(bus, service, d, Utc::now())
    }

    fn record_at(
        &self,
        bus: &OpsBus,
        service: Option<&str>,
        d: Diagnosis,
        at: DateTime<Utc>,
    ) -> DiagnosticEvent {
        let event = {
            let mut st = self.store();
            st.next_id += 1;
            let event = DiagnosticEvent {
                id: st.next_id,
                at,
                category: d.category,
                severity: d.severity,
                service: service.map(str::to_string),
                upstream: d.upstream,
                class: d.class,
                message: d.message,
            };
            st.total += 1;
            st.by_category[event.category.index()] += 1;
            st.by_severity[event.severity.index()] += 1;
            if event.severity > DiagSeverity::Info {
                let key = if st.classes.len() < CLASSES_CAP || st.classes.contains_key(&event.class)
                {
                    event.class.clone()
                } else {
                    "other".to_string()
                };
                let stat = st.classes.entry(key).or_insert(ClassStat {
                    category: event.category,
                    count: 0,
                    last_seen: event.at,
                });
                stat.count += 1;
                stat.last_seen = event.at;
            }
            if st.events.len() >= EVENTS_CAP {
                st.events.pop_front();
            }
            st.events.push_back(event.clone());
            event
        };
        if let Some(m) = self.inner.metrics.get() {
            m.events
                .with_label_values(&[event.category.as_str(), event.severity.as_str()])
                .inc();
        }
        let data = serde_json::to_value(&event).unwrap_or_else(|_| json!({}));
        bus.publish(Channel::Diagnostics, "diagnostic_event", service, data);
        event
    }

    /// Keeps, counts and publishes one slow statement.
    pub fn record_slow(&self, bus: &OpsBus, q: SlowQuery) {
        if let Some(m) = self.inner.metrics.get() {
            m.slow.with_label_values(&[q.service.as_str()]).inc();
        }
        let data = serde_json::to_value(&q).unwrap_or_else(|_| json!({}));
        let service = q.service.clone();
        {
            let mut st = self.store();
            st.slow_total += 1;
            if st.slow.len() >= SLOW_CAP {
                st.slow.pop_front();
            }
            st.slow.push_back(q);
        }
        bus.publish(Channel::Diagnostics, "slow_query", Some(&service), data);
    }

    /// Handles one engine event: a slow query, a diagnosis, or nothing.
    pub fn ingest(&self, bus: &OpsBus, event: &Event) -> Option<DiagnosticEvent> {
        let service = event.service.as_deref();
        if let EventKind::SlowQuery {
            upstream,
            statement,
            duration_ms,
            command_kind,
        } = &event.kind
        {
            self.record_slow(
                bus,
                SlowQuery {
                    service: service.unwrap_or_default().to_string(),
                    upstream: upstream.clone(),
                    statement: statement.clone(),
                    duration_ms: *duration_ms,
                    at: event.at,
                    command_kind: command_kind.clone(),
                },
            );
            return None;
        }
        let d = classify(event, self.service_info(service))?;
        Some(self.record(bus, service, d))
    }

    /// Records every failed probe in `snap` not seen before (the first
    /// look at an upstream takes its whole recent history), at the time the
    /// probe ran.
    pub fn poll_probes(&self, bus: &OpsBus, snap: &EngineSnapshot) {
        let mut found = Vec::new();
        {
            let mut st = self.store();
            for s in &snap.services {
                let info = ServiceInfo {
                    kind: s.kind,
                    category: s.category,
                };
                st.services.insert(s.name.clone(), info);
                for u in &s.upstreams {
                    let Some(newest) = u.history.iter().map(|p| p.at).max() else {
                        continue;
                    };
                    let seen = st
                        .probes_seen
                        .insert(u.name.clone(), newest)
                        .unwrap_or(DateTime::<Utc>::MIN_UTC);
                    for p in u.history.iter().filter(|p| p.at > seen && !p.ok) {
                        let d = classify::classify_probe(&u.name, p, Some(info));
                        found.push((s.name.clone(), d, p.at));
                    }
                }
            }
        }
        for (service, d, at) in found {
            self.record_at(bus, Some(&service), d, at);
        }
    }

    /// Events matching `f`, newest first.
    pub fn events(&self, f: &Filter) -> Vec<DiagnosticEvent> {
        let st = self.store();
        st.events
            .iter()
            .rev()
            .filter(|e| f.matches(e))
            .take(f.effective_limit())
            .cloned()
            .collect()
    }

    /// The latest `n` events, newest first.
    pub fn recent(&self, n: usize) -> Vec<DiagnosticEvent> {
        let st = self.store();
        st.events.iter().rev().take(n).cloned().collect()
    }

    /// Slow queries matching `f` (service, since, limit), newest first.
    pub fn slow_queries(&self, f: &Filter) -> Vec<SlowQuery> {
        let st = self.store();
        st.slow
            .iter()
            .rev()
            .filter(|q| f.matches_slow(q))
            .take(f.effective_limit())
            .cloned()
            .collect()
    }

    /// A predictive alert was raised by a predictor outside the alert
    /// engine (the alert engine's own count is read from it directly).
    pub fn count_predictive_alert(&self) {
        self.inner.predictive.fetch_add(1, Ordering::Relaxed);
    }

    /// The report's `metrics` and `top_error_classes`; `predictive` is
    /// added to the count of [`Diagnostics::count_predictive_alert`].
    pub fn report(&self, predictive: u64) -> Value {
        let st = self.store();
        let by_category: serde_json::Map<String, Value> = DiagCategory::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), json!(st.by_category[c.index()])))
            .collect();
        let by_severity: serde_json::Map<String, Value> = DiagSeverity::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), json!(st.by_severity[s.index()])))
            .collect();
        let mut classes: Vec<(&String, &ClassStat)> = st.classes.iter().collect();
        classes.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        let top: Vec<Value> = classes
            .into_iter()
            .take(10)
            .map(|(class, s)| {
                json!({ "class": class, "category": s.category, "count": s.count, "last_seen": s.last_seen })
            })
            .collect();
        json!({
            "metrics": {
                "total_events": st.total,
                "events_by_category": by_category,
                "events_by_severity": by_severity,
                "slow_queries_detected": st.slow_total,
                "predictive_alerts_generated":
                    predictive + self.inner.predictive.load(Ordering::Relaxed),
            },
            "top_error_classes": top,
        })
    }
}

/// Runs the diagnostics of `state.engine` until its event bus closes:
/// registers the metrics into `state.registry`, classifies every event
/// from `events`, polls probe histories every [`POLL_EVERY`], and reports
/// Neo4j write failures to the alert engine. Pass a receiver subscribed
/// before traffic starts (`events.resubscribe()` of the engine's).
pub fn spawn(state: &AppState, mut events: broadcast::Receiver<Event>) -> JoinHandle<()> {
    let diag = state.diagnostics.clone();
    if let Err(e) = diag.register_metrics(&state.registry) {
        tracing::warn!(error = %e, "diagnostics metrics not registered");
    }
    // Before the control plane serves: the first scrape has the series.
    diag.learn_services(&state.engine.snapshot());
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = events.recv() => match r {
                    Ok(event) => {
                        if let EventKind::Neo4jWriteFailure { code, statement, .. } = &event.kind {
                            let service = event.service.as_deref().unwrap_or_default();
                            state.alerts.neo4j_write_failure(service, &format!("{code}: {statement}"));
                        }
                        diag.ingest(&state.bus, &event);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "diagnostics lagged behind the engine");
                        let d = Diagnosis {
                            category: DiagCategory::Internal,
                            severity: DiagSeverity::Warning,
                            class: "diagnostics_lagged".into(),
                            upstream: None,
                            message: format!("diagnostics missed {missed} engine events (burst)"),
                        };
                        diag.record(&state.bus, None, d);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    // Services a reload added get their series too.
                    let snap = state.engine.snapshot();
                    diag.learn_services(&snap);
                    diag.poll_probes(&state.bus, &snap);
                }
            }
        }
    })
}
