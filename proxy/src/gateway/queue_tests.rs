//! Tests of the durable HTTP queue (`queue.rs` and `queue/`).
use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use super::*;

fn req(service: &str, path: &str) -> NewRequest {
    NewRequest {
        service: service.to_string(),
        method: "POST".to_string(),
        path: path.to_string(),
        headers: vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Authorization".to_string(), "Bearer s3cret".to_string()),
            ("cookie".to_string(), "sid=abc".to_string()),
            ("X-API-Key".to_string(), "k3y".to_string()),
            ("Proxy-Authorization".to_string(), "Basic eA==".to_string()),
        ],
        body: format!("{{\"path\":\"{path}\",\"secret_body\":true}}").into_bytes(),
    }
}

fn result(status: u16, body: &[u8]) -> DeliveryResult {
    DeliveryResult {
        status,
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: body.to_vec(),
        upstream: "ndex-a".to_string(),
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

fn append_raw(dir: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(log_path(dir)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn ids(entries: &[QueuedEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn enqueue_get_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue");
    let store = QueueStore::open(&dir).unwrap();
    assert_eq!(store.dir(), dir.as_path());
    let e = store.enqueue(req("ndex", "/v1/a?x=1"), 10).unwrap();
    assert_eq!(e.state, QueueState::Queued);
    assert_eq!(e.attempts, 0);
    let got = store.get(&e.id).unwrap();
    assert_eq!(got.path, "/v1/a?x=1");
    let body = req("ndex", "/v1/a?x=1").body;
    assert_eq!(got.body_len, body.len() as u64);
    assert_eq!(store.body(&got).unwrap(), body);
    drop(store);

    let store = QueueStore::open(&dir).unwrap();
    let got = store.get(&e.id).unwrap();
    assert_eq!(got.seq, e.seq);
    assert_eq!(got.service, "ndex");
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/a?x=1");
    assert_eq!(got.headers, e.headers);
    assert_eq!(store.body(&got).unwrap(), body);
    assert_eq!(got.enqueued_at, e.enqueued_at);
    assert_eq!(got.state, QueueState::Queued);
    assert!(store.get("q0000000000000-00000000").is_none());
}

#[test]
fn id_format_is_sortable_and_random() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let b = store.enqueue(req("s", "/b"), 10).unwrap();
    for id in [&a.id, &b.id] {
        assert_eq!(id.len(), 1 + 13 + 1 + 8, "{id}");
        assert!(id.starts_with('q'));
        assert_eq!(&id[14..15], "-");
        assert!(id[1..14].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(id[15..].chars().all(|c| c.is_ascii_hexdigit()));
    }
    assert!(a.id < b.id);
    assert!(a.seq < b.seq);
}

#[test]
fn order_preserved_across_reopen_and_seq_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let mut want = Vec::new();
    for i in 0..20 {
        let svc = if i % 2 == 0 { "a" } else { "b" };
        let e = store.enqueue(req(svc, &format!("/{i}")), 100).unwrap();
        if svc == "a" {
            want.push(e.id);
        }
    }
    let last_seq = store.pending("b").last().unwrap().seq;
    assert_eq!(ids(&store.pending("a")), want);
    drop(store);

    let store = QueueStore::open(tmp.path()).unwrap();
    let pending = store.pending("a");
    assert_eq!(ids(&pending), want);
    let paths: Vec<&str> = pending.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/0", "/2", "/4", "/6", "/8", "/10", "/12", "/14", "/16", "/18"]
    );
    assert_eq!(
        store.next_pending("a").map(|e| e.path),
        Some("/0".to_string())
    );
    assert_eq!(
        store.next_pending("b").map(|e| e.path),
        Some("/1".to_string())
    );
    assert!(store.next_pending("c").is_none());
    let next = store.enqueue(req("a", "/new"), 100).unwrap();
    assert!(next.seq > last_seq);
    assert_eq!(store.pending("a").last().unwrap().id, next.id);
}

#[test]
fn full_at_max_depth_and_depth_counts_only_undelivered() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a1 = store.enqueue(req("a", "/1"), 2).unwrap();
    let a2 = store.enqueue(req("a", "/2"), 2).unwrap();
    match store.enqueue(req("a", "/3"), 2) {
        Err(QueueError::Full { service, depth }) => {
            assert_eq!(service, "a");
            assert_eq!(depth, 2);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    // Other services have their own depth.
    store.enqueue(req("b", "/1"), 2).unwrap();
    assert_eq!(store.depth("a"), 2);
    assert_eq!(store.depth("b"), 1);
    assert_eq!(store.depth("nope"), 0);

    // Delivering still counts; delivered and failed do not.
    store.mark_attempt(&a1.id).unwrap();
    assert_eq!(store.depth("a"), 2);
    assert!(matches!(
        store.enqueue(req("a", "/3"), 2),
        Err(QueueError::Full { .. })
    ));
    store.mark_delivered(&a1.id, result(200, b"ok")).unwrap();
    assert_eq!(store.depth("a"), 1);
    store.enqueue(req("a", "/3"), 2).unwrap();
    store.mark_failed(&a2.id, "400 from upstream").unwrap();
    assert_eq!(store.depth("a"), 1);
    // A failed enqueue writes nothing.
    let len = store.log_len();
    assert!(store.enqueue(req("a", "/x"), 1).is_err());
    assert_eq!(store.log_len(), len);
}

#[test]
fn transitions_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let delivered = store.enqueue(req("s", "/d"), 10).unwrap();
    let retried = store.enqueue(req("s", "/r"), 10).unwrap();
    let failed = store.enqueue(req("s", "/f"), 10).unwrap();
    let inflight = store.enqueue(req("s", "/i"), 10).unwrap();

    let e = store.mark_attempt(&delivered.id).unwrap();
    assert_eq!((e.state, e.attempts), (QueueState::Delivering, 1));
    store.mark_retry(&delivered.id, "connection reset").unwrap();
    let e = store.mark_attempt(&delivered.id).unwrap();
    assert_eq!((e.state, e.attempts), (QueueState::Delivering, 2));
    store
        .mark_delivered(&delivered.id, result(201, b"{\"ok\":true}"))
        .unwrap();

    store.mark_attempt(&retried.id).unwrap();
    store.mark_retry(&retried.id, "connect refused").unwrap();

    store.mark_attempt(&failed.id).unwrap();
    store.mark_failed(&failed.id, "gave up").unwrap();

    store.mark_attempt(&inflight.id).unwrap();
    drop(store);

    let store = QueueStore::open(tmp.path()).unwrap();
    let d = store.get(&delivered.id).unwrap();
    assert_eq!(d.state, QueueState::Delivered);
    assert_eq!(d.attempts, 2);
    assert_eq!(d.last_error.as_deref(), Some("connection reset"));
    assert!(d.finished_at.is_some());
    let r = d.result.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.body, b"{\"ok\":true}");
    assert_eq!(r.upstream, "ndex-a");
    assert_eq!(
        r.headers,
        vec![("content-type".to_string(), "application/json".to_string())]
    );

    let r = store.get(&retried.id).unwrap();
    assert_eq!((r.state, r.attempts), (QueueState::Queued, 1));
    assert_eq!(r.last_error.as_deref(), Some("connect refused"));
    assert!(r.finished_at.is_none());

    let f = store.get(&failed.id).unwrap();
    assert_eq!(f.state, QueueState::Failed);
    assert_eq!(f.last_error.as_deref(), Some("gave up"));
    assert!(f.finished_at.is_some());
    assert!(f.result.is_none());

    // Interrupted by the "crash": still pending, may be re-attempted.
    let i = store.get(&inflight.id).unwrap();
    assert_eq!((i.state, i.attempts), (QueueState::Delivering, 1));
    assert_eq!(
        ids(&store.pending("s")),
        vec![retried.id.clone(), inflight.id.clone()]
    );
    let i = store.mark_attempt(&inflight.id).unwrap();
    assert_eq!(i.attempts, 2);

    // A third open (after the compaction done by the second) still agrees.
    drop(store);
    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(
        store.get(&delivered.id).unwrap().state,
        QueueState::Delivered
    );
    assert_eq!(store.get(&inflight.id).unwrap().attempts, 2);
    assert_eq!(ids(&store.pending("s")), vec![retried.id, inflight.id]);
}

#[test]
fn marks_on_unknown_or_finished_ids_are_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    assert!(matches!(
        store.mark_attempt("nope"),
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        store.mark_retry("nope", "x"),
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        store.mark_failed("nope", "x"),
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        store.mark_delivered("nope", result(200, b"")),
        Err(QueueError::NotFound(_))
    ));
    let e = store.enqueue(req("s", "/"), 10).unwrap();
    store.mark_attempt(&e.id).unwrap();
    store.mark_delivered(&e.id, result(200, b"")).unwrap();
    let len = store.log_len();
    assert!(matches!(
        store.mark_attempt(&e.id),
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        store.mark_delivered(&e.id, result(500, b"")),
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        store.mark_failed(&e.id, "x"),
        Err(QueueError::NotFound(_))
    ));
    assert_eq!(store.log_len(), len);
    assert_eq!(store.get(&e.id).unwrap().result.unwrap().status, 200);
}

#[test]
fn torn_last_line_is_cut_and_store_stays_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    let b = store.enqueue(req("s", "/b"), 10).unwrap();
    drop(store);

    // Half of a real record, no newline: a write interrupted by the crash.
    let rec = Record::Enqueue(EntryRecord::from_entry(&a, false));
    let line = serde_json::to_vec(&rec).unwrap();
    append_raw(tmp.path(), &line[..line.len() / 2]);

    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(ids(&store.pending("s")), vec![a.id.clone(), b.id.clone()]);
    let c = store.enqueue(req("s", "/c"), 10).unwrap();
    store.mark_attempt(&a.id).unwrap();
    drop(store);

    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(ids(&store.pending("s")), vec![a.id.clone(), b.id, c.id]);
    assert_eq!(store.get(&a.id).unwrap().state, QueueState::Delivering);
}

