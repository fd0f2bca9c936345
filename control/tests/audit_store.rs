//! The audit store end to end, on real files: the tamper matrix (each
//! break named with the right seq), masking through `append`, retention,
//! signed checkpoints against recomputed hashes, torn lines, keygen, the
//! CLI functions, and a real SIGKILL of a process appending fast.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{Duration, TimeZone, Utc};
use continuity_control::audit::entry::hash_unhashed;
use continuity_control::audit::*;
use serde_json::{json, Value};

// ---- helpers ----------------------------------------------------------------

fn settings(dir: &Path) -> AuditSettings {
    AuditSettings {
        dir: dir.to_path_buf(),
        ..AuditSettings::default()
    }
}

async fn open(s: AuditSettings) -> (AuditLog, OpenReport) {
    AuditLog::open(s, &prometheus::Registry::new())
        .await
        .unwrap()
}

fn entry(i: usize) -> NewEntry {
    NewEntry::new(
        Action::HealthCheck,
        Severity::Info,
        "system",
        json!({"i": i, "upstream": "redis-primary", "state": "down"}),
    )
    .service("redis")
}

async fn fill(log: &AuditLog, n: usize) {
    for i in 0..n {
        log.append(entry(i)).await.unwrap();
    }
}

/// A log of `n` entries in `dir`, closed.
async fn log_of(dir: &Path, n: usize, s: AuditSettings) {
    let (log, _) = open(AuditSettings {
        dir: dir.to_path_buf(),
        ..s
    })
    .await;
    fill(&log, n).await;
    log.shutdown().await;
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(p, text).unwrap();
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// (segment, index in it) of `seq`.
fn locate(dir: &Path, seq: u64) -> (PathBuf, usize) {
    for p in segments(dir) {
        if let Some(i) = read_lines(&p).iter().position(|l| seq_of(l) == seq) {
            return (p, i);
        }
    }
    panic!("seq {seq} not found");
}

fn edit(dir: &Path, seq: u64, f: impl FnOnce(&str) -> String) {
    let (p, i) = locate(dir, seq);
    let mut lines = read_lines(&p);
    lines[i] = f(&lines[i]);
    write_lines(&p, &lines);
}

/// What an attacker with write access does: fixes `prev_hash` and `hash`
/// of every entry from `from` on (and, if `fix_signed`, the checkpoints'
/// `signed_hash`, which leaves their signatures wrong).
fn recompute_from(dir: &Path, from: u64, fix_signed: bool) {
    let mut prev: Option<String> = None;
    for p in segments(dir) {
        let mut lines = read_lines(&p);
        for l in lines.iter_mut() {
            let n = l.len();
            let unhashed = &l[..n - entry::HASH_SUFFIX_LEN];
            if seq_of(l) >= from {
                let prev_hash = prev.clone().unwrap();
                let mut body = format!(
                    "{},\"prev_hash\":\"{prev_hash}\"",
                    &unhashed[..unhashed.len() - 79]
                );
                if fix_signed && body.contains("\"action\":\"checkpoint\"") {
                    let i = body.find("\"signed_hash\":\"").unwrap() + 15;
                    body.replace_range(i..i + 64, &prev_hash);
                }
                let h = String::from_utf8(hash_unhashed(body.as_bytes()).to_vec()).unwrap();
                *l = format!("{body},\"hash\":\"{h}\"}}");
            }
            let m = l.len();
            prev = Some(l[m - 66..m - 2].to_string());
        }
        write_lines(&p, &lines);
    }
}

fn verify(dir: &Path, key: Option<&Path>) -> VerifyReport {
    verify_dir(dir, key).unwrap()
}

fn assert_broken(r: &VerifyReport, seq: u64, why: &str) {
    assert!(!r.chain_verified, "{r:?}");
    assert_eq!(r.first_broken_seq, Some(seq), "{r:?}");
    let reason = r.reason.clone().unwrap_or_default();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
}

fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    keygen(&dir.join("audit")).unwrap()
}

// ---- format -----------------------------------------------------------------

