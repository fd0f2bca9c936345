//! Redis fallback to memory against real redis-server processes: every
//! Redis is killed, the proxy answers from memory, Redis restarts on its
//! port, the journal is replayed in order and the keys are in Redis.

use std::time::{Duration, Instant};

use continuity_proxy::config::{
    EngineConfig, FailoverMode, Kind, Role, ServiceConfig, UpstreamConfig,
};
use continuity_proxy::events::EventKind;
use continuity_proxy::protocol::resp::{parse_reply, Reply};
use continuity_proxy::snapshot::ServiceStatus;
use continuity_proxy::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{free_port, redis};

/// Sends one command (a RESP array) and returns the raw reply bytes.
async fn raw(c: &mut TcpStream, args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    c.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf == b"_\r\n" {
            return buf;
        }
        let whole = as_resp2(&buf);
        if let Ok(Some((_, used))) = parse_reply(&whole) {
            assert_eq!(used, whole.len(), "one reply per request");
            return buf;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "connection closed while waiting for a reply");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A top-level RESP3 map (`%N`) as the RESP2 array (`*2N`) the reply
/// parser reads, so that its end can be found.
fn as_resp2(buf: &[u8]) -> Vec<u8> {
    let Some(rest) = buf.strip_prefix(b"%") else {
        return buf.to_vec();
    };
    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
        return buf.to_vec();
    };
    let n: usize = std::str::from_utf8(&rest[..end]).unwrap().parse().unwrap();
    let mut out = format!("*{}", n * 2).into_bytes();
    out.extend_from_slice(&rest[end..]);
    out
}

