//! The RESP value ([`Frame`], RESP2 and RESP3) and its encoder: exact
//! RESP3 ([`Frame::write_to`]), or for a connection that speaks RESP2 the
//! downgrade Redis itself applies ([`Frame::encode`]); [`Frame::encoded_len`]
//! says how many bytes either writes, so a caller reserves them at once.

/// One RESP value. Both null forms of RESP2 (`$-1`, `*-1`) and the RESP3
/// null (`_`) parse to [`Frame::Null`].
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the whole line after `-`.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1`, `*-1`, `_`
    Null,
    /// `*2\r\n...`
    Array(Vec<Frame>),
    /// `#t` / `#f` (RESP3)
    Boolean(bool),
    /// `,3.14`, `,inf`, `,nan` (RESP3)
    Double(f64),
    /// `(3492890328409238509324850943850943825024385` (RESP3): the digits,
    /// with an optional leading `-`.
    BigNumber(String),
    /// `!21\r\nSYNTAX invalid syntax` (RESP3)
    BulkError(Vec<u8>),
    /// `=15\r\ntxt:Some string` (RESP3): a three-byte format and the text.
    Verbatim { format: [u8; 3], text: Vec<u8> },
    /// `%1\r\n+key\r\n+value` (RESP3)
    Map(Vec<(Frame, Frame)>),
    /// `~2\r\n...` (RESP3)
    Set(Vec<Frame>),
    /// `|1\r\n...` (RESP3): out-of-band data that precedes a reply; parsed
    /// as a frame of its own, the reply being the next frame.
    Attribute(Vec<(Frame, Frame)>),
    /// `>2\r\n...` (RESP3): out-of-band data the server sends unasked.
    Push(Vec<Frame>),
}

impl Frame {
    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }

    pub fn err(msg: impl Into<String>) -> Frame {
        Frame::Error(msg.into())
    }

    pub fn bulk(b: &[u8]) -> Frame {
        Frame::Bulk(b.to_vec())
    }

    /// A command as clients send it: an array of bulk strings.
    pub fn command<A: AsRef<[u8]>>(args: &[A]) -> Frame {
        Frame::Array(args.iter().map(|a| Frame::bulk(a.as_ref())).collect())
    }

    /// Appends the frame exactly, in RESP3 (RESP2 frames are RESP3 too).
    /// CR and LF in a simple string or error become spaces: the line could
    /// not be read back otherwise.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.emit(3, out);
    }

    /// Appends the frame for a connection speaking RESP`proto` (2 or 3).
    /// In RESP2, as Redis does: null is `$-1`, a boolean an integer, a
    /// double, big number or verbatim string a bulk string, a bulk error a
    /// simple error; set and push arrays, map and attribute flat arrays of
    /// twice as many elements (Redis sends RESP2 clients no attributes).
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        self.emit(proto, out);
    }

    /// How many bytes [`Frame::encode`] appends for `proto`.
    pub fn encoded_len(&self, proto: u8) -> usize {
        let mut n = Count(0);
        self.emit(proto, &mut n);
        n.0
    }

    fn emit<S: Sink>(&self, proto: u8, out: &mut S) {
        let v3 = proto >= 3;
        match self {
            Frame::Simple(s) => line(out, b'+', s.as_bytes()),
            Frame::Error(s) => line(out, b'-', s.as_bytes()),
            Frame::Integer(i) => number(out, b':', *i),
            Frame::Bulk(b) => blob(out, b'$', &[], b),
            Frame::Null if v3 => out.put(b"_\r\n"),
            Frame::Null => out.put(b"$-1\r\n"),
            Frame::Array(items) => aggregate(out, b'*', items, proto),
            Frame::Boolean(b) if v3 => out.put(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Frame::Boolean(b) => number(out, b':', i64::from(*b)),
            Frame::Double(d) => {
                let text = double_text(*d);
                if v3 {
                    line(out, b',', text.as_bytes());
                } else {
                    blob(out, b'$', &[], text.as_bytes());
                }
            }
            Frame::BigNumber(n) if v3 => line(out, b'(', n.as_bytes()),
            Frame::BigNumber(n) => blob(out, b'$', &[], n.as_bytes()),
            Frame::BulkError(e) if v3 => blob(out, b'!', &[], e),
            Frame::BulkError(e) => line(out, b'-', e),
            Frame::Verbatim { format, text } if v3 => {
                blob(out, b'=', &[format.as_slice(), b":"].concat(), text)
            }
            Frame::Verbatim { text, .. } => blob(out, b'$', &[], text),
            Frame::Map(pairs) => pairs_of(out, b'%', pairs, proto),
            Frame::Set(items) => aggregate(out, if v3 { b'~' } else { b'*' }, items, proto),
            Frame::Attribute(pairs) => pairs_of(out, b'|', pairs, proto),
            Frame::Push(items) => aggregate(out, if v3 { b'>' } else { b'*' }, items, proto),
        }
    }
}

/// Appends a command as clients send it (an array of bulk strings), without
/// building its [`Frame`]: the same bytes as `Frame::command(args).write_to`.
pub fn write_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    number(out, b'*', i64::try_from(args.len()).unwrap_or(i64::MAX));
    for a in args {
        blob(out, b'$', &[], a.as_ref());
    }
}

/// Where [`Frame::emit`] writes: a buffer, or a byte counter.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Count(usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

/// A one-line frame; CR and LF in the text become spaces.
fn line<S: Sink>(out: &mut S, prefix: u8, text: &[u8]) {
    out.put(&[prefix]);
    let mut rest = text;
    while let Some(p) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        out.put(rest.get(..p).unwrap_or_default());
        out.put(b" ");
        rest = rest.get(p + 1..).unwrap_or_default();
    }
    out.put(rest);
    out.put(b"\r\n");
}

/// `prefix` and a decimal, as a line.
fn number<S: Sink>(out: &mut S, prefix: u8, n: i64) {
    let mut digits = [0u8; 20];
    line(out, prefix, decimal(n, &mut digits));
}

/// The decimal text of `n`, written at the end of `buf`.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        if let Some(slot) = buf.get_mut(at) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        if let Some(slot) = buf.get_mut(at) {
            *slot = b'-';
        }
    }
    buf.get(at..).unwrap_or_default()
}

/// A length-prefixed frame (`$`, `!`, `=`): `head` then `data`.
fn blob<S: Sink>(out: &mut S, prefix: u8, head: &[u8], data: &[u8]) {
    let len = i64::try_from(head.len().saturating_add(data.len())).unwrap_or(i64::MAX);
    number(out, prefix, len);
    out.put(head);
    out.put(data);
    out.put(b"\r\n");
}

fn aggregate<S: Sink>(out: &mut S, prefix: u8, items: &[Frame], proto: u8) {
    number(out, prefix, i64::try_from(items.len()).unwrap_or(i64::MAX));
    for item in items {
        item.emit(proto, out);
    }
}

/// A map or attribute: in RESP2 a flat array of twice as many elements.
fn pairs_of<S: Sink>(out: &mut S, prefix: u8, pairs: &[(Frame, Frame)], proto: u8) {
    let n = i64::try_from(pairs.len()).unwrap_or(i64::MAX);
    if proto >= 3 {
        number(out, prefix, n);
    } else {
        number(out, b'*', n.saturating_mul(2));
    }
    for (k, v) in pairs {
        k.emit(proto, out);
        v.emit(proto, out);
    }
}

/// RESP3's spelling of a double: `inf`, `-inf`, `nan`, or the shortest
/// decimal that reads back as the same value.
pub(super) fn double_text(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{d:?}")
    }
}
