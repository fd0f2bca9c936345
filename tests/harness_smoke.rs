//! Proves the test harness in `tests/support` works: the servers are real,
//! replicate, die on SIGKILL and come back on the same port.
//! Start times are printed (`cargo test --test harness_smoke -- --nocapture`).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ports.len(),
        "free_port handed out a port twice"
    );
    let listener = std::net::TcpListener::bind(loopback(ports[0])).expect("bind a free port");
    assert!(wait_for_port(&loopback(ports[0]), Duration::from_secs(1)));
    drop(listener);
    assert!(wait_for_port_closed(
        &loopback(ports[0]),
        Duration::from_secs(1)
    ));
}

#[test]
fn child_guard_kills_on_drop() {
    let guard = ChildGuard::spawn("sleep", Command::new("sleep").arg("60"));
    let pid = guard.pid().expect("a running child has a pid");
    assert!(pid_alive(pid));
    drop(guard);
    assert!(!pid_alive(pid), "child {pid} survived its guard");
}

#[test]
fn redis_pair_replicates_a_key() {
    let t = Instant::now();
    let pair = RedisPair::start();
    eprintln!("redis pair started in {:?}", t.elapsed());

    assert_eq!(
        redis_cmd(&pair.primary.addr(), &["SET", "k", "v"]).expect("SET"),
        "OK"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            pair.replica.cmd(&["GET", "k"]).ok().as_deref() == Some("v")
        }),
        "the replica never saw k"
    );
    assert!(matches!(
        pair.primary.cmd(&["GET", "missing"]),
        Err(RedisError::Nil)
    ));
    assert!(matches!(
        pair.replica.cmd(&["SET", "k", "w"]),
        Err(RedisError::Server(msg)) if msg.starts_with("READONLY")
    ));

    pair.replica.promote();
    assert_eq!(
        pair.replica
            .cmd(&["SET", "k", "w"])
            .expect("SET after promote"),
        "OK"
    );
}

#[test]
fn redis_kill_refuses_and_restart_reuses_the_port() {
    let mut redis = RedisServer::with_args(&["--requirepass", "secret"]).start();
    let (port, pid) = (redis.port(), redis.pid());
    assert!(matches!(
        redis.cmd(&["PING"]),
        Err(RedisError::Server(msg)) if msg.starts_with("NOAUTH")
    ));

    redis.kill();
    assert!(!pid_alive(pid), "redis {pid} survived SIGKILL");
    assert!(!port_is_open(&redis.addr()), "port {port} still accepts");
    assert!(matches!(redis.cmd(&["PING"]), Err(RedisError::Io(_))));

    redis.restart();
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), pid);
    assert!(port_is_open(&redis.addr()));
    assert!(redis.log_path().exists());
}

#[test]
fn pg_pair_streams_dies_and_restarts() {
    let t = Instant::now();
    let mut pg = PgPair::start();
    eprintln!("postgres pair started in {:?}", t.elapsed());

    assert_eq!(pg.primary.psql("SELECT pg_is_in_recovery()"), "f");
    assert!(
        pg.standby.is_in_recovery(),
        "the standby is not in recovery"
    );
    psql(
        pg.primary_port(),
        "CREATE TABLE harness (x text); INSERT INTO harness VALUES ('written on primary')",
    );
    pg.wait_for_standby_to_catch_up();
    assert_eq!(
        psql(pg.standby_port(), "SELECT x FROM harness"),
        "written on primary"
    );
    assert!(try_psql(pg.standby_port(), "INSERT INTO harness VALUES ('no')").is_err());

    let postmaster = pg.primary.pid();
    let t = Instant::now();
    pg.kill_primary();
    eprintln!("postgres primary killed in {:?}", t.elapsed());
    assert!(!pid_alive(postmaster));
    assert!(!port_is_open(&pg.primary.addr()));
    assert!(try_psql(pg.primary_port(), "SELECT 1").is_err());

    let t = Instant::now();
    pg.restart_primary();
    eprintln!("postgres primary restarted in {:?}", t.elapsed());
    assert_eq!(psql(pg.primary_port(), "SELECT count(*) FROM harness"), "1");

    pg.promote_standby();
    assert_eq!(pg.standby.psql("SELECT pg_is_in_recovery()"), "f");
}

#[test]
fn arcadedb_answers_the_bolt_handshake() {
    let t = Instant::now();
    let Some(mut neo) = ArcadeDb::start_or_skip("arcadedb_answers_the_bolt_handshake") else {
        return;
    };
    eprintln!("arcadedb started in {:?}", t.elapsed());

    let version = bolt_handshake(&neo.bolt_addr()).expect("bolt handshake");
    assert_eq!(
        version >> 8 & 0xff,
        4,
        "ArcadeDB negotiates Bolt 5.4 (0x{version:08x})"
    );
    assert_eq!(
        version & 0xff,
        5,
        "ArcadeDB negotiates Bolt 5.4 (0x{version:08x})"
    );

    let pid = neo.pid();
    neo.kill();
    assert!(!pid_alive(pid));
    assert!(bolt_handshake(&neo.bolt_addr()).is_err());
}
