//! The audit log's settings, its clock, what callers pass in, and its
//! metrics.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::Value;

use super::entry::{Action, Severity};
use super::metric_names;

/// Default `segment_max_bytes`: 64 MiB (SPEC 7).
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default `checkpoint_every` (SPEC 7).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Appends queued for the writer before `append` waits (backpressure).
pub const QUEUE_CAPACITY: usize = 65_536;
/// How often the writer looks for expired segments when nothing rotates.
pub const RETENTION_TICK: Duration = Duration::from_secs(600);

/// The time source of timestamps, rotation and retention: the system
/// clock, or a manual one that tests set.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(Mutex::new(start)))
    }
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, to: DateTime<Utc>) {
        if let Clock::Manual(t) = self {
            *t.lock().unwrap_or_else(|e| e.into_inner()) = to;
        }
    }
}

/// `[audit]`, resolved. Build with `..AuditSettings::default()` so that
/// fields added later keep their defaults.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub dir: PathBuf,
    pub retention_days: u32,
    pub mask_patterns: Vec<String>,
    /// PKCS#8 PEM Ed25519 private key: signed checkpoints.
    pub signing_key: Option<PathBuf>,
    pub segment_max_bytes: u64,
    pub checkpoint_every: u64,
    pub clock: Clock,
}

impl Default for AuditSettings {
    fn default() -> AuditSettings {
        AuditSettings {
            dir: PathBuf::from("audit"),
            retention_days: 365,
            mask_patterns: vec![r"\d{3}-\d{2}-\d{4}".to_string()],
            signing_key: None,
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            clock: Clock::System,
        }
    }
}

/// What a caller records; the log adds seq, entry_id, timestamp and hashes.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub action: Action,
    pub severity: Severity,
    /// `system` for the engine itself, a token's `name` for an operator.
    pub actor: String,
    pub service: Option<String>,
    /// An object (anything else is wrapped as `{"value": …}`).
    pub details: Value,
}

impl NewEntry {
    pub fn new(
        action: Action,
        severity: Severity,
        actor: impl Into<String>,
        details: Value,
    ) -> NewEntry {
        NewEntry {
            action,
            severity,
            actor: actor.into(),
            service: None,
            details,
        }
    }
    pub fn service(mut self, service: impl Into<String>) -> NewEntry {
        self.service = Some(service.into());
        self
    }
}

#[derive(Debug, Clone)]
pub struct AuditMetrics {
    pub entries_total: IntCounterVec,
    pub chain_verified: IntGauge,
    /// Whole-log scans made by live verification (cached calls excluded).
    pub verify_scans: IntCounter,
}

impl AuditMetrics {
    pub(super) fn new() -> Result<AuditMetrics, prometheus::Error> {
        let entries_total = IntCounterVec::new(
            Opts::new(
                metric_names::AUDIT_ENTRIES_TOTAL,
                "Audit entries written (fsynced) since the engine started, by action.",
            ),
            &["action"],
        )?;
        for a in Action::ALL {
            entries_total.with_label_values(&[a.as_str()]);
        }
        let chain_verified = IntGauge::new(
            metric_names::AUDIT_CHAIN_VERIFIED,
            "1 when the audit hash chain verified at the last check (start-up or GET /api/ops/audit/verify), else 0.",
        )?;
        let verify_scans = IntCounter::new(
            metric_names::AUDIT_VERIFY_SCANS_TOTAL,
            "Whole-log scans made by GET /api/ops/audit/verify; a call with no new entry and no changed segment since the last scan is answered from it and not counted.",
        )?;
        Ok(AuditMetrics {
            entries_total,
            chain_verified,
            verify_scans,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.entries_total.clone()))?;
        registry.register(Box::new(self.chain_verified.clone()))?;
        registry.register(Box::new(self.verify_scans.clone()))
    }
}
