//! Probe latency figures (issue 15, item 9): N sequential probes through
//! `health::run_probe` against a real redis-server, a real PostgreSQL 15
//! (trust auth) and an in-test HTTP/1.1 server, all on free ports of
//! 127.0.0.1. Prints the median and p99 of each kind; asserts only that
//! every probe succeeded with the expected role (timings are not asserted:
//! they depend on the machine). Run with `-- --nocapture` to see them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use continuity_proxy::config::{Kind, Role, ServiceConfig, UpstreamConfig};
use continuity_proxy::health::{self, ObservedRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{free_port, Postgres};

const N: usize = 200;

fn service(kind: Kind, up: &UpstreamConfig) -> ServiceConfig {
    let mut s = ServiceConfig::new("svc", kind, vec![up.clone()]);
    s.health.timeout = Duration::from_secs(10);
    s.health.connect_timeout = Duration::from_secs(5);
    s
}

/// Waits for a first good probe, then runs `N` and prints median / p99.
async fn measure(label: &str, kind: Kind, up: &UpstreamConfig, role: Option<ObservedRole>) {
    let svc = service(kind, up);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = health::run_probe(&svc, up).await;
        if out.ok {
            break;
        }
        assert!(Instant::now() < deadline, "{label} never came up: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat = Vec::with_capacity(N);
    for _ in 0..N {
        let out = health::run_probe(&svc, up).await;
        assert!(out.ok, "{label}: {out:?}");
        assert_eq!(out.role, role, "{label}: {out:?}");
        lat.push(out.latency);
    }
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "probe latency {label}: n={N} median={:.3} ms p99={:.3} ms max={:.3} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

#[tokio::test]
async fn redis_probe_latency() {
    let port = free_port();
    let _redis = common::redis(port, None);
    let up = UpstreamConfig::at("u", &format!("127.0.0.1:{port}"), Role::Primary);
    measure("redis", Kind::Redis, &up, Some(ObservedRole::Primary)).await;
}

#[tokio::test]
async fn postgres_probe_latency() {
    let port = free_port();
    let _pg = Postgres::start(port);
    let up = UpstreamConfig::at("u", &format!("127.0.0.1:{port}"), Role::Primary);
    measure("postgres", Kind::Postgres, &up, Some(ObservedRole::Primary)).await;
}

#[tokio::test]
async fn http_probe_latency() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"status":"green"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let up = UpstreamConfig::url("u", &format!("http://{addr}"), Role::Primary);
    measure("http", Kind::Http, &up, None).await;
    measure("elasticsearch", Kind::Elasticsearch, &up, None).await;
}
