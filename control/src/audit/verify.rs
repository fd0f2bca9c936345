//! Chain verification: one streaming pass over the segments, oldest first.
//!
//! Every line is checked, in this order: it is a whole entry (a torn or
//! unparsable line breaks the chain at the seq it should have had); its
//! `seq` is the next one (a gap inside a segment is a missing line or a
//! reordering, a gap at a segment's first line a missing segment); its
//! `prev_hash` is the previous entry's `hash` (64 zeros for seq 1); its
//! `hash` is right. A `checkpoint` must sign the hash of the entry before
//! it; with a public key its signature must verify, and the log must be
//! covered: at least one entry, at least one checkpoint, and never more
//! than the previous checkpoint's signed `interval` entries without the
//! next one (for a legacy v1 checkpoint, whose `interval` is not signed,
//! at most [`LEGACY_INTERVAL`]).
//!
//! Retention: when the oldest kept entry is not seq 1, its `prev_hash` is
//! taken from the newest `audit_retention` record (written before any
//! segment is deleted); a log that starts late without such a record has
//! lost a segment.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::checkpoint::{verify_signature, CheckpointDetails, LEGACY_INTERVAL};
use super::entry::{scan, Action, Scanned, GENESIS_HASH};
use super::AuditError;

/// `details.event` of the record retention writes before deleting.
pub const RETENTION_EVENT: &str = "audit_retention";
/// `details.event` of the record of a torn line moved aside.
pub const TORN_EVENT: &str = "audit_torn_line";

/// The result of a verification (also the body of `GET /api/ops/audit/verify`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct VerifyReport {
    pub chain_verified: bool,
    /// Entries that verified (up to the first break).
    pub entries: u64,
    /// The oldest entry kept: 1 unless retention removed segments.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    pub first_broken_seq: Option<u64>,
    pub reason: Option<String>,
    pub segments: usize,
    /// Set when verification starts after seq 1, saying why that is fine.
    pub starts_at_note: Option<String>,
    pub checkpoints: u64,
    /// Of those, checkpoints in the legacy v1 format (signature over
    /// `signed_hash` only; see `checkpoint`).
    pub legacy_checkpoints: u64,
    /// True when checkpoint signatures were checked with a public key.
    pub signatures_checked: bool,
    pub verified_at: String,
}

/// One segment to read, `limit` bytes at most (live verification stops at
/// what the writer has committed).
#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub limit: Option<u64>,
}

#[derive(Default)]
pub struct Options<'a> {
    pub key: Option<&'a VerifyingKey>,
    /// Keep going after the first break (start-up rebuilds its index).
    pub continue_after_break: bool,
    /// The live tail the log must end with: `(last_seq, last_hash)`.
    pub expect_tail: Option<(u64, String)>,
}

/// The tail of the newest segment that is not a whole entry.
#[derive(Debug, Clone)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub seq: u64,
}

pub struct Outcome {
    pub report: VerifyReport,
    pub torn_tail: Option<TornTail>,
}

#[derive(Deserialize)]
struct RetentionLine {
    details: RetentionDetails,
}
#[derive(Deserialize)]
struct RetentionDetails {
    event: String,
    removed_through_seq: u64,
    removed_last_hash: String,
}

#[derive(Deserialize)]
struct CheckpointLine {
    details: CheckpointDetails,
}

#[derive(Clone, Copy)]
struct Since {
    seq: u64,
    interval: u64,
    entries: u64,
    legacy: bool,
}

struct State<'a> {
    opts: &'a Options<'a>,
    report: VerifyReport,
    expected: Option<u64>,
    prev_hash: Option<String>,
    /// The last checkpoint: seq, interval, entries since.
    since_checkpoint: Option<Since>,
    /// Newest retention record: (through seq, last hash, record seq).
    retention: Option<(u64, String, u64)>,
    first_prev_hash: Option<String>,
    stop: bool,
}

