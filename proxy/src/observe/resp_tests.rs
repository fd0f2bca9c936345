//! Tests of the RESP observer.
#![allow(clippy::unwrap_used)]

use super::super::tests::{
    check_splits, mutations_never_panic, play, random_turns_off, slow, Side::*, Step,
};
use super::super::{Finding, Stop};
use super::*;
use crate::config::Kind;
use crate::protocol::resp::stream::MAX_DEPTH;

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        b.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    b
}

fn conversation() -> Vec<Step> {
    vec![
        Step(C, 0, cmd(&["debug", "sleep", "0.2"])),
        Step(S, 200, b"+OK\r\n".to_vec()),
        // Pipelined, answered in one write; fast.
        Step(
            C,
            300,
            [cmd(&["PING"]), cmd(&["SET", "k", "v"]), cmd(&["LLEN", "l"])].concat(),
        ),
        Step(S, 301, b"+PONG\r\n+OK\r\n:0\r\n".to_vec()),
        // Inline, with a subcommand; a bulk reply with an empty string.
        Step(C, 400, b"config get maxmemory\r\n".to_vec()),
        Step(
            S,
            550,
            b"*3\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$0\r\n\r\n".to_vec(),
        ),
        // Blocking: never slow.
        Step(C, 600, cmd(&["BLPOP", "q", "1"])),
        Step(S, 1600, b"*-1\r\n".to_vec()),
        Step(
            C,
            1650,
            cmd(&["XREAD", "block", "500", "STREAMS", "s", "$"]),
        ),
        Step(S, 2150, b"*-1\r\n".to_vec()),
        // Nested RESP3 reply: array of (array, map), then null, a large value.
        Step(C, 2200, cmd(&["KEYS", "*"])),
        Step(
            S,
            2350,
            b"*2\r\n*2\r\n:1\r\n$1\r\nx\r\n%1\r\n+a\r\n_\r\n".to_vec(),
        ),
        Step(C, 2400, cmd(&["SET", "big", &"v".repeat(40_000)])),
        Step(S, 2401, b"+OK\r\n".to_vec()),
        Step(C, 2500, cmd(&["GET", "big"])),
        Step(
            S,
            2501,
            [b"$40000\r\n".to_vec(), vec![b'v'; 40_000], b"\r\n".to_vec()].concat(),
        ),
        // An empty array and a blank inline line are no commands.
        Step(C, 2600, b"*0\r\n\r\n".to_vec()),
        // An error reply from a replica.
        Step(C, 2700, cmd(&["SET", "k", "v"])),
        Step(
            S,
            2701,
            b"-READONLY You can't write against a read only replica.\r\n".to_vec(),
        ),
        // A bulk reply after an error reply is no error.
        Step(C, 2750, cmd(&["GET", "k"])),
        Step(S, 2751, b"$1\r\nx\r\n".to_vec()),
        // MULTI/EXEC: plain commands; EXEC's array holds an error.
        Step(
            C,
            2800,
            [cmd(&["MULTI"]), cmd(&["INCR", "k"]), cmd(&["EXEC"])].concat(),
        ),
        Step(
            S,
            3000,
            b"+OK\r\n+QUEUED\r\n*1\r\n-ERR not an integer\r\n".to_vec(),
        ),
    ]
}

#[test]
fn times_commands_in_order() {
    check_splits::<Resp>(
        &conversation(),
        &[
            slow("DEBUG SLEEP ?", 200, "command"),
            slow("CONFIG GET ?", 150, "command"),
            slow("KEYS ?", 150, "command"),
            Finding::UpstreamError {
                code: "READONLY".into(),
                message: "READONLY You can't write against a read only replica.".into(),
            },
            slow("MULTI", 200, "command"),
            slow("INCR ?", 200, "command"),
            slow("EXEC", 200, "command"),
        ],
    );
}

#[test]
fn pub_sub_monitor_push_and_reply_off_are_quiet() {
    for (client, server) in [
        (cmd(&["SUBSCRIBE", "c"]), b"".as_slice()),
        (cmd(&["monitor"]), b""),
        (cmd(&["CLIENT", "REPLY", "OFF"]), b""),
        (cmd(&["GET", "k"]), b">2\r\n+a\r\n+b\r\n"),
        (cmd(&["GET", "k"]), b"|1\r\n+a\r\n+b\r\n$1\r\nx\r\n"),
    ] {
        let steps = vec![Step(C, 0, client), Step(S, 1, server.to_vec())];
        let (_, r, f) = play::<Resp>(&steps, &|d| vec![d.to_vec()]);
        assert_eq!((r, f), (Err(Stop::Quiet), vec![]));
    }
}

