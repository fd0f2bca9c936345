//! Issue #12, the audit log's part, through the real binary:
//!
//! - a signed log rewritten the way the security review did it (rewrite an
//!   entry, recompute the chain after it, delete the later checkpoints,
//!   raise the remaining checkpoint's `interval`) no longer verifies with
//!   `audit verify --public-key`;
//! - a key-verified log with no entries is `broken`, not `ok`;
//! - a log signed by an earlier version (v1 checkpoints, whose `interval`
//!   is not signed) still verifies, says so, and its unsigned `interval`
//!   no longer opens the same hole;
//! - `GET /api/ops/audit/verify` is single-flight and cached per last seq,
//!   and the cache never hides an edit of the files;
//! - a new segment is mode 0600 even under umask 022;
//! - a malformed query string gets SPEC 4's JSON error, not plain text.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use support::continuity::{Continuity, OPERATOR_TOKEN};
use support::*;

/// `,"hash":"` + 64 hex + `"}`.
const HASH_SUFFIX: usize = 9 + 64 + 2;
/// `,"prev_hash":"` + 64 hex + `"`.
const PREV_SUFFIX: usize = 14 + 64 + 1;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_continuity"))
}

/// A service that needs no server process.
const ETL: &str = "name = \"etl\"\nkind = \"heartbeat\"\nstall_after_seconds = 3600";

/// An engine whose audit log is signed with a fresh key in its config
/// directory; returns it (started) and the public key.
fn signed_engine() -> (Continuity, PathBuf) {
    let mut engine = Continuity::builder()
        .service(ETL)
        .tail("[audit]\nsigning_key = \"keys/audit.pem\"")
        .prepare();
    let keys = config_dir(&engine).join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let out = bin()
        .args(["audit", "keygen", "--out"])
        .arg(keys.join("audit"))
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen: {out:?}");
    engine.restart();
    (engine, keys.join("audit.pub.pem"))
}

fn config_dir(engine: &Continuity) -> PathBuf {
    engine.config_path().parent().expect("config dir").into()
}

