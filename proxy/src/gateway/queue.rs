//! Durable store-and-forward queue for HTTP routes with `on_outage = "queue"`.
//!
//! While a route's upstream is down, the gateway writes each request here and
//! answers the client `202 Accepted` with `Location: /api/ops/queue/{id}`.
//! When the upstream is back, the gateway takes [`QueueStore::pending`] in
//! enqueue order and, for each entry, records [`QueueStore::mark_attempt`]
//! *before* the first byte goes out, sends it with `Idempotency-Key: <id>`,
//! then records [`QueueStore::mark_delivered`], [`QueueStore::mark_retry`] or
//! [`QueueStore::mark_failed`]. An entry found in `delivering` after a restart
//! was possibly sent; re-sending it with the same key lets the upstream
//! deduplicate, so delivery is exactly-once from the proxy's side.
//!
//! # Durability
//!
//! Every state change is one JSON line appended to `queue.log` in the store
//! directory with a single `write_all`, followed by `sync_data`, under a
//! mutex, before the call returns `Ok`. An acknowledged (`202`) request
//! therefore survives `kill -9` and power loss. A failed write is rolled back
//! (the file is truncated to its previous length) so the log stays
//! parseable; if even that fails, the store refuses further writes until the
//! engine is restarted.
//!
//! # Log format
//!
//! One JSON object per line, tagged by `op`:
//!
//! ```text
//! {"op":"enqueue","id":"q018f…-1a2b3c4d","seq":7,"service":"ndex","method":"POST","path":"/v1/x?y=1",
//!  "headers":[["content-type","application/json"]],"body_b64":"e30=","enqueued_at":"2024-…Z"}
//! {"op":"attempt","id":"…","at":"…"}
//! {"op":"retry","id":"…","at":"…","error":"connect refused"}
//! {"op":"delivered","id":"…","at":"…","result":{"status":201,"headers":[["…","…"]],"body_b64":"…","upstream":"ndex-a"}}
//! {"op":"failed","id":"…","at":"…","error":"…"}
//! {"op":"meta","next_seq":8}                       (first line of a compacted log)
//! {"op":"entry", …enqueue fields…, "state":"delivered","attempts":1,"last_error":…,"result":{…},"finished_at":"…"}
//! ```
//!
//! `entry` is a full snapshot of one request, written by compaction.
//!
//! # Crash recovery
//!
//! On open the log is replayed. A torn last record (a crash in the middle of
//! a write, i.e. before it was acknowledged) is cut off with a warning naming
//! its byte offset. A garbled record anywhere else is an error naming the
//! line: the store never silently drops acknowledged data.
//!
//! # Compaction and retention
//!
//! At open, and whenever the log has grown past 4 MiB and twice its size
//! after the previous compaction, the log is rewritten (`queue.log.tmp`,
//! fsync, rename, fsync of the directory) keeping every undelivered entry
//! and finished entries younger than [`RESULT_RETENTION`] (24 h, counted from
//! `finished_at`). Results are thus fetchable for at least 24 h.
//!
//! Request and response bodies are kept in memory; they are bounded by
//! `max_body_bytes * queue_max_depth` per service plus retained results.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long a finished (delivered or failed) entry, with its result, stays
/// in the store and fetchable through `GET /api/ops/queue/{id}`, counted from
/// its `finished_at`. Dropped at the next compaction after that.
pub const RESULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The append-only log, in the store directory.
pub const LOG_FILE: &str = "queue.log";
const TMP_FILE: &str = "queue.log.tmp";

/// Runtime compaction starts once the log is at least this big (and has
/// doubled since the previous compaction).
const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Request headers whose values never leave the store (`to_json`).
const MASKED_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

/// A request to queue, as the gateway received it.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub service: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Hop-by-hop headers already removed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    /// Waiting for delivery.
    Queued,
    /// An attempt was recorded; the bytes may have reached the upstream.
    Delivering,
    /// The upstream answered; the answer is in `result`.
    Delivered,
    /// Given up for good; the reason is in `last_error`.
    Failed,
}