#[test]
fn confusion_turns_off() {
    for (client, server) in [
        (b"".to_vec(), b"+OK\r\n".as_slice()),
        (cmd(&["GET", "k"]), b"?what\r\n"),
        (cmd(&["GET", "k"]), b"$abc\r\n"),
        (cmd(&["GET", "k"]), b"$-2\r\n"),
        (b"*2\r\n:1\r\n".to_vec(), b""),
        (b"*1\r\n$3\r\nGETxx".to_vec(), b""),
    ] {
        let steps = vec![Step(C, 0, client), Step(S, 1, server.to_vec())];
        let (_, r, _) = play::<Resp>(&steps, &|d| vec![d.to_vec()]);
        assert!(matches!(r, Err(Stop::Confused(_))), "{r:?}");
    }
    let deep = format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH + 1));
    let steps = vec![
        Step(C, 0, cmd(&["GET", "k"])),
        Step(S, 1, deep.into_bytes()),
    ];
    let (_, r, _) = play::<Resp>(&steps, &|d| vec![d.to_vec()]);
    assert!(matches!(r, Err(Stop::Confused(_))));
    let long = vec![Step(C, 0, vec![b'a'; LINE_MAX + 1])];
    let (_, r, _) = play::<Resp>(&long, &|d| vec![d.to_vec()]);
    assert!(matches!(r, Err(Stop::Confused(_))));
}

#[test]
fn a_deep_pipeline_is_followed_up_to_its_bound() {
    let steps = vec![
        Step(
            C,
            0,
            (0..MAX_PENDING).flat_map(|_| cmd(&["PING"])).collect(),
        ),
        Step(S, 1, b"+PONG\r\n".repeat(MAX_PENDING)),
    ];
    let (p, r, _) = play::<Resp>(&steps, &|d| vec![d.to_vec()]);
    assert_eq!(r, Ok(()));
    assert_eq!(p.pending.as_ref().map_or(0, |q| q.len()), 0);
    let over = vec![Step(
        C,
        0,
        (0..=MAX_PENDING).flat_map(|_| cmd(&["PING"])).collect(),
    )];
    let (_, r, _) = play::<Resp>(&over, &|d| vec![d.to_vec()]);
    assert!(matches!(r, Err(Stop::Confused(_))));
}

#[test]
fn random_bytes_turn_off() {
    random_turns_off(Kind::Redis);
}

#[test]
fn mutated_streams_never_panic() {
    mutations_never_panic::<Resp>(&conversation());
}

/// The session a re-attach replays, through the observer: whole commands
/// and the same bytes fed one at a time (the byte-wise path keeps the
/// frame too); idle only between an answered command and the next.
#[test]
fn the_session_follows_commands_and_replies_however_they_are_split() {
    let client = [
        cmd(&["AUTH", "default", "pw"]),
        cmd(&["CLIENT", "SETINFO", "LIB-NAME", "x"]),
        b"select 2\r\n".to_vec(),
        cmd(&["GET", "k"]),
    ];
    let server: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR unknown subcommand\r\n",
        b"+OK\r\n",
        b"$-1\r\n",
    ];
    for bytewise in [false, true] {
        let tap = crate::observe::Tap::redis_session(std::time::Duration::ZERO, Default::default());
        for (c, s) in client.iter().zip(server) {
            if bytewise {
                for b in c.iter() {
                    tap.client(std::slice::from_ref(b));
                }
            } else {
                tap.client(c);
            }
            assert_eq!(tap.take_session().err(), Some("a reply outstanding"));
            let (head, tail) = s.split_at(s.len() / 2);
            tap.server(head);
            assert!(tap.take_session().is_err(), "half a reply");
            tap.server(tail);
        }
        tap.client(b"*2\r\n$3\r\nGET");
        assert_eq!(tap.take_session().err(), Some("a command partly received"));
        tap.client(b"\r\n$1\r\nk\r\n");
        tap.server(b"$1\r\nv\r\n");
        let s = tap.take_session().unwrap();
        let replay: Vec<Vec<u8>> = s.replay().map(<[u8]>::to_vec).collect();
        assert_eq!(
            replay,
            vec![client[0].clone(), b"select 2\r\n".to_vec()],
            "SETINFO was refused, so not replayed (bytewise: {bytewise})"
        );
    }
    // Subscribed: the observer stops, and with it re-attachment.
    let tap = crate::observe::Tap::redis_session(
        std::time::Duration::from_millis(100),
        Default::default(),
    );
    tap.client(&cmd(&["SUBSCRIBE", "ch"]));
    assert!(tap.take_session().is_err());
}

/// Every idle Redis connection keeps one observer (it follows the session
/// for re-attachment even with `slow_query_ms = 0`), so its size is part of
/// issue 16's 4 KiB per idle connection. The reply scanner's inline
/// 32-level stack made it 616 bytes, jemalloc's 640-byte size class; with
/// the stack on the heap when a reply nests it is 376, the 384-byte class.
#[test]
fn an_idle_observer_is_small() {
    let size = std::mem::size_of::<Resp>();
    assert!(size <= 384, "the RESP observer is {size} bytes");
}
