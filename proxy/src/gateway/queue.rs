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
    /// Given to [`QueueStore::mark_delivered`], and filled from disk by
    /// [`QueueStore::get`]; empty in the in-memory index.
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
    /// Length of the request body, which is on disk while the entry is
    /// undelivered ([`QueueStore::body_file`], [`QueueStore::body`]).
    pub body_len: u64,
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
    #[error(
        "queue full: {bytes} bytes of request bodies waiting for {service}; \
         {len} more would pass queue_max_bytes ({max})"
    )]
    OverBudget {
        service: String,
        bytes: u64,
        len: u64,
        max: u64,
    },
    #[error("queue store: {0}")]
    Io(#[from] std::io::Error),
    /// The id is unknown, or (for the `mark_*` calls) the entry is already
    /// finished (delivered or failed) and cannot change any more.
    #[error("unknown queue id {0}")]
    NotFound(String),
}

/// A damaged `queue.log` line moved to `queue.log.quarantine` at open.
#[derive(Clone, Debug, Serialize)]
pub struct Quarantined {
    /// 1-based line number in the log as it was found.
    pub line: usize,
    pub byte_offset: u64,
    pub bytes: usize,
    pub error: String,
    /// The quarantine file it was appended to.
    pub file: PathBuf,
}

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
    /// Body length; a non-empty body is the file `bodies/<id>.req`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    body_len: u64,
    /// Inline body of logs written before bodies moved to files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_b64: Option<String>,
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

/// A non-empty result body is the file `bodies/<id>.res`.
#[derive(Serialize, Deserialize)]
struct ResultRecord {
    status: u16,
    headers: Vec<(String, String)>,
    /// Inline body of logs written before bodies moved to files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_b64: Option<String>,
    upstream: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl ResultRecord {
    fn from_result(r: &DeliveryResult) -> Self {
        ResultRecord {
            status: r.status,
            headers: r.headers.clone(),
            body_b64: None,
            upstream: r.upstream.clone(),
        }
    }

    /// The result (body empty) and an inline legacy body, if any.
    fn into_result(self) -> Result<(DeliveryResult, Option<Vec<u8>>), String> {
        let inline = match self.body_b64 {
            Some(b) => Some(
                B64.decode(b.as_bytes())
                    .map_err(|e| format!("result body_b64: {e}"))?,
            ),
            None => None,
        };
        Ok((
            DeliveryResult {
                status: self.status,
                headers: self.headers,
                body: Vec::new(),
                upstream: self.upstream,
            },
            inline,
        ))
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
            body_len: e.body_len,
            body_b64: None,
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

    fn into_entry(self) -> Result<Decoded, String> {
        if !valid_id(&self.id) {
            return Err(format!("id {:?} is not a queue id", self.id));
        }
        let body = match self.body_b64 {
            Some(b) => Some(
                B64.decode(b.as_bytes())
                    .map_err(|e| format!("body_b64: {e}"))?,
            ),
            None => None,
        };
        let (result, result_body) = match self.result {
            Some(r) => {
                let (r, b) = r.into_result()?;
                (Some(r), b)
            }
            None => (None, None),
        };
        let body_len = body.as_ref().map_or(self.body_len, |b| b.len() as u64);
        Ok(Decoded {
            entry: QueuedEntry {
                id: self.id,
                seq: self.seq,
                service: self.service,
                method: self.method,
                path: self.path,
                headers: self.headers,
                body_len,
                enqueued_at: self.enqueued_at,
                state: self.state.unwrap_or(QueueState::Queued),
                attempts: self.attempts,
                last_error: self.last_error,
                result,
                finished_at: self.finished_at,
            },
            body,
            result_body,
        })
    }
}

/// An entry read from the log, with the inline bodies of an old log.
struct Decoded {
    entry: QueuedEntry,
    body: Option<Vec<u8>>,
    result_body: Option<Vec<u8>>,
}

/// A decoded record, applied the same way at replay and at run time.
enum Op {
    Meta(u64),
    Put(Box<Decoded>),
    Attempt(String),
    /// The result's body is on disk already, or inline (old logs).
    Delivered(String, DateTime<Utc>, DeliveryResult, Option<Vec<u8>>),
    Retry(String, String),
    Failed(String, DateTime<Utc>, String),
}

impl Op {
    fn decode(line: &[u8]) -> Result<Op, String> {
        let rec: Record = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        let checked = |id: String| {
            if valid_id(&id) {
                Ok(id)
            } else {
                Err(format!("id {id:?} is not a queue id"))
            }
        };
        Ok(match rec {
            Record::Meta { next_seq } => Op::Meta(next_seq),
            Record::Enqueue(e) | Record::Entry(e) => Op::Put(Box::new(e.into_entry()?)),
            Record::Attempt { id, .. } => Op::Attempt(checked(id)?),
            Record::Delivered { id, at, result } => {
                let (r, inline) = result.into_result()?;
                Op::Delivered(checked(id)?, at, r, inline)
            }
            Record::Retry { id, error, .. } => Op::Retry(checked(id)?, error),
            Record::Failed { id, at, error } => Op::Failed(checked(id)?, at, error),
        })
    }
}

/// Ids name body files: only what [`new_id`] makes (and test ids).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Which body of an entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Request,
    Result,
}

impl BodyKind {
    fn ext(self) -> &'static str {
        match self {
            BodyKind::Request => "req",
            BodyKind::Result => "res",
        }
    }
}

