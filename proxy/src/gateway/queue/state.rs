//! The store's in-memory index and the log behind it: appending a
//! record durably, applying it, replaying the log at open (torn tails cut,
//! damaged lines quarantined) and compacting it.

use super::*;

/// What a replay found.
pub(super) struct Replay {
    /// Records read and applied (non-blank, parseable lines).
    pub(super) records: usize,
    /// Bytes up to and including the last complete line.
    pub(super) valid_len: u64,
    /// Size of the file as found.
    pub(super) file_len: u64,
    /// Inline bodies of an old log were written to files.
    pub(super) migrated: bool,
    pub(super) quarantined: Vec<Quarantined>,
}

impl State {
    pub(super) fn check_usable(&self) -> Result<(), QueueError> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(QueueError::Io(io::Error::other(format!(
                "queue log unusable since an earlier failure ({why}); restart the engine"
            )))),
        }
    }

    pub(super) fn require_pending(&self, id: &str) -> Result<(), QueueError> {
        self.check_usable()?;
        match self.entries.get(id) {
            Some(e) if e.state.is_pending() => Ok(()),
            _ => Err(QueueError::NotFound(id.to_string())),
        }
    }

    /// Undelivered entries of `service` and their request-body bytes.
    pub(super) fn depth_and_bytes(&self, service: &str) -> (usize, u64) {
        self.entries
            .values()
            .filter(|e| e.service == service && e.state.is_pending())
            .fold((0, 0u64), |(n, b), e| (n + 1, b.saturating_add(e.body_len)))
    }

    /// Appends one record and fsyncs it. On failure the file is truncated
    /// back so no partial line is left for later appends to follow.
    pub(super) fn append(&mut self, rec: &Record) -> Result<(), QueueError> {
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
    pub(super) fn apply_known(&mut self, op: Op) -> Result<(), QueueError> {
        self.apply(op, None).map_err(QueueError::NotFound)
    }

    /// `Err(id)` when the op refers to an id not in the store. With `dir`
    /// (replay), inline bodies of an old log are written to their files.
    pub(super) fn apply(&mut self, op: Op, dir: Option<&Path>) -> Result<(), String> {
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
    pub(super) fn replay(&mut self, dir: &Path, path: &Path) -> Result<Replay, QueueError> {
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
    pub(super) fn compact(
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
    pub(super) fn sweep_bodies(&self, dir: &Path) {
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

pub(super) fn op_has_inline_body(op: &Op) -> bool {
    match op {
        Op::Put(d) => d.body.is_some() || d.result_body.is_some(),
        Op::Delivered(_, _, _, inline) => inline.is_some(),
        _ => false,
    }
}
