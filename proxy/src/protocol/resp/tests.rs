//! Tests of the RESP codec: fixed cases, length bombs and property tests.
#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::stream::Replies;
use super::*;

// ---- the RESP2 client view (the probe parser's tests, kept) ----

fn full(buf: &[u8]) -> Reply {
    let (r, n) = parse_reply(buf).unwrap().unwrap();
    assert_eq!(n, buf.len());
    r
}

const MASTER_ROLE: &[u8] =
    b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n";
const SLAVE_ROLE: &[u8] =
    b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n";

#[test]
fn parses_each_type() {
    assert_eq!(full(b"+PONG\r\n"), Reply::Simple("PONG".into()));
    assert_eq!(full(b"-ERR bad\r\n"), Reply::Error("ERR bad".into()));
    assert_eq!(full(b":-42\r\n"), Reply::Integer(-42));
    assert_eq!(full(b"$3\r\nfoo\r\n"), Reply::Bulk(b"foo".to_vec()));
    assert_eq!(full(b"$0\r\n\r\n"), Reply::Bulk(Vec::new()));
    assert_eq!(full(b"$-1\r\n"), Reply::Nil);
    assert_eq!(full(b"*-1\r\n"), Reply::Nil);
    assert_eq!(full(b"*0\r\n"), Reply::Array(vec![]));
    let m = full(MASTER_ROLE);
    assert_eq!(
        m.to_strings(),
        vec!["master", "3129659", "127.0.0.1", "9001", "3129242"]
    );
    assert_eq!(
        full(SLAVE_ROLE).to_strings().get(3).map(String::as_str),
        Some("connected")
    );
    assert_eq!(Reply::Nil.to_strings(), Vec::<String>::new());
    assert_eq!(
        full(b"*2\r\n$-1\r\n+x\r\n").to_strings(),
        vec!["".to_string(), "x".to_string()]
    );
}

#[test]
fn every_prefix_is_incomplete_and_trailing_bytes_are_left() {
    for sample in [
        MASTER_ROLE,
        SLAVE_ROLE,
        b"+OK\r\n".as_slice(),
        b"$3\r\nfoo\r\n",
    ] {
        for cut in 0..sample.len() {
            let prefix = sample.get(..cut).unwrap();
            assert!(
                parse_reply(prefix).unwrap().is_none(),
                "prefix {cut} of {sample:?}"
            );
        }
        let mut two = sample.to_vec();
        two.extend_from_slice(b"+NEXT\r\n");
        let (_, n) = parse_reply(&two).unwrap().unwrap();
        assert_eq!(n, sample.len());
    }
}

#[test]
fn rejects_garbage_and_oversize() {
    for bad in [
        b"?\r\n".as_slice(),
        b":12a\r\n",
        b":\r\n",
        b"$-2\r\n",
        b"$3\r\nfooXY",
        b"*-5\r\n",
        b"$99999999999999999999\r\n",
        b"$9999999999\r\n",
        b"*9999999999\r\n",
        b":99999999999999999999\r\n",
        // RESP3 types are no RESP2 reply.
        b"_\r\n",
        b"%1\r\n+a\r\n+b\r\n",
    ] {
        assert!(parse_reply(bad).is_err(), "{bad:?}");
    }
    let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
    assert_eq!(parse_reply(deep.as_bytes()), Err(Error::TooDeep));
    let long = vec![b'+'; MAX_LINE + 10];
    assert!(parse_reply(&long).is_err());
    // The longest line accepted, and one byte more.
    let mut line = vec![b'+'; MAX_LINE + 1];
    line.extend_from_slice(b"\r\n");
    assert!(parse_reply(&line).unwrap().is_some());
    line.insert(1, b'+');
    assert!(parse_reply(&line).is_err());
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let alphabet = b"+-:$*\r\n0123456789-abc";
    for _ in 0..20_000 {
        let len = rng.gen_range(0..64);
        let bytes: Vec<u8> = if rng.gen_bool(0.5) {
            (0..len).map(|_| rng.gen()).collect()
        } else {
            (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect()
        };
        if let Ok(Some((_, n))) = parse_reply(&bytes) {
            assert!(n <= bytes.len());
        }
    }
    for _ in 0..20_000 {
        let mut bytes = MASTER_ROLE.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        let cut = rng.gen_range(0..=bytes.len());
        bytes.truncate(cut);
        if let Ok(Some((_, n))) = parse_reply(&bytes) {
            assert!(n <= bytes.len());
        }
    }
}

// ---- the encoder (the fallback's reply tests, kept) ----

fn encoded(f: &Frame, proto: u8) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(proto, &mut out);
    out
}

