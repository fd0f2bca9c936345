//! The file under `data_dir/snapshots`: `buckets.jsonl`, one bucket per
//! line. Closed minutes are appended as they close; a compaction rewrites
//! the file from memory (hour lines beyond the minute retention, minute
//! lines within it) through a temporary file and a rename, so a crash
//! leaves either the old file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::bucket::Bucket;
use super::history::Res;
use super::SnapshotError;

/// The file name inside the snapshots directory.
pub const FILE: &str = "buckets.jsonl";

/// One persisted bucket.
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    pub service: String,
    #[serde(default)]
    pub category: Option<String>,
    /// `minute` or `hour`.
    pub res: String,
    pub start: DateTime<Utc>,
    #[serde(flatten)]
    pub bucket: Bucket,
}

impl Line {
    pub fn new(service: &str, category: Option<&str>, res: Res, start: i64, b: &Bucket) -> Line {
        Line {
            service: service.to_string(),
            category: category.map(str::to_string),
            res: match res {
                Res::Minute => "minute",
                Res::Hour => "hour",
            }
            .to_string(),
            start: DateTime::from_timestamp(start, 0).unwrap_or_default(),
            bucket: b.clone(),
        }
    }

    pub fn res(&self) -> Option<Res> {
        match self.res.as_str() {
            "minute" => Some(Res::Minute),
            "hour" => Some(Res::Hour),
            _ => None,
        }
    }
}

/// Reads every line that parses; returns them and how many were skipped.
/// A missing file is an empty history.
pub fn read(path: &Path) -> Result<(Vec<Line>, usize), SnapshotError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(SnapshotError::io(path, e)),
    };
    let mut lines = Vec::new();
    let mut bad = 0;
    for (n, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = serde_json::from_slice::<Line>(raw)
            .ok()
            .filter(|l| l.res().is_some() && !l.service.is_empty());
        match parsed {
            Some(l) => lines.push(l),
            None => {
                bad += 1;
                tracing::warn!(
                    file = %path.display(),
                    line = n + 1,
                    "skipping an unreadable snapshot line"
                );
            }
        }
    }
    Ok((lines, bad))
}

fn encode(lines: &[Line]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        match serde_json::to_vec(l) {
            Ok(v) => {
                out.extend_from_slice(&v);
                out.push(b'\n');
            }
            Err(e) => {
                tracing::error!(error = %e, service = %l.service, "cannot encode a snapshot bucket")
            }
        }
    }
    out
}

/// Appends closed buckets (no fsync: losing the last minutes to a power
/// cut is acceptable for history).
pub fn append(path: &Path, lines: &[Line]) -> Result<(), SnapshotError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SnapshotError::io(path, e))?;
    f.write_all(&encode(lines))
        .map_err(|e| SnapshotError::io(path, e))
}

/// Replaces the file with exactly `lines` (write, fsync, rename).
pub fn rewrite(path: &Path, lines: &[Line]) -> Result<(), SnapshotError> {
    let tmp: PathBuf = path.with_extension("jsonl.tmp");
    let mut f = File::create(&tmp).map_err(|e| SnapshotError::io(&tmp, e))?;
    f.write_all(&encode(lines))
        .and_then(|()| f.sync_all())
        .map_err(|e| SnapshotError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| SnapshotError::io(path, e))
}