#[tokio::test]
async fn lines_follow_spec_7_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    log_of(tmp.path(), 3, AuditSettings::default()).await;
    let segs = segments(tmp.path());
    assert_eq!(segs.len(), 1);
    assert!(segs[0].ends_with("segment-000001.jsonl"));
    let text = std::fs::read_to_string(&segs[0]).unwrap();
    assert!(text.ends_with('\n'));
    let mut prev = entry::GENESIS_HASH.to_string();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "seq",
            "entry_id",
            "timestamp",
            "action",
            "severity",
            "actor",
            "service",
            "details",
            "prev_hash",
            "hash",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(line.starts_with(&format!("{{\"seq\":{},\"entry_id\":\"", i + 1)));
        assert!(!line.contains(": ") && !line.contains(", "), "compact JSON");
        let hash = v["hash"].as_str().unwrap();
        assert!(line.ends_with(&format!(",\"hash\":\"{hash}\"}}")));
        let cut = line.replace(&format!(",\"hash\":\"{hash}\"}}"), "}");
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(cut.as_bytes())),
            hash
        );
        assert_eq!(v["prev_hash"], prev.as_str());
        assert!(chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["action"], "health_check");
        prev = hash.to_string();
    }
    let r = verify(tmp.path(), None);
    assert!(r.chain_verified);
    assert_eq!((r.entries, r.first_seq, r.last_seq), (3, Some(1), Some(3)));
}

// ---- tamper matrix ------------------------------------------------------------

#[tokio::test]
async fn tamper_one_byte_in_a_detail_names_that_seq() {
    let tmp = tempfile::tempdir().unwrap();
    log_of(tmp.path(), 20, AuditSettings::default()).await;
    edit(tmp.path(), 7, |l| {
        l.replace("\"state\":\"down\"", "\"state\":\"dowN\"")
    });
    assert_broken(&verify(tmp.path(), None), 7, "hash mismatch");
}

#[tokio::test]
async fn tamper_deleted_line_names_the_missing_seq() {
    let tmp = tempfile::tempdir().unwrap();
    log_of(tmp.path(), 20, AuditSettings::default()).await;
    let (p, i) = locate(tmp.path(), 11);
    let mut lines = read_lines(&p);
    lines.remove(i);
    write_lines(&p, &lines);
    assert_broken(&verify(tmp.path(), None), 11, "seq gap");
}

#[tokio::test]
async fn tamper_swapped_lines_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    log_of(tmp.path(), 20, AuditSettings::default()).await;
    let (p, i) = locate(tmp.path(), 5);
    let mut lines = read_lines(&p);
    lines.swap(i, i + 1);
    write_lines(&p, &lines);
    assert_broken(&verify(tmp.path(), None), 5, "expected seq 5, found seq 6");
}

#[tokio::test]
async fn tamper_truncated_mid_line_is_a_torn_line() {
    let tmp = tempfile::tempdir().unwrap();
    log_of(tmp.path(), 20, AuditSettings::default()).await;
    let p = &segments(tmp.path())[0];
    let bytes = std::fs::read(p).unwrap();
    std::fs::write(p, &bytes[..bytes.len() - 40]).unwrap();
    assert_broken(&verify(tmp.path(), None), 20, "torn line");
    // Truncated in the middle of the file (everything after is lost too).
    let cut = bytes.iter().take(2000).rposition(|&b| b == b'\n').unwrap() + 30;
    std::fs::write(p, &bytes[..cut]).unwrap();
    let r = verify(tmp.path(), None);
    let seq = r.first_broken_seq.unwrap();
    assert_eq!(seq, r.entries + 1);
    assert_broken(&r, seq, "torn line");
}

#[tokio::test]
async fn tamper_recomputed_hashes_are_caught_by_the_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let (private, public) = keys(tmp.path());
    let dir = tmp.path().join("log");
    let s = AuditSettings {
        signing_key: Some(private),
        checkpoint_every: 10,
        ..AuditSettings::default()
    };
    log_of(&dir, 35, s).await;
    let r = verify(&dir, Some(&public));
    assert!(r.chain_verified, "{r:?}");
    // start-up checkpoint, one per 10 entries, one at shutdown
    assert_eq!((r.checkpoints, r.last_seq), (5, Some(40)));
    // Edit seq 15, recompute every hash after it: the chain alone is fine...
    edit(&dir, 15, |l| {
        l.replace("\"state\":\"down\"", "\"state\":\"up\"")
    });
    recompute_from(&dir, 15, true);
    let checkpoint_after = locate_checkpoint_after(&dir, 15);
    assert_eq!(checkpoint_after, 23);
    assert!(
        verify(&dir, None).chain_verified,
        "without a key, a full rewrite passes"
    );
    // ...but not its signatures.
    assert_broken(&verify(&dir, Some(&public)), 23, "bad signature");
    let (code, out) = verify_cli_output(&dir, Some(&public));
    assert_eq!(code, EXIT_BROKEN);
    assert!(
        out.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("broken at seq 23: bad signature"),
        "{out}"
    );
    // A lazier rewrite (signed_hash left alone) is caught even without a key.
    edit(&dir, 15, |l| {
        l.replace("\"state\":\"up\"", "\"state\":\"UP\"")
    });
    recompute_from(&dir, 15, false);
    assert_broken(
        &verify(&dir, None),
        23,
        "signed_hash is not the hash of seq 22",
    );
}