impl QueueState {
    /// Undelivered: counts towards depth and is returned by `pending`.
    pub fn is_pending(self) -> bool {
        matches!(self, QueueState::Queued | QueueState::Delivering)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Queued => "queued",
            QueueState::Delivering => "delivering",
            QueueState::Delivered => "delivered",
            QueueState::Failed => "failed",
        }
    }
}

/// The upstream's answer to a delivered request.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Name of the upstream that answered.
    pub upstream: String,
}

#[derive(Clone, Debug)]
pub struct QueuedEntry {
    pub id: String,
    /// Store-wide, strictly increasing in enqueue order.
    pub seq: u64,
    pub service: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub enqueued_at: DateTime<Utc>,
    pub state: QueueState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub result: Option<DeliveryResult>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue full: {depth} requests waiting for {service} (queue_max_depth)")]
    Full { service: String, depth: usize },
    #[error("queue store: {0}")]
    Io(#[from] std::io::Error),
    /// The id is unknown, or (for the `mark_*` calls) the entry is already
    /// finished (delivered or failed) and cannot change any more.
    #[error("unknown queue id {0}")]
    NotFound(String),
}

/// The durable queue. Cheap to clone (an `Arc` inside); all methods are
/// synchronous and short (one fsync'd append at most), safe to call from
/// any thread.
#[derive(Clone)]
pub struct QueueStore {
    inner: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    retention: Duration,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// Set when a failed write could not be rolled back or a compaction
    /// failed past its point of no return: no further writes.
    poisoned: Option<String>,
    entries: HashMap<String, QueuedEntry>,
    /// seq -> id, the enqueue order.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    log_len: u64,
    compacted_len: u64,
    compact_min_bytes: u64,
}

// ---------------------------------------------------------------------------
// On-disk records

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Meta {
        next_seq: u64,
    },
    Enqueue(EntryRecord),
    Entry(EntryRecord),
    Attempt {
        id: String,
        at: DateTime<Utc>,
    },
    Delivered {
        id: String,
        at: DateTime<Utc>,
        result: ResultRecord,
    },
    Retry {
        id: String,
        at: DateTime<Utc>,
        error: String,
    },
    Failed {
        id: String,
        at: DateTime<Utc>,
        error: String,
    },
}

#[derive(Serialize, Deserialize)]
struct EntryRecord {
    id: String,
    seq: u64,
    service: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body_b64: String,
    enqueued_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<QueueState>,
    #[serde(default, skip_serializing_if = "is_zero")]
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<ResultRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
struct ResultRecord {
    status: u16,
    headers: Vec<(String, String)>,
    body_b64: String,
    upstream: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ResultRecord {
    fn from_result(r: &DeliveryResult) -> Self {
        ResultRecord {
            status: r.status,
            headers: r.headers.clone(),
            body_b64: B64.encode(&r.body),
            upstream: r.upstream.clone(),
        }
    }

    fn into_result(self) -> Result<DeliveryResult, String> {
        let body = B64
            .decode(self.body_b64.as_bytes())
            .map_err(|e| format!("result body_b64: {e}"))?;
        Ok(DeliveryResult {
            status: self.status,
            headers: self.headers,
            body,
            upstream: self.upstream,
        })
    }
}

impl EntryRecord {
    /// `full`: include the state fields (compaction snapshot).
    fn from_entry(e: &QueuedEntry, full: bool) -> Self {
        EntryRecord {
            id: e.id.clone(),
            seq: e.seq,
            service: e.service.clone(),
            method: e.method.clone(),
            path: e.path.clone(),
            headers: e.headers.clone(),
            body_b64: B64.encode(&e.body),
            enqueued_at: e.enqueued_at,
            state: full.then_some(e.state),
            attempts: if full { e.attempts } else { 0 },
            last_error: if full { e.last_error.clone() } else { None },
            result: if full {
                e.result.as_ref().map(ResultRecord::from_result)
            } else {
                None
            },
            finished_at: if full { e.finished_at } else { None },
        }
    }