#[test]
fn torn_tail_is_truncated_without_compaction() {
    // Log already compact: the cut is a plain truncation of the tail.
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    drop(store);
    // Reopen compacts (meta + entry), making the log canonical.
    drop(QueueStore::open(tmp.path()).unwrap());
    let good = std::fs::read(log_path(tmp.path())).unwrap();

    append_raw(tmp.path(), b"{\"op\":\"attempt\",\"id\":\"");
    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(std::fs::read(log_path(tmp.path())).unwrap(), good);
    assert_eq!(store.get(&a.id).unwrap().state, QueueState::Queued);
}

#[test]
fn garbled_terminated_last_line_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    drop(store);
    append_raw(tmp.path(), b"\0\0\0\0garbage\n\n");
    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(ids(&store.pending("s")), vec![a.id]);
    store.enqueue(req("s", "/b"), 10).unwrap();
    drop(store);
    assert_eq!(QueueStore::open(tmp.path()).unwrap().depth("s"), 2);
}

#[test]
fn complete_but_unterminated_last_record_is_cut() {
    // The newline goes out in the same write: without it the write never
    // returned, so the record was never acknowledged.
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    drop(store);
    let rec = Record::Attempt {
        id: a.id.clone(),
        at: Utc::now(),
    };
    append_raw(tmp.path(), &serde_json::to_vec(&rec).unwrap());
    let store = QueueStore::open(tmp.path()).unwrap();
    let got = store.get(&a.id).unwrap();
    assert_eq!((got.state, got.attempts), (QueueState::Queued, 0));
}