impl State<'_> {
    fn brk(&mut self, seq: u64, reason: String) {
        if self.report.first_broken_seq.is_none() {
            self.report.first_broken_seq = Some(seq);
            self.report.reason = Some(reason);
            self.stop = !self.opts.continue_after_break;
        }
    }

    fn broken(&self) -> bool {
        self.report.first_broken_seq.is_some()
    }

    fn next_seq(&self) -> u64 {
        self.expected.unwrap_or(1)
    }

    fn entry(&mut self, s: &Scanned<'_>, line: &[u8], file: &str, first_in_file: bool) {
        let clean = !self.broken();
        match self.expected {
            None => {
                self.report.first_seq = Some(s.seq);
                self.first_prev_hash = Some(s.prev_hash.to_string());
                if s.seq == 1 && s.prev_hash != GENESIS_HASH {
                    self.brk(1, "prev_hash of seq 1 is not 64 zeros".into());
                }
            }
            Some(exp) if s.seq != exp => {
                let reason = if first_in_file && s.seq > exp {
                    format!(
                        "missing segment: seqs {exp}..{} are absent before {file}",
                        s.seq - 1
                    )
                } else if s.seq > exp {
                    format!("seq gap in {file}: expected seq {exp}, found seq {} (a line was removed or lines were reordered)", s.seq)
                } else {
                    format!("seq out of order in {file}: expected seq {exp}, found seq {} (lines were reordered or duplicated)", s.seq)
                };
                self.brk(exp, reason);
            }
            Some(_) => {
                if self.prev_hash.as_deref() != Some(s.prev_hash) {
                    self.brk(
                        s.seq,
                        format!(
                            "prev_hash mismatch: it is not the hash of seq {}",
                            s.seq - 1
                        ),
                    );
                }
            }
        }
        if !s.hash_ok {
            self.brk(
                s.seq,
                format!("hash mismatch: the entry's bytes in {file} were changed"),
            );
        }
        match s.action {
            Action::Checkpoint => self.checkpoint(s, line),
            Action::DiagnosticEvent => {
                self.count_since_checkpoint(s.seq);
                self.maybe_retention(s, line);
            }
            _ => self.count_since_checkpoint(s.seq),
        }
        if clean && !self.broken() {
            self.report.entries += 1;
        }
        self.report.last_seq = Some(s.seq);
        self.report.last_hash = Some(s.hash.to_string());
        self.expected = Some(s.seq + 1);
        self.prev_hash = Some(s.hash.to_string());
    }

    fn count_since_checkpoint(&mut self, seq: u64) {
        if let Some(since) = &mut self.since_checkpoint {
            since.entries += 1;
            if since.entries > since.interval && self.opts.key.is_some() {
                let Since {
                    seq: cp,
                    interval,
                    legacy,
                    ..
                } = *since;
                let why = if legacy {
                    " (a legacy v1 checkpoint: its `interval` is not signed, so no more than that is believed)"
                } else {
                    ""
                };
                self.brk(seq, format!("missing checkpoint: more than {interval} entries after the checkpoint at seq {cp}{why} (checkpoints removed?)"));
            }
        }
    }

    fn checkpoint(&mut self, s: &Scanned<'_>, line: &[u8]) {
        self.report.checkpoints += 1;
        let details = match serde_json::from_slice::<CheckpointLine>(line) {
            Ok(c) => c.details,
            Err(_) => {
                self.brk(
                    s.seq,
                    "checkpoint without `signed_hash` and `signature`".into(),
                );
                return;
            }
        };
        let legacy = details.version.is_none();
        if legacy {
            self.report.legacy_checkpoints += 1;
        }
        // What coverage is judged by: the signed interval once the
        // signature verified; unchecked without a key (coverage is then
        // not checked either).
        let mut interval = match details.version {
            None => details
                .interval
                .unwrap_or(LEGACY_INTERVAL)
                .min(LEGACY_INTERVAL),
            Some(_) => details.interval.unwrap_or(LEGACY_INTERVAL),
        }
        .max(1);
        let last = self.since_checkpoint.map(|c| c.seq);
        let rewritten = match last {
            Some(cp) => format!(
                "entries between the checkpoints at seq {cp} and seq {} were rewritten",
                s.seq
            ),
            None if s.seq == 1 => "the log was rebuilt from its start".to_string(),
            None => format!("entries before seq {} were rewritten", s.seq),
        };
        if details.signed_hash != s.prev_hash {
            self.brk(
                s.seq,
                format!(
                    "checkpoint signed_hash is not the hash of seq {}: {rewritten}",
                    s.seq - 1
                ),
            );
        } else if let Some(key) = self.opts.key {
            match verify_signature(key, s.seq, &details) {
                Ok(v) => interval = v.interval(),
                Err(why) => self.brk(
                    s.seq,
                    format!("{why}: this checkpoint's details were changed, or {rewritten}"),
                ),
            }
        }
        self.since_checkpoint = Some(Since {
            seq: s.seq,
            interval,
            entries: 0,
            legacy,
        });
    }

    fn maybe_retention(&mut self, s: &Scanned<'_>, line: &[u8]) {
        let needle = format!("\"event\":\"{RETENTION_EVENT}\"");
        if !line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return;
        }
        if let Ok(r) = serde_json::from_slice::<RetentionLine>(line) {
            if r.details.event == RETENTION_EVENT {
                let newer = self
                    .retention
                    .as_ref()
                    .is_none_or(|(t, _, _)| r.details.removed_through_seq >= *t);
                if newer {
                    self.retention = Some((
                        r.details.removed_through_seq,
                        r.details.removed_last_hash,
                        s.seq,
                    ));
                }
            }
        }
    }

    /// Checks that need the whole log: where it starts, checkpoint
    /// coverage, and the live tail.
    fn finish(&mut self) {
        let first = self.report.first_seq;
        if let (Some(first), false) = (first, self.broken()) {
            if first > 1 {
                match &self.retention {
                    Some((through, hash, at)) if *through + 1 == first => {
                        if self.first_prev_hash.as_deref() != Some(hash.as_str()) {
                            self.brk(first, format!("prev_hash of seq {first} is not the hash the retention record at seq {at} gives for seq {through}"));
                        } else {
                            self.report.starts_at_note = Some(format!("verification starts at seq {first}: seqs 1..{through} were removed by retention (record at seq {at}); the prev_hash of seq {first} matches that record"));
                        }
                    }
                    Some((through, _, at)) if *through + 1 > first => {
                        self.report.starts_at_note = Some(format!("verification starts at seq {first}: retention (record at seq {at}) was removing seqs up to {through} and was interrupted; seq {first}'s prev_hash is taken on trust"));
                    }
                    Some((through, _, at)) => self.brk(*through + 1, format!("missing segment: the log starts at seq {first}, but retention (record at seq {at}) removed only seqs 1..{through}")),
                    None => self.brk(1, format!("missing segment: the log starts at seq {first} and no retention record accounts for seqs 1..{}", first - 1)),
                }
            }
        }
        if self.opts.key.is_some() && !self.broken() && first.is_none() {
            self.brk(
                1,
                "empty log: it holds no entry, so nothing in it is covered by a signature".into(),
            );
        }
        if self.opts.key.is_some() && !self.broken() {
            if let (0, Some(first)) = (self.report.checkpoints, first) {
                self.brk(
                    first,
                    "no signed checkpoint: nothing in this log is covered by a signature".into(),
                );
            }
        }
        if let (Some((seq, hash)), false) = (&self.opts.expect_tail, self.broken()) {
            let (seq, hash) = (*seq, hash.clone());
            match self.report.last_seq {
                Some(last) if last == seq => {
                    if self.report.last_hash.as_deref() != Some(hash.as_str()) {
                        self.brk(
                            seq,
                            format!("the last entry (seq {seq}) is not the one the engine wrote"),
                        );
                    }
                }
                last => {
                    let found = last.map_or("nothing".to_string(), |l| format!("seq {l}"));
                    self.brk(last.map_or(1, |l| l + 1), format!("the log ends at {found}, but the engine has written through seq {seq} (entries removed from the end)"));
                }
            }
        }
        self.report.chain_verified = !self.broken();
        self.report.signatures_checked = self.opts.key.is_some();
    }
}

