//! Tests of the Bolt observer.
#![allow(clippy::unwrap_used)]

use super::super::tests::{
    check_splits, mutations_never_panic, play, random_turns_off, slow, Side::*, Step,
};
use super::super::{Finding, Stop};
use super::*;
use crate::config::Kind;

fn string(s: &str) -> Vec<u8> {
    let n = s.len();
    let mut b = match n {
        0..=15 => vec![0x80 | n as u8],
        16..=255 => vec![0xD0, n as u8],
        _ => [vec![0xD1], (n as u16).to_be_bytes().to_vec()].concat(),
    };
    b.extend_from_slice(s.as_bytes());
    b
}

/// A tiny map of string values (or raw encoded values).
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0xA0 | entries.len() as u8];
    for (k, v) in entries {
        b.extend(string(k));
        b.extend_from_slice(v);
    }
    b
}

/// One message as chunks of at most `max` bytes, then the end marker.
fn message(tag: u8, fields: &[Vec<u8>], max: usize) -> Vec<u8> {
    let mut body = vec![0xB0 | fields.len() as u8, tag];
    for f in fields {
        body.extend_from_slice(f);
    }
    let mut out = Vec::new();
    for c in body.chunks(max) {
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

fn m(tag: u8, fields: &[Vec<u8>]) -> Vec<u8> {
    message(tag, fields, 0xFFFF)
}

fn run(cypher: &str) -> Vec<u8> {
    m(RUN, &[string(cypher), map(&[]), map(&[])])
}

fn pull() -> Vec<u8> {
    m(PULL, &[map(&[("n", vec![0xFF])])])
}

fn success(meta: &[(&str, Vec<u8>)]) -> Vec<u8> {
    m(SUCCESS, &[map(meta)])
}

fn failure(code: &str) -> Vec<u8> {
    m(
        FAILURE,
        &[map(&[
            ("code", string(code)),
            ("message", string("it failed")),
        ])],
    )
}

fn record() -> Vec<u8> {
    m(RECORD, &[vec![0x91, 0x01]])
}

fn handshake() -> Vec<Step> {
    let mut hello = vec![
        0x60, 0x60, 0xB0, 0x17, 0, 4, 4, 5, 0, 0, 4, 4, 0, 0, 0, 4, 0, 0, 0, 3,
    ];
    hello.extend(m(0x01, &[map(&[("user_agent", string("test/1"))])]));
    vec![
        Step(C, 0, hello),
        Step(
            S,
            0,
            [vec![0, 0, 4, 5], success(&[("server", string("Neo4j/5"))])].concat(),
        ),
    ]
}

fn conversation() -> Vec<Step> {
    let mut steps = handshake();
    steps.extend([
        // RUN + PULL sent together; the result ends at the PULL's SUCCESS.
        Step(
            C,
            1000,
            [run("UNWIND range(1, 3000000) AS x RETURN count(x)"), pull()].concat(),
        ),
        Step(
            S,
            1050,
            success(&[(
                "fields",
                vec![0x91, 0x88, b'c', b'o', b'u', b'n', b't', b'(', b'x', b')'],
            )]),
        ),
        Step(
            S,
            1300,
            [record(), success(&[("type", string("r"))])].concat(),
        ),
        // A write that fails at RUN; its PULL is IGNORED.
        Step(
            C,
            1400,
            [run("CREATE (n:Person {name: 'Ann', age: 42})"), pull()].concat(),
        ),
        Step(
            S,
            1420,
            [
                failure("Neo.ClientError.Schema.ConstraintValidationFailed"),
                m(IGNORED, &[]),
            ]
            .concat(),
        ),
        Step(C, 1430, m(RESET, &[])),
        Step(S, 1431, success(&[])),
        // Batches: has_more keeps the stream open; small chunks and NOOPs.
        Step(
            C,
            2000,
            [
                message(RUN, &[string("MATCH (n) RETURN n"), map(&[]), map(&[])], 5),
                vec![0, 0],
                pull(),
            ]
            .concat(),
        ),
        Step(S, 2010, success(&[("fields", vec![0x90])])),
        Step(
            S,
            2020,
            [
                record(),
                message(SUCCESS, &[map(&[("has_more", vec![0xC3])])], 3),
            ]
            .concat(),
        ),
        Step(C, 2030, pull()),
        Step(
            S,
            2200,
            [vec![0, 0], record(), success(&[("has_more", vec![0xC2])])].concat(),
        ),
        // An explicit transaction whose COMMIT fails.
        Step(
            C,
            3000,
            [m(BEGIN, &[map(&[])]), run("MERGE (a:X {id: 1})"), pull()].concat(),
        ),
        Step(S, 3001, [success(&[]), success(&[]), success(&[])].concat()),
        Step(C, 3002, m(COMMIT, &[])),
        Step(S, 3003, failure("Neo.TransientError.Transaction.Outdated")),
        Step(C, 3004, m(GOODBYE, &[])),
    ]);
    steps
}

#[test]
fn times_run_to_the_end_of_its_results() {
    check_splits::<Bolt>(
        &conversation(),
        &[
            slow("UNWIND range(?, ?) AS x RETURN count(x)", 300, "run"),
            Finding::WriteFailure {
                statement: "CREATE (n:Person {name: ?, age: ?})".into(),
                code: "Neo.ClientError.Schema.ConstraintValidationFailed".into(),
            },
            slow("MATCH (n) RETURN n", 200, "run"),
            Finding::UpstreamError {
                code: "Neo.TransientError.Transaction.Outdated".into(),
                message: "it failed".into(),
            },
            Finding::WriteFailure {
                statement: "MERGE (a:X {id: ?})".into(),
                code: "Neo.TransientError.Transaction.Outdated".into(),
            },
        ],
    );
}

#[test]
fn a_wrong_statement_is_no_write_failure() {
    let mut steps = handshake();
    steps.push(Step(C, 0, [run("CREATE (n:P {v: 1/0})"), pull()].concat()));
    steps.push(Step(
        S,
        1,
        [
            failure("Neo.ClientError.Statement.ArithmeticError"),
            m(IGNORED, &[]),
        ]
        .concat(),
    ));
    steps.push(Step(C, 2, [run("CREATE (n:P)"), pull()].concat()));
    steps.push(Step(
        S,
        3,
        [
            failure("Neo.ClientError.Database.DatabaseNotFound"),
            m(IGNORED, &[]),
        ]
        .concat(),
    ));
    let (_, r, f) = play::<Bolt>(&steps, &|d| vec![d.to_vec()]);
    assert_eq!(r, Ok(()));
    assert_eq!(
        f,
        vec![Finding::WriteFailure {
            statement: "CREATE (n:P)".into(),
            code: "Neo.ClientError.Database.DatabaseNotFound".into()
        }]
    );
}

#[test]
fn not_bolt_or_manifest_is_quiet() {
    let ws = vec![Step(C, 0, b"GET / HTTP/1.1\r\n".to_vec())];
    assert_eq!(play::<Bolt>(&ws, &|d| vec![d.to_vec()]).1, Err(Stop::Quiet));
    let mut manifest = handshake();
    manifest[1] = Step(S, 0, vec![0, 0, 1, 0xFF, 0x01, 0x00]);
    assert_eq!(
        play::<Bolt>(&manifest, &|d| vec![d.to_vec()]).1,
        Err(Stop::Quiet)
    );
}

#[test]
fn confusion_turns_off() {
    let mut unasked = handshake();
    unasked.push(Step(S, 1, success(&[])));
    assert!(matches!(
        play::<Bolt>(&unasked, &|d| vec![d.to_vec()]).1,
        Err(Stop::Confused(_))
    ));
    let mut unknown = handshake();
    unknown.push(Step(C, 1, m(0x55, &[])));
    assert!(matches!(
        play::<Bolt>(&unknown, &|d| vec![d.to_vec()]).1,
        Err(Stop::Confused(_))
    ));
    let mut not_struct = handshake();
    not_struct.push(Step(C, 1, vec![0, 2, 0x01, 0x10, 0, 0]));
    assert!(matches!(
        play::<Bolt>(&not_struct, &|d| vec![d.to_vec()]).1,
        Err(Stop::Confused(_))
    ));
}

#[test]
fn long_statements_are_bounded() {
    let long = format!("RETURN '{}'", "x".repeat(70_000));
    let mut steps = handshake();
    steps.push(Step(
        C,
        0,
        message(RUN, &[string(&long), map(&[]), map(&[])], 0xFFFF),
    ));
    steps.push(Step(
        S,
        500,
        failure("Neo.ClientError.Statement.SyntaxError"),
    ));
    let (p, r, f) = play::<Bolt>(&steps, &|d| vec![d.to_vec()]);
    assert_eq!(r, Ok(()));
    assert!(p.client.body.capacity() <= 2 * TEXT_CAP);
    assert_eq!(f, vec![slow("RETURN ?", 500, "run")]);
}

#[test]
fn packstream_strings() {
    assert_eq!(string_at(&string("abc")), b"abc");
    assert_eq!(string_at(&string(&"y".repeat(300))).len(), 300);
    assert_eq!(string_at(&[0xD2, 0, 0, 0, 9, b'a']), b"a");
    assert_eq!(string_at(&[0xD1, 0]), b"");
    assert_eq!(string_at(&[0x01]), b"");
    assert_eq!(value_of(b"\xA1\x84code\x83abc", b"\x84code"), b"abc");
    assert_eq!(value_of(b"\xA1\x84code", b"\x84code"), b"");
}

#[test]
fn random_bytes_turn_off() {
    random_turns_off(Kind::Neo4j);
}

#[test]
fn mutated_streams_never_panic() {
    mutations_never_panic::<Bolt>(&conversation());
}
