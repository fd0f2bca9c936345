//! `multiplex = true` (redis, issue #16): clients' commands share one
//! upstream connection. Real redis-server pairs, a real
//! kill -9, raw RESP clients: every client gets its own replies in order
//! (pipelined, large values, many at once), the server sees a handful of
//! connections instead of one per client, commands that would hold the
//! shared connection are refused without harming it, AUTH is checked by
//! the proxy, and an idle client carries on across a failover.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::continuity::Continuity;
use support::redis::{bulk, encode, ok, RespConn};
use support::writer::{assert_all_present, wait_writes, Writer};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 1\nconnect_timeout_ms = 300";

fn engine(pair: &RedisPair, cred: &str) -> (Continuity, String) {
    engine_on(&pair.primary, &pair.replica, cred)
}

fn engine_on(primary: &RedisServer, replica: &RedisServer, cred: &str) -> (Continuity, String) {
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "cache"
kind = "redis"
listen = "{listen}"
on_failover = "promote"
buffer_timeout_ms = 10000
multiplex = true
upstreams = [
  {{ name = "cache-a", address = "{p}", role = "primary"{cred} }},
  {{ name = "cache-b", address = "{r}", role = "secondary"{cred} }},
]"#,
            p = primary.addr(),
            r = replica.addr()
        ))
        .start();
    assert!(
        wait_until(Duration::from_secs(15), || {
            engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
        }),
        "never healthy:\n{}",
        engine.log_text()
    );
    (engine, listen)
}

fn refused(r: Resp, what: &str) {
    assert!(
        matches!(&r, Resp::Error(e) if e.contains("not supported on a multiplexed connection")),
        "{what}: {r:?}"
    );
}

