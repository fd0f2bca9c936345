//! Shared checks for the three observers: a conversation replayed whole,
//! split at every byte, and byte by byte gives the same findings; random
//! and mutated bytes never panic; and the [`Tap`] wrapper.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::normalize::{mask, Dialect};
use super::*;

/// Slow-query threshold used by the replays.
pub(super) const SLOW: Duration = Duration::from_millis(100);

pub(super) trait Parser: Default {
    fn client(&mut self, data: &[u8], out: &mut Out) -> Result<(), Stop>;
    fn server(&mut self, data: &[u8], out: &mut Out) -> Result<(), Stop>;
}

macro_rules! parser {
    ($t:ty) => {
        impl Parser for $t {
            fn client(&mut self, data: &[u8], out: &mut Out) -> Result<(), Stop> {
                <$t>::client(self, data, out)
            }
            fn server(&mut self, data: &[u8], out: &mut Out) -> Result<(), Stop> {
                <$t>::server(self, data, out)
            }
        }
    };
}
parser!(pg::Pg);
parser!(resp::Resp);
parser!(bolt::Bolt);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    C,
    S,
}

/// One write of a conversation: who, when (ms from the start), what.
pub(super) struct Step(pub Side, pub u64, pub Vec<u8>);

/// Replays `steps`, each write cut into pieces by `split`.
pub(super) fn play<P: Parser>(
    steps: &[Step],
    split: &dyn Fn(&[u8]) -> Vec<Vec<u8>>,
) -> (P, Result<(), Stop>, Vec<Finding>) {
    let t0 = Instant::now();
    let mut p = P::default();
    let mut findings = Vec::new();
    for Step(side, at, data) in steps {
        for piece in split(data) {
            let mut out = Out::new(t0 + Duration::from_millis(*at), SLOW);
            let r = match side {
                Side::C => p.client(&piece, &mut out),
                Side::S => p.server(&piece, &mut out),
            };
            findings.extend(out.findings);
            if r.is_err() {
                return (p, r, findings);
            }
        }
    }
    (p, Ok(()), findings)
}

/// The conversation gives `expected` whole, split at every offset of
/// every write, and fed byte by byte.
pub(super) fn check_splits<P: Parser>(steps: &[Step], expected: &[Finding]) {
    let whole = play::<P>(steps, &|d| vec![d.to_vec()]);
    assert_eq!(whole.1, Ok(()));
    assert_eq!(whole.2, expected);
    let bytes = play::<P>(steps, &|d| d.iter().map(|b| vec![*b]).collect());
    assert_eq!(bytes.1, Ok(()), "byte by byte");
    assert_eq!(bytes.2, expected, "byte by byte");
    let longest = steps.iter().map(|s| s.2.len()).max().unwrap_or(0);
    for k in 0..=longest {
        let split = move |d: &[u8]| {
            let k = k.min(d.len());
            vec![d[..k].to_vec(), d[k..].to_vec()]
        };
        let r = play::<P>(steps, &split);
        assert_eq!(r.1, Ok(()), "split at {k}");
        assert_eq!(r.2, expected, "split at {k}");
    }
}

pub(super) fn slow(statement: &str, ms: u64, command_kind: &'static str) -> Finding {
    Finding::SlowQuery {
        statement: statement.to_string(),
        duration: Duration::from_millis(ms),
        command_kind,
    }
}

/// A small deterministic generator (xorshift64*).
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Random bytes on both sides: no panic, and the observer ends off.
pub(super) fn random_turns_off(kind: Kind) {
    for seed in 1..300u64 {
        let mut rng = Rng::new(seed);
        let tap = Tap::new(kind, SLOW).unwrap();
        for _ in 0..64 {
            let n = (rng.next() % 512) as usize + 1;
            let data = rng.bytes(n);
            if rng.next() & 1 == 0 {
                tap.client(&data);
            } else {
                tap.server(&data);
            }
        }
        assert!(
            tap.is_off(),
            "{kind:?} seed {seed}: random bytes left the observer on"
        );
    }
}

/// A valid conversation with random bytes flipped: never panics.
pub(super) fn mutations_never_panic<P: Parser>(steps: &[Step]) {
    for seed in 1..500u64 {
        let mut rng = Rng::new(seed);
        let mutated: Vec<Step> = steps
            .iter()
            .map(|Step(side, at, data)| {
                let mut data = data.clone();
                for _ in 0..(rng.next() % 3) {
                    if !data.is_empty() {
                        let i = (rng.next() as usize) % data.len();
                        data[i] = rng.next() as u8;
                    }
                }
                Step(*side, *at, data)
            })
            .collect();
        let cut = (rng.next() % 7) as usize + 1;
        let _ = play::<P>(&mutated, &|d| d.chunks(cut).map(<[u8]>::to_vec).collect());
    }
}

