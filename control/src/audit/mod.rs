//! The audit log (SPEC 7): an append-only, hash-chained, optionally
//! signed record of every failover, manual intervention and config change,
//! that nobody can rewrite unnoticed. See `docs/audit.md`.
//!
//! - [`entry`]: the exact line format, the hash rule, the line scanner;
//! - [`mask`]: secrets become `***` before anything is hashed or written;
//! - [`segment`]: segment files, rotation, retention, quarantine;
//! - `writer`: the group-commit thread (one write + one fsync per batch,
//!   each entry acknowledged only after the fsync that covers it);
//! - [`verify`]: one streaming pass that names the first broken seq;
//! - [`checkpoint`]: Ed25519 checkpoints and `audit keygen`;
//! - [`index`]: counts, recent entries and manual interventions in memory;
//! - `live`: what keeps `GET /api/ops/audit/verify` single-flight and cached.
//!
//! [`AuditLog`] is the engine's handle; [`verify_dir`], [`verify_cli`] and
//! [`keygen_cli`] work offline on a directory.

pub mod checkpoint;
mod cli;
pub mod entry;
pub mod index;
mod live;
pub mod mask;
mod open;
pub mod segment;
mod settings;
pub mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use prometheus::Registry;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use checkpoint::keygen;
pub use cli::{
    keygen_cli, verify_cli, verify_cli_output, verify_dir, EXIT_BROKEN, EXIT_OK, EXIT_UNREADABLE,
};
pub use entry::{Action, Severity};
pub use index::{AuditFilter, AuditStatus};
pub use segment::Quarantined;
pub use settings::{
    AuditMetrics, AuditSettings, Clock, NewEntry, DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_SEGMENT_MAX_BYTES, QUEUE_CAPACITY, RETENTION_TICK,
};
pub use verify::VerifyReport;
pub use writer::Appended;

use index::Index;
use mask::Masker;
use writer::{Msg, Prepared, Writer};

/// Metric names (SPEC 6).
pub mod metric_names {
    pub const AUDIT_ENTRIES_TOTAL: &str = "continuity_audit_entries_total";
    pub const AUDIT_CHAIN_VERIFIED: &str = "continuity_audit_chain_verified";
    pub const AUDIT_VERIFY_SCANS_TOTAL: &str = "continuity_audit_verify_scans_total";
}

/// What [`AuditLog::open`] found and did.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// The chain as found on disk.
    pub found: VerifyReport,
    /// The chain once a torn tail was moved aside (what the gauge shows).
    pub verify: VerifyReport,
    pub quarantined: Vec<Quarantined>,
    pub retention_removed: Vec<String>,
    /// The start-up checkpoint, when signing.
    pub checkpoint: Option<Appended>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Pattern(String),
    #[error("{0}")]
    Invalid(String),
    #[error("audit metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the audit log is closed")]
    Closed,
    /// The write or fsync covering this entry failed; it is not in the log.
    #[error("audit write failed: {0}")]
    Write(String),
}