/// Clients of the primary, by `INFO clients` (replicas are not counted).
fn connected_clients(server: &RedisServer) -> usize {
    server
        .info("clients")
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

#[test]
fn many_clients_share_one_upstream_connection_and_each_gets_its_own_replies() {
    let pair = RedisPair::start();
    let (engine, listen) = engine(&pair, "");
    let before = connected_clients(&pair.primary);

    // 40 clients at once, each writing and reading back its own keys, one
    // command at a time and in pipelined bursts of 8.
    let clients: Vec<_> = (0..40)
        .map(|c| {
            let listen = listen.clone();
            std::thread::spawn(move || {
                let mut conn = RespConn::open(&listen);
                for round in 0..50 {
                    let key = format!("k{c}:{round}");
                    let value = format!("v{c}:{round}");
                    ok(conn.call(&["SET", &key, &value]));
                    assert_eq!(bulk(conn.call(&["GET", &key])), value);
                    let mut burst = Vec::new();
                    for i in 0..8 {
                        burst.extend(encode(&["INCR", &format!("n{c}")]));
                        burst.extend(encode(&["GET", &format!("k{c}:{}", round.min(i))]));
                    }
                    conn.r.get_mut().write_all(&burst).expect("burst");
                    for i in 0..8 {
                        let n = match conn.reply() {
                            Resp::Int(n) => n,
                            other => panic!("INCR: {other:?}"),
                        };
                        assert_eq!(n, round * 8 + i + 1);
                        assert_eq!(bulk(conn.reply()), format!("v{c}:{}", round.min(i)));
                    }
                }
                conn
            })
        })
        .collect();
    let mut conns: Vec<RespConn> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    // All 40 still connected: the server has one connection for them, not
    // 40 (plus, at either count, perhaps a probe's).
    let during = connected_clients(&pair.primary);
    assert!(
        during <= before + 2,
        "{during} clients on the primary with 40 multiplexed clients (before: {before})"
    );

    // A 3 MiB value, pipelined between small commands of another client.
    let big = "x".repeat(3 * 1024 * 1024);
    let (first, rest) = conns.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut rest[0]);
    a.send(&["SET", "big", &big]);
    b.send(&["PING"]);
    ok(a.reply());
    assert!(matches!(b.reply(), Resp::Simple(s) if s == "PONG"));
    a.send(&["GET", "big"]);
    a.send(&["STRLEN", "big"]);
    b.send(&["GET", "k0:0"]);
    assert_eq!(bulk(a.reply()).len(), big.len());
    assert!(matches!(a.reply(), Resp::Int(n) if n == big.len() as i64));
    assert_eq!(bulk(b.reply()), "v0:0");
    // Inline commands are sent as arrays.
    a.r.get_mut()
        .write_all(b"PING\r\nGET k1:0\r\n")
        .expect("inline");
    assert!(matches!(a.reply(), Resp::Simple(s) if s == "PONG"));
    assert_eq!(bulk(a.reply()), "v1:0");

    // Each command is timed in the request path, as on a relay.
    let timed = engine
        .metrics()
        .lines()
        .find(|l| {
            l.starts_with("continuity_inline_latency_seconds_count{")
                && l.contains("phase=\"response\"")
                && l.contains("upstream=\"cache-a\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(timed >= 40.0 * 50.0 * 18.0, "{timed} commands timed");
}

#[test]
fn commands_that_would_hold_the_shared_connection_are_refused_and_it_goes_on() {
    let pair = RedisPair::start();
    let (_engine, listen) = engine(&pair, "");
    let mut other = RespConn::open(&listen);
    ok(other.call(&["SET", "shared", "1"]));

    let mut c = RespConn::open(&listen);
    refused(c.call(&["MULTI"]), "MULTI");
    refused(c.call(&["WATCH", "k"]), "WATCH");
    refused(c.call(&["BLPOP", "nothing", "0"]), "BLPOP");
    refused(
        c.call(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
        "XREAD BLOCK",
    );
    refused(c.call(&["SUBSCRIBE", "ch"]), "SUBSCRIBE");
    refused(c.call(&["CLIENT", "KILL", "TYPE", "normal"]), "CLIENT KILL");
    refused(c.call(&["HELLO", "3"]), "HELLO");
    refused(c.call(&["SELECT", "1"]), "SELECT 1");
    ok(c.call(&["SELECT", "0"]));
    // A refusal queued behind replies in flight comes after them.
    let mut burst = encode(&["GET", "shared"]);
    burst.extend(encode(&["MULTI"]));
    burst.extend(encode(&["GET", "shared"]));
    c.r.get_mut().write_all(&burst).expect("burst");
    assert_eq!(bulk(c.reply()), "1");
    refused(c.reply(), "MULTI after GET");
    assert_eq!(bulk(c.reply()), "1");
    // PUBLISH is fine (it holds nothing).
    assert!(matches!(c.call(&["PUBLISH", "ch", "m"]), Resp::Int(0)));

    // A malformed command is a protocol error for its client only: told,
    // closed, and never sent to the shared connection.
    let mut bad = RespConn::open(&listen);
    bad.r
        .get_mut()
        .write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nab\r\n")
        .expect("send");
    assert!(matches!(bad.reply(), Resp::Error(e) if e.contains("Protocol error")));
    assert!(bad.closed());
    let mut quote = RespConn::open(&listen);
    quote.r.get_mut().write_all(b"GET \"a\r\n").expect("send");
    assert!(matches!(quote.reply(), Resp::Error(e) if e.contains("quotes")));
    assert!(matches!(quote.call(&["PING"]), Resp::Simple(s) if s == "PONG"));
    assert_eq!(bulk(other.call(&["GET", "shared"])), "1");
    assert_eq!(bulk(c.call(&["GET", "shared"])), "1");
    // QUIT: +OK, then closed.
    ok(c.call(&["QUIT"]));
    assert!(c.closed());
}

#[test]
fn auth_is_checked_by_the_proxy_against_the_upstream_password() {
    const ENV: &str = "CONTINUITY_TEST_MUX_REDIS_PW";
    const PW: &str = "s3cret-mux";
    std::env::set_var(ENV, PW);
    let a = RedisServer::with_args(&["--requirepass", PW]).start();
    let b = RedisServer::with_args(&["--requirepass", PW]).start();
    let (_engine, listen) = engine_on(&a, &b, &format!(", password_env = \"{ENV}\""));
    let mut c = RespConn::open(&listen);
    assert!(matches!(c.call(&["GET", "k"]), Resp::Error(e) if e.starts_with("NOAUTH")));
    assert!(matches!(c.call(&["AUTH", "wrong"]), Resp::Error(e) if e.starts_with("WRONGPASS")));
    assert!(matches!(c.call(&["SET", "k", "v"]), Resp::Error(e) if e.starts_with("NOAUTH")));
    ok(c.call(&["AUTH", PW]));
    ok(c.call(&["SET", "k", "v"]));
    // A failed AUTH later does not undo the first, as on Redis.
    assert!(matches!(c.call(&["AUTH", "wrong"]), Resp::Error(e) if e.starts_with("WRONGPASS")));
    assert_eq!(bulk(c.call(&["GET", "k"])), "v");
    let mut d = RespConn::open(&listen);
    ok(d.call(&["AUTH", "default", PW]));
    assert_eq!(bulk(d.call(&["GET", "k"])), "v");
}

#[test]
fn idle_clients_carry_on_across_a_kill_9_and_a_new_client_is_held_then_served() {
    let mut pair = RedisPair::start();
    let (engine, listen) = engine(&pair, "");
    let mut idle: Vec<RespConn> = (0..10)
        .map(|i| {
            let mut c = RespConn::open(&listen);
            ok(c.call(&["SET", &format!("pre{i}"), "v"]));
            c
        })
        .collect();
    // Everything written so far is on the replica before the kill (the
    // replication stream is in order: the last write is enough). WAIT on
    // a connection of its own would not say so: it waits for that
    // connection's writes only.
    assert!(wait_until(Duration::from_secs(10), || {
        pair.replica.cmd(&["GET", "pre9"]).ok().as_deref() == Some("v")
    }));
    pair.primary.kill();
    // A client that connects and sends during the outage is held, then
    // answered by the promoted replica: no error.
    let held = {
        let listen = listen.clone();
        std::thread::spawn(move || {
            let mut c = RespConn::open(&listen);
            c.call(&["SET", "during", "1"])
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"] == "cache-b"
        }),
        "no failover:\n{}",
        engine.log_text()
    );
    ok(held.join().expect("held client"));
    for (i, c) in idle.iter_mut().enumerate() {
        assert_eq!(bulk(c.call(&["GET", &format!("pre{i}")])), "v");
        ok(c.call(&["SET", &format!("post{i}"), "w"]));
    }
    assert_eq!(
        pair.replica
            .cmd(&["GET", "post9"])
            .expect("on the new primary"),
        "w"
    );
    assert_eq!(
        pair.replica.cmd(&["GET", "during"]).expect("held write"),
        "1"
    );
}

#[test]
fn a_client_that_does_not_read_its_replies_holds_up_no_one_and_is_closed_past_64_mib() {
    let pair = RedisPair::start();
    let (_engine, listen) = engine(&pair, "");
    let mut setter = RespConn::open(&listen);
    ok(setter.call(&["SET", "big", &"y".repeat(1024 * 1024)]));
    // 100 replies of 1 MiB asked for at once, none read yet.
    let mut slow = RespConn::open(&listen);
    let mut burst = Vec::new();
    for _ in 0..100 {
        burst.extend(encode(&["GET", "big"]));
    }
    slow.r.get_mut().write_all(&burst).expect("burst");
    // Everyone else is served meanwhile, on the same shared connection.
    // For 5 s, long enough for the proxy to have read all 100 MiB from
    // the server.
    let mut other = RespConn::open(&listen);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while std::time::Instant::now() < until {
        ok(other.call(&["SET", &format!("o{i}"), "v"]));
        assert_eq!(bulk(other.call(&["GET", &format!("o{i}")])), "v");
        i += 1;
    }
    // The slow client gets what fitted, then is closed, as Redis closes a
    // client past its output buffer limit.
    let mut got = 0usize;
    let mut b = vec![0u8; 1 << 20];
    loop {
        match slow.r.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < 100 * 1024 * 1024,
        "{got} bytes: every reply was kept for a client that did not read"
    );
    assert!(matches!(other.call(&["PING"]), Resp::Simple(s) if s == "PONG"));
}

#[test]
fn a_planned_switchover_and_back_loses_no_acknowledged_write_of_multiplexed_writers() {
    let pair = RedisPair::start();
    let (engine, listen) = engine(&pair, "");
    // Four writers share the thread's upstream connections.
    let writers: Vec<Writer> = (0..4)
        .map(|w| Writer::start(&listen, &format!("w{w}")))
        .collect();
    for w in &writers {
        wait_writes(w, 50);
    }
    for (path, now_on) in [
        ("/api/ops/redundancy/failover/cache-a", "cache-b"),
        ("/api/ops/redundancy/failback/cache-a", "cache-a"),
    ] {
        let (code, body) = engine.post(path, r#"{"reason":"planned maintenance"}"#);
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(
            engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"],
            now_on
        );
        for w in &writers {
            wait_writes(w, 50);
        }
    }
    let server = &pair.primary;
    assert!(server.info("replication").contains("role:master"));
    for (i, w) in writers.into_iter().enumerate() {
        let (acked, retries, refused) = w.finish();
        assert!(refused.is_empty(), "writer {i} was refused: {refused:?}");
        // At most a write in flight at each switch costs a reconnect.
        assert!(retries <= 2, "writer {i}: {retries} reconnects");
        assert_all_present(server, &format!("w{i}"), &acked);
    }
}

/// Commands pipelined in one write share one queue slot (upstream.rs):
/// when no upstream comes within `buffer_timeout_ms`, each of them still
/// gets its own error, in order, and the client goes on once one is back.
#[test]
fn pipelined_commands_held_past_the_buffer_timeout_each_get_their_error() {
    let mut redis = RedisServer::start();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "cache"
kind = "redis"
listen = "{listen}"
buffer_timeout_ms = 800
multiplex = true
upstreams = [ {{ name = "cache-a", address = "{a}", role = "primary" }} ]"#,
            a = redis.addr()
        ))
        .start();
    let status = || {
        engine.get("/api/ops/health").1["services"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(wait_until(Duration::from_secs(15), || status() == "healthy"));
    redis.kill();
    assert!(wait_until(Duration::from_secs(15), || status() == "down"));

    let mut c = std::net::TcpStream::connect(&listen).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut burst = Vec::new();
    for key in ["a", "b", "c"] {
        burst.extend_from_slice(&encode(&["GET", key]));
    }
    c.write_all(&burst).expect("write");
    let mut r = std::io::BufReader::new(c.try_clone().expect("clone"));
    for i in 0..3 {
        let reply = support::redis::read_reply(&mut r).expect("reply");
        assert!(
            matches!(&reply, Resp::Error(e) if e.contains("no upstream available for cache")),
            "reply {i}: {reply:?}"
        );
    }

    redis.restart();
    assert!(wait_until(Duration::from_secs(15), || status() == "healthy"));
    c.write_all(&encode(&["PING"])).expect("write");
    assert_eq!(
        support::redis::read_reply(&mut r).expect("reply"),
        Resp::Simple("PONG".into())
    );
}

/// One write holding every kind of step the command side takes: commands
/// forwarded together, an inline command, an empty line, a refusal and an
/// answer given here behind replies in flight, a slow command inside the
/// run (timed on its own, by name), and QUIT at the end.
#[test]
fn one_write_of_mixed_commands_is_answered_in_order_and_timed_per_command() {
    let pair = RedisPair::start_with_args(&["--enable-debug-command", "yes"]);
    let (engine, listen) = engine(&pair, "");
    let mut c = RespConn::open(&listen);
    let mut burst = Vec::new();
    burst.extend(encode(&["SET", "mixed", "1"]));
    burst.extend(encode(&["DEBUG", "SLEEP", "0.3"]));
    burst.extend_from_slice(b"PING\r\n\r\n");
    burst.extend(encode(&["INCR", "mixed"]));
    burst.extend(encode(&["MULTI"]));
    burst.extend(encode(&["SELECT", "0"]));
    burst.extend(encode(&["GET", "mixed"]));
    burst.extend(encode(&["QUIT"]));
    c.r.get_mut().write_all(&burst).expect("burst");
    ok(c.reply());
    ok(c.reply());
    assert_eq!(c.reply(), Resp::Simple("PONG".into()));
    assert_eq!(c.reply(), Resp::Int(2));
    refused(c.reply(), "MULTI in a pipeline");
    ok(c.reply());
    assert_eq!(bulk(c.reply()), "2");
    ok(c.reply());
    assert!(c.closed());

    // The observer saw each command of the run by name. The four sent
    // before the sleep's reply are all slow: Redis answers a pipeline's
    // commands after the sleep, in one write (as it would to a direct
    // client); the GET sent after that is not.
    let mut slow = serde_json::Value::Null;
    assert!(wait_until(Duration::from_secs(5), || {
        slow = engine
            .get("/api/ops/diagnostics/slow-queries?service=cache")
            .1;
        slow["slow_queries"]
            .as_array()
            .is_some_and(|q| q.len() >= 4)
    }));
    let mut statements: Vec<&str> = slow["slow_queries"]
        .as_array()
        .map(|q| q.iter().filter_map(|s| s["statement"].as_str()).collect())
        .unwrap_or_default();
    statements.sort_unstable();
    assert_eq!(
        statements,
        ["DEBUG SLEEP ?", "INCR ?", "PING", "SET ? ?"],
        "{slow}"
    );
}
