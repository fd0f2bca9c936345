//! Engine against real redis-server processes: failover on kill -9 with
//! promote, held clients, and the hold timeout error.

use std::time::Duration;

use continuity_proxy::config::{
    EngineConfig, Kind, OnFailover, Role, ServiceConfig, UpstreamConfig,
};
use continuity_proxy::{Command as Cmd, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{free_port, redis};

async fn cmd(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

fn service(p: u16, s: u16, mode: OnFailover) -> ServiceConfig {
    let mut svc = ServiceConfig::new(
        "redis",
        Kind::Redis,
        vec![
            UpstreamConfig::at("r1", &format!("127.0.0.1:{p}"), Role::Primary),
            UpstreamConfig::at("r2", &format!("127.0.0.1:{s}"), Role::Secondary),
        ],
    );
    svc.listen = Some("127.0.0.1:0".parse().unwrap());
    svc.on_failover = mode;
    svc.health.check_interval = Duration::from_millis(100);
    svc.health.failure_threshold = 2;
    svc.health.hold_down = Duration::from_millis(500);
    svc.buffer_timeout = Duration::from_millis(1500);
    svc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_primary_promotes_secondary() {
    let (pp, sp) = (free_port(), free_port());
    let mut primary = redis(pp, None);
    let _secondary = redis(sp, Some(pp));
    let reg = prometheus::Registry::new();
    let engine = Engine::start(
        EngineConfig {
            services: vec![service(pp, sp, OnFailover::Promote)],
            ..Default::default()
        },
        &reg,
    )
    .await
    .unwrap();
    let addr = engine.listen_addrs()[0].1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(cmd(&mut c, "SET k v").await, "+OK\r\n");
    let _ = primary.child.kill();
    let _ = primary.child.wait();
    // The old connection was idle: it is re-attached to the promoted
    // secondary (reattach_idle, on by default for redis), not closed.
    assert_eq!(cmd(&mut c, "PING").await, "+PONG\r\n");
    // A new client never sees an error and can write.
    let mut c2 = TcpStream::connect(addr).await.unwrap();
    assert_eq!(cmd(&mut c2, "SET k2 v2").await, "+OK\r\n");
    let snap = engine.snapshot();
    let s = snap.service("redis").unwrap();
    assert_eq!(s.active_upstream.as_deref(), Some("r2"));
    assert_eq!(s.epoch, 1);
    assert_eq!(s.fenced, vec!["r1".to_string()]);
    // Restart the old primary on its port: it stays fenced and diverged.
    let _old = redis(pp, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = engine
        .apply(Cmd::Recover {
            service: "redis".into(),
            actor: "t".into(),
            reason: "r".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, continuity_proxy::CommandError::NotResynced(_)),
        "{err:?}"
    );
    engine.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_then_answered_then_timeout_error() {
    let (pp, sp) = (free_port(), free_port());
    let reg = prometheus::Registry::new();
    let engine = Engine::start(
        EngineConfig {
            services: vec![service(pp, sp, OnFailover::Route)],
            ..Default::default()
        },
        &reg,
    )
    .await
    .unwrap();
    let addr = engine.listen_addrs()[0].1;
    // Nothing up: PING is held, then answered when a redis comes up.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"PING\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _r = redis(sp, None);
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    drop(_r);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let reply = cmd(&mut c, "PING").await;
    assert!(
        reply.starts_with("-ERR continuity: no upstream available for redis"),
        "{reply}"
    );
    engine.shutdown(Duration::from_millis(100)).await;
}
