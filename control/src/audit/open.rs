//! Start-up: read every segment once, verify the chain, rebuild the
//! in-memory index, and move a torn tail aside (never delete it, never
//! repair it into the chain).

use std::fs::File;
use std::path::Path;

use chrono::NaiveDate;
use serde::Deserialize;

use super::checkpoint::{CheckpointDetails, CHECKPOINT_VERSION};
use super::entry::{Action, GENESIS_HASH};
use super::index::{parse_ts, Index, Recent};
use super::segment::{
    self, create_segment, open_for_append, segment_name, Quarantined, SegmentMeta,
};
use super::verify::{self, Input, Options, VerifyReport};
use super::AuditError;

/// Where the writer picks up.
pub struct Tail {
    pub file: File,
    pub seg_number: u64,
    pub seg_len: u64,
    pub seg_day: Option<NaiveDate>,
    pub seq: u64,
    pub hash: String,
    pub since_checkpoint: u64,
    pub last_checkpoint_interval: Option<u64>,
}

pub struct Recovered {
    pub index: Index,
    pub tail: Tail,
    pub quarantined: Vec<Quarantined>,
    /// The seq the torn line would have had.
    pub torn_seq: Option<u64>,
    /// The verification of what was on disk, once a torn tail was moved aside.
    pub report: VerifyReport,
    /// The verification as found, before anything was moved.
    pub found: VerifyReport,
}

#[derive(Deserialize)]
struct CheckpointLine {
    details: CheckpointDetails,
}

pub fn recover(dir: &Path) -> Result<Recovered, AuditError> {
    std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
    let listed = segment::list_segments(dir)?;
    let inputs: Vec<Input> = listed
        .iter()
        .map(|(_, p)| Input {
            path: p.clone(),
            limit: None,
        })
        .collect();
    let mut index = Index {
        segments: listed
            .iter()
            .map(|(n, p)| SegmentMeta::new(*n, p.clone()))
            .collect(),
        ..Index::default()
    };
    let mut seq = 0u64;
    let mut hash = GENESIS_HASH.to_string();
    let mut since_checkpoint = 0u64;
    let mut last_checkpoint_interval = None;
    let opts = Options {
        continue_after_break: true,
        ..Options::default()
    };
    let outcome = verify::run(&inputs, &opts, |i, s, line, len| {
        let ts = parse_ts(s.timestamp);
        if let Some(meta) = index.segments.get_mut(i) {
            meta.record(s.seq, s.hash, ts, s.action, s.severity, len);
        }
        match s.action {
            Action::Checkpoint => {
                index.checkpoints += 1;
                index.last_checkpoint_seq = Some(s.seq);
                since_checkpoint = 0;
                // Only a checkpoint in the current format counts: on a log
                // signed by an earlier version, the engine signs everything
                // again with a v2 checkpoint at start.
                last_checkpoint_interval = serde_json::from_slice::<CheckpointLine>(line)
                    .ok()
                    .filter(|c| c.details.version == Some(CHECKPOINT_VERSION))
                    .and_then(|c| c.details.interval);
            }
            Action::ManualIntervention => {
                index.push_manual(line);
                since_checkpoint += 1;
                last_checkpoint_interval = None;
            }
            _ => {
                since_checkpoint += 1;
                last_checkpoint_interval = None;
            }
        }
        if let Ok(text) = std::str::from_utf8(line) {
            index.push_recent(Recent {
                seq: s.seq,
                action: s.action,
                severity: s.severity,
                ts,
                line: text.into(),
            });
        }
        seq = s.seq;
        hash = s.hash.to_string();
    })?;
    let found = outcome.report;
    let mut quarantined = Vec::new();
    let mut report = found.clone();
    if let Some(torn) = &outcome.torn_tail {
        let q = segment::quarantine_tail(dir, &torn.path, torn.offset)?;
        tracing::error!(file = %q.file, offset = q.offset, length = q.length, moved_to = %q.moved_to, "audit: torn last line moved aside");
        quarantined.push(q);
        report = verify::run(&inputs, &Options::default(), |_, _, _, _| {})?.report;
    }
    if !report.chain_verified {
        tracing::error!(
            seq = report.first_broken_seq,
            reason = report.reason.as_deref().unwrap_or(""),
            "audit: the existing chain does not verify"
        );
    }
    for meta in &mut index.segments {
        meta.len = std::fs::metadata(&meta.path)
            .map(|m| m.len())
            .map_err(|e| AuditError::io(&meta.path, e))?;
    }
    index.last_seq = seq;
    index.last_hash = (seq > 0).then(|| hash.clone());
    index.verify = report.clone();
    let tail = match index.segments.last() {
        Some(meta) => Tail {
            file: open_for_append(&meta.path)?,
            seg_number: meta.number,
            seg_len: meta.len,
            seg_day: meta.first_day,
            seq,
            hash,
            since_checkpoint,
            last_checkpoint_interval,
        },
        None => {
            let file = create_segment(dir, 1)?;
            index
                .segments
                .push(SegmentMeta::new(1, dir.join(segment_name(1))));
            Tail {
                file,
                seg_number: 1,
                seg_len: 0,
                seg_day: None,
                seq,
                hash,
                since_checkpoint,
                last_checkpoint_interval,
            }
        }
    };
    Ok(Recovered {
        index,
        tail,
        quarantined,
        torn_seq: outcome.torn_tail.map(|t| t.seq),
        report,
        found,
    })
}
