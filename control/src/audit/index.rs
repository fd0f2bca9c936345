//! What the engine keeps in memory about its audit log: per-segment
//! metadata and counts (for status, reports, retention and live
//! verification), the most recent entries (for queries), and the manual
//! interventions (for the compliance report). Everything here is rebuilt
//! from the files at start; the files stay the only truth.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::entry::{scan, Action, Severity};
use super::segment::SegmentMeta;
use super::verify::{Input, VerifyReport};

/// Recent lines kept in memory; older ones are read from disk on demand.
pub const RECENT_CAPACITY: usize = 10_000;
/// Manual interventions kept for the report (newest).
pub const MANUAL_CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Recent {
    pub seq: u64,
    pub action: Action,
    pub severity: Severity,
    pub ts: Option<DateTime<Utc>>,
    pub line: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Index {
    /// Oldest first; the last one is being written.
    pub segments: Vec<SegmentMeta>,
    pub recent: VecDeque<Recent>,
    pub manual: VecDeque<Value>,
    pub last_seq: u64,
    pub last_hash: Option<String>,
    pub checkpoints: u64,
    pub last_checkpoint_seq: Option<u64>,
    pub verify: VerifyReport,
}

/// `GET /api/ops/audit/status` (SPEC 4 names, then extras).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AuditStatus {
    pub total_entries: u64,
    pub entries_by_action: BTreeMap<&'static str, u64>,
    pub entries_by_severity: BTreeMap<&'static str, u64>,
    pub chain_verified: bool,
    pub last_seq: u64,
    pub last_hash: Option<String>,
    /// The oldest entry kept (retention may have removed older ones).
    pub first_seq: Option<u64>,
    pub segments: usize,
    pub signing: bool,
    pub last_checkpoint_seq: Option<u64>,
}

/// Filters of `GET /api/ops/audit/logs`. Results are newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<Action>,
    pub severity: Option<Severity>,
    /// Entries at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Default [`AuditFilter::DEFAULT_LIMIT`], at most [`AuditFilter::MAX_LIMIT`].
    pub limit: Option<usize>,
}

impl AuditFilter {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 10_000;

    /// From query-string values; `Err` is a message for a 400.
    pub fn parse(
        action: Option<&str>,
        severity: Option<&str>,
        since: Option<&str>,
        limit: Option<&str>,
    ) -> Result<AuditFilter, String> {
        let since = since
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("`since` is not an RFC 3339 timestamp: {e}"))
            })
            .transpose()?;
        let limit = limit
            .map(|l| {
                l.parse::<usize>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("`limit` must be a positive integer, not `{l}`"))
            })
            .transpose()?;
        Ok(AuditFilter {
            action: action.map(str::parse).transpose()?,
            severity: severity.map(str::parse).transpose()?,
            since,
            limit,
        })
    }

    pub fn effective_limit(&self) -> usize {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT)
    }

    fn matches(&self, a: Action, s: Severity) -> bool {
        self.action.is_none_or(|x| x == a) && self.severity.is_none_or(|x| x == s)
    }
}

/// What memory could answer of a query.
pub enum RecentAnswer {
    Complete(Vec<Arc<str>>),
    /// Older entries on disk (before this seq) may still match.
    Partial(Vec<Arc<str>>, u64),
}

pub fn parse_ts(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Index {
    pub fn push_recent(&mut self, r: Recent) {
        if self.recent.len() == RECENT_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }

    /// Records a manual intervention from its (masked) line.
    pub fn push_manual(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let d = &v["details"];
        let m = serde_json::json!({
            "seq": v["seq"], "timestamp": v["timestamp"], "actor": v["actor"],
            "service": v["service"], "operation": d["operation"], "reason": d["reason"],
        });
        if self.manual.len() == MANUAL_CAPACITY {
            self.manual.pop_front();
        }
        self.manual.push_back(m);
    }

    /// Drops what retention removed (seqs up to `through`).
    pub fn forget_through(&mut self, through: u64) {
        while self.recent.front().is_some_and(|r| r.seq <= through) {
            self.recent.pop_front();
        }
        while self
            .manual
            .front()
            .and_then(|m| m["seq"].as_u64())
            .is_some_and(|s| s <= through)
        {
            self.manual.pop_front();
        }
    }

    pub fn counts(&self) -> ([u64; 9], [u64; 4]) {
        let mut a = [0u64; 9];
        let mut s = [0u64; 4];
        for seg in &self.segments {
            for (x, y) in a.iter_mut().zip(seg.by_action) {
                *x += y;
            }
            for (x, y) in s.iter_mut().zip(seg.by_severity) {
                *x += y;
            }
        }
        (a, s)
    }

    pub fn first_seq(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| s.first_seq)
    }

    pub fn status(&self, signing: bool) -> AuditStatus {
        let (a, s) = self.counts();
        AuditStatus {
            total_entries: a.iter().sum(),
            entries_by_action: Action::ALL
                .iter()
                .map(|x| (x.as_str(), a[x.index()]))
                .collect(),
            entries_by_severity: Severity::ALL
                .iter()
                .map(|x| (x.as_str(), s[x.index()]))
                .collect(),
            chain_verified: self.verify.chain_verified,
            last_seq: self.last_seq,
            last_hash: self.last_hash.clone(),
            first_seq: self.first_seq(),
            segments: self.segments.len(),
            signing,
            last_checkpoint_seq: self.last_checkpoint_seq,
        }
    }

    /// The committed bytes of every segment, for live verification and
    /// disk queries.
    pub fn inputs(&self) -> Vec<Input> {
        self.segments
            .iter()
            .map(|s| Input {
                path: s.path.clone(),
                limit: Some(s.len),
            })
            .collect()
    }

    /// Newest-first matches from memory.
    pub fn query_recent(&self, f: &AuditFilter) -> RecentAnswer {
        let limit = f.effective_limit();
        let mut out = Vec::new();
        for r in self.recent.iter().rev() {
            if let (Some(since), Some(ts)) = (f.since, r.ts) {
                if ts < since {
                    return RecentAnswer::Complete(out);
                }
            }
            if f.matches(r.action, r.severity) {
                out.push(r.line.clone());
                if out.len() == limit {
                    return RecentAnswer::Complete(out);
                }
            }
        }
        match (self.recent.front(), self.first_seq()) {
            (Some(oldest), Some(first)) if oldest.seq > first => {
                RecentAnswer::Partial(out, oldest.seq)
            }
            (None, Some(_)) => RecentAnswer::Partial(out, u64::MAX),
            _ => RecentAnswer::Complete(out),
        }
    }
}

/// Continues a query on disk, newest segment first, for entries older than
/// `before_seq`.
pub fn query_disk(inputs: &[Input], f: &AuditFilter, before_seq: u64, out: &mut Vec<Arc<str>>) {
    let limit = f.effective_limit();
    for input in inputs.iter().rev() {
        let Ok(bytes) = std::fs::read(&input.path) else {
            continue;
        };
        let end = input
            .limit
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(bytes.len())
            .min(bytes.len());
        for line in bytes[..end].split(|&b| b == b'\n').rev() {
            let Ok(s) = scan(line) else { continue };
            if s.seq >= before_seq {
                continue;
            }
            if let (Some(since), Some(ts)) = (f.since, parse_ts(s.timestamp)) {
                if ts < since {
                    return;
                }
            }
            if f.matches(s.action, s.severity) {
                if let Ok(text) = std::str::from_utf8(line) {
                    out.push(Arc::from(text));
                }
                if out.len() >= limit {
                    return;
                }
            }
        }
    }
}