fn body_path(dir: &Path, id: &str, kind: BodyKind) -> PathBuf {
    dir.join(BODIES_DIR).join(format!("{id}.{}", kind.ext()))
}

/// Writes a body file and makes it durable (file, then directory).
fn write_body(dir: &Path, id: &str, kind: BodyKind, body: &[u8]) -> io::Result<()> {
    let path = body_path(dir, id, kind);
    let written = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
    }
    .and_then(|mut f| {
        f.write_all(body)?;
        f.sync_all()
    })
    .and_then(|()| sync_dir(&dir.join(BODIES_DIR)));
    if written.is_err() {
        let _ = fs::remove_file(&path);
    }
    written
}

/// Removes a body file; a missing one is fine. Not fsync'd: a removal lost
/// in a crash is redone by the sweep at open.
fn remove_body(dir: &Path, id: &str, kind: BodyKind) {
    let path = body_path(dir, id, kind);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a queue body file")
        }
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

/// What a replay found.
struct Replay {
    /// Records read and applied (non-blank, parseable lines).
    records: usize,
    /// Bytes up to and including the last complete line.
    valid_len: u64,
    /// Size of the file as found.
    file_len: u64,
    /// Inline bodies of an old log were written to files.
    migrated: bool,
    quarantined: Vec<Quarantined>,
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

    /// Undelivered entries of `service` and their request-body bytes.
    fn depth_and_bytes(&self, service: &str) -> (usize, u64) {
        self.entries
            .values()
            .filter(|e| e.service == service && e.state.is_pending())
            .fold((0, 0u64), |(n, b), e| (n + 1, b.saturating_add(e.body_len)))
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
        self.apply(op, None).map_err(QueueError::NotFound)
    }

