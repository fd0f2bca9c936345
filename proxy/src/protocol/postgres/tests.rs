//! The codec's tests: fixed cases for what the proxy writes and reads, and
//! property tests: round-trips of every message kind, every strict prefix
//! is `Incomplete`, arbitrary bytes never panic, and a declared length is
//! checked from the header alone (bounded memory).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::backend::{Auth, Field, OTHER_TAGS};
use super::startup::{CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_V3, SSL_REQUEST};
use super::*;

// ---- what the proxy writes ----

#[tokio::test]
async fn ssl_request_gets_n_then_the_error_after_startup() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut proxy, mut client) = tokio::io::duplex(1024);
    let ssl = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let task = tokio::spawn(async move {
        refuse_startup(&mut proxy, &ssl, "x", std::time::Duration::from_secs(2)).await;
    });
    let mut n = [0u8; 1];
    client.read_exact(&mut n).await.unwrap();
    assert_eq!(n[0], b'N');
    client
        .write_all(&[0, 0, 0, 9, 0, 3, 0, 0, 0])
        .await
        .unwrap();
    let mut e = [0u8; 1];
    client.read_exact(&mut e).await.unwrap();
    assert_eq!(e[0], b'E');
    task.await.unwrap();
}

#[test]
fn error_response_is_well_framed() {
    let e = error_response("08006", "no upstream");
    let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
    assert_eq!(len + 1, e.len());
    assert!(e.windows(5).any(|w| w == b"08006"));
}

#[test]
fn error_response_bytes_and_fields() {
    let e = error_response("53300", "too\0 many");
    let mut want = vec![b'E', 0, 0, 0, 0];
    want.extend_from_slice(b"SFATAL\0VFATAL\0C53300\0Mtoo many\0\0");
    let len = (want.len() - 1) as u32;
    want[1..5].copy_from_slice(&len.to_be_bytes());
    assert_eq!(e, want);
    let (msg, n) = Backend::parse(&e).unwrap();
    assert_eq!(n, e.len());
    let Backend::ErrorResponse(_) = msg else {
        panic!("{msg:?}")
    };
    let fields = parse_error_fields(&e[5..]);
    assert_eq!(
        fields,
        ServerError {
            severity: "FATAL".into(),
            code: "53300".into(),
            message: "too many".into(),
        }
    );
}

