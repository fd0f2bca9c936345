//! Engine-level planned switchover and resynchronisation against real
//! redis-server processes: `Command::Resync` turns a diverged old primary
//! into a caught-up replica (then `Failback` is zero-loss), and a
//! switchover to a target that is not replicating from the active one is
//! aborted with traffic left where it was.

use std::time::{Duration, Instant};

use continuity_proxy::config::{
    EngineConfig, Kind, OnFailover, Role, ServiceConfig, UpstreamConfig,
};
use continuity_proxy::{Command as Cmd, CommandError, CommandOutcome, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{free_port, redis};

async fn cmd(addr: impl tokio::net::ToSocketAddrs, line: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

async fn engine(p: u16, s: u16) -> Engine {
    let mut svc = ServiceConfig::new(
        "redis",
        Kind::Redis,
        vec![
            UpstreamConfig::at("r1", &format!("127.0.0.1:{p}"), Role::Primary),
            UpstreamConfig::at("r2", &format!("127.0.0.1:{s}"), Role::Secondary),
        ],
    );
    svc.listen = Some("127.0.0.1:0".parse().unwrap());
    svc.on_failover = OnFailover::Promote;
    svc.health.check_interval = Duration::from_millis(100);
    svc.health.failure_threshold = 2;
    svc.health.hold_down = Duration::from_millis(500);
    svc.buffer_timeout = Duration::from_secs(5);
    let reg = prometheus::Registry::new();
    Engine::start(
        EngineConfig {
            services: vec![svc],
            ..Default::default()
        },
        &reg,
    )
    .await
    .unwrap()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn t(s: &str) -> String {
    s.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_makes_the_old_primary_a_replica_then_failback_is_zero_loss() {
    let (pp, sp) = (free_port(), free_port());
    let mut primary = redis(pp, None);
    let _replica = redis(sp, Some(pp));
    let engine = engine(pp, sp).await;
    let addr = engine.listen_addrs()[0].1;
    wait_for("healthy", || {
        engine.snapshot().services[0].status == continuity_proxy::snapshot::ServiceStatus::Healthy
    })
    .await;
    let _ = primary.child.kill();
    let _ = primary.child.wait();
    assert_eq!(cmd(addr, "SET a 1").await, "+OK\r\n");
    let _old = redis(pp, None);
    wait_for("old primary seen as a diverged primary", || {
        let s = engine.snapshot();
        let u = &s.services[0].upstreams[0];
        u.diverged && u.observed_role == Some(continuity_proxy::health::ObservedRole::Primary)
    })
    .await;

    let err = engine
        .apply(Cmd::Failback {
            pool: t("r1"),
            actor: t("t"),
            reason: t("early"),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::NotResynced(_)), "{err:?}");

    engine
        .apply(Cmd::Resync {
            service: t("redis"),
            actor: t("t"),
            reason: t("resync"),
        })
        .await
        .unwrap();
    let snap = engine.snapshot();
    let u = &snap.services[0].upstreams[0];
    assert!(!u.diverged && !u.fenced, "{u:?}");
    assert_eq!(cmd(("127.0.0.1", pp), "GET a").await, "$1\r\n1\r\n");

    let out = engine
        .apply(Cmd::Failback {
            pool: t("r1"),
            actor: t("t"),
            reason: t("back"),
        })
        .await
        .unwrap();
    let CommandOutcome::Switched {
        service, pause_ms, ..
    } = out
    else {
        panic!("not a switchover outcome");
    };
    assert_eq!(service.active_upstream.as_deref(), Some("r1"));
    assert!(pause_ms < 2000, "{pause_ms}");
    assert_eq!(cmd(addr, "GET a").await, "$1\r\n1\r\n");
    assert!(cmd(("127.0.0.1", sp), "ROLE").await.contains("slave"));
    engine.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_to_a_target_not_replicating_is_aborted() {
    let (pp, sp) = (free_port(), free_port());
    let _primary = redis(pp, None);
    let _other = redis(sp, None); // a primary of its own: never catches up
    let engine = engine(pp, sp).await;
    let addr = engine.listen_addrs()[0].1;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let err = engine
        .apply(Cmd::Switchover {
            pool: t("r1"),
            to: Some(t("r2")),
            actor: t("t"),
            reason: t("planned"),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Conflict(_)), "{err:?}");
    // Refused before anyone was held: no catch-up wait.
    assert!(started.elapsed() < Duration::from_secs(5));
    let snap = engine.snapshot();
    assert_eq!(snap.services[0].active_upstream.as_deref(), Some("r1"));
    // The old primary was unpaused and takes writes again at once.
    assert_eq!(cmd(addr, "SET b 2").await, "+OK\r\n");
    engine.shutdown(Duration::from_millis(100)).await;
}
