//! `redundancy = "hot"` keeps `warm_connections` pre-connected standby
//! connections (proxy/src/upstream/pool.rs) that the accept loop hands to
//! the first clients after a failover; `warm` keeps none. Real
//! redis-server processes; a service runtime with its accept loop (which
//! starts the pool keeper) and a probe driver at the hot rate.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

use super::test_common::{free_port, redis};
use super::{accept_loop, Signals};
use crate::config::{Kind, Redundancy, Role, ServiceConfig, UpstreamConfig};
use crate::events::Trigger;
use crate::health;
use crate::metrics::ProxyMetrics;
use crate::snapshot::PoolState;
use crate::upstream::pool;
use crate::upstream::runtime::ServiceRt;
use crate::upstream::state::{FailoverCounters, SwitchKind};
use crate::upstream::switch::switch;
use crate::upstream::warm::WarmPool;

async fn cmd(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    // Enough for a PING or a CLIENT LIST bulk reply on a quiet server.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if n == 0 || !text.starts_with('$') || text.matches("\r\n").count() >= 2 {
            return text.to_string();
        }
    }
}

/// Connections on the redis at `port` that never sent a command: pooled ones.
async fn idle_clients(port: u16) -> usize {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let list = cmd(&mut c, "CLIENT LIST").await;
    list.lines().filter(|l| l.contains("cmd=NULL")).count()
}

struct Proxy {
    svc: Arc<ServiceRt>,
    addr: std::net::SocketAddr,
    _stop: watch::Sender<bool>,
    _force: watch::Sender<bool>,
}

