//! [`AuditLog`] behaviour that needs no tampering: group commit under
//! concurrency, rotation, queries, status and report, live verification,
//! metrics, restarts and checkpoint intervals across restarts.

use std::path::Path;
use std::process::Command;

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;

use super::*;

async fn open_in(
    dir: &Path,
    f: impl FnOnce(&mut AuditSettings),
) -> (AuditLog, OpenReport, Registry) {
    let mut s = AuditSettings {
        dir: dir.to_path_buf(),
        ..AuditSettings::default()
    };
    f(&mut s);
    let reg = Registry::new();
    let (log, rep) = AuditLog::open(s, &reg).await.unwrap();
    (log, rep, reg)
}

fn e(action: Action, severity: Severity, i: u64) -> NewEntry {
    NewEntry::new(action, severity, "system", json!({ "i": i }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_contiguous_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, _) = open_in(tmp.path(), |_| {}).await;
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..40 {
                seqs.push(
                    log.append(e(Action::HealthCheck, Severity::Info, t * 100 + i))
                        .await
                        .unwrap()
                        .seq,
                );
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=2000).collect::<Vec<u64>>());
    let st = log.status();
    assert_eq!(
        (st.total_entries, st.last_seq, st.chain_verified),
        (2000, 2000, true)
    );
    assert!(log.verify_now().chain_verified);
    log.shutdown().await;
    assert!(matches!(
        log.append(e(Action::HealthCheck, Severity::Info, 0)).await,
        Err(AuditError::Closed)
    ));
}

#[tokio::test]
async fn midnight_utc_starts_a_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Utc.with_ymd_and_hms(2025, 3, 1, 23, 59, 59).unwrap();
    let clock = Clock::manual(t);
    let (log, _, _) = open_in(tmp.path(), |s| s.clock = clock.clone()).await;
    log.append(e(Action::HealthCheck, Severity::Info, 1))
        .await
        .unwrap();
    log.append(e(Action::HealthCheck, Severity::Info, 2))
        .await
        .unwrap();
    clock.set(t + Duration::seconds(2));
    log.append(e(Action::HealthCheck, Severity::Info, 3))
        .await
        .unwrap();
    log.shutdown().await;
    let segs = segment::list_segments(tmp.path()).unwrap();
    assert_eq!(segs.len(), 2);
    let second = std::fs::read_to_string(&segs[1].1).unwrap();
    assert!(second.starts_with("{\"seq\":3,") && second.contains("2025-03-02T00:00:01"));
    assert!(verify_dir(tmp.path(), None).unwrap().chain_verified);
}

#[tokio::test]
async fn queries_filter_newest_first_and_reach_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let clock = Clock::manual(t0);
    let (log, _, _) = open_in(tmp.path(), |s| s.clock = clock.clone()).await;
    log.append(e(Action::ConfigChange, Severity::Error, 0))
        .await
        .unwrap();
    clock.set(t0 + Duration::hours(1));
    let n = index::RECENT_CAPACITY as u64 + 50;
    let mut pending = Vec::new();
    for i in 1..=n {
        let log = log.clone();
        let sev = if i % 2 == 0 {
            Severity::Warning
        } else {
            Severity::Info
        };
        pending.push(tokio::spawn(async move {
            log.append(e(Action::HealthCheck, sev, i)).await
        }));
        if pending.len() == 256 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let q = |f: AuditFilter| log.query(&f);
    let newest = q(AuditFilter {
        limit: Some(3),
        ..AuditFilter::default()
    });
    let seqs: Vec<u64> = newest.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![n + 1, n, n - 1]);
    let warn = q(AuditFilter {
        severity: Some(Severity::Warning),
        limit: Some(5),
        ..AuditFilter::default()
    });
    assert!(warn.iter().all(|v| v["severity"] == "warning") && warn.len() == 5);
    // Only on disk: older than anything kept in memory.
    let cfg = q(AuditFilter {
        action: Some(Action::ConfigChange),
        ..AuditFilter::default()
    });
    assert_eq!(cfg.len(), 1);
    assert_eq!(cfg[0]["seq"], 1);
    let since = q(AuditFilter {
        since: Some(t0 + Duration::minutes(30)),
        action: Some(Action::ConfigChange),
        ..AuditFilter::default()
    });
    assert!(since.is_empty());
    let f = AuditFilter::parse(
        Some("manual_intervention"),
        Some("critical"),
        Some("2025-01-01T00:00:00Z"),
        Some("7"),
    )
    .unwrap();
    assert_eq!(
        (f.action, f.severity, f.effective_limit()),
        (
            Some(Action::ManualIntervention),
            Some(Severity::Critical),
            7
        )
    );
    assert!(AuditFilter::parse(Some("nope"), None, None, None).is_err());
    assert!(AuditFilter::parse(None, None, Some("yesterday"), None).is_err());
    assert!(AuditFilter::parse(None, None, None, Some("0")).is_err());
    log.shutdown().await;
}