    fn into_entry(self) -> Result<QueuedEntry, String> {
        let body = B64
            .decode(self.body_b64.as_bytes())
            .map_err(|e| format!("body_b64: {e}"))?;
        let result = match self.result {
            Some(r) => Some(r.into_result()?),
            None => None,
        };
        Ok(QueuedEntry {
            id: self.id,
            seq: self.seq,
            service: self.service,
            method: self.method,
            path: self.path,
            headers: self.headers,
            body,
            enqueued_at: self.enqueued_at,
            state: self.state.unwrap_or(QueueState::Queued),
            attempts: self.attempts,
            last_error: self.last_error,
            result,
            finished_at: self.finished_at,
        })
    }
}

/// A decoded record, applied the same way at replay and at run time.
enum Op {
    Meta(u64),
    Put(Box<QueuedEntry>),
    Attempt(String),
    Delivered(String, DateTime<Utc>, DeliveryResult),
    Retry(String, String),
    Failed(String, DateTime<Utc>, String),
}

impl Op {
    fn decode(line: &[u8]) -> Result<Op, String> {
        let rec: Record = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        Ok(match rec {
            Record::Meta { next_seq } => Op::Meta(next_seq),
            Record::Enqueue(e) | Record::Entry(e) => Op::Put(Box::new(e.into_entry()?)),
            Record::Attempt { id, .. } => Op::Attempt(id),
            Record::Delivered { id, at, result } => Op::Delivered(id, at, result.into_result()?),
            Record::Retry { id, error, .. } => Op::Retry(id, error),
            Record::Failed { id, at, error } => Op::Failed(id, at, error),
        })
    }
}

// ---------------------------------------------------------------------------

impl QueueStore {
    /// Opens (creating `dir` if needed) and replays the log, then compacts
    /// it if it holds anything superseded or past [`RESULT_RETENTION`].
    pub fn open(dir: &Path) -> Result<QueueStore, QueueError> {
        Self::open_with(dir, RESULT_RETENTION)
    }

