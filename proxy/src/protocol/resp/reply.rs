//! A reply as a RESP2 client of ours reads it ([`Reply`], [`parse_reply`]):
//! the fallback's journal replay and the tests that talk to the fallback.
//! It is [`Frame`] parsing under [`Limits::RESP2_REPLY`], with the
//! behaviour the probe parser had: `Ok(None)` on incomplete input, the
//! same bounds, RESP3 types refused.

use super::{parse, Error, Frame, Limits};

/// Deepest array nesting accepted (`ROLE` on a primary needs 3).
pub const MAX_DEPTH: usize = 16;
/// Largest bulk string accepted.
pub const MAX_BULK: usize = 4 * 1024 * 1024;
/// Longest simple string / error / integer line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Most elements accepted in one array.
pub const MAX_ARRAY: usize = 1024 * 1024;
/// Largest whole reply buffered before giving up.
pub const MAX_REPLY: usize = 8 * 1024 * 1024;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (the text after the `-`).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`.
    Nil,
    /// `*2\r\n...`
    Array(Vec<Reply>),
}

/// Parses one reply from the start of `buf`: `Ok(Some((reply, consumed)))`,
/// `Ok(None)` when more bytes are needed, or an error on bytes that can
/// never become a valid reply.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, Error> {
    match parse(buf, &Limits::RESP2_REPLY) {
        Ok((frame, used)) => Ok(Some((Reply::from(frame), used))),
        Err(Error::Incomplete) => Ok(None),
        Err(e) => Err(e),
    }
}

impl From<Frame> for Reply {
    /// RESP3 frames (which [`parse_reply`] never yields) become what a
    /// RESP2 connection would have been sent instead.
    fn from(frame: Frame) -> Reply {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match frame {
            Frame::Simple(s) => Reply::Simple(s),
            Frame::Error(s) => Reply::Error(s),
            Frame::BulkError(e) => Reply::Error(text(&e)),
            Frame::Integer(i) => Reply::Integer(i),
            Frame::Boolean(b) => Reply::Integer(i64::from(b)),
            Frame::Bulk(b) | Frame::Verbatim { text: b, .. } => Reply::Bulk(b),
            Frame::BigNumber(n) => Reply::Bulk(n.into_bytes()),
            Frame::Double(d) => Reply::Bulk(super::frame::double_text(d).into_bytes()),
            Frame::Null => Reply::Nil,
            Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
                Reply::Array(items.into_iter().map(Reply::from).collect())
            }
            Frame::Map(pairs) | Frame::Attribute(pairs) => Reply::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [Reply::from(k), Reply::from(v)])
                    .collect(),
            ),
        }
    }
}

impl Reply {
    /// The text of a scalar reply (simple, error, integer, bulk); `None`
    /// for nil and arrays. Bulk bytes are decoded lossily as UTF-8.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) | Reply::Error(s) => Some(s.clone()),
            Reply::Integer(i) => Some(i.to_string()),
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Nil | Reply::Array(_) => None,
        }
    }

    /// The reply as a list of strings: a scalar gives one element, nil none;
    /// an array gives its elements in order, nested arrays flattened
    /// depth-first and nil elements as `""` (so positions are kept).
    pub fn to_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Reply::Nil => {}
            Reply::Array(items) => flatten(items, &mut out),
            other => out.extend(other.as_text()),
        }
        out
    }
}

fn flatten(items: &[Reply], out: &mut Vec<String>) {
    for item in items {
        match item {
            Reply::Array(inner) => flatten(inner, out),
            Reply::Nil => out.push(String::new()),
            other => out.extend(other.as_text()),
        }
    }
}