#[test]
fn startup_message_bytes() {
    // The bytes the health probe's own encoder has always sent.
    let s = startup_message("u", "d").unwrap();
    let mut want = vec![0, 0, 0, 0];
    want.extend_from_slice(&196_608i32.to_be_bytes());
    want.extend_from_slice(b"user\0u\0database\0d\0application_name\0continuity-probe\0\0");
    let len = want.len() as u32;
    want[..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(s, want);
    assert!(startup_message("a\0b", "d").is_err());
    assert_eq!(Startup::check(&s), Ok(s.len()));
}

#[test]
fn query_bytes() {
    assert_eq!(
        frontend::query("SELECT 1").unwrap(),
        b"Q\0\0\0\x0dSELECT 1\0"
    );
}

#[test]
fn encryption_requests() {
    let ssl = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    assert!(starts_with_encryption_request(&ssl));
    assert!(starts_with_encryption_request(
        &[&ssl[..], b"more"].concat()
    ));
    assert!(!starts_with_encryption_request(&ssl[..7]));
    let mut gss = ssl;
    gss[7] = 0x30;
    assert!(starts_with_encryption_request(&gss));
    let mut cancel = ssl;
    cancel[7] = 0x2e;
    assert!(!starts_with_encryption_request(&cancel));
    assert_eq!(Startup::parse(&ssl), Ok((Startup::SslRequest, 8)));
}

// ---- what the proxy reads ----

#[test]
fn error_fields_are_lenient() {
    let e = parse_error_fields(b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
    assert_eq!(e.code, "28P01");
    assert_eq!(e.message, "password authentication failed");
    // Truncated: the fields before the cut are kept.
    assert_eq!(parse_error_fields(b"SERROR\0C08006\0Mcut").code, "08006");
    assert_eq!(parse_error_fields(b"SFAT"), ServerError::default());
    let _ = parse_error_fields(&[0xff; 7]);
    // The last of a repeated field wins.
    assert_eq!(parse_error_fields(b"C1\0C2\0\0").code, "2");
}

#[test]
fn data_row_and_auth() {
    let row = [
        b'D', 0, 0, 0, 15, 0, 2, 0, 0, 0, 1, b't', 0xff, 0xff, 0xff, 0xff,
    ];
    assert_eq!(
        Backend::parse(&row),
        Ok((Backend::DataRow(vec![Some(b"t".to_vec()), None]), 16))
    );
    // A value longer than the row, a negative column count.
    assert!(Backend::parse(&[b'D', 0, 0, 0, 11, 0, 1, 0, 0, 0, 9, b'x']).is_err());
    assert!(Backend::parse(&[b'D', 0, 0, 0, 6, 0xff, 0xff]).is_err());
    let md5 = [b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4];
    assert_eq!(
        Backend::parse(&md5),
        Ok((
            Backend::Authentication(Auth::Md5 { salt: [1, 2, 3, 4] }),
            13
        ))
    );
    let sasl = b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0";
    assert_eq!(
        Backend::parse(sasl),
        Ok((
            Backend::Authentication(Auth::Sasl(vec![b"SCRAM-SHA-256".to_vec()])),
            sasl.len()
        ))
    );
}

#[test]
fn length_bombs_are_refused_from_the_header() {
    for head in [
        [b'D', 0x7f, 0xff, 0xff, 0xff], // 2 GiB
        [b'D', 0x40, 0, 0, 1],          // 1 GiB + 1
        [b'D', 0xff, 0xff, 0xff, 0xff], // -1
        [b'D', 0x80, 0, 0, 0],          // i32::MIN
        [b'D', 0, 0, 0, 3],             // shorter than itself
        [b'D', 0, 0, 0, 0],
    ] {
        assert!(
            matches!(Backend::check(&head), Err(Error::Length(_))),
            "{head:?}"
        );
        assert!(
            matches!(Frontend::parse(&head), Err(Error::Length(_))),
            "{head:?}"
        );
    }
    assert_eq!(
        Backend::check(&[b'D', 0x40, 0, 0, 0]),
        Err(Error::Incomplete),
        "exactly 1 GiB is allowed"
    );
    assert_eq!(
        Backend::parse_limited(&[b'D', 0, 0x10, 0, 1], 1 << 20),
        Err(Error::Length(0x10_0001))
    );
    for head in [
        [0x7f, 0xff, 0xff, 0xff],
        [0xff, 0xff, 0xff, 0xf8],
        [0, 0, 0, 7],
        [0, 0, 0x27, 0x11], // 10_001
    ] {
        assert!(
            matches!(Startup::check(&head), Err(Error::Length(_))),
            "{head:?}"
        );
    }
    // A column count far beyond the body is an error, not a reservation.
    let bomb = [b'D', 0, 0, 0, 6, 0x7f, 0xff];
    assert!(matches!(Backend::parse(&bomb), Err(Error::Invalid(_))));
    assert_eq!(frontend::room(32_767, 2, 4), 0);
}

#[test]
fn header_scan() {
    let h = Header::typed(b"Z\0\0\0\x05I", MESSAGE_MAX).unwrap();
    assert_eq!((h.tag, h.len, h.total(), h.body_len()), (b'Z', 5, 6, 1));
    assert_eq!(
        Header::typed(b"Z\0\0\0", MESSAGE_MAX),
        Err(Error::Incomplete)
    );
    let h = Header::untyped(&[0, 0, 0, 8]).unwrap();
    assert_eq!((h.tag, h.total(), h.body_len()), (0, 8, 4));
    assert_eq!(check_typed(b"Z\0\0\0\x05"), Err(Error::Incomplete));
    // A typed message is typed even with tag 0 (not PostgreSQL, but framed).
    assert_eq!(check_typed(&[0, 0, 0, 0, 5, 1]), Ok(6));
    assert_eq!(check_typed(b"Z\0\0\0\x05Ixx"), Ok(6));
}

#[test]
fn known_tags_are_the_parsed_ones() {
    for tag in 0..=u8::MAX {
        let msg = [tag, 0, 0, 0, 4];
        let unknown =
            |e: Option<Error>| matches!(e, Some(Error::Invalid(m)) if m.starts_with("unknown"));
        assert_eq!(
            frontend::is_tag(tag),
            !unknown(Frontend::parse(&msg).err()),
            "{tag}"
        );
        assert_eq!(
            backend::is_tag(tag),
            !unknown(Backend::parse(&msg).err()),
            "{tag}"
        );
    }
}

// ---- properties ----

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Bytes without NUL, as a C string holds.
fn text(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..max)
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_]{1,12}"
}

