//! The log's on-disk records (one JSON object per line, tagged by `op`)
//! and their decoding into the [`Op`]s the index applies.

use super::*;

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Record {
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
pub(super) struct EntryRecord {
    pub(super) id: String,
    pub(super) seq: u64,
    pub(super) service: String,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: Vec<(String, String)>,
    /// Body length; a non-empty body is the file `bodies/<id>.req`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub(super) body_len: u64,
    /// Inline body of logs written before bodies moved to files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) body_b64: Option<String>,
    pub(super) enqueued_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) state: Option<QueueState>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) result: Option<ResultRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) finished_at: Option<DateTime<Utc>>,
}

/// A non-empty result body is the file `bodies/<id>.res`.
#[derive(Serialize, Deserialize)]
pub(super) struct ResultRecord {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    /// Inline body of logs written before bodies moved to files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) body_b64: Option<String>,
    pub(super) upstream: String,
}

pub(super) fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(super) fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl ResultRecord {
    pub(super) fn from_result(r: &DeliveryResult) -> Self {
        ResultRecord {
            status: r.status,
            headers: r.headers.clone(),
            body_b64: None,
            upstream: r.upstream.clone(),
        }
    }

    /// The result (body empty) and an inline legacy body, if any.
    pub(super) fn into_result(self) -> Result<(DeliveryResult, Option<Vec<u8>>), String> {
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
    pub(super) fn from_entry(e: &QueuedEntry, full: bool) -> Self {
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

    pub(super) fn into_entry(self) -> Result<Decoded, String> {
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
pub(super) struct Decoded {
    pub(super) entry: QueuedEntry,
    pub(super) body: Option<Vec<u8>>,
    pub(super) result_body: Option<Vec<u8>>,
}

/// A decoded record, applied the same way at replay and at run time.
pub(super) enum Op {
    Meta(u64),
    Put(Box<Decoded>),
    Attempt(String),
    /// The result's body is on disk already, or inline (old logs).
    Delivered(String, DateTime<Utc>, DeliveryResult, Option<Vec<u8>>),
    Retry(String, String),
    Failed(String, DateTime<Utc>, String),
}

impl Op {
    pub(super) fn decode(line: &[u8]) -> Result<Op, String> {
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
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