#[tokio::test]
async fn status_report_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, reg) = open_in(tmp.path(), |_| {}).await;
    log.append(e(Action::FailoverActivated, Severity::Warning, 1).service("redis"))
        .await
        .unwrap();
    let manual = NewEntry::new(
        Action::ManualIntervention,
        Severity::Warning,
        "ops-console",
        json!({"operation": "failover_trigger", "reason": "planned maintenance"}),
    )
    .service("redis");
    log.append(manual).await.unwrap();
    assert!(matches!(
        log.append(e(Action::Checkpoint, Severity::Info, 0)).await,
        Err(AuditError::Invalid(_))
    ));
    let st = log.status();
    assert_eq!(st.total_entries, 2);
    assert_eq!(st.entries_by_action["manual_intervention"], 1);
    assert_eq!(st.entries_by_action["checkpoint"], 0);
    assert_eq!(st.entries_by_severity["warning"], 2);
    let body = serde_json::to_value(&st).unwrap();
    for k in [
        "total_entries",
        "entries_by_action",
        "entries_by_severity",
        "chain_verified",
        "last_seq",
        "last_hash",
    ] {
        assert!(body.get(k).is_some(), "{k}");
    }
    let r = log.report();
    assert_eq!(r["manual_interventions"][0]["actor"], "ops-console");
    assert_eq!(
        r["manual_interventions"][0]["reason"],
        "planned maintenance"
    );
    assert_eq!(
        r["manual_interventions"][0]["operation"],
        "failover_trigger"
    );
    assert_eq!(r["chain_verification"]["chain_verified"], true);
    assert_eq!(r["retention"]["retention_days"], 365);
    assert!(r["retention"]["oldest_entry"].is_string());
    let text = {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &reg.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert!(
        text.contains("continuity_audit_entries_total{action=\"manual_intervention\"} 1"),
        "{text}"
    );
    assert!(text.contains("continuity_audit_chain_verified 1"));
    assert!(text.contains("# HELP continuity_audit_chain_verified"));
    log.shutdown().await;
    // Reopened, the index is rebuilt from the files.
    let (log, rep, _) = open_in(tmp.path(), |_| {}).await;
    assert!(rep.verify.chain_verified);
    assert_eq!(log.status().total_entries, 2);
    assert_eq!(
        log.report()["manual_interventions"][0]["actor"],
        "ops-console"
    );
    assert_eq!(
        log.append(e(Action::HealthCheck, Severity::Info, 3))
            .await
            .unwrap()
            .seq,
        3
    );
}

#[tokio::test]
async fn verify_now_sees_live_tampering_and_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, reg) = open_in(tmp.path(), |_| {}).await;
    for i in 0..10 {
        log.append(e(Action::HealthCheck, Severity::Info, i))
            .await
            .unwrap();
    }
    let seg = tmp.path().join(segment::segment_name(1));
    let original = std::fs::read_to_string(&seg).unwrap();
    // Drop the last line: every remaining hash is fine, but the engine knows
    // it wrote seq 10.
    let cut: String = original.lines().take(9).map(|l| format!("{l}\n")).collect();
    std::fs::write(&seg, &cut).unwrap();
    let r = log.verify_now();
    assert_eq!((r.chain_verified, r.first_broken_seq), (false, Some(10)));
    assert!(r.reason.unwrap().contains("entries removed from the end"));
    let gauge = reg
        .gather()
        .into_iter()
        .find(|m| m.name() == metric_names::AUDIT_CHAIN_VERIFIED)
        .unwrap();
    assert_eq!(gauge.get_metric()[0].get_gauge().get_value(), 0.0);
    std::fs::write(&seg, original.replace("\"i\":4", "\"i\":5")).unwrap();
    assert_eq!(log.verify_now().first_broken_seq, Some(5));
    assert!(!log.status().chain_verified);
    std::fs::write(&seg, &original).unwrap();
    assert!(log.verify_now().chain_verified);
    assert!(log.status().chain_verified);
}

#[tokio::test]
async fn checkpoint_interval_changes_across_restarts_stay_covered() {
    let tmp = tempfile::tempdir().unwrap();
    let (private, public) = keygen(&tmp.path().join("k")).unwrap();
    let dir = tmp.path().join("log");
    let run = |every: u64, n: u64, signing: bool| {
        let (dir, private) = (dir.clone(), private.clone());
        async move {
            let (log, rep, _) = open_in(&dir, |s| {
                s.signing_key = signing.then_some(private);
                s.checkpoint_every = every;
            })
            .await;
            assert!(rep.verify.chain_verified, "{:?}", rep.verify);
            for i in 0..n {
                log.append(e(Action::HealthCheck, Severity::Info, i))
                    .await
                    .unwrap();
            }
            log.shutdown().await;
        }
    };
    run(10, 15, false).await; // unsigned start: covered by the first checkpoint later
    run(10, 25, true).await;
    run(100, 150, true).await;
    run(5, 12, true).await;
    let r = verify_dir(&dir, Some(&public)).unwrap();
    assert!(r.chain_verified, "{r:?}");
    // start-up checkpoints (3), one per interval (2 + 1 + 2), shutdowns (3)
    assert_eq!(r.checkpoints, 11);
    // Signing switched off: the unsigned tail is reported with the key, and
    // fine without it.
    run(5, 12, false).await;
    let r = verify_dir(&dir, Some(&public)).unwrap();
    assert!(r.reason.unwrap().starts_with("missing checkpoint"));
    assert!(verify_dir(&dir, None).unwrap().chain_verified);
}

