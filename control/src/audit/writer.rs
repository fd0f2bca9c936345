//! The one writer: a dedicated thread that owns the current segment and
//! does group commit. It takes whatever entries are queued (up to
//! [`MAX_BATCH`]), gives them their seq, timestamp, `prev_hash` and hash,
//! writes them with one `write` and makes them durable with one
//! `fdatasync`, and only then answers each appender. A thread rather than a
//! tokio task, because every step here blocks on the disk.
//!
//! If a write or sync fails, the entries not yet synced are answered with
//! an error, the segment is cut back to its last synced length and the
//! chain continues from the last synced entry: nothing unacknowledged is
//! ever left half in the chain.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::checkpoint_details;
use super::entry::{build_line, Action, Severity};
use super::index::{Index, Recent};
use super::segment::{create_segment, expired, segment_name, sync_dir, SegmentMeta};
use super::verify::RETENTION_EVENT;
use super::{AuditError, AuditMetrics, Clock};

/// Most entries in one write + fsync.
pub const MAX_BATCH: usize = 4096;

/// An entry whose body is already masked and serialised (by the appender,
/// so that this work runs in parallel, off the writer thread).
pub struct Prepared {
    pub action: Action,
    pub severity: Severity,
    pub entry_id: String,
    /// `"action":…,"severity":…,"actor":…,"service":…,"details":{…}`
    pub body: String,
}

/// What `append` returns once the entry is durable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Appended {
    pub seq: u64,
    pub entry_id: String,
    pub timestamp: String,
    pub hash: String,
}

type Ack<T> = oneshot::Sender<Result<T, AuditError>>;

pub enum Msg {
    Append(Prepared, Ack<Appended>),
    /// Write a checkpoint unless the last entry already is one with the
    /// current interval (start-up and shutdown).
    EnsureCheckpoint(Ack<Option<Appended>>),
    Retention(Ack<Vec<String>>),
    Tick,
    Shutdown(oneshot::Sender<()>),
}

/// The chain position, saved after every successful sync.
#[derive(Clone)]
struct Durable {
    seq: u64,
    hash: String,
    seg_len: u64,
    seg_day: Option<NaiveDate>,
    since_checkpoint: u64,
    last_checkpoint_interval: Option<u64>,
}

pub struct Writer {
    pub dir: PathBuf,
    pub file: File,
    pub seg_number: u64,
    pub seg_len: u64,
    pub seg_day: Option<NaiveDate>,
    pub seq: u64,
    pub hash: String,
    /// Entries (not checkpoints) since the last checkpoint.
    pub since_checkpoint: u64,
    /// `Some(interval)` when the last entry is a checkpoint.
    pub last_checkpoint_interval: Option<u64>,
    pub signing: Option<(SigningKey, u64)>,
    pub max_bytes: u64,
    pub retention_days: u32,
    pub clock: Clock,
    pub index: Arc<Mutex<Index>>,
    pub metrics: AuditMetrics,
    pub retention_due: bool,
}

