//! Tests of the PostgreSQL observer.
#![allow(clippy::unwrap_used)]

use super::super::tests::{
    check_splits, mutations_never_panic, random_turns_off, slow, Side::*, Step,
};
use super::super::{Finding, Stop};
use super::*;
use crate::config::Kind;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn untyped(code: u32, rest: &[u8]) -> Vec<u8> {
    let mut m = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(rest);
    m
}

fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p.as_bytes());
        b.push(0);
    }
    b
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstrs(&[sql]))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstrs(&[name, sql]);
    b.extend_from_slice(&[0, 0]);
    msg(b'P', &b)
}

fn bind(statement: &str) -> Vec<u8> {
    let mut b = cstrs(&["", statement]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn result_then_ready() -> Vec<u8> {
    [
        msg(b'T', &[0, 0]),
        msg(b'D', &[0, 0]),
        msg(b'C', b"SELECT 1\0"),
        ready(),
    ]
    .concat()
}

fn extended(sql: &str) -> Vec<u8> {
    [
        parse("", sql),
        bind(""),
        msg(b'D', b"P\0"),
        msg(b'E', &[0, 0, 0, 0, 0]),
        msg(b'S', b""),
    ]
    .concat()
}

fn startup() -> Vec<Step> {
    vec![
        Step(C, 0, untyped(SSL_REQUEST, b"")),
        Step(S, 0, b"N".to_vec()),
        Step(C, 0, untyped(196_608, &cstrs(&["user", "postgres", ""]))),
        Step(
            S,
            0,
            [
                msg(b'R', &[0, 0, 0, 0]),
                msg(b'S', &cstrs(&["server_version", "15"])),
                msg(b'K', &[0; 8]),
                ready(),
            ]
            .concat(),
        ),
    ]
}

fn conversation() -> Vec<Step> {
    let mut steps = startup();
    steps.extend([
        Step(C, 1000, query("SELECT pg_sleep(0.6)")),
        Step(S, 1600, result_then_ready()),
        Step(C, 1700, query("SELECT 1")),
        Step(S, 1701, result_then_ready()),
        Step(C, 2000, extended("SELECT $1::int + 42")),
        Step(
            S,
            2200,
            [msg(b'1', b""), msg(b'2', b""), result_then_ready()].concat(),
        ),
        // Pipelined: two syncs in one write, answered together.
        Step(
            C,
            3000,
            [extended("SELECT 'a'"), extended("SELECT 2.5")].concat(),
        ),
        Step(S, 3150, [result_then_ready(), result_then_ready()].concat()),
        // A named statement, bound later without a Parse.
        Step(
            C,
            4000,
            [
                parse("s1", "SELECT 'x' FROM t WHERE id = 7"),
                msg(b'S', b""),
            ]
            .concat(),
        ),
        Step(S, 4001, [msg(b'1', b""), ready()].concat()),
        Step(
            C,
            5000,
            [bind("s1"), msg(b'E', &[0, 0, 0, 0, 0]), msg(b'S', b"")].concat(),
        ),
        Step(S, 5300, result_then_ready()),
        // An error that speaks of the server, with its ReadyForQuery.
        Step(C, 6000, query("SELECT 1")),
        Step(
            S,
            6001,
            [
                msg(
                    b'E',
                    &cstrs(&["SFATAL", "C57P01", "Mterminating connection", ""]),
                ),
                ready(),
            ]
            .concat(),
        ),
        Step(C, 6002, msg(b'X', b"")),
    ]);
    steps
}

#[test]
fn times_simple_extended_pipelined_and_named_statements() {
    check_splits::<Pg>(
        &conversation(),
        &[
            slow("SELECT pg_sleep(?)", 600, "simple_query"),
            slow("SELECT $1::int + ?", 200, "extended_query"),
            slow("SELECT ?", 150, "extended_query"),
            slow("SELECT ?", 150, "extended_query"),
            slow("SELECT ? FROM t WHERE id = ?", 300, "extended_query"),
            Finding::UpstreamError {
                code: "57P01".into(),
                message: "terminating connection".into(),
            },
        ],
    );
}

#[test]
fn bounded_buffers() {
    let long = format!("SELECT '{}', 1", "x".repeat(100_000));
    let steps = {
        let mut s = startup();
        s.push(Step(C, 0, query(&long)));
        s.push(Step(S, 500, result_then_ready()));
        s
    };
    let (p, r, f) = super::super::tests::play::<Pg>(&steps, &|d| vec![d.to_vec()]);
    assert_eq!(r, Ok(()));
    assert!(
        p.client.body.capacity() <= 2 * TEXT_CAP,
        "{}",
        p.client.body.capacity()
    );
    match f.as_slice() {
        [Finding::SlowQuery { statement, .. }] => assert_eq!(statement, "SELECT ?"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deep_pipelines_turn_off() {
    let mut steps = startup();
    let many: Vec<u8> = (0..=MAX_PENDING).flat_map(|_| query("SELECT 1")).collect();
    steps.push(Step(C, 0, many));
    let (_, r, _) = super::super::tests::play::<Pg>(&steps, &|d| vec![d.to_vec()]);
    assert!(matches!(r, Err(Stop::Confused(_))));
}

#[test]
fn startup_errors_and_refusals() {
    // "too many connections" during startup is reported.
    let steps = vec![
        Step(C, 0, untyped(196_608, &cstrs(&["user", "u", ""]))),
        Step(
            S,
            1,
            msg(
                b'E',
                &cstrs(&["SFATAL", "C53300", "Msorry, too many clients", ""]),
            ),
        ),
    ];
    let (_, r, f) = super::super::tests::play::<Pg>(&steps, &|d| vec![d.to_vec()]);
    assert_eq!(r, Ok(()));
    assert!(matches!(&f[..], [Finding::UpstreamError { code, .. }] if code == "53300"));
    // An application error is not reported.
    let mut steps = startup();
    steps.push(Step(C, 0, query("SELEC 1")));
    steps.push(Step(
        S,
        1,
        [
            msg(b'E', &cstrs(&["SERROR", "C42601", "Msyntax", ""])),
            ready(),
        ]
        .concat(),
    ));
    let (_, r, f) = super::super::tests::play::<Pg>(&steps, &|d| vec![d.to_vec()]);
    assert_eq!((r, f), (Ok(()), vec![]));
    // Cancel requests and replication are quiet.
    let cancel = vec![Step(C, 0, untyped(CANCEL_REQUEST, &[0; 8]))];
    let (_, r, _) = super::super::tests::play::<Pg>(&cancel, &|d| vec![d.to_vec()]);
    assert_eq!(r, Err(Stop::Quiet));
    let mut repl = startup();
    repl.push(Step(C, 0, query("START_REPLICATION 0/0")));
    repl.push(Step(S, 1, msg(b'W', &[0, 0, 0])));
    let (_, r, _) = super::super::tests::play::<Pg>(&repl, &|d| vec![d.to_vec()]);
    assert_eq!(r, Err(Stop::Quiet));
    // A ReadyForQuery nobody asked for is confusion.
    let mut extra = startup();
    extra.push(Step(S, 1, ready()));
    let (_, r, _) = super::super::tests::play::<Pg>(&extra, &|d| vec![d.to_vec()]);
    assert!(matches!(r, Err(Stop::Confused(_))));
}

#[test]
fn operational_codes() {
    for c in [
        "08006", "28P01", "53300", "57P01", "58030", "XX000", "25006",
    ] {
        assert!(operational(c), "{c}");
    }
    for c in ["42601", "23505", "40001", ""] {
        assert!(!operational(c), "{c}");
    }
}

#[test]
fn random_bytes_turn_off() {
    random_turns_off(Kind::Postgres);
}

#[test]
fn mutated_streams_never_panic() {
    mutations_never_panic::<Pg>(&conversation());
}