/// A service with its accept loop and a probe driver at the engine's rates
/// (every 50 ms; a `warm` standby every fourth round, a `cold` one never).
async fn proxy(p: u16, s: u16, redundancy: Redundancy, drain: Duration) -> Proxy {
    let mut cfg = ServiceConfig::new(
        "cache",
        Kind::Redis,
        vec![
            UpstreamConfig::at("r1", &format!("127.0.0.1:{p}"), Role::Primary),
            UpstreamConfig::at("r2", &format!("127.0.0.1:{s}"), Role::Secondary),
        ],
    );
    cfg.redundancy = redundancy;
    cfg.warm_connections = 2;
    // A proxied service (the accept loop below serves it); pools need one.
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.health.check_interval = Duration::from_millis(50);
    cfg.health.failure_threshold = 2;
    cfg.health.recovery_threshold = 1;
    cfg.health.hold_down = Duration::from_millis(100);
    let svc = Arc::new(ServiceRt::new(
        cfg,
        broadcast::channel(256).0,
        ProxyMetrics::new(&prometheus::Registry::new()),
        Arc::new(FailoverCounters::default()),
        drain,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let (force, force_rx) = watch::channel(false);
    let force_rx_keep = force_rx.clone();
    let sig = Signals {
        shutdown: stop_rx.clone(),
        force_close: force_rx,
        open: Arc::new(AtomicU64::new(0)),
    };
    let workers =
        crate::workers::Workers::start("l4-test", 2, &force_rx_keep, Duration::from_secs(1))
            .expect("l4 threads");
    tokio::spawn(accept_loop(
        svc.clone(),
        None,
        listener,
        sig,
        Arc::new(workers),
    ));
    let driver = svc.clone();
    let mut stop_probes = stop_rx;
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            for i in 0..driver.upstreams.len() {
                let due = i == driver.route.load().active
                    || i == driver.cfg.configured_primary()
                    || match driver.cfg.redundancy {
                        Redundancy::Hot => true,
                        Redundancy::Warm => n.is_multiple_of(4),
                        Redundancy::Cold => false,
                    };
                if due {
                    let up = &driver.upstreams[i];
                    let outcome = health::run_probe(&driver.cfg, &up.cfg).await;
                    driver.on_probe(i, outcome).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop_probes.changed() => return,
            }
        }
    });
    Proxy {
        svc,
        addr,
        _stop: stop,
        _force: force,
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state(p: &Proxy, idx: usize) -> PoolState {
    pool::pool_state(&p.svc, idx, &p.svc.route.load())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keeps_ready_connections_and_first_clients_use_them() {
    let (pp, sp) = (free_port(), free_port());
    let mut primary = redis(pp, None);
    let _secondary = redis(sp, None);
    let p = proxy(pp, sp, Redundancy::Hot, Duration::from_secs(1)).await;
    let standby = &p.svc.upstreams[1];
    wait_for("pool filled", || standby.pool.len() == 2).await;
    assert_eq!(state(&p, 0), PoolState::Connected);
    assert_eq!(state(&p, 1), PoolState::Connected);
    assert_eq!(idle_clients(sp).await, 2, "two pooled connections on r2");
    // The active upstream keeps no pool.
    assert_eq!(p.svc.upstreams[0].pool.len(), 0);
    assert_eq!(idle_clients(pp).await, 0);

    let _ = primary.child.kill(); // SIGKILL
    let _ = primary.child.wait();
    for _ in 0..2 {
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        assert_eq!(cmd(&mut c, "PING").await, "+PONG\r\n");
    }
    assert_eq!(p.svc.route.load().active, 1);
    assert_eq!(
        standby.pool.hits(),
        2,
        "first clients used pooled connections"
    );
    assert_eq!(idle_clients(sp).await, 0, "pool drained into the clients");
    // The third client connects.
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(cmd(&mut c, "PING").await, "+PONG\r\n");
    assert_eq!(standby.pool.misses(), 1);
    assert_eq!(state(&p, 0), PoolState::Failed);
    assert_eq!(state(&p, 1), PoolState::Connected);
    // The fenced old primary gets no pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.svc.upstreams[0].pool.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_keeps_no_connections_and_connects_on_failover() {
    let (pp, sp) = (free_port(), free_port());
    let mut primary = redis(pp, None);
    let _secondary = redis(sp, None);
    let p = proxy(pp, sp, Redundancy::Warm, Duration::from_secs(1)).await;
    wait_for("both probed up", || {
        state(&p, 0) == PoolState::Connected
            && p.svc.usable(&p.svc.route.load(), 1)
            && p.svc.upstreams[1].health.lock().unwrap().total > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.svc.upstreams[1].pool.len(), 0);
    assert_eq!(idle_clients(sp).await, 0);
    assert_eq!(state(&p, 1), PoolState::Disconnected);

    let _ = primary.child.kill();
    let _ = primary.child.wait();
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(cmd(&mut c, "PING").await, "+PONG\r\n");
    assert_eq!(p.svc.route.load().active, 1);
    assert_eq!(p.svc.upstreams[1].pool.hits(), 0);
    assert_eq!(
        p.svc.upstreams[1].pool.misses(),
        0,
        "misses count in hot only"
    );
    assert_eq!(state(&p, 1), PoolState::Connected);
    assert_eq!(state(&p, 0), PoolState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_states_through_failover_and_recover() {
    let (pp, sp) = (free_port(), free_port());
    let mut primary = redis(pp, None);
    let _secondary = redis(sp, None);
    let p = proxy(pp, sp, Redundancy::Hot, Duration::from_millis(1500)).await;
    wait_for("standby pooled", || state(&p, 1) == PoolState::Connected).await;
    assert_eq!(state(&p, 0), PoolState::Connected);

    let _ = primary.child.kill();
    let _ = primary.child.wait();
    let mut on_r2 = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(cmd(&mut on_r2, "PING").await, "+PONG\r\n");
    assert_eq!(state(&p, 0), PoolState::Failed);
    assert_eq!(state(&p, 1), PoolState::Connected);

    // The old primary comes back: up, but fenced, so no pool.
    let _back = redis(pp, None);
    wait_for("old primary up", || state(&p, 0) != PoolState::Failed).await;
    assert_eq!(state(&p, 0), PoolState::Disconnected);
    assert_eq!(p.svc.upstreams[0].pool.len(), 0);

    // Recover: r2 drains while `on_r2` is open, then becomes the hot standby.
    {
        let _g = p.svc.switch_lock.lock().await;
        let kind = SwitchKind::Recover {
            trigger: Trigger::Manual,
            actor: "test".into(),
            reason: "test".into(),
        };
        switch(&p.svc, 0, kind).await.unwrap();
    }
    assert_eq!(state(&p, 0), PoolState::Connected);
    assert_eq!(state(&p, 1), PoolState::Draining);
    assert_eq!(
        cmd(&mut on_r2, "PING").await,
        "+PONG\r\n",
        "drain lets it finish"
    );
    wait_for("drain over, pool refilled", || {
        state(&p, 1) == PoolState::Connected && p.svc.upstreams[1].pool.len() == 2
    })
    .await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(cmd(&mut c, "PING").await, "+PONG\r\n");
    assert_eq!(p.svc.route.load().active, 0);
}

#[tokio::test]
async fn take_skips_closed_connections() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let pool = WarmPool::new();
    let a = TcpStream::connect(addr).await.unwrap();
    let (a_peer, _) = server.accept().await.unwrap();
    let b = TcpStream::connect(addr).await.unwrap();
    let (_b_peer, _) = server.accept().await.unwrap();
    pool.put(a);
    pool.put(b);
    drop(a_peer); // the upstream closes the oldest one
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = pool.take().expect("the open one");
    assert!(got.peer_addr().is_ok());
    assert_eq!(pool.len(), 0, "the closed one was dropped");
    assert!(pool.take().is_none());
    assert_eq!(pool.hits(), 1);
}

/// A relay in front of the secondary that waits `delay` after accepting
/// before it connects on: a remote DR site or a TLS handshake, seen from
/// a client as a slow first byte. Returns its port.
async fn slow_relay(to: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut out) = TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

/// (gap, 1st request, 2nd request, failed requests) of one failover.
type Run = (f64, f64, f64, usize);

/// One failover: a new connection with a PING every 10 ms through the
/// proxy, SIGKILL of the primary after 300 ms. Returns (gap from the last
/// success before the kill to the first after it, time from connect to
/// +PONG of the first and of the second request after it, failed), in ms.
async fn one_failover(mode: Redundancy, delay: Duration) -> Run {
    let (pp, sp) = (free_port(), free_port());
    let mut primary = redis(pp, None);
    let _secondary = redis(sp, None);
    let behind = if delay.is_zero() {
        sp
    } else {
        slow_relay(sp, delay).await
    };
    let p = proxy(pp, behind, mode, Duration::from_secs(1)).await;
    wait_for("ready", || {
        let standby = &p.svc.upstreams[1];
        state(&p, 0) == PoolState::Connected
            && p.svc.usable(&p.svc.route.load(), 1)
            && standby.health.lock().unwrap().total > 0
            && (mode != Redundancy::Hot || standby.pool.len() == 2)
    })
    .await;
    let origin = Instant::now();
    let mut kill_at = None;
    let mut log: Vec<(Instant, Instant, bool)> = Vec::new();
    let mut next = origin;
    while origin.elapsed() < Duration::from_millis(1300) {
        if kill_at.is_none() && origin.elapsed() >= Duration::from_millis(300) {
            let _ = primary.child.kill();
            let _ = primary.child.wait();
            kill_at = Some(Instant::now());
        }
        let start = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = TcpStream::connect(p.addr).await.ok()?;
            c.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).await.ok()?;
            Some(buf.get(..n) == Some(&b"+PONG\r\n"[..]))
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
        log.push((start, Instant::now(), ok));
        next += Duration::from_millis(10);
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
    let kill = kill_at.unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let last_before = log
        .iter()
        .filter(|(_, e, ok)| *ok && *e <= kill)
        .map(|(_, e, _)| *e)
        .max()
        .unwrap();
    let after: Vec<_> = log.iter().filter(|(s, _, ok)| *ok && *s >= kill).collect();
    let failed = log.iter().filter(|(s, _, ok)| !*ok && *s >= kill).count();
    let gap = ms(after[0].1 - last_before);
    (
        gap,
        ms(after[0].1 - after[0].0),
        ms(after[1].1 - after[1].0),
        failed,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Failover latency, hot against warm (BENCHMARKS.md, benches/hot_vs_warm.sh):
/// behind a standby that is slow to accept (a remote site, 50 ms), the
/// first request after a failover is served at once from the hot pool but
/// waits for the connect in `warm`. Prints the table with
/// `REPS=9 cargo test --release -p continuity-proxy --lib hot_vs_warm -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_vs_warm_failover_first_request() {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let delay = Duration::from_millis(50);
    let mut results: Vec<(Redundancy, Vec<Run>)> =
        vec![(Redundancy::Hot, vec![]), (Redundancy::Warm, vec![])];
    for rep in 0..reps {
        // Interleaved, alternating which goes first.
        for k in 0..2 {
            let slot = (rep + k) % 2;
            let mode = results[slot].0;
            let r = one_failover(mode, delay).await;
            results[slot].1.push(r);
        }
    }
    println!(
        "secondary accept delay {} ms, {reps} failovers per mode (median ms)",
        delay.as_millis()
    );
    println!("| mode | gap | 1st request after | 2nd request after | failed requests (total) |");
    for (mode, rs) in &results {
        println!(
            "| {mode} | {:.2} | {:.2} | {:.2} | {} |",
            median(rs.iter().map(|r| r.0).collect()),
            median(rs.iter().map(|r| r.1).collect()),
            median(rs.iter().map(|r| r.2).collect()),
            rs.iter().map(|r| r.3).sum::<usize>(),
        );
    }
    let first = |slot: usize| median(results[slot].1.iter().map(|r| r.1).collect());
    let (hot, warm) = (first(0), first(1));
    // warm pays the standby's 50 ms accept delay; hot does not.
    assert!(
        hot + 25.0 < warm,
        "hot 1st request {hot:.2} ms, warm {warm:.2} ms"
    );
}