#[test]
fn garbage_in_the_middle_is_quarantined_and_the_rest_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    drop(store);
    // After reopen+compaction: line 1 meta, line 2 the entry.
    drop(QueueStore::open(tmp.path()).unwrap());
    let store = QueueStore::open(tmp.path()).unwrap();
    let b = store.enqueue(req("s", "/b"), 10).unwrap();
    drop(store);
    let text = std::fs::read_to_string(log_path(tmp.path())).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    lines.insert(n - 1, "{\"op\":\"enqueue\",\"id\":");
    let mut broken = lines.join("\n");
    broken.push('\n');
    std::fs::write(log_path(tmp.path()), &broken).unwrap();

    let store = QueueStore::open(tmp.path()).expect("opens despite the damaged line");
    assert_eq!(ids(&store.pending("s")), vec![a.id.clone(), b.id.clone()]);
    let q = store.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].line, n);
    let moved = std::fs::read_to_string(tmp.path().join(QUARANTINE_FILE)).unwrap();
    let rec: Value = serde_json::from_str(moved.trim()).unwrap();
    assert_eq!(rec["raw"], "{\"op\":\"enqueue\",\"id\":");
    assert_eq!(rec["line"], n);
    // The live log was rewritten without it: the next open is clean.
    assert!(!std::fs::read_to_string(log_path(tmp.path()))
        .unwrap()
        .contains("\"id\":\n"));
    drop(store);
    let store = QueueStore::open(tmp.path()).unwrap();
    assert!(store.quarantined().is_empty());
    assert_eq!(store.depth("s"), 2);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(QUARANTINE_FILE)).unwrap(),
        moved
    );
}