impl AuditError {
    pub fn io(path: &Path, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

struct Inner {
    /// An exclusive lock on `DIR/.lock`, held while the log is open: two
    /// engines appending to one directory would fork the chain.
    /// Released by `shutdown`, so the directory can be reopened at once.
    lock: Mutex<Option<std::fs::File>>,
    tx: mpsc::Sender<Msg>,
    index: Arc<Mutex<Index>>,
    masker: Masker,
    metrics: AuditMetrics,
    settings: AuditSettings,
    /// The last live verification and what it verified; its lock makes
    /// callers of [`AuditLog::verify_cached`] wait for one scan.
    verify_cache: tokio::sync::Mutex<Option<(live::Stamp, VerifyReport)>>,
}

/// The engine's handle on its audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl AuditLog {
    /// Opens or creates `settings.dir`, verifies the chain on disk, moves a
    /// torn last line to `DIR/quarantine/` and records it as a critical
    /// `diagnostic_event`, applies retention, writes a checkpoint when
    /// signing, and starts the writer. Needs a tokio runtime. A chain that
    /// does not verify is no error: the log keeps working, the gauge says 0.
    pub async fn open(
        settings: AuditSettings,
        registry: &Registry,
    ) -> Result<(AuditLog, OpenReport), AuditError> {
        let masker = Masker::new(&settings.mask_patterns).map_err(AuditError::Pattern)?;
        let signing = settings
            .signing_key
            .as_deref()
            .map(checkpoint::load_signing_key)
            .transpose()?;
        let metrics = AuditMetrics::new()?;
        let lock = lock_dir(&settings.dir)?;
        let dir = settings.dir.clone();
        let rec = tokio::task::spawn_blocking(move || open::recover(&dir))
            .await
            .map_err(|e| AuditError::Invalid(format!("audit start-up task failed: {e}")))??;
        metrics.register(registry)?;
        metrics
            .chain_verified
            .set(i64::from(rec.report.chain_verified));
        let index = Arc::new(Mutex::new(rec.index));
        let t = rec.tail;
        let writer = Writer {
            dir: settings.dir.clone(),
            file: t.file,
            seg_number: t.seg_number,
            seg_len: t.seg_len,
            seg_day: t.seg_day,
            seq: t.seq,
            hash: t.hash,
            since_checkpoint: t.since_checkpoint,
            last_checkpoint_interval: t.last_checkpoint_interval,
            signing: signing.map(|k| (k, settings.checkpoint_every.max(1))),
            max_bytes: settings.segment_max_bytes.max(1),
            retention_days: settings.retention_days,
            clock: settings.clock.clone(),
            index: index.clone(),
            metrics: metrics.clone(),
            retention_due: false,
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("continuity-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::io(&settings.dir, e))?;
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_TICK);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(tx) if tx.send(Msg::Tick).await.is_ok() => {}
                    _ => return,
                }
            }
        });
        let log = AuditLog {
            inner: Arc::new(Inner {
                lock: Mutex::new(Some(lock)),
                tx,
                index,
                masker,
                metrics,
                settings,
                verify_cache: tokio::sync::Mutex::new(None),
            }),
        };
        for q in &rec.quarantined {
            let details = serde_json::json!({
                "event": verify::TORN_EVENT,
                "message": "torn or unparsable last line found at start; moved aside, not part of the chain",
                "file": q.file, "offset": q.offset, "length": q.length,
                "sha256": q.sha256, "moved_to": q.moved_to, "expected_seq": rec.torn_seq,
            });
            log.append(NewEntry::new(
                Action::DiagnosticEvent,
                Severity::Critical,
                "system",
                details,
            ))
            .await?;
        }
        let retention_removed = log.run_retention().await?;
        let checkpoint = log.request(Msg::EnsureCheckpoint).await?;
        let report = OpenReport {
            found: rec.found,
            verify: rec.report,
            quarantined: rec.quarantined,
            retention_removed,
            checkpoint,
        };
        Ok((log, report))
    }

    async fn request<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, AuditError>>) -> Msg,
    ) -> Result<T, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(msg(tx))
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Masks, then queues the entry; returns once the fsync covering it is
    /// done. If the caller stops waiting, the entry is still written.
    pub async fn append(&self, entry: NewEntry) -> Result<Appended, AuditError> {
        let p = self.prepare(entry)?;
        self.request(|ack| Msg::Append(p, ack)).await
    }

    /// Like [`AuditLog::append`] for several entries: all are queued, in
    /// order, before the first acknowledgement is awaited, so the writer
    /// commits them together (one write and one fsync per batch, group
    /// commit) instead of one fsync each. One result per entry, in order.
    pub async fn append_many(&self, entries: Vec<NewEntry>) -> Vec<Result<Appended, AuditError>> {
        let mut acks = Vec::with_capacity(entries.len());
        for entry in entries {
            let queued = match self.prepare(entry) {
                Ok(p) => {
                    let (tx, rx) = oneshot::channel();
                    match self.inner.tx.send(Msg::Append(p, tx)).await {
                        Ok(()) => Ok(rx),
                        Err(_) => Err(AuditError::Closed),
                    }
                }
                Err(e) => Err(e),
            };
            acks.push(queued);
        }
        let mut out = Vec::with_capacity(acks.len());
        for ack in acks {
            out.push(match ack {
                Ok(rx) => rx.await.unwrap_or(Err(AuditError::Closed)),
                Err(e) => Err(e),
            });
        }
        out
    }

    fn prepare(&self, e: NewEntry) -> Result<Prepared, AuditError> {
        if e.action == Action::Checkpoint {
            return Err(AuditError::Invalid(
                "checkpoint entries are written by the audit log itself".into(),
            ));
        }
        let m = &self.inner.masker;
        let mut details = match e.details {
            Value::Object(o) => Value::Object(o),
            Value::Null => Value::Object(serde_json::Map::new()),
            other => serde_json::json!({ "value": other }),
        };
        m.mask_value(&mut details);
        let actor = Value::String(m.mask_str(&e.actor).into_owned());
        let service = e
            .service
            .map_or(Value::Null, |s| Value::String(m.mask_str(&s).into_owned()));
        let body = format!(
            "\"action\":\"{}\",\"severity\":\"{}\",\"actor\":{actor},\"service\":{service},\"details\":{details}",
            e.action, e.severity
        );
        Ok(Prepared {
            action: e.action,
            severity: e.severity,
            entry_id: entry::new_entry_id(),
            body,
        })
    }

    /// Deletes expired segments now (it also happens at start, after each
    /// rotation and every [`RETENTION_TICK`]). Returns the files removed.
    pub async fn run_retention(&self) -> Result<Vec<String>, AuditError> {
        self.request(Msg::Retention).await
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> AuditStatus {
        self.index()
            .status(self.inner.settings.signing_key.is_some())
    }

    /// Newest first. Served from memory for the last
    /// [`index::RECENT_CAPACITY`] entries, from disk beyond (blocking file
    /// reads: call from `spawn_blocking` when `since` reaches far back).
    pub fn query(&self, f: &AuditFilter) -> Vec<Value> {
        let first = self.index().query_recent(f);
        let lines = match first {
            index::RecentAnswer::Complete(lines) => lines,
            index::RecentAnswer::Partial(mut lines, before) => {
                let inputs = self.index().inputs();
                index::query_disk(&inputs, f, before, &mut lines);
                lines
            }
        };
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Re-verifies everything written so far (blocking reads; call from
    /// `spawn_blocking`), including that the files still end with the last
    /// entry this engine wrote. Updates the gauge and the stored result.
    pub fn verify_now(&self) -> VerifyReport {
        let mut attempt = 0;
        let report = loop {
            let (inputs, tail) = {
                let idx = self.index();
                (
                    idx.inputs(),
                    idx.last_hash.clone().map(|h| (idx.last_seq, h)),
                )
            };
            let opts = verify::Options {
                expect_tail: tail,
                ..verify::Options::default()
            };
            self.inner.metrics.verify_scans.inc();
            match verify::run(&inputs, &opts, |_, _, _, _| {}) {
                Ok(o) => break o.report,
                // Retention may have removed a segment under our feet.
                Err(_) if attempt == 0 => attempt += 1,
                Err(e) => break failed_report(format!("cannot read the audit log: {e}")),
            }
        };
        self.inner
            .metrics
            .chain_verified
            .set(i64::from(report.chain_verified));
        self.index().verify = report.clone();
        report
    }

    /// `GET /api/ops/audit/verify`: [`AuditLog::verify_now`], single-flight
    /// and cached. Callers that arrive during a scan wait for it and share
    /// its result; a call with no new entry and no change to any segment
    /// file since the last scan gets that scan's result (`verified_at` says
    /// when it ran). The scan runs on the blocking pool, in a task of its
    /// own, so a caller that goes away does not cancel it for the others.
    pub async fn verify_cached(&self) -> VerifyReport {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut cache = me.inner.verify_cache.lock().await;
            let kept = cache.clone();
            let scanner = me.clone();
            let done = tokio::task::spawn_blocking(move || {
                let (seq, hash, paths) = {
                    let idx = scanner.index();
                    let paths = idx.segments.iter().map(|s| s.path.clone()).collect();
                    (idx.last_seq, idx.last_hash.clone(), paths)
                };
                // Taken before the scan: whatever changes after it makes
                // the next call scan again.
                let stamp = live::Stamp::take(seq, hash, paths);
                match kept {
                    Some((s, report)) if s == stamp => (None, report),
                    _ => {
                        let report = scanner.verify_now();
                        (Some(stamp), report)
                    }
                }
            })
            .await;
            match done {
                Ok((stamp, report)) => {
                    if let Some(stamp) = stamp {
                        *cache = Some((stamp, report.clone()));
                    }
                    report
                }
                Err(e) => failed_report(format!("the verification task failed: {e}")),
            }
        });
        task.await
            .unwrap_or_else(|e| failed_report(format!("the verification task failed: {e}")))
    }

    /// The compliance report (`GET /api/ops/audit/report`). Its
    /// `chain_verification` is the latest result (start-up or
    /// [`AuditLog::verify_now`]), with `verified_at`.
    pub fn report(&self) -> Value {
        let s = &self.inner.settings;
        let idx = self.index();
        let status = idx.status(s.signing_key.is_some());
        let oldest = idx.segments.iter().find_map(|m| m.first_ts);
        let newest = idx.segments.iter().rev().find_map(|m| m.last_ts);
        let ts = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        };
        serde_json::json!({
            "generated_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "total_entries": status.total_entries,
            "entries_by_action": status.entries_by_action,
            "entries_by_severity": status.entries_by_severity,
            "chain_verification": idx.verify,
            "retention": {
                "retention_days": s.retention_days,
                "oldest_entry": ts(oldest),
                "newest_entry": ts(newest),
                "first_seq": status.first_seq,
                "last_seq": status.last_seq,
                "segments": status.segments,
            },
            "signing": {
                "enabled": status.signing,
                "checkpoint_every": s.checkpoint_every,
                "checkpoints": idx.checkpoints,
                "last_checkpoint_seq": idx.last_checkpoint_seq,
            },
            "manual_interventions": idx.manual.iter().collect::<Vec<_>>(),
        })
    }

    /// Writes the shutdown checkpoint (when signing) and stops the writer;
    /// later appends fail with [`AuditError::Closed`]. Every acknowledged
    /// entry is already on disk. Safe to call twice.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        // The writer has stopped: nothing more reaches the files.
        let lock = self.inner.lock.lock().map(|mut l| l.take());
        drop(lock);
    }

    pub fn dir(&self) -> &Path {
        &self.inner.settings.dir
    }

    /// The masker every entry goes through (built-in rules and
    /// `mask_patterns`), for whatever else leaves the process.
    pub fn masker(&self) -> &Masker {
        &self.inner.masker
    }
}

fn failed_report(reason: String) -> VerifyReport {
    VerifyReport {
        reason: Some(reason),
        verified_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ..VerifyReport::default()
    }
}

/// Creates the audit directory, mode 0700 (its parents as usual); one that
/// exists is left as it is, with a warning if others may read it.
fn create_dir(dir: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| AuditError::io(parent, e))?;
    }
    match std::fs::DirBuilder::new()
        .mode(segment::DIR_MODE)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
            if let Ok(m) = std::fs::metadata(dir) {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o007 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        mode = format!("{mode:o}"),
                        "the audit directory may be read by any local user; `chmod 700` it"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(AuditError::io(dir, e)),
    }
}

/// Takes the exclusive lock on `DIR/.lock` (creating the directory), or
/// says which directory is in use. The OS releases it when the process
/// dies, so a kill -9 never leaves a stale lock behind.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    create_dir(dir)?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .mode(segment::FILE_MODE)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AuditError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Invalid(format!(
            "audit directory {} is in use by another continuity process",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::io(&path, e)),
    }
}