#[test]
fn tap_is_none_when_off_or_not_a_statement_protocol() {
    assert!(Tap::new(Kind::Redis, Duration::ZERO).is_none());
    assert!(Tap::new(Kind::Tcp, SLOW).is_none());
    assert!(Tap::new(Kind::Http, SLOW).is_none());
    assert!(Tap::new(Kind::Postgres, SLOW).is_some());
}

#[test]
fn tap_reports_a_stop_once_and_then_costs_nothing() {
    let tap = Tap::new(Kind::Redis, SLOW).unwrap();
    let f = tap.server(b"+OK\r\n");
    assert_eq!(
        f,
        vec![Finding::Stopped {
            reason: "resp: reply without a command"
        }]
    );
    assert!(tap.is_off());
    assert!(tap.server(b"+OK\r\n").is_empty());
    assert!(tap.client(b"*1\r\n$4\r\nPING\r\n").is_empty());
}

#[test]
fn tap_times_real_time() {
    let tap = Tap::new(Kind::Redis, Duration::from_millis(20)).unwrap();
    assert!(tap
        .client(b"*3\r\n$5\r\ndebug\r\n$5\r\nsleep\r\n$4\r\n0.03\r\n")
        .is_empty());
    std::thread::sleep(Duration::from_millis(30));
    match tap.server(b"+OK\r\n").as_slice() {
        [Finding::SlowQuery {
            statement,
            duration,
            command_kind: "command",
        }] => {
            assert_eq!(statement, "DEBUG SLEEP ?");
            assert!(*duration >= Duration::from_millis(30));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tap_limits_upstream_errors_per_connection() {
    let tap = Tap::new(Kind::Redis, SLOW).unwrap();
    let mut errors = 0;
    for _ in 0..10 {
        tap.client(b"SET k v\r\n");
        errors += tap
            .server(b"-READONLY You can't write against a read only replica.\r\n")
            .len();
    }
    assert_eq!(errors, usize::from(ERROR_BUDGET));
    assert!(!tap.is_off());
}

#[test]
fn tap_after_tls_is_quietly_off() {
    let tap = Tap::new(Kind::Postgres, SLOW).unwrap();
    assert!(tap.client(&[0, 0, 0, 8, 4, 210, 22, 47]).is_empty());
    assert!(tap.server(b"S").is_empty());
    assert!(tap.is_off());
}

#[test]
fn normalizes_sql() {
    let cases = [
        ("SELECT pg_sleep(0.6)", "SELECT pg_sleep(?)"),
        (
            "select * from t where a = 'it''s' and b = 42 and c = -1.5e3",
            "select * from t where a = ? and b = ? and c = -?",
        ),
        (
            "SELECT E'a\\'b', e'x' , $$dollar ' quoted$$, $tag$x$tag$ FROM t1",
            "SELECT ?, ? , ?, ? FROM t1",
        ),
        (
            "SELECT x'1F', B'0101', N'nat', U&'d\\0061t'",
            "SELECT ?, ?, ?, ?",
        ),
        (
            "SELECT $1::int + 42, col2, t.x3",
            "SELECT $1::int + ?, col2, t.x3",
        ),
        (
            "SELECT \"Quoted 1\" FROM \"t\"\"2\"",
            "SELECT \"Quoted 1\" FROM \"t\"\"2\"",
        ),
        (
            "SELECT 1 -- secret 123\n , 2 /* x 'y' */ ,.5",
            "SELECT ? , ? ,?",
        ),
        (
            "  INSERT  INTO t\n\tVALUES (1, 2.0, 0x1F, 'a')  ",
            "INSERT INTO t VALUES (?, ?, ?, ?)",
        ),
        ("SELECT 'unterminated", "SELECT ?"),
        ("SELECT $$never closed", "SELECT ?"),
        ("SELECT a$1, $x", "SELECT a$1, $x"),
    ];
    for (raw, want) in cases {
        assert_eq!(mask(raw.as_bytes(), Dialect::Sql), want, "{raw}");
    }
}

#[test]
fn normalizes_cypher() {
    let cases = [
        (
            "UNWIND range(1, 3000000) AS x RETURN count(x)",
            "UNWIND range(?, ?) AS x RETURN count(x)",
        ),
        (
            "CREATE (n:Person {name: 'Ann', nick: \"A\\\"n\", age: 42}) RETURN n",
            "CREATE (n:Person {name: ?, nick: ?, age: ?}) RETURN n",
        ),
        (
            "MATCH (n:`Odd 1`) WHERE n.x = $p1 AND n.y = 1.5 // c 7\nRETURN n",
            "MATCH (n:`Odd 1`) WHERE n.x = $p1 AND n.y = ? RETURN n",
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(mask(raw.as_bytes(), Dialect::Cypher), want, "{raw}");
    }
}

#[test]
fn normalization_is_bounded_and_never_panics() {
    let long = format!("SELECT {}", "abc, ".repeat(1000));
    let out = mask(long.as_bytes(), Dialect::Sql);
    assert!(out.len() <= normalize::MAX_STATEMENT, "{}", out.len());
    assert!(out.ends_with("..."));
    let utf8 = format!("SELECT '{}' , é{}", "x", "é".repeat(2000));
    assert!(mask(utf8.as_bytes(), Dialect::Sql).len() <= normalize::MAX_STATEMENT);
    let mut rng = Rng::new(7);
    for n in 0..2000 {
        let data = rng.bytes(n % 300);
        let _ = mask(&data, Dialect::Sql);
        let _ = mask(&data, Dialect::Cypher);
        let _ = normalize::looks_like_write(&data);
    }
}

#[test]
fn redis_statements() {
    use normalize::redis_command;
    assert_eq!(redis_command(b"DEBUG", Some(b"SLEEP"), 1), "DEBUG SLEEP ?");
    assert_eq!(redis_command(b"GET", None, 1), "GET ?");
    assert_eq!(redis_command(b"PING", None, 0), "PING");
    let many = redis_command(b"MSET", None, 100_000);
    assert!(many.len() <= normalize::MAX_STATEMENT && many.ends_with("..."));
}

#[test]
fn writes_are_recognised() {
    use normalize::looks_like_write;
    assert!(looks_like_write(b"CREATE (n)"));
    assert!(looks_like_write(b"match (n) detach delete n"));
    assert!(looks_like_write(b"MATCH (n) SET n.x = 1"));
    assert!(!looks_like_write(b"MATCH (n) RETURN n.offset, 'CREATE'"));
    assert!(!looks_like_write(b"RETURN 1 // MERGE"));
    assert!(!looks_like_write(b"MATCH (n:`SET`) RETURN n"));
}

fn pg(tag: u8, body: &[u8]) -> Vec<u8> {
    [&[tag][..], &((body.len() + 4) as u32).to_be_bytes(), body].concat()
}

/// Parser cost per request/answer pair, through the [`Tap`] as the relay
/// calls it (one chunk each way). `cargo test --release -p
/// continuity-proxy --lib observe::tests::parser_cost -- --ignored --nocapture`
#[test]
#[ignore = "a micro-benchmark"]
fn parser_cost() {
    let set = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000001234\r\n$3\r\nxxx\r\n".to_vec();
    let pipelined: Vec<u8> = set.iter().copied().cycle().take(set.len() * 16).collect();
    // name, kind, startup (client), request, answer, requests per request.
    type Case = (&'static str, Kind, Vec<u8>, Vec<u8>, Vec<u8>, u32);
    let cases: [Case; 3] = [
        (
            "redis SET",
            Kind::Redis,
            vec![],
            set.clone(),
            b"+OK\r\n".to_vec(),
            1,
        ),
        (
            "redis SET x16",
            Kind::Redis,
            vec![],
            pipelined,
            b"+OK\r\n".repeat(16),
            16,
        ),
        (
            "postgres Q",
            Kind::Postgres,
            [&[0u8, 0, 0, 16, 0, 3, 0, 0][..], b"user\0u\0\0"].concat(),
            pg(
                b'Q',
                b"SELECT abalance FROM pgbench_accounts WHERE aid = 4242;\0",
            ),
            [
                pg(
                    b'T',
                    b"\0\x01abalance\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
                ),
                pg(b'D', b"\0\x01\0\0\0\x01\x30"),
                pg(b'C', b"SELECT 1\0"),
                pg(b'Z', b"I"),
            ]
            .concat(),
            1,
        ),
    ];
    for (name, kind, startup, request, answer, ops) in cases {
        let tap = Tap::new(kind, Duration::from_secs(3600)).unwrap();
        if !startup.is_empty() {
            tap.client(&startup);
            tap.server(&pg(b'Z', b"I"));
        }
        let n = 200_000u32;
        let t = Instant::now();
        for _ in 0..n {
            assert!(tap.client(&request).is_empty());
            assert!(tap.server(&answer).is_empty());
        }
        assert!(!tap.is_off(), "{name}");
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n * ops);
        println!("{name}: {ns:.0} ns per request");
    }
}