fn locate_checkpoint_after(dir: &Path, seq: u64) -> u64 {
    segments(dir)
        .iter()
        .flat_map(|p| read_lines(p))
        .map(|l| serde_json::from_str::<Value>(&l).unwrap())
        .find(|v| v["action"] == "checkpoint" && v["seq"].as_u64().unwrap() > seq)
        .and_then(|v| v["seq"].as_u64())
        .unwrap()
}

#[tokio::test]
async fn tamper_removed_checkpoints_are_caught_with_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (private, public) = keys(tmp.path());
    let dir = tmp.path().join("log");
    let s = AuditSettings {
        signing_key: Some(private),
        checkpoint_every: 10,
        ..AuditSettings::default()
    };
    log_of(&dir, 35, s).await;
    // Drop every checkpoint after seq 12 and renumber + rehash the rest.
    let p = &segments(&dir)[0];
    let kept: Vec<String> = read_lines(p)
        .into_iter()
        .filter(|l| !(l.contains("\"action\":\"checkpoint\"") && seq_of(l) > 12))
        .enumerate()
        .map(|(i, l)| {
            let old = format!("{{\"seq\":{},", seq_of(&l));
            l.replacen(&old, &format!("{{\"seq\":{},", i + 1), 1)
        })
        .collect();
    write_lines(p, &kept);
    recompute_from(&dir, 13, true);
    assert!(verify(&dir, None).chain_verified);
    assert_broken(
        &verify(&dir, Some(&public)),
        23,
        "missing checkpoint: more than 10 entries after the checkpoint at seq 12",
    );
}

#[tokio::test]
async fn tamper_segment_removed_from_the_middle_or_start() {
    let tmp = tempfile::tempdir().unwrap();
    let s = AuditSettings {
        segment_max_bytes: 2000,
        ..AuditSettings::default()
    };
    log_of(tmp.path(), 40, s).await;
    let segs = segments(tmp.path());
    assert!(segs.len() >= 4, "{} segments", segs.len());
    for p in &segs {
        assert!(std::fs::metadata(p).unwrap().len() <= 2000);
    }
    let first_of = |p: &Path| seq_of(&read_lines(p)[0]);
    let missing = first_of(&segs[2]);
    let after = first_of(&segs[3]);
    let text = std::fs::read(&segs[2]).unwrap();
    std::fs::remove_file(&segs[2]).unwrap();
    let r = verify(tmp.path(), None);
    assert_broken(
        &r,
        missing,
        &format!("missing segment: seqs {missing}..{}", after - 1),
    );
    std::fs::write(&segs[2], text).unwrap();
    assert!(verify(tmp.path(), None).chain_verified);
    // The oldest segment, without a retention record for it.
    std::fs::remove_file(&segs[0]).unwrap();
    assert_broken(&verify(tmp.path(), None), 1, "no retention record");
}

// ---- masking ------------------------------------------------------------------

