//! The codec's examples, and property tests: encode -> parse round-trips,
//! arbitrary bytes (no panic, bounded), strict prefixes are `Incomplete`,
//! and a chunked body split anywhere decodes the same.

use proptest::prelude::*;

use super::chunked::{self, ChunkScanner};
use super::*;

fn whole(body: &[u8]) -> Result<Option<usize>, Error> {
    ChunkScanner::default().feed(body)
}

#[test]
fn finds_the_end_of_a_chunked_body() {
    let body = b"5\r\nhello\r\n1A;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nNEXT";
    assert_eq!(whole(body), Ok(Some(body.len() - 4)));
    let trailer = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n";
    assert_eq!(whole(trailer), Ok(Some(trailer.len())));
    // Bare LF line ends are tolerated.
    assert_eq!(whole(b"2\nab\n0\n\n"), Ok(Some(8)));
    assert_eq!(
        chunked::parse(body),
        Ok((b"helloabcdefghijklmnopqrstuvwxyz".to_vec(), body.len() - 4))
    );
}

#[test]
fn the_same_end_one_byte_at_a_time() {
    let body = b"10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
    let mut s = ChunkScanner::default();
    for (i, b) in body.iter().enumerate() {
        let r = s.feed(std::slice::from_ref(b));
        if i + 1 == body.len() {
            assert_eq!(r, Ok(Some(1)));
        } else {
            assert_eq!(r, Ok(None), "byte {i}");
        }
    }
}

#[test]
fn incomplete_chunked_bodies_need_more() {
    assert_eq!(whole(b"5\r\nhel"), Ok(None));
    assert_eq!(whole(b"5\r\nhello\r\n0\r\n"), Ok(None));
    assert_eq!(whole(b""), Ok(None));
    assert_eq!(chunked::check(b"5\r\nhel"), Err(Error::Incomplete));
}

#[test]
fn malformed_chunked_bodies_are_refused() {
    let bad = Err(Error::Invalid("malformed chunked body"));
    assert_eq!(whole(b"x\r\n"), bad);
    assert_eq!(whole(b"\r\n"), bad);
    assert_eq!(whole(b"5\r\nhelloX"), bad);
    assert_eq!(whole(b"11111111111111111\r\n"), Err(Error::LineTooLong));
    assert_eq!(whole(b"5\rX"), bad);
    let long = [b'a'; 9000];
    let mut s = ChunkScanner::default();
    assert_eq!(s.feed(b"1;"), Ok(None));
    assert_eq!(s.feed(&long), Err(Error::LineTooLong));
}

#[test]
fn response_framing() {
    let h = |raw: &[u8]| {
        parse_response(raw)
            .ok()
            .map(|h| (h.framing, h.reusable, h.rewrite))
    };
    assert_eq!(
        h(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        Some((Framing::Length(5), true, false))
    );
    assert_eq!(
        h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: keep-alive\r\n\r\n"),
        Some((Framing::Chunked, true, true))
    );
    assert_eq!(
        h(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
        Some((Framing::UntilClose, false, true))
    );
    assert_eq!(
        h(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
        Some((Framing::Length(1), false, true))
    );
    assert_eq!(
        h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
        Some((Framing::Chunked, false, true))
    );
    assert!(matches!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        parse_response(b"garbage\r\n\r\n"),
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-"),
        Err(Error::Incomplete)
    );
}

#[test]
fn content_length_is_digits_only() {
    assert_eq!(content_length(b"42"), Some(42));
    assert_eq!(content_length(b" 7 "), Some(7));
    assert_eq!(content_length(b"+5"), None);
    assert_eq!(content_length(b"5, 5"), None);
    assert_eq!(content_length(b""), None);
    assert_eq!(content_length(b"99999999999999999999999"), None);
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n").is_err());
}

#[test]
fn heads_are_bounded() {
    let mut big = b"GET / HTTP/1.1\r\nx: ".to_vec();
    big.resize(MAX_HEAD + 1, b'a');
    assert_eq!(check_request(&big), Err(Error::HeadTooLarge));
    big.truncate(MAX_HEAD);
    assert_eq!(check_request(&big), Err(Error::Incomplete));
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(check_response(&many), Err(Error::TooManyHeaders));
}

#[test]
fn request_heads_parse() {
    let raw = b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let h = parse_request(raw, &mut headers).unwrap();
    assert_eq!(
        (h.method, h.path, h.version, h.len),
        ("POST", "/a?b=1", 1, raw.len() - 2)
    );
    assert_eq!(h.headers.len(), 2);
    assert_eq!(check_request(b"GET / HTTP/1.1\r\n"), Err(Error::Incomplete));
    assert!(matches!(
        check_request(b"GET / HTTP/1.1\r\n\x01\r\n\r\n"),
        Err(Error::Invalid(_))
    ));
}

#[test]
// Moved here from gateway/proxy.rs with `parse_retry_after` (now this codec's `retry_after`).
fn retry_after_forms() {
    use std::time::Duration;
    assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
    assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
    assert_eq!(
        retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after("soon"), None);
}

// ---- property tests -------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}"
}

/// Field values with no leading or trailing whitespace (httparse trims it).
fn value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,30}[!-~])?"
}

/// Extra fields that do not change framing or connection handling.
fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((token().prop_map(|t| format!("x-{t}")), value()), 0..12)
}