fn audit_dir(engine: &Continuity) -> PathBuf {
    config_dir(engine).join("data/audit")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("audit dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    names
}

fn read_lines(dir: &Path) -> Vec<String> {
    segments(dir)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Replaces every segment of `dir` by one segment holding `lines`.
fn write_lines(dir: &Path, lines: &[String]) {
    for p in segments(dir) {
        std::fs::remove_file(p).unwrap();
    }
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(dir.join("segment-000001.jsonl"), text).unwrap();
}

/// `audit verify DIR [--public-key PUB]`: exit code and stdout + stderr.
fn verify(dir: &Path, public_key: Option<&Path>) -> (Option<i32>, String) {
    let mut cmd = bin();
    cmd.args(["audit", "verify"]).arg(dir);
    if let Some(k) = public_key {
        cmd.arg("--public-key").arg(k);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn last_line(out: &str) -> &str {
    out.trim_end().lines().last().unwrap_or("")
}

fn seq_of(line: &str) -> u64 {
    let rest = line.strip_prefix("{\"seq\":").expect("an audit line");
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// What an attacker with write access does after editing lines: give
/// every line the next seq from `first`, link it to the line before, and
/// recompute its hash (the hash rule of SPEC 7).
fn rechain(lines: &mut [String], first: u64, mut prev: String) {
    for (i, line) in lines.iter_mut().enumerate() {
        let seq = first + i as u64;
        let after_seq = line.find(',').unwrap();
        let body = &line[after_seq..line.len() - HASH_SUFFIX - PREV_SUFFIX];
        let unhashed = format!("{{\"seq\":{seq}{body},\"prev_hash\":\"{prev}\"");
        let hash = hex::encode(sha2::Sha256::digest(format!("{unhashed}}}").as_bytes()));
        *line = format!("{unhashed},\"hash\":\"{hash}\"}}");
        prev = hash;
    }
}

/// `n` operator reloads (each one a `config_change` entry), from 4 clients.
fn reloads(engine: &Continuity, n: usize) {
    std::thread::scope(|s| {
        for w in 0..4 {
            s.spawn(move || {
                for i in (w..n).step_by(4) {
                    let body = format!(r#"{{"reason":"reload {i:04}"}}"#);
                    let (code, resp) = engine.post("/api/ops/config/reload", &body);
                    assert_eq!(code, 200, "{resp}");
                }
            });
        }
    });
}

/// The review's attack: rewrite an entry after the first checkpoint,
/// drop every later checkpoint, raise the first checkpoint's interval to
/// 10^9 and recompute the chain. Before the fix, `audit verify
/// --public-key` printed `ok` for the result.
#[test]
fn rewritten_signed_log_with_checkpoints_removed_and_interval_raised_is_broken() {
    let (mut engine, public) = signed_engine();
    // Enough entries that the writer adds a checkpoint on its own (every
    // 1000), so that one has to be removed for the rewrite to pass.
    reloads(&engine, 1100);
    assert_eq!(engine.terminate(Duration::from_secs(30)), Some(0));
    let dir = audit_dir(&engine);
    let (code, out) = verify(&dir, Some(&public));
    assert_eq!(code, Some(0), "the untouched log must verify:\n{out}");

    let mut lines = read_lines(&dir);
    let checkpoints: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains(r#""action":"checkpoint""#))
        .map(|l| seq_of(l))
        .collect();
    assert!(checkpoints.len() >= 3, "checkpoints at {checkpoints:?}");
    assert_eq!(checkpoints[0], 1);
    // 1. Rewrite an entry after the first checkpoint.
    let victim = lines
        .iter()
        .position(|l| l.contains(r#""reason":"reload "#))
        .expect("a reload entry");
    let old_reason = lines[victim]
        .split(r#""reason":""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    lines[victim] = lines[victim].replace(&old_reason, "nothing happened");
    // 2. Delete the checkpoints that follow it.
    let kept: Vec<String> = lines
        .into_iter()
        .filter(|l| !(l.contains(r#""action":"checkpoint""#) && seq_of(l) > 1))
        .collect();
    let mut lines = kept;
    assert!(lines.len() > 1001, "{} lines", lines.len());
    // 3. Raise the remaining checkpoint's interval to 10^9.
    assert!(lines[0].contains(r#""interval":1000"#), "{}", lines[0]);
    lines[0] = lines[0].replace(r#""interval":1000"#, r#""interval":1000000000"#);
    // 4. Recompute the chain.
    rechain(&mut lines, 1, GENESIS.to_string());
    write_lines(&dir, &lines);

    let (code, out) = verify(&dir, Some(&public));
    assert_eq!(code, Some(1), "the rewritten log must not verify:\n{out}");
    assert!(
        last_line(&out).starts_with("broken at seq 1: bad signature"),
        "{out}"
    );

    // Without raising the interval, the removed checkpoints show.
    let mut lines = read_lines(&dir);
    lines[0] = lines[0].replace(r#""interval":1000000000"#, r#""interval":1000"#);
    rechain(&mut lines, 1, GENESIS.to_string());
    write_lines(&dir, &lines);
    let (code, out) = verify(&dir, Some(&public));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        last_line(&out).starts_with("broken at seq 1002: missing checkpoint"),
        "{out}"
    );
}

/// A key-verified log that holds no entry proves nothing: `broken`.
#[test]
fn verify_with_a_key_refuses_an_empty_log_and_one_without_checkpoints() {
    let keys = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["audit", "keygen", "--out"])
        .arg(keys.path().join("k"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = keys.path().join("k.pub.pem");

    // No segment at all.
    let empty = tempfile::tempdir().unwrap();
    let (code, out) = verify(empty.path(), Some(&public));
    assert_eq!(code, Some(1), "{out}");
    assert!(last_line(&out).starts_with("broken at seq 1: "), "{out}");
    // An empty segment (a crash right after creating it).
    std::fs::write(empty.path().join("segment-000001.jsonl"), "").unwrap();
    let (code, out) = verify(empty.path(), Some(&public));
    assert_eq!(code, Some(1), "{out}");
    assert!(last_line(&out).starts_with("broken at seq 1: "), "{out}");
    // Without a key, an empty log is still an intact one.
    let (code, out) = verify(empty.path(), None);
    assert_eq!(code, Some(0), "{out}");

    // A log written without a signing key has no checkpoint.
    let mut engine = Continuity::builder().service(ETL).start();
    reloads(&engine, 4);
    assert_eq!(engine.terminate(Duration::from_secs(30)), Some(0));
    let (code, out) = verify(&audit_dir(&engine), Some(&public));
    assert_eq!(code, Some(1), "{out}");
    assert!(last_line(&out).contains("no signed checkpoint"), "{out}");
}

/// `tests/fixtures/audit-v1/`: a log written by the engine before this
/// change (checkpoints whose signature covers `signed_hash` only), with
/// its key pair.
fn v1_fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-v1");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        src.join("segment-000001.jsonl"),
        dir.join("segment-000001.jsonl"),
    )
    .unwrap();
    (tmp, dir, src.join("audit.pub.pem"))
}

#[test]
fn a_log_signed_before_the_change_still_verifies_but_its_unsigned_interval_is_not_trusted() {
    let (_tmp, dir, public) = v1_fixture();
    let (code, out) = verify(&dir, Some(&public));
    assert_eq!(code, Some(0), "{out}");
    assert!(last_line(&out).starts_with("ok: "), "{out}");
    let clean = out;

    // The same attack on it: drop the checkpoints after seq 1, forge more
    // than 1000 entries after it, raise its interval, recompute.
    let lines = read_lines(&dir);
    let template = lines
        .iter()
        .find(|l| l.contains(r#""action":"config_change""#))
        .expect("a config_change line")
        .clone();
    let mut forged: Vec<String> = lines
        .into_iter()
        .filter(|l| !(l.contains(r#""action":"checkpoint""#) && seq_of(l) > 1))
        .collect();
    forged.extend(std::iter::repeat_n(template, 1200));
    assert!(forged[0].contains(r#""interval":1000"#), "{}", forged[0]);
    forged[0] = forged[0].replace(r#""interval":1000"#, r#""interval":1000000000"#);
    rechain(&mut forged, 1, GENESIS.to_string());
    write_lines(&dir, &forged);
    let (code, out) = verify(&dir, Some(&public));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        last_line(&out).starts_with("broken at seq 1002: missing checkpoint"),
        "{out}"
    );
    assert!(out.contains("legacy v1"), "{out}");
    // Verified, but the output says under which rules.
    assert!(
        clean.contains("legacy v1"),
        "the output must say so:\n{clean}"
    );
}

/// The engine opened on a v1 log signs everything before it with a v2
/// checkpoint at start.
#[test]
fn an_engine_upgraded_on_a_v1_log_covers_it_with_a_v2_checkpoint() {
    let (_tmp, dir, public) = v1_fixture();
    let mut engine = Continuity::builder()
        .service(ETL)
        .tail("[audit]\nsigning_key = \"keys/audit.pem\"")
        .prepare();
    let cfg = config_dir(&engine);
    std::fs::create_dir_all(cfg.join("keys")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-v1");
    std::fs::copy(src.join("audit.pem"), cfg.join("keys/audit.pem")).unwrap();
    std::fs::create_dir_all(cfg.join("data")).unwrap();
    let audit = cfg.join("data/audit");
    std::fs::rename(&dir, &audit).unwrap();
    let before = read_lines(&audit).len();
    engine.restart();
    reloads(&engine, 2);
    assert_eq!(engine.terminate(Duration::from_secs(30)), Some(0));
    let lines = read_lines(&audit);
    let first_new = &lines[before];
    assert!(
        first_new.contains(r#""action":"checkpoint""#) && first_new.contains(r#""version":2"#),
        "{first_new}"
    );
    let (code, out) = verify(&audit, Some(&public));
    assert_eq!(code, Some(0), "{out}");
}

/// `GET /api/ops/audit/verify`: callers at the same time share one scan,
/// a repeat with nothing new is answered from the cache, a new entry or an
/// edit of the files makes the next call scan again.
#[test]
fn live_verify_is_single_flight_cached_per_last_seq_and_sees_edits() {
    let engine = Continuity::builder().service(ETL).start();
    reloads(&engine, 200);
    let scans = |e: &Continuity| {
        e.metric("continuity_audit_verify_scans_total")
            .expect("continuity_audit_verify_scans_total is exported")
    };
    let s0 = scans(&engine);
    let bodies: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| engine.get("/api/ops/audit/verify")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().1).collect()
    });
    for b in &bodies {
        assert_eq!(b["chain_verified"], true, "{b}");
        assert_eq!(b, &bodies[0], "callers at the same time share one result");
    }
    assert_eq!(scans(&engine), s0 + 1.0, "8 concurrent calls, one scan");
    let (_, again) = engine.get("/api/ops/audit/verify");
    assert_eq!(again, bodies[0]);
    assert_eq!(
        scans(&engine),
        s0 + 1.0,
        "a repeat with nothing new is cached"
    );

    reloads(&engine, 1);
    let (_, after) = engine.get("/api/ops/audit/verify");
    assert_eq!(after["chain_verified"], true, "{after}");
    assert!(after["entries"].as_u64() > bodies[0]["entries"].as_u64());
    assert_eq!(
        scans(&engine),
        s0 + 2.0,
        "a new entry invalidates the cache"
    );

    // An edit of an old entry, same length, no new entry: not hidden.
    let seg = segments(&audit_dir(&engine)).remove(0);
    let text = std::fs::read_to_string(&seg).unwrap();
    let edited = text.replacen("reload 0007", "reload 0008", 1);
    assert_ne!(text, edited);
    std::fs::write(&seg, edited).unwrap();
    let (_, tampered) = engine.get("/api/ops/audit/verify");
    assert_eq!(tampered["chain_verified"], false, "{tampered}");
    assert_eq!(scans(&engine), s0 + 3.0);
}

/// Audit segments hold who did what and why: 0600 whatever the umask.
#[test]
fn a_new_segment_is_0600_even_with_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    let engine = Continuity::builder().service(ETL).prepare();
    let log = std::fs::File::create(&engine.log).unwrap();
    // `exec`, so that killing the guarded shell kills the engine.
    let mut child = ChildGuard::spawn(
        "continuity",
        Command::new("sh")
            .arg("-c")
            .arg("umask 022; exec \"$0\" run --config \"$1\"")
            .arg(env!("CARGO_BIN_EXE_continuity"))
            .arg(engine.config_path())
            .stdout(Stdio::null())
            .stderr(log),
    );
    let started = Instant::now();
    while engine
        .try_request("GET", "/api/ops/health", None, None)
        .map(|(s, _)| s)
        != Ok(200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            engine.log_text()
        );
        assert!(child.is_running(), "{}", engine.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    reloads(&engine, 1);
    let dir = audit_dir(&engine);
    let segs = segments(&dir);
    assert!(!segs.is_empty());
    for seg in &segs {
        let mode = std::fs::metadata(seg).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", seg.display());
    }
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode & 0o007, 0, "the audit directory is {dir_mode:o}");
    child.kill();
}

/// A raw GET, to send query strings the way a client may (not re-encoded).
fn raw_get(addr: &str, target: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// SPEC 4: every error is `{"error": {"code", "message"}}`, a bad query
/// string included.
#[test]
fn malformed_query_strings_on_audit_routes_get_the_json_error() {
    let engine = Continuity::builder().service(ETL).start();
    let cases = [
        "/api/ops/audit/logs?limit=abc",
        "/api/ops/audit/logs?limit=-1",
        "/api/ops/audit/logs?limit=99999999999999999999999",
        "/api/ops/audit/logs?since=yesterday",
        "/api/ops/audit/logs?action=%FF%FE",
        "/api/ops/audit/logs?severity=%zz",
        "/api/ops/audit/logs?limit=1&limit=abc",
        "/api/ops/audit/status?limit=abc",
        "/api/ops/audit/report?since=%",
        "/api/ops/audit/verify?x=%FF",
        "/api/ops/diagnostics/events?limit=abc",
        "/api/ops/health/snapshots?window=abc",
    ];
    for target in cases {
        let (status, head, body) = raw_get(&engine.control, target);
        if status == 200 {
            // Routes that take no parameters may ignore them.
            assert!(!target.starts_with("/api/ops/audit/logs"), "{target}");
            continue;
        }
        assert_eq!(status, 400, "{target}: {head}\n{body}");
        assert!(
            head.contains("content-type: application/json"),
            "{target}: {head}\n{body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {body}"));
        assert_eq!(v["error"]["code"], "bad_request", "{target}: {v}");
        assert!(v["error"]["message"].is_string(), "{target}: {v}");
    }
}