#[test]
fn encodes_both_protocols() {
    let r = Frame::Map(vec![(Frame::bulk(b"f"), Frame::bulk(b"v"))]);
    assert_eq!(encoded(&r, 2), b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(encoded(&r, 3), b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    let mut n = Vec::new();
    Frame::Null.encode(3, &mut n);
    Frame::Null.encode(2, &mut n);
    Frame::err("A\r\nB").encode(2, &mut n);
    assert_eq!(n, b"_\r\n$-1\r\n-A  B\r\n");
    assert_eq!(encoded(&Frame::Boolean(true), 2), b":1\r\n");
    assert_eq!(encoded(&Frame::Double(1.5), 3), b",1.5\r\n");
    assert_eq!(
        encoded(&Frame::Double(f64::NEG_INFINITY), 2),
        b"$4\r\n-inf\r\n"
    );
    let v = Frame::Verbatim {
        format: *b"txt",
        text: b"hi".to_vec(),
    };
    assert_eq!(encoded(&v, 3), b"=6\r\ntxt:hi\r\n");
    assert_eq!(encoded(&v, 2), b"$2\r\nhi\r\n");
    assert_eq!(error_reply("a\r\nb"), b"-ERR a  b\r\n".to_vec());
    let mut cmd = Vec::new();
    write_command(&["AUTH", "pw"], &mut cmd);
    assert_eq!(cmd, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n".to_vec());
    assert_eq!(cmd, encoded(&Frame::command(&["AUTH", "pw"]), 3));
}

#[test]
fn encoded_len_is_exact() {
    let replies = [
        Frame::ok(),
        Frame::err("ERR x"),
        Frame::Integer(-1234),
        Frame::Integer(0),
        Frame::Integer(i64::MIN),
        Frame::bulk(b""),
        Frame::bulk(&[7u8; 12345]),
        Frame::Null,
        Frame::Array(vec![Frame::Null; 10]),
        Frame::Array(Vec::new()),
        Frame::Map(vec![
            (
                Frame::bulk(b"f"),
                Frame::Array(vec![Frame::Integer(9)])
            );
            5
        ]),
    ];
    for r in replies {
        for proto in [2, 3] {
            assert_eq!(
                r.encoded_len(proto),
                encoded(&r, proto).len(),
                "{r:?} in RESP{proto}"
            );
        }
    }
}

#[test]
fn resp3_types_parse() {
    let p = |b: &[u8]| parse(b, &Limits::RESP3).unwrap().0;
    assert_eq!(p(b"#t\r\n"), Frame::Boolean(true));
    assert!(matches!(p(b",nan\r\n"), Frame::Double(d) if d.is_nan()));
    assert_eq!(p(b",-1.5e3\r\n"), Frame::Double(-1500.0));
    assert_eq!(
        p(b"(-12345678901234567890\r\n"),
        Frame::BigNumber("-12345678901234567890".into())
    );
    assert_eq!(p(b"!3\r\nBAD\r\n"), Frame::BulkError(b"BAD".to_vec()));
    assert_eq!(
        p(b">1\r\n+a\r\n"),
        Frame::Push(vec![Frame::Simple("a".into())])
    );
    for bad in [
        b"#x\r\n".as_slice(),
        b",1x\r\n",
        b"=2\r\nab\r\n",
        b"_x\r\n",
        b"(1.5\r\n",
        b"$?\r\n",
    ] {
        assert!(
            matches!(parse(bad, &Limits::RESP3), Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
    let no_oob = Limits {
        out_of_band: false,
        ..Limits::RESP3
    };
    assert_eq!(check(b"*1\r\n>0\r\n", &no_oob), Err(Error::OutOfBand));
}

// ---- bounded memory on hostile input ----

/// The heap a parsed frame holds (capacities, not lengths).
fn heap(f: &Frame) -> usize {
    let size = std::mem::size_of::<Frame>();
    match f {
        Frame::Simple(s) | Frame::Error(s) | Frame::BigNumber(s) => s.capacity(),
        Frame::Bulk(b) | Frame::BulkError(b) | Frame::Verbatim { text: b, .. } => b.capacity(),
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => {
            v.capacity() * size + v.iter().map(heap).sum::<usize>()
        }
        Frame::Map(p) | Frame::Attribute(p) => {
            p.capacity() * 2 * size + p.iter().map(|(k, v)| heap(k) + heap(v)).sum::<usize>()
        }
        _ => 0,
    }
}

/// Limits with no bound on lengths or counts: only the input bounds them.
const UNBOUNDED: Limits = Limits {
    max_depth: 32,
    max_line: 64 * 1024,
    max_bulk: usize::MAX,
    max_elements: usize::MAX,
    max_digits: 20,
    resp3: true,
    out_of_band: true,
};

#[test]
fn declared_length_bombs_allocate_nothing() {
    let bombs: [&[u8]; 7] = [
        b"*999999999\r\n",
        b"$4611686018427387904\r\n",
        b"*4611686018427387904\r\n:1\r\n",
        b"%4611686018427387904\r\n",
        b"~9223372036854775807\r\n",
        b"=4611686018427387904\r\ntxt:",
        b"$9223372036854775807\r\nabc",
    ];
    for bomb in bombs {
        // Unbounded, the frame is just incomplete (it does not fit the
        // input); bounded, it is refused as soon as its length is read.
        assert_eq!(parse(bomb, &UNBOUNDED), Err(Error::Incomplete), "{bomb:?}");
        assert!(
            matches!(parse(bomb, &Limits::RESP3), Err(Error::TooLarge { .. })),
            "{bomb:?}"
        );
        if bomb.starts_with(b"*") {
            let limits = CommandLimits {
                max_command: 1024,
                max_args: 16,
            };
            assert!(parse_command(bomb, &limits).is_err(), "{bomb:?}");
        }
        assert!(parse_reply(bomb).is_err());
    }
    let deep = "*1\r\n".repeat(100_000);
    assert_eq!(check(deep.as_bytes(), &UNBOUNDED), Err(Error::TooDeep));
    let mut replies = Replies::default();
    let mut data = deep.as_bytes();
    assert_eq!(replies.next(&mut data), Err(Error::TooDeep));
}

fn resp_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => prop::sample::select(b"+-:$*_#,(!=%~|>\r\n0123456789-".to_vec()),
        1 => any::<u8>(),
    ];
    vec(byte, 0..96)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(bytes in resp_bytes()) {
        for limits in [UNBOUNDED, Limits::RESP3, Limits::RESP2_REPLY] {
            let checked = check(&bytes, &limits);
            match parse(&bytes, &limits) {
                Ok((frame, len)) => {
                    prop_assert_eq!(checked.map(|s| s.len), Ok(len));
                    prop_assert!(len <= bytes.len());
                    prop_assert!(heap(&frame) <= 16 * len, "{} bytes held for {}", heap(&frame), len);
                }
                Err(e) => prop_assert_eq!(checked.map(|s| s.len), Err(e)),
            }
        }
        if let Some((n, used)) = whole_multibulk(&bytes, 1024, |_, _| {}) {
            let mut args = multibulk(&bytes, &Limits::RESP3).unwrap().unwrap();
            prop_assert_eq!(args.by_ref().filter(Result::is_ok).count(), n);
            prop_assert_eq!(args.consumed(), used);
        }
        let limits = CommandLimits { max_command: 64, max_args: 8 };
        if let Ok(Some((args, used))) = parse_command(&bytes, &limits) {
            prop_assert!(used > 0 && used <= bytes.len());
            prop_assert!(args.iter().map(Vec::len).sum::<usize>() <= used);
        }
    }

    /// The observer's scanner takes whole replies in one `check` and split
    /// ones byte by byte: on any input, both ways reach the same replies
    /// and the same error, however the input is cut.
    #[test]
    fn stream_scanner_is_the_same_whole_or_split(bytes in resp_bytes(), cut in 1usize..7) {
        prop_assert_eq!(scan(&bytes, bytes.len().max(1)), scan(&bytes, 1));
        prop_assert_eq!(scan(&bytes, bytes.len().max(1)), scan(&bytes, cut));
    }
}

/// Feeds `bytes` to a scanner `chunk` bytes at a time: the replies seen
/// (the error line of each error reply) and the error it stopped at.
fn scan(bytes: &[u8], chunk: usize) -> (Vec<Option<Vec<u8>>>, Option<Error>) {
    let mut replies = Replies::default();
    let mut seen = Vec::new();
    for mut data in bytes.chunks(chunk) {
        loop {
            match replies.next(&mut data) {
                Ok(Some(e)) => seen.push(e.map(<[u8]>::to_vec)),
                Ok(None) => break,
                Err(e) => return (seen, Some(e)),
            }
        }
    }
    (seen, None)
}

// ---- round trips ----

fn line_text() -> impl Strategy<Value = String> {
    "[^\r\n]{0,12}"
}

fn leaf() -> impl Strategy<Value = Frame> {
    prop_oneof![
        line_text().prop_map(Frame::Simple),
        line_text().prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        vec(any::<u8>(), 0..24).prop_map(Frame::Bulk),
        Just(Frame::Null),
        any::<bool>().prop_map(Frame::Boolean),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |d| !d.is_nan())
            .prop_map(Frame::Double),
        "-?[0-9]{1,30}".prop_map(Frame::BigNumber),
        line_text().prop_map(|s| Frame::BulkError(s.into_bytes())),
        ("[a-z]{3}", vec(any::<u8>(), 0..16)).prop_map(|(f, text)| Frame::Verbatim {
            format: f.as_bytes().try_into().unwrap(),
            text,
        }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Frame::Array),
            vec(inner.clone(), 0..6).prop_map(Frame::Set),
            vec(inner.clone(), 0..6).prop_map(Frame::Push),
            vec((inner.clone(), inner.clone()), 0..4).prop_map(Frame::Map),
            vec((inner.clone(), inner), 0..3).prop_map(Frame::Attribute),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resp3_round_trips_and_every_prefix_is_incomplete(f in frame()) {
        let mut bytes = Vec::new();
        f.write_to(&mut bytes);
        prop_assert_eq!(f.encoded_len(3), bytes.len());
        let scan = check(&bytes, &Limits::RESP3).unwrap();
        prop_assert_eq!(scan.len, bytes.len());
        prop_assert_eq!(Some(scan.kind), bytes.first().and_then(|&t| Kind::of(t)));
        prop_assert_eq!(parse(&bytes, &Limits::RESP3), Ok((f.clone(), bytes.len())));
        for cut in 0..bytes.len() {
            prop_assert_eq!(check(&bytes[..cut], &Limits::RESP3), Err(Error::Incomplete), "cut {}", cut);
        }
        // The scanner counts it as one reply, whole or split.
        if !bytes.contains(&b'>') && !bytes.contains(&b'|') {
            prop_assert_eq!(scan_count(&bytes, bytes.len()), 1);
            prop_assert_eq!(scan_count(&bytes, 1), 1);
        }
    }

    /// Downgraded for a RESP2 connection, any frame reads back as the
    /// RESP2 reply it stands for.
    #[test]
    fn resp2_round_trips(f in frame()) {
        let bytes = encoded(&f, 2);
        prop_assert_eq!(f.encoded_len(2), bytes.len());
        prop_assert_eq!(parse_reply(&bytes), Ok(Some((Reply::from(f), bytes.len()))));
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse_reply(&bytes[..cut]), Ok(None), "cut {}", cut);
        }
    }

    #[test]
    fn commands_round_trip(args in vec(vec(any::<u8>(), 0..20), 1..8)) {
        let mut bytes = Vec::new();
        write_command(&args, &mut bytes);
        let limits = CommandLimits { max_command: 4096, max_args: 16 };
        prop_assert_eq!(parse_command(&bytes, &limits), Ok(Some((args.clone(), bytes.len()))));
        let mut it = multibulk(&bytes, &Limits::RESP3).unwrap().unwrap();
        let read: Vec<&[u8]> = it.by_ref().map(Result::unwrap).collect();
        prop_assert_eq!(read, args.iter().map(Vec::as_slice).collect::<Vec<_>>());
        prop_assert_eq!(it.consumed(), bytes.len());
        let mut seen = Vec::new();
        let whole = whole_multibulk(&bytes, 1024, |i, a| seen.push((i, a.to_vec())));
        prop_assert_eq!(whole, Some((args.len(), bytes.len())));
        prop_assert_eq!(seen, args.iter().cloned().enumerate().collect::<Vec<_>>());
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse_command(&bytes[..cut], &limits), Ok(None), "cut {}", cut);
        }
    }
}