fn encode_head(start: &str, fields: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("{start}\r\n");
    for (n, v) in fields {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn encode_chunked(chunks: &[Vec<u8>], trailers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (n, v) in trailers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn request_heads_round_trip(
        method in "[A-Z]{1,7}",
        path in "/[!-~]{0,40}",
        fields in fields(),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut raw = encode_head(&format!("{method} {path} HTTP/1.1"), &fields);
        let len = raw.len();
        raw.extend_from_slice(&body);
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let h = parse_request(&raw, &mut headers).unwrap();
        prop_assert_eq!((h.method, h.path, h.version, h.len), (method.as_str(), path.as_str(), 1, len));
        prop_assert_eq!(h.headers.len(), fields.len());
        for (h, (n, v)) in h.headers.iter().zip(&fields) {
            prop_assert_eq!(h.name, n.as_str());
            prop_assert_eq!(h.value, v.as_bytes());
        }
        for cut in 0..len {
            prop_assert_eq!(check_request(&raw[..cut]), Err(Error::Incomplete), "cut {}", cut);
        }
    }

    #[test]
    fn response_heads_round_trip(
        status in 100u16..600,
        reason in "[A-Za-z][A-Za-z ]{0,20}",
        framing in prop_oneof![
            Just(None),
            (0u64..u64::MAX).prop_map(Some),
        ],
        chunked in any::<bool>(),
        close in any::<bool>(),
        fields in fields(),
    ) {
        let mut all = fields.clone();
        if chunked {
            all.push(("Transfer-Encoding".into(), "chunked".into()));
        } else if let Some(n) = framing {
            all.push(("Content-Length".into(), n.to_string()));
        }
        if close {
            all.push(("Connection".into(), "close".into()));
        }
        let raw = encode_head(&format!("HTTP/1.1 {status} {}", reason.trim_end()), &all);
        let h = parse_response(&raw).unwrap();
        prop_assert_eq!(h.status, status);
        prop_assert_eq!(h.len, raw.len());
        prop_assert_eq!(check_response(&raw), Ok(raw.len()));
        let expected = match (chunked, framing) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) if (100..200).contains(&status) => Framing::Empty,
            (false, None) => Framing::UntilClose,
        };
        prop_assert_eq!(h.framing, expected);
        prop_assert_eq!(h.reusable, !close);
        prop_assert_eq!(h.rewrite, close);
        for cut in 0..raw.len() {
            prop_assert_eq!(parse_response(&raw[..cut]), Err(Error::Incomplete), "cut {}", cut);
        }
    }

    #[test]
    fn chunked_bodies_round_trip(
        chunks in chunks(),
        trailers in fields(),
        next in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let body = encode_chunked(&chunks, &trailers);
        let mut raw = body.clone();
        raw.extend_from_slice(&next);
        prop_assert_eq!(chunked::parse(&raw), Ok((chunks.concat(), body.len())));
        prop_assert_eq!(chunked::check(&raw), Ok(body.len()));
        for cut in 0..body.len() {
            prop_assert_eq!(chunked::check(&body[..cut]), Err(Error::Incomplete), "cut {}", cut);
        }
    }

    #[test]
    fn chunked_split_anywhere_decodes_the_same(
        chunks in chunks(),
        trailers in fields(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let body = encode_chunked(&chunks, &trailers);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        cuts.push(0);
        cuts.push(body.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut scanner = ChunkScanner::default();
        let mut payload = Vec::new();
        let mut end = None;
        for w in cuts.windows(2) {
            let piece = &body[w[0]..w[1]];
            prop_assert_eq!(end, None, "data after the end");
            if let Some(n) = scanner.decode(piece, |d| payload.extend_from_slice(d)).unwrap() {
                end = Some(w[0] + n);
            }
        }
        prop_assert_eq!(end, Some(body.len()));
        prop_assert_eq!(payload, chunks.concat());
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..2048)) {
        // Heads: an answer for any input; a complete one lies within it.
        for n in [check_request(&raw), check_response(&raw)].into_iter().flatten() {
            prop_assert!(n <= raw.len());
        }
        let _ = parse_response(&raw);
        // Chunked: the payload is never longer than the input, the end
        // is within it, and the scanner's state is a few words.
        if let Ok((payload, n)) = chunked::parse(&raw) {
            prop_assert!(payload.len() <= n && n <= raw.len());
        }
        prop_assert!(std::mem::size_of::<ChunkScanner>() <= 24);
    }

    #[test]
    fn heads_never_buffer_past_the_bound(fill in prop::collection::vec(b'a'..=b'z', 1..64)) {
        // A field that never ends: incomplete up to MAX_HEAD, refused past it.
        let mut raw = b"GET / HTTP/1.1\r\nx: ".to_vec();
        while raw.len() <= MAX_HEAD {
            raw.extend_from_slice(&fill);
        }
        prop_assert_eq!(check_request(&raw), Err(Error::HeadTooLarge));
        prop_assert_eq!(check_request(&raw[..MAX_HEAD]), Err(Error::Incomplete));
    }

    #[test]
    fn chunk_lines_are_bounded(ext in prop::collection::vec(b'a'..=b'z', 1..64)) {
        let mut raw = b"1;".to_vec();
        while raw.len() <= chunked::MAX_LINE as usize + 2 {
            raw.extend_from_slice(&ext);
        }
        prop_assert_eq!(chunked::check(&raw), Err(Error::LineTooLong));
    }
}
