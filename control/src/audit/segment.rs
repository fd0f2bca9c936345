//! Segment files: names, listing, creation, quarantine of a torn tail, and
//! which segments retention may delete.
//!
//! `segment-000001.jsonl`, `segment-000002.jsonl`, … in the audit
//! directory (more digits past 999999). Only the newest segment is ever
//! written to; a new one starts when the next line would take the current
//! one past `segment_max_bytes` or when the next entry's UTC date differs
//! from the date of the segment's first entry (midnight rotation).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};

use super::entry::{Action, Severity};
use super::AuditError;

/// Where torn lines found at start are moved (never deleted).
pub const QUARANTINE_DIR: &str = "quarantine";

pub fn segment_name(n: u64) -> String {
    format!("segment-{n:06}.jsonl")
}

/// `Some(n)` for `segment-<digits>.jsonl`.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of `dir`, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))? {
        let e = e.map_err(|e| AuditError::io(dir, e))?;
        if let Some(n) = e.file_name().to_str().and_then(parse_segment_name) {
            out.push((n, e.path()));
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// Makes a created or removed file durable in its directory.
pub fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}

/// Mode of every file the audit log creates: entries name who did what
/// and why, so only the engine's user may read them, whatever the umask.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories it creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates segment `n` (it must not exist), mode [`FILE_MODE`], and syncs
/// the directory.
pub fn create_segment(dir: &Path, n: u64) -> Result<File, AuditError> {
    let path = dir.join(segment_name(n));
    let f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|e| AuditError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(f)
}

pub fn open_for_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))
}

/// What the start-up scan learned about one segment.
#[derive(Debug, Clone)]
pub struct SegmentMeta {
    pub number: u64,
    pub path: PathBuf,
    /// Bytes of whole, committed lines.
    pub len: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    pub first_day: Option<NaiveDate>,
    pub first_ts: Option<DateTime<Utc>>,
    pub last_ts: Option<DateTime<Utc>>,
    pub by_action: [u64; 9],
    pub by_severity: [u64; 4],
}

impl SegmentMeta {
    pub fn new(number: u64, path: PathBuf) -> SegmentMeta {
        SegmentMeta {
            number,
            path,
            len: 0,
            first_seq: None,
            last_seq: None,
            last_hash: None,
            first_day: None,
            first_ts: None,
            last_ts: None,
            by_action: [0; 9],
            by_severity: [0; 4],
        }
    }

    pub fn record(
        &mut self,
        seq: u64,
        hash: &str,
        ts: Option<DateTime<Utc>>,
        a: Action,
        s: Severity,
        line_len: u64,
    ) {
        self.len += line_len;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
        self.last_hash = Some(hash.to_string());
        if let Some(ts) = ts {
            if self.first_ts.is_none() {
                self.first_ts = Some(ts);
                self.first_day = Some(ts.date_naive());
            }
            self.last_ts = Some(ts);
        }
        self.by_action[a.index()] += 1;
        self.by_severity[s.index()] += 1;
    }
}

/// Segments retention deletes: every one but the newest whose last entry
/// is older than `now - retention_days`, stopping at the first one that is
/// kept, so that what remains is always one unbroken run of segments.
pub fn expired(segments: &[SegmentMeta], now: DateTime<Utc>, retention_days: u32) -> usize {
    let cutoff = now - chrono::Duration::days(i64::from(retention_days));
    let mut n = 0;
    for s in segments.iter().take(segments.len().saturating_sub(1)) {
        match s.last_ts {
            Some(ts) if ts < cutoff => n += 1,
            // An empty segment (a crash right after rotation) goes with
            // its expired neighbours; it holds nothing.
            None if s.last_seq.is_none() => n += 1,
            _ => break,
        }
    }
    n
}

/// A torn tail moved aside.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quarantined {
    /// The segment's file name.
    pub file: String,
    /// Where the torn bytes started in it.
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
    /// Relative to the audit directory.
    pub moved_to: String,
}

/// Moves `path[offset..]` to `dir/quarantine/<file>.<offset>.torn` (synced)
/// and only then truncates the segment to `offset`.
pub fn quarantine_tail(dir: &Path, path: &Path, offset: u64) -> Result<Quarantined, AuditError> {
    let bytes = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let torn = &bytes[start..];
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let qdir = dir.join(QUARANTINE_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&qdir)
        .map_err(|e| AuditError::io(&qdir, e))?;
    let mut name = format!("{file}.{offset}.torn");
    let mut i = 1;
    while qdir.join(&name).exists() {
        name = format!("{file}.{offset}.torn.{i}");
        i += 1;
    }
    let qpath = qdir.join(&name);
    let mut q = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&qpath)
        .map_err(|e| AuditError::io(&qpath, e))?;
    q.write_all(torn)
        .and_then(|()| q.sync_all())
        .map_err(|e| AuditError::io(&qpath, e))?;
    sync_dir(&qdir)?;
    sync_dir(dir)?;
    let seg = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    seg.set_len(offset)
        .and_then(|()| seg.sync_all())
        .map_err(|e| AuditError::io(path, e))?;
    let digest: [u8; 32] = Sha256::digest(torn).into();
    Ok(Quarantined {
        file,
        offset,
        length: torn.len() as u64,
        sha256: hex::encode(digest),
        moved_to: format!("{QUARANTINE_DIR}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(segment_name(1), "segment-000001.jsonl");
        assert_eq!(segment_name(1234567), "segment-1234567.jsonl");
        assert_eq!(parse_segment_name("segment-000042.jsonl"), Some(42));
        assert_eq!(parse_segment_name("segment-.jsonl"), None);
        assert_eq!(parse_segment_name("segment-1.jsonl.torn"), None);
    }

    #[test]
    fn retention_keeps_the_newest_and_a_contiguous_run() {
        let now = Utc::now();
        let seg = |n: u64, age_days: i64| {
            let mut m = SegmentMeta::new(n, PathBuf::new());
            m.record(
                n,
                "h",
                Some(now - chrono::Duration::days(age_days)),
                Action::HealthCheck,
                Severity::Info,
                1,
            );
            m
        };
        let segs = vec![
            seg(1, 400),
            seg(2, 370),
            seg(3, 10),
            seg(4, 400),
            seg(5, 500),
        ];
        assert_eq!(expired(&segs, now, 365), 2);
        assert_eq!(expired(&segs[4..], now, 365), 0, "never the newest");
    }
}
