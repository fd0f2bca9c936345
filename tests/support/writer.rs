//! Writers that count their acknowledged writes (Redis `SET`, PostgreSQL
//! `INSERT`), for the zero-loss
//! tests of planned switchovers (one engine: tests/switchover_e2e.rs; a
//! cluster: tests/cluster_e2e.rs).

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ports::wait_until;
use super::postgres::try_psql;
use super::redis::{encode, read_reply, RedisServer, Resp};

/// A writer on one connection through the proxy: `SET {prefix}:i i` for i = 1, 2,
/// ...; an acknowledged `i` is recorded; after a connection error it
/// reconnects and sends the same `i` again (a retry, not a loss).
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    retries: Arc<AtomicU64>,
    refused: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(addr: &str, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let retries = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (s, a, r, f, addr, prefix) = (
            stop.clone(),
            acked.clone(),
            retries.clone(),
            refused.clone(),
            addr.to_string(),
            prefix.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let connect = || {
                let c = TcpStream::connect(&addr).ok()?;
                c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                Some(c)
            };
            let mut conn = connect();
            let mut i = 1u64;
            while !s.load(Ordering::Relaxed) {
                let Some(c) = conn.as_mut() else {
                    r.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                    conn = connect();
                    continue;
                };
                let key = format!("{prefix}:{i}");
                let val = i.to_string();
                let sent = c.write_all(&encode(&["SET", &key, &val])).is_ok();
                let reply = sent
                    .then(|| read_reply(&mut BufReader::new(&*c)).ok())
                    .flatten();
                match reply {
                    Some(Resp::Simple(ok)) if ok == "OK" => {
                        a.lock().unwrap().push(i);
                        i += 1;
                    }
                    Some(other) => {
                        // An error reply is a refusal the client saw.
                        f.lock().unwrap().push(format!("{i}: {other:?}"));
                        conn = None;
                    }
                    None => {
                        r.fetch_add(1, Ordering::Relaxed);
                        conn = connect();
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Writer {
            stop,
            acked,
            retries,
            refused,
            handle: Some(handle),
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn finish(mut self) -> (Vec<u64>, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let refused = std::mem::take(&mut *self.refused.lock().unwrap());
        (acked, self.retries.load(Ordering::Relaxed), refused)
    }
}

/// Every acknowledged `{prefix}:i` is on `server`, with its value.
pub fn assert_all_present(server: &RedisServer, prefix: &str, acked: &[u64]) {
    for chunk in acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("{prefix}:{i}")).collect();
        let mut args = vec!["EXISTS"];
        args.extend(keys.iter().map(String::as_str));
        let n = server.cmd(&args).unwrap();
        assert_eq!(
            n,
            chunk.len().to_string(),
            "acknowledged writes missing among {prefix}:{}..{prefix}:{}",
            chunk[0],
            chunk[chunk.len() - 1]
        );
    }
}

pub fn wait_writes(w: &Writer, more: usize) {
    let start = w.acked();
    assert!(
        wait_until(Duration::from_secs(10), || w.acked() >= start + more),
        "writer made no progress"
    );
}

/// Waits until each of `tables` on the PostgreSQL server at `port` holds
/// `more` rows beyond what it holds now: progress measured after a point
/// (a switchover), not a row count reached in a fixed time, which one psql
/// process per row on a loaded machine may miss.
pub fn wait_pg_rows(port: u16, tables: &[&str], more: usize) {
    let count = |t: &str| -> usize {
        try_psql(port, &format!("SELECT count(*) FROM {t}"))
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let start: Vec<usize> = tables.iter().map(|t| count(t)).collect();
    let progressed = || tables.iter().zip(&start).all(|(t, s)| count(t) >= s + more);
    assert!(
        wait_until(Duration::from_secs(20), progressed),
        "writers made no progress on port {port}: {tables:?} from {start:?}"
    );
}

/// `INSERT INTO {table} VALUES (i)` through the proxy, one psql per row,
/// until `stop`; returns the acknowledged `i`s and the errors seen.
pub fn pg_writer(
    port: u16,
    table: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<u64>, Vec<String>)> {
    let table = table.to_string();
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut errors = Vec::new();
        let mut i = 1u64;
        while !stop.load(Ordering::Relaxed) {
            match try_psql(port, &format!("INSERT INTO {table} VALUES ({i})")) {
                Ok(_) => {
                    acked.push(i);
                    i += 1;
                }
                Err(e) => errors.push(format!("{i}: {e}")),
            }
        }
        (acked, errors)
    })
}