#[tokio::test]
async fn secrets_never_reach_the_file_or_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let s = AuditSettings {
        mask_patterns: vec![r"\d{3}-\d{2}-\d{4}".into(), r"CASE-\d{6}".into()],
        ..settings(tmp.path())
    };
    let (log, _) = open(s).await;
    let secrets = [
        (
            "redis://:redispw1@10.0.0.1:6379/0",
            "redispw1",
            "redis://:***@10.0.0.1:6379/0",
        ),
        (
            "postgres://app:pgpw2@db:5432/x",
            "pgpw2",
            "postgres://app:***@db:5432/x",
        ),
        (
            "bolt://neo4j:boltpw3@graph:7687",
            "boltpw3",
            "bolt://neo4j:***@graph:7687",
        ),
        (
            "host=db password=pwpair4 user=app",
            "pwpair4",
            "password=***",
        ),
        ("GET /cb?token=tokpair5&x=1", "tokpair5", "token=***&x=1"),
        (
            "Authorization: Bearer bearer6.tok-en",
            "bearer6",
            "Bearer ***",
        ),
        ("subject ssn 123-45-6789", "123-45-6789", "ssn ***"),
        ("case CASE-424242 opened", "CASE-424242", "case *** opened"),
    ];
    let details = json!({
        "messages": secrets.iter().map(|s| s.0).collect::<Vec<_>>(),
        "nested": {"deeper": [secrets[0].0, {"url": secrets[2].0}]},
        "password": "keyvalpw7", "api_token": "keyvaltok8", "client_secret": {"x": "keyvalsec9"},
    });
    let e = NewEntry::new(
        Action::ManualIntervention,
        Severity::Warning,
        "ops token=actortok10",
        details,
    )
    .service("redis://:servicepw11@h:1");
    log.append(e).await.unwrap();
    log.shutdown().await;
    let text = std::fs::read_to_string(&segments(tmp.path())[0]).unwrap();
    let mut all: Vec<&str> = secrets.iter().map(|s| s.1).collect();
    all.extend([
        "keyvalpw7",
        "keyvaltok8",
        "keyvalsec9",
        "actortok10",
        "servicepw11",
    ]);
    for secret in &all {
        assert!(!text.contains(secret), "{secret} reached the file: {text}");
    }
    for (_, _, masked) in &secrets {
        assert!(text.contains(masked), "{masked} missing: {text}");
    }
    let api = serde_json::to_string(&log.query(&AuditFilter::default())).unwrap();
    for secret in &all {
        assert!(!api.contains(secret), "{secret} reached the API");
    }
    assert!(api.contains("\"password\":\"***\"") && api.contains("\"actor\":\"ops token=***\""));
    assert!(verify(tmp.path(), None).chain_verified);
}

// ---- retention ------------------------------------------------------------------

#[tokio::test]
async fn retention_removes_whole_segments_and_verification_says_where_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap();
    let clock = Clock::manual(t0);
    let s = AuditSettings {
        retention_days: 30,
        clock: clock.clone(),
        ..settings(tmp.path())
    };
    let (log, _) = open(s.clone()).await;
    for day in 0..3 {
        clock.set(t0 + Duration::days(day));
        fill(&log, 5).await; // a new UTC day starts a new segment
    }
    assert_eq!(segments(tmp.path()).len(), 3);
    clock.set(t0 + Duration::days(31) + Duration::hours(1)); // days 0 and 1 expired, day 2 not
    assert_eq!(
        log.run_retention().await.unwrap(),
        vec!["segment-000001.jsonl", "segment-000002.jsonl"]
    );
    let r = verify(tmp.path(), None);
    assert!(r.chain_verified, "{r:?}");
    assert_eq!(r.first_seq, Some(11));
    assert!(r
        .starts_at_note
        .as_deref()
        .unwrap()
        .contains("verification starts at seq 11"));
    let (code, out) = verify_cli_output(tmp.path(), None);
    assert_eq!(code, EXIT_OK);
    assert!(out.contains("note: verification starts at seq 11"), "{out}");
    assert_eq!(out.trim_end().lines().last(), Some("ok: 6 entries"));
    let st = log.status();
    assert_eq!(
        (st.first_seq, st.total_entries, st.last_seq),
        (Some(11), 6, 16)
    );
    // Much later: the retention record starts a new day's segment, and
    // every older one goes; the newest is never removed, however old.
    clock.set(t0 + Duration::days(400));
    log.run_retention().await.unwrap();
    log.shutdown().await;
    assert_eq!(segments(tmp.path()).len(), 1);
    let (log, rep) = open(AuditSettings {
        clock: Clock::manual(t0 + Duration::days(400)),
        ..s
    })
    .await;
    assert!(rep.verify.chain_verified, "{:?}", rep.verify);
    assert_eq!(log.status().first_seq, Some(17));
    log.shutdown().await;
}

// ---- torn line at start ---------------------------------------------------------