/// Whether a frame holds a push or an attribute (which stop the scanner).
fn out_of_band(f: &Frame) -> bool {
    match f {
        Frame::Push(_) | Frame::Attribute(_) => true,
        Frame::Array(v) | Frame::Set(v) => v.iter().any(out_of_band),
        Frame::Map(p) => p.iter().any(|(k, v)| out_of_band(k) || out_of_band(v)),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A stream of replies, cut anywhere: the scanner sees each reply once,
    /// in order, with the line of each top-level error.
    #[test]
    fn stream_scanner_sees_each_reply(frames in vec(frame(), 1..6), cut in 1usize..40) {
        let frames: Vec<Frame> = frames.into_iter().filter(|f| !out_of_band(f)).collect();
        let mut bytes = Vec::new();
        for f in &frames {
            f.write_to(&mut bytes);
        }
        let expected: Vec<Option<Vec<u8>>> = frames
            .iter()
            .map(|f| match f {
                Frame::Error(e) => Some(e.as_bytes().iter().copied().take(256).collect()),
                _ => None,
            })
            .collect();
        for chunk in [bytes.len().max(1), cut, 1] {
            prop_assert_eq!(scan(&bytes, chunk), (expected.clone(), None), "chunks of {}", chunk);
        }
    }
}

fn scan_count(bytes: &[u8], chunk: usize) -> usize {
    let (seen, err) = scan(bytes, chunk);
    assert_eq!(err, None);
    seen.len()
}