    /// [`QueueStore::open`] with another result retention (tests).
    pub(crate) fn open_with(dir: &Path, retention: Duration) -> Result<QueueStore, QueueError> {
        fs::create_dir_all(dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join(LOG_FILE);
        let tmp = dir.join(TMP_FILE);
        // A leftover tmp is an interrupted compaction that never reached its
        // rename: queue.log is still the authoritative log.
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::warn!(path = %tmp.display(), "removed an interrupted queue compaction")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let replay = replay(&data, &path)?;

        let file = open_append(&path)?;
        let mut log_len = data.len() as u64;
        if replay.valid_len < log_len {
            file.set_len(replay.valid_len)?;
            file.sync_all()?;
            log_len = replay.valid_len;
        }
        sync_dir(dir)?;

        let mut state = State {
            file,
            poisoned: None,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            log_len,
            compacted_len: log_len,
            compact_min_bytes: COMPACT_MIN_BYTES,
        };
        for (line_no, op) in replay.ops {
            if let Err(id) = state.apply(op) {
                tracing::warn!(
                    path = %path.display(),
                    line = line_no,
                    id = %id,
                    "queue log record for an id that was never enqueued; ignored"
                );
            }
        }

        let now = Utc::now();
        let expired = state
            .entries
            .values()
            .filter(|e| is_expired(e, now, retention))
            .count();
        if expired > 0 || replay.records != state.entries.len() + 1 {
            if let Err(e) = state.compact(dir, retention, now) {
                if state.poisoned.is_some() {
                    return Err(e);
                }
                tracing::warn!(path = %path.display(), error = %e, "queue log compaction failed; keeping the log as is");
            }
        }

        Ok(QueueStore {
            inner: Arc::new(Shared {
                dir: dir.to_path_buf(),
                retention,
                state: Mutex::new(state),
            }),
        })
    }

    /// Queues a request; returns once it is on disk (fsync'd).
    /// [`QueueError::Full`] when the service already has `max_depth`
    /// undelivered entries.
    pub fn enqueue(&self, req: NewRequest, max_depth: u32) -> Result<QueuedEntry, QueueError> {
        let mut st = self.lock();
        st.check_usable()?;
        let depth = st.depth(&req.service);
        if depth >= max_depth as usize {
            return Err(QueueError::Full {
                service: req.service,
                depth,
            });
        }
        let now = Utc::now();
        let id = loop {
            let id = new_id(now);
            if !st.entries.contains_key(&id) {
                break id;
            }
        };
        let entry = QueuedEntry {
            id,
            seq: st.next_seq,
            service: req.service,
            method: req.method,
            path: req.path,
            headers: req.headers,
            body: req.body,
            enqueued_at: now,
            state: QueueState::Queued,
            attempts: 0,
            last_error: None,
            result: None,
            finished_at: None,
        };
        st.append(&Record::Enqueue(EntryRecord::from_entry(&entry, false)))?;
        // Infallible: a Put never refers to a missing id.
        let _ = st.apply(Op::Put(Box::new(entry.clone())));
        self.after_write(&mut st);
        Ok(entry)
    }

    pub fn get(&self, id: &str) -> Option<QueuedEntry> {
        self.lock().entries.get(id).cloned()
    }

    /// Undelivered (queued or delivering) entries of `service`, in enqueue
    /// order.
    pub fn pending(&self, service: &str) -> Vec<QueuedEntry> {
        let st = self.lock();
        st.order
            .values()
            .filter_map(|id| st.entries.get(id))
            .filter(|e| e.service == service && e.state.is_pending())
            .cloned()
            .collect()
    }

    /// The oldest pending entry of `service` (what delivery sends next),
    /// without copying the others.
    pub fn next_pending(&self, service: &str) -> Option<QueuedEntry> {
        let st = self.lock();
        st.order
            .values()
            .filter_map(|id| st.entries.get(id))
            .find(|e| e.service == service && e.state.is_pending())
            .cloned()
    }

    /// Records a delivery attempt (state `delivering`, `attempts + 1`); call
    /// it before the request's bytes go to the upstream. Allowed from
    /// `queued` and from `delivering` (an attempt interrupted by a crash).
    pub fn mark_attempt(&self, id: &str) -> Result<QueuedEntry, QueueError> {
        let mut st = self.lock();
        st.require_pending(id)?;
        st.append(&Record::Attempt {
            id: id.to_string(),
            at: Utc::now(),
        })?;
        st.apply_known(Op::Attempt(id.to_string()))?;
        let entry = st.entries.get(id).cloned();
        self.after_write(&mut st);
        entry.ok_or_else(|| QueueError::NotFound(id.to_string()))
    }

    /// Records the upstream's answer; the entry is finished.
    pub fn mark_delivered(&self, id: &str, result: DeliveryResult) -> Result<(), QueueError> {
        let mut st = self.lock();
        st.require_pending(id)?;
        let at = Utc::now();
        st.append(&Record::Delivered {
            id: id.to_string(),
            at,
            result: ResultRecord::from_result(&result),
        })?;
        st.apply_known(Op::Delivered(id.to_string(), at, result))?;
        self.after_write(&mut st);
        Ok(())
    }

    /// The attempt failed before any answer: back to `queued`, to be tried
    /// again (same id, same idempotency key).
    pub fn mark_retry(&self, id: &str, error: &str) -> Result<(), QueueError> {
        let mut st = self.lock();
        st.require_pending(id)?;
        st.append(&Record::Retry {
            id: id.to_string(),
            at: Utc::now(),
            error: error.to_string(),
        })?;
        st.apply_known(Op::Retry(id.to_string(), error.to_string()))?;
        self.after_write(&mut st);
        Ok(())
    }

    /// Gives up on the entry for good; the entry is finished.
    pub fn mark_failed(&self, id: &str, error: &str) -> Result<(), QueueError> {
        let mut st = self.lock();
        st.require_pending(id)?;
        let at = Utc::now();
        st.append(&Record::Failed {
            id: id.to_string(),
            at,
            error: error.to_string(),
        })?;
        st.apply_known(Op::Failed(id.to_string(), at, error.to_string()))?;
        self.after_write(&mut st);
        Ok(())
    }

    /// Undelivered (queued or delivering) entries of `service`.
    pub fn depth(&self, service: &str) -> usize {
        self.lock().depth(service)
    }

    /// Age of the oldest undelivered entry of `service`.
    pub fn oldest_age(&self, service: &str) -> Option<Duration> {
        let st = self.lock();
        let oldest = st
            .entries
            .values()
            .filter(|e| e.service == service && e.state.is_pending())
            .map(|e| e.enqueued_at)
            .min()?;
        Some((Utc::now() - oldest).to_std().unwrap_or(Duration::ZERO))
    }

    /// Services with any entry in the store (pending or retained), sorted.
    pub fn services(&self) -> Vec<String> {
        let st = self.lock();
        let mut v: Vec<String> = st.entries.values().map(|e| e.service.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Rewrites the log now, dropping finished entries older than the
    /// retention (also done automatically at open and as the log grows).
    pub fn compact(&self) -> Result<(), QueueError> {
        let mut st = self.lock();
        st.compact(&self.inner.dir, self.inner.retention, Utc::now())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Size-triggered compaction after a successful write. The write itself
    /// is already durable, so a failure here is only logged.
    fn after_write(&self, st: &mut State) {
        let threshold = st.compact_min_bytes.max(st.compacted_len.saturating_mul(2));
        if st.log_len < threshold {
            return;
        }
        if let Err(e) = st.compact(&self.inner.dir, self.inner.retention, Utc::now()) {
            tracing::warn!(dir = %self.inner.dir.display(), error = %e, "queue log compaction failed");
            // Don't retry on every write: wait for the log to double again.
            st.compacted_len = st.log_len;
        }
    }

    #[cfg(test)]
    pub(crate) fn set_compact_min_bytes(&self, n: u64) {
        self.lock().compact_min_bytes = n;
    }

    #[cfg(test)]
    pub(crate) fn log_len(&self) -> u64 {
        self.lock().log_len
    }
}

impl State {
    fn check_usable(&self) -> Result<(), QueueError> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(QueueError::Io(io::Error::other(format!(
                "queue log unusable since an earlier failure ({why}); restart the engine"
            )))),
        }
    }

    fn require_pending(&self, id: &str) -> Result<(), QueueError> {
        self.check_usable()?;
        match self.entries.get(id) {
            Some(e) if e.state.is_pending() => Ok(()),
            _ => Err(QueueError::NotFound(id.to_string())),
        }
    }

    fn depth(&self, service: &str) -> usize {
        self.entries
            .values()
            .filter(|e| e.service == service && e.state.is_pending())
            .count()
    }

    /// Appends one record and fsyncs it. On failure the file is truncated
    /// back so no partial line is left for later appends to follow.
    fn append(&mut self, rec: &Record) -> Result<(), QueueError> {
        self.check_usable()?;
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        let before = self.log_len;
        match self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.log_len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(e2) = self
                    .file
                    .set_len(before)
                    .and_then(|()| self.file.sync_data())
                {
                    tracing::error!(error = %e, rollback_error = %e2, "queue log write failed and could not be rolled back");
                    self.poisoned = Some(format!("write failed: {e}; rollback failed: {e2}"));
                }
                Err(e.into())
            }
        }
    }