fn startup() -> impl Strategy<Value = Startup> {
    prop_oneof![
        (
            0i32..=0xffff,
            proptest::collection::vec((name(), "[^\\x00]{0,12}"), 0..5)
        )
            .prop_map(|(minor, params)| Startup::Startup {
                version: PROTOCOL_V3 | minor,
                params
            }),
        Just(Startup::SslRequest),
        Just(Startup::GssEncRequest),
        (any::<i32>(), bytes(33)).prop_map(|(pid, secret)| Startup::Cancel { pid, secret }),
    ]
}

fn frontend() -> impl Strategy<Value = Frontend> {
    let value = proptest::option::of(bytes(16));
    prop_oneof![
        text(40).prop_map(Frontend::Query),
        (
            text(8),
            text(40),
            proptest::collection::vec(any::<i32>(), 0..4)
        )
            .prop_map(|(name, query, param_types)| Frontend::Parse {
                name,
                query,
                param_types
            }),
        (
            text(8),
            text(8),
            proptest::collection::vec(any::<i16>(), 0..3),
            proptest::collection::vec(value, 0..4),
            proptest::collection::vec(any::<i16>(), 0..3),
        )
            .prop_map(
                |(portal, statement, param_formats, params, result_formats)| {
                    Frontend::Bind {
                        portal,
                        statement,
                        param_formats,
                        params,
                        result_formats,
                    }
                }
            ),
        (any::<u8>(), text(8)).prop_map(|(kind, name)| Frontend::Describe { kind, name }),
        (any::<u8>(), text(8)).prop_map(|(kind, name)| Frontend::Close { kind, name }),
        (text(8), any::<i32>())
            .prop_map(|(portal, max_rows)| Frontend::Execute { portal, max_rows }),
        Just(Frontend::Sync),
        Just(Frontend::Flush),
        Just(Frontend::Terminate),
        Just(Frontend::CopyDone),
        bytes(32).prop_map(Frontend::Password),
        bytes(32).prop_map(Frontend::FunctionCall),
        bytes(32).prop_map(Frontend::CopyData),
        text(16).prop_map(Frontend::CopyFail),
    ]
}

fn fields() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec((1u8..=255, text(16)), 0..5)
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        Just(Auth::Ok),
        Just(Auth::Cleartext),
        any::<[u8; 4]>().prop_map(|salt| Auth::Md5 { salt }),
        proptest::collection::vec(proptest::collection::vec(1u8..=255, 1..16), 0..3)
            .prop_map(Auth::Sasl),
        bytes(32).prop_map(Auth::SaslContinue),
        bytes(32).prop_map(Auth::SaslFinal),
        (
            any::<i32>().prop_filter("modelled", |c| ![0, 3, 5, 10, 11, 12].contains(c)),
            bytes(16)
        )
            .prop_map(|(code, data)| Auth::Other { code, data }),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    (
        text(12),
        any::<i32>(),
        any::<i16>(),
        any::<i32>(),
        any::<i16>(),
        any::<i32>(),
        any::<i16>(),
    )
        .prop_map(
            |(name, table_oid, column, type_oid, type_size, type_modifier, format)| Field {
                name,
                table_oid,
                column,
                type_oid,
                type_size,
                type_modifier,
                format,
            },
        )
}

