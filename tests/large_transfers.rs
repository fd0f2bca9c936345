//! Large answers through the relay: a 20 MB PostgreSQL result and a 20 MB
//! Redis value reach the client whole. Both used to hang with the proxy's
//! L4 thread at 100 % CPU: once a connection's task had used up tokio's
//! cooperative budget, a read through `read_now` answered "nothing yet"
//! without reading, `readable()` still answered "ready", and the relay
//! looped between the two without ever yielding (listener/relay.rs).

mod support;

use std::io::{Read, Write};
use std::sync::mpsc::channel;
use std::time::Duration;

use support::continuity::Continuity;
use support::*;

/// Longest a transfer may take here (it takes well under a second).
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_20_mb_postgres_result_is_relayed_whole() {
    let pg = PgServer::start();
    let port = free_port();
    let engine = Continuity::builder()
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "127.0.0.1:{port}"
upstreams = [ {{ name = "pg-a", address = "{a}", role = "primary", user = "postgres" }} ]"#,
            a = pg.addr()
        ))
        .start();
    for rows in [2_000, 20_000] {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let sql = format!("SELECT g, repeat('v', 1000) FROM generate_series(1, {rows}) g");
            let _ = tx.send(try_psql(port, &sql));
        });
        let out = rx
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| {
                panic!("{rows} rows: no answer in {LIMIT:?}\n{}", engine.log_text())
            })
            .unwrap_or_else(|e| panic!("{rows} rows: {e}\n{}", engine.log_text()));
        assert_eq!(out.lines().count(), rows, "{rows} rows");
        assert!(out.lines().all(|l| l.ends_with(&"v".repeat(1000))));
    }
}

#[test]
fn a_20_mb_redis_value_is_relayed_whole() {
    let redis = RedisServer::start();
    let port = free_port();
    let engine = Continuity::builder()
        .service(&format!(
            r#"name = "cache"
kind = "redis"
listen = "127.0.0.1:{port}"
upstreams = [ {{ name = "cache-a", address = "{a}", role = "primary" }} ]"#,
            a = redis.addr()
        ))
        .start();
    let value: Vec<u8> = (0..20 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let expected = value.clone();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let run = || -> std::io::Result<Vec<u8>> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(LIMIT))?;
            let mut cmd =
                format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).into_bytes();
            cmd.extend_from_slice(&value);
            cmd.extend_from_slice(b"\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
            s.write_all(&cmd)?;
            let header = format!("+OK\r\n${}\r\n", value.len());
            let mut got = vec![0u8; header.len() + value.len() + 2];
            s.read_exact(&mut got)?;
            Ok(got)
        };
        let _ = tx.send(run());
    });
    let got = rx
        .recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("no answer in {LIMIT:?}\n{}", engine.log_text()))
        .unwrap_or_else(|e| panic!("{e}\n{}", engine.log_text()));
    let header = format!("+OK\r\n${}\r\n", expected.len());
    assert!(got.starts_with(header.as_bytes()), "{:?}", got.get(..40));
    assert!(got.get(header.len()..header.len() + expected.len()) == Some(&expected[..]));
    assert!(got.ends_with(b"\r\n"));
}
