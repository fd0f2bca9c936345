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
//! # Bodies live on disk
//!
//! Request and response bodies are not in the log and not in memory: each
//! non-empty one is a file of its own, `bodies/<id>.req` (the request, while
//! the entry is undelivered) and `bodies/<id>.res` (the upstream's answer,
//! while the result is retained), written and fsync'd (file and directory)
//! *before* the log record that refers to it. The in-memory index holds
//! metadata only (method, path, headers, states, lengths). Delivery streams
//! the request body from its file; `GET /api/ops/queue/{id}` reads the
//! result body from its file. A body file that no live entry refers to (a
//! crash between the file and its record, a finished entry) is removed at
//! open. Per service, the request bodies waiting are bounded by
//! `queue_max_bytes` ([`QueueError::OverBudget`]).
//!
//! # Log format
//!
//! One JSON object per line, tagged by `op`:
//!
//! ```text
//! {"op":"enqueue","id":"q018f…-1a2b3c4d","seq":7,"service":"ndex","method":"POST","path":"/v1/x?y=1",
//!  "headers":[["content-type","application/json"]],"body_len":2,"enqueued_at":"2024-…Z"}
//! {"op":"attempt","id":"…","at":"…"}
//! {"op":"retry","id":"…","at":"…","error":"connect refused"}
//! {"op":"delivered","id":"…","at":"…","result":{"status":201,"headers":[["…","…"]],"upstream":"ndex-a"}}
//! {"op":"failed","id":"…","at":"…","error":"…"}
//! {"op":"meta","next_seq":8}                       (first line of a compacted log)
//! {"op":"entry", …enqueue fields…, "state":"delivered","attempts":1,"last_error":…,"result":{…},"finished_at":"…"}
//! ```
//!
//! `entry` is a full snapshot of one request, written by compaction. Logs
//! written before bodies moved to files carry them inline as `body_b64`
//! (request and result); such a log is read, its bodies are written to
//! files, and it is compacted at open.
//!
//! # Crash recovery and damaged lines
//!
//! On open the log is replayed line by line (never read whole). A torn last
//! record (no final newline: a crash in the middle of a write, i.e. before
//! it was acknowledged) is cut off with a warning naming its byte offset. A
//! complete line that does not parse, anywhere in the file, is appended to
//! `queue.log.quarantine` (one JSON object per line: `quarantined_at`,
//! `line`, `byte_offset`, `error`, and the line itself as `raw`, or
//! `raw_b64` when it is not UTF-8), fsync'd, logged at ERROR, reported by
//! [`QueueStore::quarantined`] (the engine audits it), and the store opens
//! with the rest; the log is then compacted without it.
//!
//! # Compaction and retention
//!
//! At open, and whenever the log has grown past 4 MiB and twice its size
//! after the previous compaction, the log is rewritten entry by entry
//! through a buffered writer to `queue.log.tmp`, fsync'd, renamed over
//! `queue.log`, and the directory fsync'd; the whole log is never built in
//! memory. It keeps every undelivered entry and finished entries younger
//! than [`RESULT_RETENTION`] (24 h, counted from `finished_at`); the body
//! files of the dropped ones are removed after the rename. Results are thus
//! fetchable for at least 24 h.
//!
//! # Layout
//!
//! This file is the store's API ([`QueueStore`]); `entry.rs` holds the
//! types it hands out, `record.rs` the log's on-disk records, `state.rs`
//! the in-memory index with the log's append, replay and compaction,
//! `body.rs` the body files, and `disk.rs` the file-system helpers.

mod body;
mod disk;
mod entry;
mod record;
mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use body::*;
use disk::*;
pub use entry::*;
use record::*;

/// How long a finished (delivered or failed) entry, with its result, stays
/// in the store and fetchable through `GET /api/ops/queue/{id}`, counted from
/// its `finished_at`. Dropped at the next compaction after that.
pub const RESULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The append-only log, in the store directory.
pub const LOG_FILE: &str = "queue.log";
const TMP_FILE: &str = "queue.log.tmp";
/// Damaged log lines, moved aside at open.
pub const QUARANTINE_FILE: &str = "queue.log.quarantine";
/// One file per request or result body.
pub const BODIES_DIR: &str = "bodies";

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