fn backend() -> impl Strategy<Value = Backend> {
    prop_oneof![
        auth().prop_map(Backend::Authentication),
        (text(12), text(12)).prop_map(|(name, value)| Backend::ParameterStatus { name, value }),
        (any::<i32>(), bytes(33)).prop_map(|(pid, secret)| Backend::BackendKeyData { pid, secret }),
        any::<u8>().prop_map(Backend::ReadyForQuery),
        proptest::collection::vec(field(), 0..4).prop_map(Backend::RowDescription),
        proptest::collection::vec(proptest::option::of(bytes(16)), 0..5).prop_map(Backend::DataRow),
        text(16).prop_map(Backend::CommandComplete),
        fields().prop_map(Backend::ErrorResponse),
        fields().prop_map(Backend::NoticeResponse),
        Just(Backend::EmptyQueryResponse),
        Just(Backend::ParseComplete),
        Just(Backend::BindComplete),
        Just(Backend::CloseComplete),
        Just(Backend::NoData),
        Just(Backend::PortalSuspended),
        Just(Backend::CopyDone),
        proptest::collection::vec(any::<i32>(), 0..5).prop_map(Backend::ParameterDescription),
        (any::<i32>(), text(12), text(24)).prop_map(|(pid, channel, payload)| {
            Backend::Notification {
                pid,
                channel,
                payload,
            }
        }),
        bytes(32).prop_map(Backend::CopyData),
        (proptest::sample::select(OTHER_TAGS), bytes(32))
            .prop_map(|(tag, body)| Backend::Other { tag, body }),
    ]
}

/// What every message kind must satisfy, given its encoding `wire`.
macro_rules! round_trip {
    ($ty:ty, $msg:expr, $junk:expr) => {{
        let msg = $msg;
        let mut wire = Vec::new();
        msg.encode(&mut wire).unwrap();
        prop_assert_eq!(<$ty>::check(&wire), Ok(wire.len()));
        prop_assert_eq!(<$ty>::parse(&wire), Ok((msg.clone(), wire.len())));
        // Whatever follows is the next message's business.
        let mut more = wire.clone();
        more.extend_from_slice(&$junk);
        prop_assert_eq!(<$ty>::check(&more), Ok(wire.len()));
        prop_assert_eq!(<$ty>::parse(&more), Ok((msg, wire.len())));
        // Every strict prefix asks for more.
        for cut in 0..wire.len() {
            prop_assert_eq!(<$ty>::check(&wire[..cut]), Err(Error::Incomplete));
            prop_assert_eq!(<$ty>::parse(&wire[..cut]), Err(Error::Incomplete));
        }
    }};
}

/// What parsing arbitrary bytes must satisfy: no panic; a message is what
/// the bytes said, byte for byte (so it holds no more than they did);
/// `Incomplete` only under a declared length within the limit, so a
/// caller buffering until `check` passes holds at most that.
macro_rules! arbitrary {
    ($ty:ty, $buf:expr, $declared:expr, $max:expr) => {{
        let buf: &[u8] = $buf;
        let checked = <$ty>::check(buf);
        // A whole message is as long as its header says.
        if let (Ok(n), Some(total)) = (checked, $declared(buf)) {
            prop_assert_eq!(n, total);
        }
        match <$ty>::parse(buf) {
            Ok((msg, n)) => {
                prop_assert_eq!(checked, Ok(n));
                let mut again = Vec::new();
                msg.encode(&mut again).unwrap();
                prop_assert_eq!(&again[..], &buf[..n]);
            }
            Err(Error::Incomplete) => {
                prop_assert_eq!(checked, Err(Error::Incomplete));
                if let Some(total) = $declared(buf) {
                    prop_assert!(total <= $max && buf.len() < total);
                }
            }
            Err(Error::Length(_)) => prop_assert!(matches!(checked, Err(Error::Length(_)))),
            Err(Error::Invalid(_)) => prop_assert!(checked.is_ok()),
        }
    }};
}