struct Staged {
    recent: Recent,
    hash: String,
    entry_id: String,
    timestamp: String,
    len: u64,
    ack: Option<Ack<Appended>>,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut msgs = vec![first];
            while msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            for m in msgs {
                match m {
                    Msg::Append(p, ack) => batch.push((p, Some(ack))),
                    other => {
                        self.commit(std::mem::take(&mut batch));
                        if self.control(other) {
                            return;
                        }
                    }
                }
            }
            self.commit(std::mem::take(&mut batch));
            if self.retention_due {
                self.retention_due = false;
                if let Err(e) = self.retention() {
                    tracing::error!(error = %e, "audit retention failed");
                }
            }
        }
    }

    /// Handles a non-append message; `true` to stop.
    fn control(&mut self, m: Msg) -> bool {
        match m {
            Msg::Append(p, ack) => self.commit(vec![(p, Some(ack))]),
            Msg::EnsureCheckpoint(ack) => {
                let _ = ack.send(self.ensure_checkpoint());
            }
            Msg::Retention(ack) => {
                let _ = ack.send(self.retention());
            }
            Msg::Tick => self.retention_due = true,
            Msg::Shutdown(ack) => {
                if let Err(e) = self.ensure_checkpoint() {
                    tracing::error!(error = %e, "audit: shutdown checkpoint failed");
                }
                let _ = ack.send(());
                return true;
            }
        }
        false
    }

    fn ensure_checkpoint(&mut self) -> Result<Option<Appended>, AuditError> {
        let Some((_, interval)) = &self.signing else {
            return Ok(None);
        };
        if self.last_checkpoint_interval == Some(*interval) {
            return Ok(None);
        }
        let (tx, mut rx) = oneshot::channel();
        let p = self.checkpoint_entry();
        self.commit(vec![(p, Some(tx))]);
        match rx.try_recv() {
            Ok(r) => r.map(Some),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// A checkpoint to stage; its body is signed in [`Writer::stage`],
    /// which alone knows the seq and `prev_hash` it gets.
    fn checkpoint_entry(&self) -> Prepared {
        Prepared {
            action: Action::Checkpoint,
            severity: Severity::Info,
            entry_id: super::entry::new_entry_id(),
            body: String::new(),
        }
    }

    /// The body of the checkpoint that becomes the next entry.
    fn checkpoint_body(&self) -> String {
        let details = match &self.signing {
            Some((key, interval)) => checkpoint_details(key, self.seq + 1, &self.hash, *interval),
            None => "{}".to_string(),
        };
        format!("\"action\":\"checkpoint\",\"severity\":\"info\",\"actor\":\"system\",\"service\":null,\"details\":{details}")
    }

    fn durable(&self) -> Durable {
        Durable {
            seq: self.seq,
            hash: self.hash.clone(),
            seg_len: self.seg_len,
            seg_day: self.seg_day,
            since_checkpoint: self.since_checkpoint,
            last_checkpoint_interval: self.last_checkpoint_interval,
        }
    }

    fn checkpoint_due(&self) -> bool {
        matches!(&self.signing, Some((_, every)) if self.since_checkpoint >= *every)
    }

    /// Writes `batch` (plus any checkpoints that fall due) and acknowledges
    /// each entry after the sync that covers it.
    pub fn commit(&mut self, batch: Vec<(Prepared, Option<Ack<Appended>>)>) {
        if batch.is_empty() {
            return;
        }
        let mut saved = self.durable();
        let mut buf: Vec<u8> = Vec::with_capacity(batch.len() * 512);
        let mut staged: Vec<Staged> = Vec::with_capacity(batch.len() + 1);
        let mut result = Ok(());
        for (p, ack) in batch {
            if result.is_err() {
                staged.push(self.unwritten(p, ack));
                continue;
            }
            if p.action != Action::Checkpoint && self.checkpoint_due() {
                let cp = self.checkpoint_entry();
                result = self.stage(cp, None, &mut buf, &mut staged, &mut saved);
            }
            if result.is_ok() {
                result = self.stage(p, ack, &mut buf, &mut staged, &mut saved);
            } else {
                staged.push(self.unwritten(p, ack));
                continue;
            }
            if result.is_ok() && self.checkpoint_due() {
                let cp = self.checkpoint_entry();
                result = self.stage(cp, None, &mut buf, &mut staged, &mut saved);
            }
        }
        if result.is_ok() {
            result = self.flush(&mut buf, &mut staged, &mut saved);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "audit write failed; unsynced entries refused");
            self.rollback(&saved);
            let msg = e.to_string();
            for s in staged {
                if let Some(ack) = s.ack {
                    let _ = ack.send(Err(AuditError::Write(msg.clone())));
                }
            }
        }
    }

    fn unwritten(&self, p: Prepared, ack: Option<Ack<Appended>>) -> Staged {
        Staged {
            recent: Recent {
                seq: 0,
                action: p.action,
                severity: p.severity,
                ts: None,
                line: Arc::from(""),
            },
            hash: String::new(),
            entry_id: p.entry_id,
            timestamp: String::new(),
            len: 0,
            ack,
        }
    }

    fn stage(
        &mut self,
        p: Prepared,
        ack: Option<Ack<Appended>>,
        buf: &mut Vec<u8>,
        staged: &mut Vec<Staged>,
        saved: &mut Durable,
    ) -> Result<(), AuditError> {
        let ts: DateTime<Utc> = self.clock.now();
        let timestamp = ts.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut p = p;
        if p.action == Action::Checkpoint {
            p.body = self.checkpoint_body();
        }
        let (line, hash) = build_line(self.seq + 1, &p.entry_id, &timestamp, &p.body, &self.hash);
        let pending = self.seg_len + buf.len() as u64;
        let too_big = pending > 0 && pending + line.len() as u64 > self.max_bytes;
        let new_day = self.seg_day.is_some_and(|d| d != ts.date_naive());
        if too_big || new_day {
            if let Err(e) = self.flush(buf, staged, saved).and_then(|()| self.rotate()) {
                staged.push(self.unwritten(p, ack));
                return Err(e);
            }
            *saved = self.durable();
        }
        if self.seg_day.is_none() {
            self.seg_day = Some(ts.date_naive());
        }
        buf.extend_from_slice(line.as_bytes());
        self.seq += 1;
        self.hash.clone_from(&hash);
        if p.action == Action::Checkpoint {
            self.since_checkpoint = 0;
            self.last_checkpoint_interval = self.signing.as_ref().map(|(_, i)| *i);
        } else {
            self.since_checkpoint += 1;
            self.last_checkpoint_interval = None;
        }
        let len = line.len() as u64;
        let text = line.trim_end_matches('\n');
        staged.push(Staged {
            recent: Recent {
                seq: self.seq,
                action: p.action,
                severity: p.severity,
                ts: Some(ts),
                line: Arc::from(text),
            },
            hash,
            entry_id: p.entry_id,
            timestamp,
            len,
            ack,
        });
        Ok(())
    }

    /// One write and one sync for everything staged; then publishes and
    /// acknowledges it.
    fn flush(
        &mut self,
        buf: &mut Vec<u8>,
        staged: &mut Vec<Staged>,
        saved: &mut Durable,
    ) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.seg_number));
        self.file
            .write_all(buf)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| AuditError::io(&path, e))?;
        self.seg_len += buf.len() as u64;
        buf.clear();
        *saved = self.durable();
        self.publish(std::mem::take(staged));
        Ok(())
    }

    fn publish(&mut self, items: Vec<Staged>) {
        {
            let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            for s in &items {
                let r = &s.recent;
                if let Some(seg) = idx.segments.last_mut() {
                    seg.record(r.seq, &s.hash, r.ts, r.action, r.severity, s.len);
                }
                if r.action == Action::ManualIntervention {
                    idx.push_manual(r.line.as_bytes());
                }
                if r.action == Action::Checkpoint {
                    idx.checkpoints += 1;
                    idx.last_checkpoint_seq = Some(r.seq);
                }
                idx.last_seq = r.seq;
                idx.last_hash = Some(s.hash.clone());
                idx.push_recent(r.clone());
            }
        }
        for s in items {
            self.metrics
                .entries_total
                .with_label_values(&[s.recent.action.as_str()])
                .inc();
            if let Some(ack) = s.ack {
                let _ = ack.send(Ok(Appended {
                    seq: s.recent.seq,
                    entry_id: s.entry_id,
                    timestamp: s.timestamp,
                    hash: s.hash,
                }));
            }
        }
    }

    fn rollback(&mut self, d: &Durable) {
        if let Err(e) = self
            .file
            .set_len(d.seg_len)
            .and_then(|()| self.file.sync_all())
        {
            tracing::error!(error = %e, "audit: cannot cut the segment back to its synced length");
        }
        self.seq = d.seq;
        self.hash.clone_from(&d.hash);
        self.seg_len = d.seg_len;
        self.seg_day = d.seg_day;
        self.since_checkpoint = d.since_checkpoint;
        self.last_checkpoint_interval = d.last_checkpoint_interval;
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let n = self.seg_number + 1;
        self.file = create_segment(&self.dir, n)?;
        self.seg_number = n;
        self.seg_len = 0;
        self.seg_day = None;
        let meta = SegmentMeta::new(n, self.dir.join(segment_name(n)));
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .segments
            .push(meta);
        self.retention_due = true;
        Ok(())
    }

    /// Deletes expired segments: first an `audit_retention` record (synced),
    /// then the files, oldest first.
    pub fn retention(&mut self) -> Result<Vec<String>, AuditError> {
        let now = self.clock.now();
        let (doomed, through): (Vec<PathBuf>, Option<(u64, String)>) = {
            let idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            let n = expired(&idx.segments, now, self.retention_days);
            let doomed = idx.segments[..n].iter().map(|s| s.path.clone()).collect();
            let through = idx.segments[..n]
                .iter()
                .rev()
                .find_map(|s| s.last_seq.zip(s.last_hash.clone()));
            (doomed, through)
        };
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = doomed
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        if let Some((seq, hash)) = &through {
            let details = serde_json::json!({
                "event": RETENTION_EVENT,
                "removed_segments": names,
                "removed_through_seq": seq,
                "removed_last_hash": hash,
                "oldest_kept_seq": seq + 1,
                "retention_days": self.retention_days,
            });
            let (tx, mut rx) = oneshot::channel();
            let p = Prepared {
                action: Action::DiagnosticEvent,
                severity: Severity::Info,
                entry_id: super::entry::new_entry_id(),
                body: format!("\"action\":\"diagnostic_event\",\"severity\":\"info\",\"actor\":\"system\",\"service\":null,\"details\":{details}"),
            };
            self.commit(vec![(p, Some(tx))]);
            match rx.try_recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(AuditError::Closed),
            }
        }
        for p in &doomed {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(AuditError::io(p, e));
                }
            }
        }
        sync_dir(&self.dir)?;
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        idx.segments.drain(..doomed.len());
        if let Some((seq, _)) = through {
            idx.forget_through(seq);
        }
        tracing::info!(segments = ?names, "audit retention removed expired segments");
        Ok(names)
    }
}