/// Verifies `inputs` (oldest first). `visit` is called for every line that
/// is a whole entry, with the index of its input and its byte length
/// (including the `\n`). `Err` only when a file cannot be read.
pub fn run(
    inputs: &[Input],
    opts: &Options<'_>,
    mut visit: impl FnMut(usize, &Scanned<'_>, &[u8], u64),
) -> Result<Outcome, AuditError> {
    let mut st = State {
        opts,
        report: VerifyReport {
            segments: inputs.len(),
            ..VerifyReport::default()
        },
        expected: None,
        prev_hash: None,
        since_checkpoint: None,
        retention: None,
        first_prev_hash: None,
        stop: false,
    };
    let mut torn_tail = None;
    let mut buf = Vec::with_capacity(4096);
    for (i, input) in inputs.iter().enumerate() {
        let last_input = i + 1 == inputs.len();
        let file = input
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let f = File::open(&input.path).map_err(|e| AuditError::io(&input.path, e))?;
        let reader: Box<dyn Read> = match input.limit {
            Some(l) => Box::new(f.take(l)),
            None => Box::new(f),
        };
        let mut r = BufReader::with_capacity(1 << 20, reader);
        let mut offset = 0u64;
        let mut first_in_file = true;
        loop {
            buf.clear();
            let n = r
                .read_until(b'\n', &mut buf)
                .map_err(|e| AuditError::io(&input.path, e))?;
            if n == 0 {
                break;
            }
            let terminated = buf.last() == Some(&b'\n');
            let line = if terminated { &buf[..n - 1] } else { &buf[..] };
            let scanned = if terminated {
                scan(line)
            } else {
                Err(super::entry::Malformed("no trailing newline"))
            };
            match scanned {
                Ok(s) => {
                    st.entry(&s, line, &file, first_in_file);
                    visit(i, &s, line, n as u64);
                }
                Err(why) => {
                    let at_end = last_input && r.fill_buf().map(|b| b.is_empty()).unwrap_or(false);
                    let seq = st.next_seq();
                    if at_end {
                        st.brk(seq, format!("torn line: the last {n} bytes of {file} (from offset {offset}) are not a whole entry ({why})"));
                        torn_tail = Some(TornTail {
                            path: input.path.clone(),
                            offset,
                            seq,
                        });
                    } else {
                        st.brk(
                            seq,
                            format!("unreadable line in {file} at offset {offset}: {why}"),
                        );
                    }
                }
            }
            offset += n as u64;
            first_in_file = false;
            if st.stop {
                break;
            }
        }
        if st.stop {
            break;
        }
    }
    st.finish();
    st.report.verified_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(Outcome {
        report: st.report,
        torn_tail,
    })
}

/// The inputs for a whole directory, oldest segment first.
pub fn dir_inputs(dir: &Path) -> Result<Vec<Input>, AuditError> {
    if !dir.is_dir() {
        return Err(AuditError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    Ok(super::segment::list_segments(dir)?
        .into_iter()
        .map(|(_, path)| Input { path, limit: None })
        .collect())
}
