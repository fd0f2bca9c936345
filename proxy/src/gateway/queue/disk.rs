//! File-system helpers of the store: the quarantine file, owner-only
//! appends, directory fsync, retention, and entry ids.

use super::*;

/// Appends a damaged log line to the quarantine file, durably.
pub(super) fn quarantine(
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
pub(super) fn is_expired(e: &QueuedEntry, now: DateTime<Utc>, retention: Duration) -> bool {
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
pub(super) fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Makes a create/rename in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
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
pub(super) fn new_id(now: DateTime<Utc>) -> String {
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    format!("q{millis:013x}-{:08x}", rand::random::<u32>())
}