/// The durable queue. Cheap to clone (an `Arc` inside); all methods are
/// synchronous and short (a few fsync'd writes at most), safe to call from
/// any thread.
#[derive(Clone)]
pub struct QueueStore {
    inner: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    retention: Duration,
    state: Mutex<State>,
    quarantined: Vec<Quarantined>,
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

impl QueueStore {
    /// Opens (creating `dir` if needed) and replays the log, then compacts
    /// it if it holds anything superseded or past [`RESULT_RETENTION`].
    pub fn open(dir: &Path) -> Result<QueueStore, QueueError> {
        Self::open_with(dir, RESULT_RETENTION)
    }

    /// [`QueueStore::open`] with another result retention (tests).
    pub(crate) fn open_with(dir: &Path, retention: Duration) -> Result<QueueStore, QueueError> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(dir.join(BODIES_DIR))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(dir.join(BODIES_DIR), fs::Permissions::from_mode(0o700))?;
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

        let file = open_append(&path)?;
        let mut state = State {
            file,
            poisoned: None,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            log_len: 0,
            compacted_len: 0,
            compact_min_bytes: COMPACT_MIN_BYTES,
        };
        let replay = state.replay(dir, &path)?;
        let mut log_len = replay.file_len;
        if replay.valid_len < log_len {
            state.file.set_len(replay.valid_len)?;
            state.file.sync_all()?;
            log_len = replay.valid_len;
        }
        state.log_len = log_len;
        state.compacted_len = log_len;
        sync_dir(dir)?;
        if replay.migrated {
            sync_dir(&dir.join(BODIES_DIR))?;
        }

        let now = Utc::now();
        let expired = state
            .entries
            .values()
            .filter(|e| is_expired(e, now, retention))
            .count();
        if expired > 0
            || replay.records != state.entries.len() + 1
            || replay.migrated
            || !replay.quarantined.is_empty()
        {
            if let Err(e) = state.compact(dir, retention, now) {
                if state.poisoned.is_some() {
                    return Err(e);
                }
                tracing::warn!(path = %path.display(), error = %e, "queue log compaction failed; keeping the log as is");
            }
        }
        state.sweep_bodies(dir);

        Ok(QueueStore {
            inner: Arc::new(Shared {
                dir: dir.to_path_buf(),
                retention,
                state: Mutex::new(state),
                quarantined: replay.quarantined,
            }),
        })
    }

    /// Damaged log lines this open moved to `queue.log.quarantine`.
    pub fn quarantined(&self) -> &[Quarantined] {
        &self.inner.quarantined
    }

    /// Queues a request; returns once it is on disk (fsync'd).
    /// [`QueueError::Full`] when the service already has `max_depth`
    /// undelivered entries. No byte budget (tests); see
    /// [`QueueStore::enqueue_bounded`].
    pub fn enqueue(&self, req: NewRequest, max_depth: u32) -> Result<QueuedEntry, QueueError> {
        self.enqueue_bounded(req, max_depth, u64::MAX)
    }