/// Bytes a typed message says it takes on the wire.
fn typed_total(buf: &[u8]) -> Option<usize> {
    Some(u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize + 1)
}

/// Bytes an untyped message says it takes on the wire.
fn untyped_total(buf: &[u8]) -> Option<usize> {
    Some(u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn startup_round_trips(msg in startup(), junk in bytes(16)) {
        round_trip!(Startup, msg, junk);
    }

    #[test]
    fn frontend_round_trips(msg in frontend(), junk in bytes(16)) {
        round_trip!(Frontend, msg, junk);
    }

    #[test]
    fn backend_round_trips(msg in backend(), junk in bytes(16)) {
        round_trip!(Backend, msg, junk);
    }

    #[test]
    fn arbitrary_bytes(buf in bytes(64)) {
        arbitrary!(Frontend, &buf, typed_total, MESSAGE_MAX + 1);
        arbitrary!(Backend, &buf, typed_total, MESSAGE_MAX + 1);
        arbitrary!(Startup, &buf, untyped_total, STARTUP_MAX);
        let _ = parse_error_fields(&buf);
    }

    /// Arbitrary bodies behind a plausible header, so that parsing goes
    /// past the header far more often than with random bytes.
    #[test]
    fn arbitrary_bodies(
        tag in any::<u8>(),
        body in bytes(48),
        code in prop_oneof![
            any::<u32>(),
            Just(PROTOCOL_V3 as u32),
            Just(SSL_REQUEST),
            Just(GSSENC_REQUEST),
            Just(CANCEL_REQUEST),
        ],
    ) {
        let mut typed = vec![tag];
        typed.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        typed.extend_from_slice(&body);
        arbitrary!(Frontend, &typed, typed_total, MESSAGE_MAX + 1);
        arbitrary!(Backend, &typed, typed_total, MESSAGE_MAX + 1);
        let mut untyped = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        untyped.extend_from_slice(&code.to_be_bytes());
        untyped.extend_from_slice(&body);
        arbitrary!(Startup, &untyped, untyped_total, STARTUP_MAX);
    }

    /// Any declared length is judged from the 5-byte header alone.
    #[test]
    fn declared_lengths(
        tag in any::<u8>(),
        len in prop_oneof![
            any::<u32>(),
            0u32..16,
            (MESSAGE_MAX as u32 - 2)..=(MESSAGE_MAX as u32 + 2),
            (i32::MAX as u32 - 2)..=(i32::MAX as u32 + 2),
        ],
    ) {
        let mut head = vec![tag];
        head.extend_from_slice(&len.to_be_bytes());
        let got = Backend::check(&head);
        if (4..=MESSAGE_MAX as u32).contains(&len) && len > 4 {
            prop_assert_eq!(got, Err(Error::Incomplete));
        } else if len == 4 {
            prop_assert_eq!(got, Ok(5));
        } else {
            prop_assert_eq!(got, Err(Error::Length(i64::from(len as i32))));
        }
    }

    #[test]
    fn error_fields_agree(f in fields()) {
        let mut wire = Vec::new();
        Backend::ErrorResponse(f.clone()).encode(&mut wire).unwrap();
        let got = parse_error_fields(&wire[5..]);
        let last = |c: u8| f.iter().rev().find(|(k, _)| *k == c)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        prop_assert_eq!(got.severity, last(b'S'));
        prop_assert_eq!(got.code, last(b'C'));
        prop_assert_eq!(got.message, last(b'M'));
    }
}