#[test]
fn bad_base64_in_the_middle_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    drop(store);
    let now = Utc::now().to_rfc3339();
    append_raw(
        tmp.path(),
        format!(
            "{{\"op\":\"enqueue\",\"id\":\"qx\",\"seq\":99,\"service\":\"s\",\"method\":\"GET\",\"path\":\"/\",\"headers\":[],\"body_b64\":\"!!!\",\"enqueued_at\":\"{now}\"}}\n"
        )
        .as_bytes(),
    );
    append_raw(tmp.path(), b"{\"op\":\"meta\",\"next_seq\":1}\n");
    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(store.quarantined().len(), 1);
    assert!(store.quarantined()[0].error.contains("body_b64"));
    assert!(store.get("qx").is_none());
    assert_eq!(ids(&store.pending("s")), vec![a.id]);
}

#[test]
fn an_id_that_is_no_file_name_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    drop(QueueStore::open(tmp.path()).unwrap());
    let now = Utc::now().to_rfc3339();
    append_raw(
        tmp.path(),
        format!(
            "{{\"op\":\"enqueue\",\"id\":\"../../etc/x\",\"seq\":1,\"service\":\"s\",\"method\":\"GET\",\"path\":\"/\",\"headers\":[],\"body_b64\":\"eA==\",\"enqueued_at\":\"{now}\"}}\n"
        )
        .as_bytes(),
    );
    append_raw(tmp.path(), b"{\"op\":\"meta\",\"next_seq\":1}\n");
    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(store.quarantined().len(), 1);
    assert_eq!(store.depth("s"), 0);
    assert!(!tmp.path().join("etc").exists());
}