    /// Applies an op whose id is known to exist (checked by the caller).
    fn apply_known(&mut self, op: Op) -> Result<(), QueueError> {
        self.apply(op).map_err(QueueError::NotFound)
    }

    /// `Err(id)` when the op refers to an id not in the store.
    fn apply(&mut self, op: Op) -> Result<(), String> {
        let id = match op {
            Op::Meta(n) => {
                self.next_seq = self.next_seq.max(n);
                return Ok(());
            }
            Op::Put(e) => {
                self.next_seq = self.next_seq.max(e.seq.saturating_add(1));
                if let Some(old) = self.entries.get(&e.id) {
                    self.order.remove(&old.seq);
                }
                self.order.insert(e.seq, e.id.clone());
                self.entries.insert(e.id.clone(), *e);
                return Ok(());
            }
            Op::Attempt(ref id)
            | Op::Delivered(ref id, ..)
            | Op::Retry(ref id, _)
            | Op::Failed(ref id, ..) => id.clone(),
        };
        let Some(e) = self.entries.get_mut(&id) else {
            return Err(id);
        };
        match op {
            Op::Meta(_) | Op::Put(_) => {}
            Op::Attempt(_) => {
                e.state = QueueState::Delivering;
                e.attempts = e.attempts.saturating_add(1);
            }
            Op::Delivered(_, at, result) => {
                e.state = QueueState::Delivered;
                e.result = Some(result);
                e.finished_at = Some(at);
            }
            Op::Retry(_, error) => {
                e.state = QueueState::Queued;
                e.last_error = Some(error);
            }
            Op::Failed(_, at, error) => {
                e.state = QueueState::Failed;
                e.last_error = Some(error);
                e.finished_at = Some(at);
            }
        }
        Ok(())
    }