    /// [`QueueStore::enqueue`], and [`QueueError::OverBudget`] when the
    /// service's undelivered request bodies and this one would pass
    /// `max_bytes`. The body is written to its own file (fsync'd) before
    /// the log record.
    pub fn enqueue_bounded(
        &self,
        req: NewRequest,
        max_depth: u32,
        max_bytes: u64,
    ) -> Result<QueuedEntry, QueueError> {
        let mut st = self.lock();
        st.check_usable()?;
        let (depth, bytes) = st.depth_and_bytes(&req.service);
        if depth >= max_depth as usize {
            return Err(QueueError::Full {
                service: req.service,
                depth,
            });
        }
        let len = req.body.len() as u64;
        if bytes.saturating_add(len) > max_bytes {
            return Err(QueueError::OverBudget {
                service: req.service,
                bytes,
                len,
                max: max_bytes,
            });
        }
        let now = Utc::now();
        let id = loop {
            let id = new_id(now);
            if !st.entries.contains_key(&id) {
                break id;
            }
        };
        let dir = &self.inner.dir;
        if !req.body.is_empty() {
            write_body(dir, &id, BodyKind::Request, &req.body)?;
        }
        let entry = QueuedEntry {
            id,
            seq: st.next_seq,
            service: req.service,
            method: req.method,
            path: req.path,
            headers: req.headers,
            body_len: len,
            enqueued_at: now,
            state: QueueState::Queued,
            attempts: 0,
            last_error: None,
            result: None,
            finished_at: None,
        };
        if let Err(e) = st.append(&Record::Enqueue(EntryRecord::from_entry(&entry, false))) {
            remove_body(dir, &entry.id, BodyKind::Request);
            return Err(e);
        }
        // Infallible: a Put never refers to a missing id.
        let _ = st.apply(
            Op::Put(Box::new(Decoded {
                entry: entry.clone(),
                body: None,
                result_body: None,
            })),
            None,
        );
        self.after_write(&mut st);
        Ok(entry)
    }

    /// The entry, with its result's body (if any) read from disk.
    pub fn get(&self, id: &str) -> Option<QueuedEntry> {
        let mut e = self.lock().entries.get(id).cloned()?;
        if let Some(r) = e.result.as_mut() {
            let path = body_path(&self.inner.dir, id, BodyKind::Result);
            match fs::read(&path) {
                Ok(b) => r.body = b,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot read a queued result body")
                }
            }
        }
        Some(e)
    }

    /// The file holding `entry`'s request body; `None` when it has none.
    pub fn body_file(&self, entry: &QueuedEntry) -> Option<PathBuf> {
        (entry.body_len > 0).then(|| body_path(&self.inner.dir, &entry.id, BodyKind::Request))
    }

    /// `entry`'s request body, read whole from its file (tests, tools;
    /// delivery streams it). An error if the file is missing or its length
    /// is not `body_len`.
    pub fn body(&self, entry: &QueuedEntry) -> io::Result<Vec<u8>> {
        let Some(path) = self.body_file(entry) else {
            return Ok(Vec::new());
        };
        let b = fs::read(&path)?;
        if b.len() as u64 != entry.body_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {} bytes, the log says {}",
                    path.display(),
                    b.len(),
                    entry.body_len
                ),
            ));
        }
        Ok(b)
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

    /// Records the upstream's answer; the entry is finished. The answer's
    /// body goes to its own file (fsync'd) before the record; the request
    /// body's file is removed after it.
    pub fn mark_delivered(&self, id: &str, result: DeliveryResult) -> Result<(), QueueError> {
        let mut st = self.lock();
        st.require_pending(id)?;
        let dir = &self.inner.dir;
        if !result.body.is_empty() {
            write_body(dir, id, BodyKind::Result, &result.body)?;
        }
        let at = Utc::now();
        if let Err(e) = st.append(&Record::Delivered {
            id: id.to_string(),
            at,
            result: ResultRecord::from_result(&result),
        }) {
            remove_body(dir, id, BodyKind::Result);
            return Err(e);
        }
        let DeliveryResult {
            status,
            headers,
            upstream,
            ..
        } = result;
        let meta = DeliveryResult {
            status,
            headers,
            body: Vec::new(),
            upstream,
        };
        st.apply_known(Op::Delivered(id.to_string(), at, meta, None))?;
        remove_body(dir, id, BodyKind::Request);
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
        remove_body(&self.inner.dir, id, BodyKind::Request);
        self.after_write(&mut st);
        Ok(())
    }

    /// Undelivered (queued or delivering) entries of `service`.
    pub fn depth(&self, service: &str) -> usize {
        self.lock().depth_and_bytes(service).0
    }

    /// Request-body bytes of the undelivered entries of `service` (what
    /// `queue_max_bytes` bounds).
    pub fn pending_bytes(&self, service: &str) -> u64 {
        self.lock().depth_and_bytes(service).1
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

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
