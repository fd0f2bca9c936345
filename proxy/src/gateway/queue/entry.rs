//! The queue's public types: what the gateway stores, an entry's states
//! and result, the errors, and an entry's JSON view for the operations API.

use super::*;

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