    /// Rewrites the log with the live entries only (see module docs).
    fn compact(
        &mut self,
        dir: &Path,
        retention: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        self.check_usable()?;
        let keep: Vec<&QueuedEntry> = self
            .order
            .values()
            .filter_map(|id| self.entries.get(id))
            .filter(|e| !is_expired(e, now, retention))
            .collect();
        let mut buf = Vec::new();
        let mut push = |rec: &Record| -> io::Result<()> {
            serde_json::to_writer(&mut buf, rec).map_err(io::Error::other)?;
            buf.push(b'\n');
            Ok(())
        };
        push(&Record::Meta {
            next_seq: self.next_seq,
        })?;
        for e in &keep {
            push(&Record::Entry(EntryRecord::from_entry(e, true)))?;
        }
        let kept: Vec<String> = keep.iter().map(|e| e.id.clone()).collect();

        let tmp = dir.join(TMP_FILE);
        let path = dir.join(LOG_FILE);
        let written = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
        }
        .and_then(|mut f| {
            f.write_all(&buf)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        // Past the rename the old handle points at an unlinked file: either
        // we get a handle on the new log and the rename is durable, or no
        // more writes.
        match open_append(&path).and_then(|f| sync_dir(dir).map(|()| f)) {
            Ok(f) => self.file = f,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "queue log compaction failed after rename");
                self.poisoned = Some(format!("compaction failed after rename: {e}"));
                return Err(e.into());
            }
        }