#[tokio::test]
async fn a_torn_last_line_is_moved_aside_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    log_of(tmp.path(), 10, AuditSettings::default()).await;
    let p = segments(tmp.path())[0].clone();
    let before = std::fs::read(&p).unwrap();
    let torn = b"{\"seq\":11,\"entry_id\":\"abc\",\"timestamp\":\"2025-";
    std::fs::write(&p, [&before[..], &torn[..]].concat()).unwrap();
    let (code, out) = verify_cli_output(tmp.path(), None);
    assert_eq!(code, EXIT_BROKEN);
    assert!(
        out.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("broken at seq 11: torn line"),
        "{out}"
    );

    let (log, rep) = open(settings(tmp.path())).await;
    assert!(!rep.found.chain_verified);
    assert!(rep.verify.chain_verified);
    let q = &rep.quarantined[0];
    assert_eq!(
        (q.offset, q.length),
        (before.len() as u64, torn.len() as u64)
    );
    assert_eq!(std::fs::read(tmp.path().join(&q.moved_to)).unwrap(), torn);
    let e = &log.query(&AuditFilter {
        action: Some(Action::DiagnosticEvent),
        ..AuditFilter::default()
    })[0];
    assert_eq!(
        (e["seq"].as_u64(), e["severity"].as_str()),
        (Some(11), Some("critical"))
    );
    assert_eq!(e["details"]["offset"], before.len());
    assert_eq!(e["details"]["length"], torn.len());
    assert_eq!(
        e["details"]["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(torn))
    );
    assert_eq!(e["details"]["file"], "segment-000001.jsonl");
    log.shutdown().await;
    let after = std::fs::read(&p).unwrap();
    assert_eq!(&after[..before.len()], &before[..]);
    assert!(!String::from_utf8_lossy(&after).contains("\"entry_id\":\"abc\""));
    assert_eq!(verify_cli_output(tmp.path(), None).0, EXIT_OK);
}

// ---- keys and the CLI -------------------------------------------------------------

#[tokio::test]
async fn cli_exit_codes_and_last_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = verify_cli_output(&tmp.path().join("nope"), None);
    assert_eq!(code, EXIT_UNREADABLE, "{out}");
    log_of(tmp.path(), 5, AuditSettings::default()).await;
    let (code, out) = verify_cli_output(tmp.path(), None);
    assert_eq!(
        (code, out.trim_end().lines().last()),
        (EXIT_OK, Some("ok: 5 entries"))
    );
    assert_eq!(
        verify_cli_output(tmp.path(), Some(&tmp.path().join("nokey"))).0,
        EXIT_UNREADABLE
    );
    let (_, public) = keys(tmp.path());
    let (code, out) = verify_cli_output(tmp.path(), Some(&public));
    assert_eq!(
        code, EXIT_BROKEN,
        "an unsigned log has nothing a key can check"
    );
    assert!(
        out.contains("broken at seq 1: no signed checkpoint"),
        "{out}"
    );
    edit(tmp.path(), 3, |l| l.replacen("\"i\":2", "\"i\":9", 1));
    assert_eq!(verify_cli(tmp.path(), None), EXIT_BROKEN);
}

// ---- crash safety ---------------------------------------------------------------------

const CHILD_ENV: &str = "CONTINUITY_AUDIT_CRASH_DIR";

/// Not a test on its own: the body of the child process that
/// `sigkill_while_appending_fast` starts and kills.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let (log, _) = open(settings(Path::new(&dir))).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for t in 0..32 {
            let (log, tx) = (log.clone(), tx.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let a = log.append(entry(t * 1_000_000 + i)).await.unwrap();
                    if tx.send(a.seq).is_err() {
                        return;
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(seq) = rx.recv().await {
            use std::io::Write;
            writeln!(out, "acked {seq}").unwrap();
            out.flush().unwrap();
        }
    });
}

fn run_and_kill(dir: &Path, acks: usize) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut max = 0u64;
    let mut seen = 0;
    while seen < acks {
        let line = lines.next().expect("child stopped early").unwrap();
        if let Some(seq) = line.strip_prefix("acked ") {
            max = max.max(seq.parse().unwrap());
            seen += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
                           // Acks already printed before the kill were acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(seq) = line.strip_prefix("acked ") {
            max = max.max(seq.parse().unwrap());
        }
    }
    child.wait().unwrap();
    max
}

#[tokio::test]
async fn sigkill_while_appending_fast_loses_no_acknowledged_entry() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let acked = run_and_kill(tmp.path(), 3000);
        let found = verify(tmp.path(), None);
        if !found.chain_verified {
            // Only a torn tail is acceptable after a kill.
            assert!(
                found.reason.as_deref().unwrap().starts_with("torn line"),
                "{found:?}"
            );
        }
        let (log, rep) = open(settings(tmp.path())).await;
        assert!(rep.verify.chain_verified, "round {round}: {:?}", rep.verify);
        assert!(
            rep.verify.last_seq.unwrap() >= acked,
            "acked seq {acked} lost"
        );
        log.shutdown().await;
        let r = verify(tmp.path(), None);
        assert!(r.chain_verified, "{r:?}");
    }
}
