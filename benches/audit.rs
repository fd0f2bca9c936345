//! Audit log throughput (`cargo bench --bench audit`).
//!
//! - `append/concurrent/N`: N tasks append at once; group commit puts
//!   whatever is queued into one write + one fdatasync, and every append
//!   returns only after the fsync that covers it. Target >= 20,000/s.
//! - `append/sequential`: one appender, so one fsync per entry: the floor
//!   that group commit lifts.
//! - `verify/entries`: `verify_dir` over a prepared log (streamed with a
//!   BufReader, SHA-256 per line, cheap field scan). Target >= 500,000/s.
//!
//! Files go to a temporary directory on the same disk as `$TMPDIR`, with
//! real fsyncs: the figures depend on that disk.

use std::path::Path;
use std::time::Duration;

use continuity_control::audit::{verify_dir, Action, AuditLog, AuditSettings, NewEntry, Severity};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;

fn entry(i: u64) -> NewEntry {
    NewEntry::new(
        Action::HealthCheck,
        Severity::Warning,
        "system",
        json!({
            "upstream": "redis-primary", "from": "up", "to": "down", "i": i,
            "probe": {"error": "connection refused", "latency_ms": 2001, "threshold": 3},
            "address": "redis://:secret@10.0.0.1:6379",
        }),
    )
    .service("redis")
}

async fn open(dir: &Path) -> AuditLog {
    let s = AuditSettings {
        dir: dir.to_path_buf(),
        ..AuditSettings::default()
    };
    match AuditLog::open(s, &prometheus::Registry::new()).await {
        Ok((log, _)) => log,
        Err(e) => panic!("cannot open the audit log: {e}"),
    }
}

/// `total` appends spread over `tasks` concurrent appenders.
async fn append_concurrently(log: &AuditLog, tasks: u64, total: u64) {
    let per = total / tasks;
    let mut handles = Vec::with_capacity(tasks as usize);
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                if let Err(e) = log.append(entry(t * per + i)).await {
                    panic!("append failed: {e}");
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

fn bench_append(c: &mut Criterion) {
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = rt.block_on(open(tmp.path()));
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    const BATCH: u64 = 4096;
    for tasks in [16u64, 64, 256] {
        g.throughput(Throughput::Elements(BATCH));
        g.bench_with_input(
            BenchmarkId::new("concurrent", tasks),
            &tasks,
            |b, &tasks| {
                b.iter(|| rt.block_on(append_concurrently(&log, tasks, BATCH)));
            },
        );
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("sequential", |b| {
        b.iter(|| rt.block_on(async { log.append(entry(0)).await.is_ok() }));
    });
    g.finish();
    rt.block_on(log.shutdown());
}

fn bench_verify(c: &mut Criterion) {
    const ENTRIES: u64 = 204_800; // 256 appenders x 800
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let log = open(tmp.path()).await;
        append_concurrently(&log, 256, ENTRIES).await;
        log.shutdown().await;
    });
    let mut g = c.benchmark_group("verify");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(ENTRIES));
    g.bench_function("entries", |b| {
        b.iter(|| match verify_dir(tmp.path(), None) {
            Ok(r) => assert!(r.chain_verified && r.entries == ENTRIES),
            Err(e) => panic!("verify: {e}"),
        });
    });
    g.finish();
}

criterion_group!(benches, bench_append, bench_verify);
criterion_main!(benches);