        let dropped = self.entries.len().saturating_sub(kept.len());
        let kept: std::collections::HashSet<String> = kept.into_iter().collect();
        self.entries.retain(|id, _| kept.contains(id));
        self.order.retain(|_, id| kept.contains(id));
        self.log_len = buf.len() as u64;
        self.compacted_len = self.log_len;
        tracing::debug!(path = %path.display(), kept = kept.len(), dropped, bytes = self.log_len, "queue log compacted");
        Ok(())
    }
}

/// A finished entry whose retention has run out.
fn is_expired(e: &QueuedEntry, now: DateTime<Utc>, retention: Duration) -> bool {
    if e.state.is_pending() {
        return false;
    }
    let finished = e.finished_at.unwrap_or(e.enqueued_at);
    match (now - finished).to_std() {
        Ok(age) => age >= retention,
        // Finished "in the future" (clock stepped back): keep.
        Err(_) => false,
    }
}

struct Replay {
    /// (line number, op) in log order.
    ops: Vec<(usize, Op)>,
    /// Records read (non-blank lines).
    records: usize,
    /// Bytes up to and including the last good line.
    valid_len: u64,
}

/// Parses the log. A torn final record is cut (warned, by byte offset); a
/// bad record followed by more data is an error naming the line.
fn replay(data: &[u8], path: &Path) -> Result<Replay, QueueError> {
    // One past the last non-whitespace byte: a line ending at or after it is
    // the last record of the file.
    let content_end = data
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let mut out = Replay {
        ops: Vec::new(),
        records: 0,
        valid_len: 0,
    };
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < data.len() {
        line_no += 1;
        let (line, next, terminated) = match data[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&data[pos..pos + i], pos + i + 1, true),
            None => (&data[pos..], data.len(), false),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            if terminated {
                out.valid_len = next as u64;
            }
            pos = next;
            continue;
        }
        if !terminated {
            // The newline is part of the same write: the write never
            // completed, so the record was never acknowledged.
            tracing::warn!(
                path = %path.display(),
                offset = pos,
                line = line_no,
                bytes = line.len(),
                "queue log: cutting off a torn last record (interrupted write) at byte offset {pos}"
            );
            break;
        }
        match Op::decode(line) {
            Ok(op) => {
                out.ops.push((line_no, op));
                out.records += 1;
                out.valid_len = next as u64;
            }
            Err(e) if next >= content_end => {
                tracing::warn!(
                    path = %path.display(),
                    offset = pos,
                    line = line_no,
                    error = %e,
                    "queue log: cutting off a garbled last record at byte offset {pos}"
                );
                break;
            }
            Err(e) => {
                return Err(QueueError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: line {line_no} (byte offset {pos}) is garbled ({e}) and is not the last record; \
                         refusing to open rather than drop queued requests: repair or move the file",
                        path.display()
                    ),
                )));
            }
        }
        pos = next;
    }
    Ok(out)
}

/// Queued requests keep their headers (an `Authorization` the upstream
/// needs at delivery), so the log is readable by its owner only.
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Makes a create/rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// `q` + 13 hex digits of Unix millis + `-` + 8 random hex digits: sorts by
/// enqueue time, not enumerable.
fn new_id(now: DateTime<Utc>) -> String {
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    format!("q{millis:013x}-{:08x}", rand::random::<u32>())
}

impl QueuedEntry {
    /// The view served by `GET /api/ops/queue/{id}`. Request header values
    /// of Authorization, Cookie, Proxy-Authorization and X-Api-Key are
    /// masked as `***`; the request body is never included.
    pub fn to_json(&self) -> Value {
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let masked = MASKED_HEADERS.iter().any(|m| name.eq_ignore_ascii_case(m));
                json!({"name": name, "value": if masked { "***" } else { value.as_str() }})
            })
            .collect();
        let mut v = json!({
            "id": self.id,
            "service": self.service,
            "state": self.state.as_str(),
            "method": self.method,
            "path": self.path,
            "headers": headers,
            "enqueued_at": self.enqueued_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "finished_at": self.finished_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        });
        if let (QueueState::Delivered, Some(r), Some(obj)) =
            (self.state, &self.result, v.as_object_mut())
        {
            let headers: Vec<Value> = r
                .headers
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            let mut result = json!({
                "status": r.status,
                "headers": headers,
                "upstream": r.upstream,
            });
            if let Some(ro) = result.as_object_mut() {
                match std::str::from_utf8(&r.body) {
                    Ok(s) => {
                        ro.insert("body".into(), Value::String(s.to_string()));
                    }
                    Err(_) => {
                        ro.insert("body".into(), Value::String(B64.encode(&r.body)));
                        ro.insert("body_encoding".into(), Value::String("base64".into()));
                    }
                }
            }
            obj.insert("result".into(), result);
        }
        v
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