    /// `Err(id)` when the op refers to an id not in the store. With `dir`
    /// (replay), inline bodies of an old log are written to their files.
    fn apply(&mut self, op: Op, dir: Option<&Path>) -> Result<(), String> {
        let id = match op {
            Op::Meta(n) => {
                self.next_seq = self.next_seq.max(n);
                return Ok(());
            }
            Op::Put(d) => {
                let Decoded {
                    entry: e,
                    body,
                    result_body,
                } = *d;
                if let Some(dir) = dir {
                    migrate(dir, &e.id, BodyKind::Request, body);
                    migrate(dir, &e.id, BodyKind::Result, result_body);
                }
                self.next_seq = self.next_seq.max(e.seq.saturating_add(1));
                if let Some(old) = self.entries.get(&e.id) {
                    self.order.remove(&old.seq);
                }
                self.order.insert(e.seq, e.id.clone());
                self.entries.insert(e.id.clone(), e);
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
            Op::Delivered(_, at, result, inline) => {
                if let Some(dir) = dir {
                    migrate(dir, &id, BodyKind::Result, inline);
                }
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

    /// Reads the log line by line and applies it. A torn final record is
    /// cut (warned, by byte offset); a complete line that does not parse is
    /// quarantined (see the module docs).
    fn replay(&mut self, dir: &Path, path: &Path) -> Result<Replay, QueueError> {
        let mut out = Replay {
            records: 0,
            valid_len: 0,
            file_len: 0,
            migrated: false,
            quarantined: Vec::new(),
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        out.file_len = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let mut buf = Vec::new();
        let mut pos = 0u64;
        let mut line_no = 0usize;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let next = pos + n as u64;
            let terminated = buf.last() == Some(&b'\n');
            let line = if terminated { &buf[..n - 1] } else { &buf[..] };
            if line.iter().all(u8::is_ascii_whitespace) {
                if terminated {
                    out.valid_len = next;
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
                    out.migrated |= op_has_inline_body(&op);
                    if let Err(id) = self.apply(op, Some(dir)) {
                        tracing::warn!(
                            path = %path.display(),
                            line = line_no,
                            id = %id,
                            "queue log record for an id that was never enqueued; ignored"
                        );
                    }
                    out.records += 1;
                }
                Err(e) => {
                    let q = quarantine(dir, line, line_no, pos, &e)?;
                    tracing::error!(
                        path = %path.display(),
                        line = line_no,
                        offset = pos,
                        error = %e,
                        quarantine = %q.file.display(),
                        "queue log: a damaged line was moved to the quarantine file; starting without it"
                    );
                    out.quarantined.push(q);
                }
            }
            out.valid_len = next;
            pos = next;
        }
        Ok(out)
    }

    /// Rewrites the log with the live entries only (see module docs),
    /// entry by entry through a buffered writer.
    fn compact(
        &mut self,
        dir: &Path,
        retention: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        self.check_usable()?;
        let tmp = dir.join(TMP_FILE);
        let path = dir.join(LOG_FILE);
        let mut kept: HashSet<String> = HashSet::new();
        let written = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
        }
        .and_then(|f| {
            let mut w = BufWriter::with_capacity(64 * 1024, f);
            let mut push = |rec: &Record| -> io::Result<()> {
                serde_json::to_writer(&mut w, rec).map_err(io::Error::other)?;
                w.write_all(b"\n")
            };
            push(&Record::Meta {
                next_seq: self.next_seq,
            })?;
            for e in self
                .order
                .values()
                .filter_map(|id| self.entries.get(id))
                .filter(|e| !is_expired(e, now, retention))
            {
                push(&Record::Entry(EntryRecord::from_entry(e, true)))?;
                kept.insert(e.id.clone());
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            f.metadata().map(|m| m.len())
        });
        let len = match written.and_then(|len| fs::rename(&tmp, &path).map(|()| len)) {
            Ok(len) => len,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
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

        let dropped: Vec<String> = self
            .entries
            .keys()
            .filter(|id| !kept.contains(*id))
            .cloned()
            .collect();
        for id in &dropped {
            remove_body(dir, id, BodyKind::Request);
            remove_body(dir, id, BodyKind::Result);
        }
        self.entries.retain(|id, _| kept.contains(id));
        self.order.retain(|_, id| kept.contains(id));
        self.log_len = len;
        self.compacted_len = len;
        tracing::debug!(path = %path.display(), kept = kept.len(), dropped = dropped.len(), bytes = len, "queue log compacted");
        Ok(())
    }

    /// Removes body files no live entry refers to: the request bodies of
    /// finished entries, the results of dropped ones, a body written just
    /// before a crash that kept its record from the log.
    fn sweep_bodies(&self, dir: &Path) {
        let bodies = dir.join(BODIES_DIR);
        let Ok(list) = fs::read_dir(&bodies) else {
            return;
        };
        let mut removed = 0usize;
        for item in list.flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let Some((id, ext)) = name.rsplit_once('.') else {
                continue;
            };
            let live = match (ext, self.entries.get(id)) {
                ("req", Some(e)) => e.state.is_pending() && e.body_len > 0,
                ("res", Some(e)) => e.state == QueueState::Delivered,
                ("req" | "res", None) => false,
                _ => continue,
            };
            if !live && fs::remove_file(item.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(dir = %bodies.display(), removed, "removed queue body files no entry refers to");
        }
    }
}

fn op_has_inline_body(op: &Op) -> bool {
    match op {
        Op::Put(d) => d.body.is_some() || d.result_body.is_some(),
        Op::Delivered(_, _, _, inline) => inline.is_some(),
        _ => false,
    }
}

/// Writes an inline body of an old log to its file. A failure is logged:
/// the entry then fails at delivery (missing body) or shows no result body,
/// rather than the whole queue refusing to open.
fn migrate(dir: &Path, id: &str, kind: BodyKind, body: Option<Vec<u8>>) {
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return;
    };
    if let Err(e) = write_body(dir, id, kind, &body) {
        let path = body_path(dir, id, kind);
        tracing::error!(path = %path.display(), error = %e, "cannot move an inline queue body to its file");
    }
}

/// Appends a damaged log line to the quarantine file, durably.
fn quarantine(
    dir: &Path,
    line: &[u8],
    line_no: usize,
    offset: u64,
    error: &str,
) -> Result<Quarantined, QueueError> {
    let file = dir.join(QUARANTINE_FILE);
    let mut rec = json!({
        "quarantined_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "line": line_no,
        "byte_offset": offset,
        "error": error,
    });
    if let Some(obj) = rec.as_object_mut() {
        match std::str::from_utf8(line) {
            Ok(s) => obj.insert("raw".into(), Value::String(s.to_string())),
            Err(_) => obj.insert("raw_b64".into(), Value::String(B64.encode(line))),
        };
    }
    let mut text = rec.to_string().into_bytes();
    text.push(b'\n');
    let mut f = open_append(&file)?;
    f.write_all(&text)?;
    f.sync_data()?;
    Ok(Quarantined {
        line: line_no,
        byte_offset: offset,
        bytes: line.len(),
        error: error.to_string(),
        file,
    })
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