#[test]
fn compaction_at_open_drops_expired_results_keeps_pending() {
    let tmp = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let old = now - chrono::Duration::hours(25);
    let recent = now - chrono::Duration::hours(23);
    // Hand-written log, with timestamps we control.
    // Records as logs before bodies moved to files wrote them: inline.
    let mk = |id: &str, seq: u64, at: DateTime<Utc>| EntryRecord {
        id: id.to_string(),
        seq,
        service: "s".to_string(),
        method: "POST".to_string(),
        path: format!("/{id}"),
        headers: vec![],
        body_len: 0,
        body_b64: Some(B64.encode(id.as_bytes())),
        enqueued_at: at,
        state: None,
        attempts: 0,
        last_error: None,
        result: None,
        finished_at: None,
    };
    let inline = |status: u16, body: &[u8]| ResultRecord {
        body_b64: Some(B64.encode(body)),
        ..ResultRecord::from_result(&result(status, body))
    };
    let mut log = Vec::new();
    let mut push = |r: Record| {
        log.extend(serde_json::to_vec(&r).unwrap());
        log.push(b'\n');
    };
    for (id, seq) in [
        ("old-done", 1),
        ("old-failed", 2),
        ("recent-done", 3),
        ("old-pending", 4),
    ] {
        push(Record::Enqueue(mk(
            id,
            seq,
            old - chrono::Duration::hours(1),
        )));
    }
    push(Record::Attempt {
        id: "old-done".into(),
        at: old,
    });
    push(Record::Delivered {
        id: "old-done".into(),
        at: old,
        result: inline(200, b"x"),
    });
    push(Record::Failed {
        id: "old-failed".into(),
        at: old,
        error: "no".into(),
    });
    push(Record::Delivered {
        id: "recent-done".into(),
        at: recent,
        result: inline(200, b"y"),
    });
    push(Record::Attempt {
        id: "old-pending".into(),
        at: old,
    });
    std::fs::write(log_path(tmp.path()), &log).unwrap();

    let store = QueueStore::open(tmp.path()).unwrap();
    assert!(store.get("old-done").is_none());
    assert!(store.get("old-failed").is_none());
    assert_eq!(store.get("recent-done").unwrap().result.unwrap().body, b"y");
    let p = store.get("old-pending").unwrap();
    assert_eq!((p.state, p.attempts), (QueueState::Delivering, 1));
    assert_eq!(store.body(&p).unwrap(), b"old-pending");
    // seq keeps counting past the dropped ones.
    assert_eq!(store.enqueue(req("s", "/n"), 10).unwrap().seq, 5);
    drop(store);

    let text = std::fs::read_to_string(log_path(tmp.path())).unwrap();
    assert!(text.starts_with("{\"op\":\"meta\""), "{text}");
    assert!(!text.contains("old-done") && !text.contains("old-failed"));
    // The inline bodies moved to files; the dropped entries' files are gone.
    assert!(!text.contains("body_b64"), "{text}");
    let mut files: Vec<String> = std::fs::read_dir(tmp.path().join(BODIES_DIR))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // old-pending's request, recent-done's result, and /n's request.
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.contains(&"old-pending.req".to_string()), "{files:?}");
    assert!(files.contains(&"recent-done.res".to_string()), "{files:?}");
    assert!(!files
        .iter()
        .any(|f| f.starts_with("old-done") || f.starts_with("old-failed")));
    assert!(!tmp.path().join(TMP_FILE).exists());

    // Zero retention: every finished entry goes, pending ones stay.
    let store = QueueStore::open_with(tmp.path(), Duration::ZERO).unwrap();
    assert!(store.get("recent-done").is_none());
    assert_eq!(store.depth("s"), 2);
    assert_eq!(store.services(), vec!["s".to_string()]);
}

#[test]
fn size_triggered_compaction_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open_with(tmp.path(), Duration::ZERO).unwrap();
    store.set_compact_min_bytes(4096);
    let keep = store.enqueue(req("s", "/keep"), 1000).unwrap();
    let mut last = None;
    for i in 0..200 {
        let e = store.enqueue(req("s", &format!("/{i}")), 1000).unwrap();
        store.mark_attempt(&e.id).unwrap();
        store.mark_delivered(&e.id, result(200, b"ok")).unwrap();
        last = Some(e);
    }
    // Compacted as it went: far smaller than 200 * 3 records.
    let len = std::fs::metadata(log_path(tmp.path())).unwrap().len();
    assert_eq!(len, store.log_len());
    assert!(len < 8192 * 2, "log is {len} bytes");
    assert_eq!(store.depth("s"), 1);
    let next = store.enqueue(req("s", "/next"), 1000).unwrap();
    assert!(next.seq > last.unwrap().seq);
    drop(store);

    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(ids(&store.pending("s")), vec![keep.id, next.id]);
}

#[test]
fn concurrent_enqueue_from_8_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| store.enqueue(req("s", &format!("/{t}/{i}")), 1000).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<QueuedEntry> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 200);
    let mut unique: Vec<&String> = all.iter().map(|e| &e.id).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 200);
    let mut seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 200);
    // Per thread, enqueue order is kept.
    for t in 0..8 {
        let mine: Vec<u64> = all
            .iter()
            .filter(|e| e.path.starts_with(&format!("/{t}/")))
            .map(|e| e.seq)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]));
    }
    drop(store);

    let store = QueueStore::open(tmp.path()).unwrap();
    all.sort_by_key(|e| e.seq);
    assert_eq!(ids(&store.pending("s")), ids(&all));
    for e in &all {
        assert_eq!(store.get(&e.id).unwrap().path, e.path);
    }
}