#[test]
fn keygen_writes_loadable_keys_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(keygen_cli(&tmp.path().join("k")), 0);
    let (private, public) = (tmp.path().join("k.pem"), tmp.path().join("k.pub.pem"));
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&private)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(&public)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    checkpoint::load_signing_key(&private).unwrap();
    checkpoint::load_verifying_key(&public).unwrap();
    assert_eq!(keygen_cli(&tmp.path().join("k")), 1, "refuses to overwrite");
    // openssl reads them too, when it is installed.
    if let Ok(o) = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(&private)
        .output()
    {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[tokio::test]
async fn an_openssl_key_pair_signs_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (private, public) = (tmp.path().join("o.pem"), tmp.path().join("o.pub.pem"));
    let gen = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status();
    if !gen.is_ok_and(|s| s.success()) {
        eprintln!("openssl not available; skipped");
        return;
    }
    let pubout = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status();
    assert!(pubout.unwrap().success());
    let dir = tmp.path().join("log");
    let (log, _, _) = open_in(&dir, |s| s.signing_key = Some(private)).await;
    for i in 0..3 {
        log.append(e(Action::HealthCheck, Severity::Info, i))
            .await
            .unwrap();
    }
    log.shutdown().await;
    let r = verify_dir(&dir, Some(&public)).unwrap();
    assert!(r.chain_verified && r.signatures_checked, "{r:?}");
    assert_eq!(r.checkpoints, 2, "start-up and shutdown");
}

#[tokio::test]
async fn a_second_engine_cannot_open_the_same_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, _) = open_in(tmp.path(), |_| {}).await;
    let second = AuditLog::open(
        AuditSettings {
            dir: tmp.path().to_path_buf(),
            ..AuditSettings::default()
        },
        &Registry::new(),
    )
    .await;
    match second {
        Err(AuditError::Invalid(m)) => assert!(m.contains("in use"), "{m}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("two logs opened one directory"),
    }
    // Shutdown releases it.
    log.shutdown().await;
    let (again, _, _) = open_in(tmp.path(), |_| {}).await;
    again.shutdown().await;
}

#[tokio::test]
async fn rotated_segments_are_0600_and_a_new_directory_0700() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/audit");
    let (log, _, _) = open_in(&dir, |s| s.segment_max_bytes = 600).await;
    for i in 0..6 {
        log.append(e(Action::HealthCheck, Severity::Info, i))
            .await
            .unwrap();
    }
    log.shutdown().await;
    let segs = segment::list_segments(&dir).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for (_, p) in &segs {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }
    assert_eq!(mode(&dir.join(".lock")), 0o600);
    assert_eq!(mode(&dir), 0o700);
}

fn scans(reg: &Registry) -> f64 {
    reg.gather()
        .into_iter()
        .find(|m| m.name() == metric_names::AUDIT_VERIFY_SCANS_TOTAL)
        .map(|m| m.get_metric()[0].get_counter().get_value())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_cached_shares_one_scan_until_the_log_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, reg) = open_in(tmp.path(), |_| {}).await;
    for i in 0..3_000 {
        log.append(e(Action::HealthCheck, Severity::Info, i))
            .await
            .unwrap();
    }
    assert_eq!(scans(&reg), 0.0);
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move { log.verify_cached().await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.chain_verified, "{r:?}");
        assert_eq!(r.entries, 3_000);
    }
    assert_eq!(scans(&reg), 1.0, "16 callers, one scan");
    assert!(log.verify_cached().await.chain_verified);
    assert_eq!(scans(&reg), 1.0, "nothing new: cached");
    log.append(e(Action::HealthCheck, Severity::Info, 0))
        .await
        .unwrap();
    assert_eq!(log.verify_cached().await.entries, 3_001);
    assert_eq!(scans(&reg), 2.0, "a new entry: scanned again");
    // An edit that keeps the length, with no new entry, is not hidden.
    let seg = tmp.path().join(segment::segment_name(1));
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replacen("\"i\":7}", "\"i\":8}", 1)).unwrap();
    let r = log.verify_cached().await;
    assert_eq!(r.first_broken_seq, Some(8), "{r:?}");
    assert_eq!(scans(&reg), 3.0);
}
