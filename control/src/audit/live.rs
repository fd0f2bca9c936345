//! `GET /api/ops/audit/verify` without rescanning the whole log on every
//! call: single-flight and cached.
//!
//! One scan at a time: callers that arrive while a scan runs wait for it
//! and share its result. The result is kept with a [`Stamp`] of what it
//! verified: the last seq and hash the engine wrote, and for every segment
//! its length, inode, mtime and ctime. A call whose stamp equals the kept
//! one gets the kept result; anything new (an entry appended, a segment
//! rotated or removed by retention, a file edited, replaced or touched,
//! even to its old length and mtime, since ctime cannot be set back) makes
//! the next call scan again. Taking the stamp costs one `stat` per segment.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// One segment as `stat` sees it; `None` when it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    meta: Option<(u64, u64, u64, i64, i64, i64, i64)>,
}

/// What a verification result is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    last_seq: u64,
    last_hash: Option<String>,
    files: Vec<FileStamp>,
}

impl Stamp {
    pub fn take(last_seq: u64, last_hash: Option<String>, paths: Vec<PathBuf>) -> Stamp {
        let files = paths
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).ok().map(|m| {
                    (
                        m.len(),
                        m.dev(),
                        m.ino(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                    )
                });
                FileStamp { path, meta }
            })
            .collect();
        Stamp {
            last_seq,
            last_hash,
            files,
        }
    }
}