#[test]
fn to_json_masks_secrets_and_omits_request_body() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let e = store.enqueue(req("ndex", "/v1/q"), 10).unwrap();
    let v = e.to_json();
    assert_eq!(v["id"], e.id.as_str());
    assert_eq!(v["service"], "ndex");
    assert_eq!(v["state"], "queued");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/v1/q");
    assert_eq!(v["attempts"], 0);
    assert!(v["last_error"].is_null());
    assert!(v["finished_at"].is_null());
    assert!(v.get("result").is_none());
    let at = v["enqueued_at"].as_str().unwrap();
    assert!(DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    let headers = v["headers"].as_array().unwrap();
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["value"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(value("Content-Type"), "application/json");
    assert_eq!(value("Authorization"), "***");
    assert_eq!(value("cookie"), "***");
    assert_eq!(value("X-API-Key"), "***");
    assert_eq!(value("Proxy-Authorization"), "***");
    let text = v.to_string();
    for secret in ["s3cret", "sid=abc", "k3y", "eA==", "secret_body"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(v.get("body").is_none());
}

#[test]
fn to_json_result_body_utf8_or_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    let b = store.enqueue(req("s", "/b"), 10).unwrap();
    store.mark_attempt(&a.id).unwrap();
    store
        .mark_delivered(&a.id, result(201, "créé".as_bytes()))
        .unwrap();
    store.mark_attempt(&b.id).unwrap();
    store
        .mark_delivered(&b.id, result(200, &[0xff, 0x00, 0xfe]))
        .unwrap();

    let v = store.get(&a.id).unwrap().to_json();
    assert_eq!(v["state"], "delivered");
    assert_eq!(v["attempts"], 1);
    assert!(v["finished_at"].is_string());
    assert_eq!(v["result"]["status"], 201);
    assert_eq!(v["result"]["body"], "créé");
    assert!(v["result"].get("body_encoding").is_none());
    assert_eq!(v["result"]["upstream"], "ndex-a");
    assert_eq!(v["result"]["headers"][0]["name"], "content-type");
    assert_eq!(v["result"]["headers"][0]["value"], "application/json");

    let v = store.get(&b.id).unwrap().to_json();
    assert_eq!(v["result"]["body"], B64.encode([0xff, 0x00, 0xfe]));
    assert_eq!(v["result"]["body_encoding"], "base64");
}

#[test]
fn acknowledged_requests_survive_an_abrupt_end() {
    // No close, no destructor: durability comes from the fsync per record.
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    let b = store.enqueue(req("s", "/b"), 10).unwrap();
    store.mark_attempt(&a.id).unwrap();
    std::mem::forget(store);

    let store = QueueStore::open(tmp.path()).unwrap();
    assert_eq!(ids(&store.pending("s")), vec![a.id.clone(), b.id]);
    assert_eq!(store.get(&a.id).unwrap().state, QueueState::Delivering);
}

#[test]
fn metrics_views() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    assert!(store.services().is_empty());
    assert!(store.oldest_age("s").is_none());
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store.enqueue(req("s", "/b"), 10).unwrap();
    store.enqueue(req("t", "/c"), 10).unwrap();
    assert_eq!(store.services(), vec!["s".to_string(), "t".to_string()]);
    let age = store.oldest_age("s").unwrap();
    assert!(age >= Duration::from_millis(20), "{age:?}");
    store.mark_attempt(&a.id).unwrap();
    store.mark_delivered(&a.id, result(200, b"")).unwrap();
    // Now the oldest is b, enqueued >= 20 ms after a.
    let age_b = store.oldest_age("s").unwrap();
    let since_a = (Utc::now() - a.enqueued_at).to_std().unwrap();
    assert!(
        age_b + Duration::from_millis(15) <= since_a,
        "{age_b:?} vs {since_a:?}"
    );
    assert!(store.oldest_age("u").is_none());
}

#[test]
fn leftover_compaction_tmp_is_ignored_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    let a = store.enqueue(req("s", "/a"), 10).unwrap();
    drop(store);
    std::fs::write(
        tmp.path().join(TMP_FILE),
        b"{\"op\":\"meta\",\"next_seq\":0}\n",
    )
    .unwrap();
    let store = QueueStore::open(tmp.path()).unwrap();
    assert!(store.get(&a.id).is_some());
    assert!(!tmp.path().join(TMP_FILE).exists());
}