async fn req(c: &mut TcpStream, args: &[&str]) -> Reply {
    parse_reply(&raw(c, args).await).unwrap().unwrap().0
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

fn service(p: u16, s: u16) -> ServiceConfig {
    let mut svc = ServiceConfig::new(
        "cache",
        Kind::Redis,
        vec![
            UpstreamConfig::at("r1", &format!("127.0.0.1:{p}"), Role::Primary),
            UpstreamConfig::at("r2", &format!("127.0.0.1:{s}"), Role::Secondary),
        ],
    );
    svc.listen = Some("127.0.0.1:0".parse().unwrap());
    // Manual: no switch to the replica, so that restarting the primary on
    // its port is what makes the service usable again.
    svc.failover = FailoverMode::Manual;
    svc.health.check_interval = Duration::from_millis(100);
    svc.health.failure_threshold = 1;
    svc.health.recovery_threshold = 1;
    svc.buffer_timeout = Duration::from_millis(1500);
    svc.fallback_memory = true;
    svc.fallback_max_bytes = 16 * 1024;
    svc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_every_redis_then_memory_then_replay() {
    let (pp, sp) = (free_port(), free_port());
    let mut primary = redis(pp, None);
    let mut replica = redis(sp, Some(pp));
    let reg = prometheus::Registry::new();
    let engine = Engine::start(
        EngineConfig {
            services: vec![service(pp, sp)],
            ..Default::default()
        },
        &reg,
    )
    .await
    .unwrap();
    let mut events = engine.subscribe();
    let addr = engine.listen_addrs()[0].1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        req(&mut c, &["SET", "before", "redis"]).await,
        Reply::Simple("OK".into())
    );
    drop(c);

    for r in [&mut primary, &mut replica] {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Served from memory.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let ok = Reply::Simple("OK".into());
    assert_eq!(req(&mut c, &["PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(req(&mut c, &["SET", "s1", "v1", "EX", "100"]).await, ok);
    assert_eq!(req(&mut c, &["GET", "s1"]).await, bulk("v1"));
    assert_eq!(req(&mut c, &["TTL", "s1"]).await, Reply::Integer(100));
    assert_eq!(req(&mut c, &["SET", "short", "x", "PX", "200"]).await, ok);
    assert_eq!(req(&mut c, &["SET", "s1", "other", "NX"]).await, Reply::Nil);
    for i in 1..=3 {
        assert_eq!(req(&mut c, &["INCR", "counter"]).await, Reply::Integer(i));
    }
    assert_eq!(
        req(&mut c, &["HSET", "h", "f1", "a", "f2", "b"]).await,
        Reply::Integer(2)
    );
    assert_eq!(
        req(&mut c, &["HGETALL", "h"]).await,
        Reply::Array(vec![bulk("f1"), bulk("a"), bulk("f2"), bulk("b")])
    );
    assert_eq!(req(&mut c, &["MSET", "m1", "1", "m2", "2"]).await, ok);
    assert_eq!(
        req(&mut c, &["MGET", "m1", "m2", "nope"]).await,
        Reply::Array(vec![bulk("1"), bulk("2"), Reply::Nil])
    );
    assert_eq!(req(&mut c, &["DEL", "m2"]).await, Reply::Integer(1));
    assert_eq!(
        req(&mut c, &["EXISTS", "m1", "m2"]).await,
        Reply::Integer(1)
    );
    // Order: the last write wins in Redis too.
    for v in ["a", "b"] {
        assert_eq!(req(&mut c, &["SET", "order", v]).await, ok);
    }
    assert_eq!(req(&mut c, &["DEL", "order"]).await, Reply::Integer(1));
    assert_eq!(req(&mut c, &["SET", "order", "c"]).await, ok);
    match req(&mut c, &["KEYS", "*"]).await {
        Reply::Error(e) => assert!(e.starts_with("ERR continuity fallback"), "{e}"),
        other => panic!("KEYS: {other:?}"),
    }
    let big = "x".repeat(20 * 1024);
    match req(&mut c, &["SET", "big", &big]).await {
        Reply::Error(e) => assert!(e.starts_with("OOM"), "{e}"),
        other => panic!("big SET: {other:?}"),
    }
    assert_eq!(
        req(&mut c, &["GET", "s1"]).await,
        bulk("v1"),
        "reads work past the limit"
    );
    // RESP3 after HELLO 3: HGETALL is a map, a missing key `_`.
    let hello = raw(&mut c, &["HELLO", "3"]).await;
    assert!(
        hello.starts_with(b"%7\r\n"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    assert_eq!(raw(&mut c, &["GET", "nope"]).await, b"_\r\n");
    let map = raw(&mut c, &["HGETALL", "h"]).await;
    assert_eq!(map, b"%2\r\n$2\r\nf1\r\n$1\r\na\r\n$2\r\nf2\r\n$1\r\nb\r\n");
    let snap = engine.snapshot();
    assert_eq!(
        snap.service("cache").unwrap().status,
        ServiceStatus::Degraded
    );

    // Let `short` expire, then bring the primary back on its port.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _primary = redis(pp, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut activated, mut done) = (0, None);
    while done.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.recv())
            .await
            .expect("fallback_deactivated in time")
            .unwrap();
        match ev.kind {
            EventKind::FallbackActivated { fallback, .. } => {
                assert_eq!(fallback, "memory");
                activated += 1;
            }
            EventKind::FallbackDeactivated {
                upstream,
                replayed,
                expired,
                failed,
                ..
            } => done = Some((upstream, replayed, expired, failed)),
            _ => {}
        }
    }
    assert_eq!(activated, 1);
    let (upstream, replayed, expired, failed) = done.unwrap();
    assert_eq!(upstream, "r1");
    // SET s1, SET short, 3 INCR, HSET, MSET (2), DEL, 2 SET order, DEL, SET order.
    assert_eq!((replayed, expired, failed), (13, 1, 0));

    // The connection served from memory is closed.
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // The keys are in Redis itself.
    let mut r = TcpStream::connect(("127.0.0.1", pp)).await.unwrap();
    assert_eq!(req(&mut r, &["GET", "s1"]).await, bulk("v1"));
    match req(&mut r, &["TTL", "s1"]).await {
        Reply::Integer(t) => assert!((90..=100).contains(&t), "ttl {t}"),
        other => panic!("TTL: {other:?}"),
    }
    assert_eq!(req(&mut r, &["GET", "counter"]).await, bulk("3"));
    assert_eq!(req(&mut r, &["HGET", "h", "f2"]).await, bulk("b"));
    assert_eq!(req(&mut r, &["GET", "m1"]).await, bulk("1"));
    assert_eq!(
        req(&mut r, &["EXISTS", "m2", "short", "big"]).await,
        Reply::Integer(0)
    );
    assert_eq!(req(&mut r, &["GET", "order"]).await, bulk("c"));

    // New clients go to Redis again.
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        req(&mut c, &["KEYS", "s1"]).await,
        Reply::Array(vec![bulk("s1")])
    );
    engine.shutdown(Duration::from_millis(100)).await;
}
