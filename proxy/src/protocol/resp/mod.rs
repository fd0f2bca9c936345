//! The one RESP codec (RESP2 and RESP3), in the way of mini-redis's
//! `Frame`: every place that reads or writes Redis's protocol goes through
//! it (the memory fallback, its journal replay, the relay's observer, the
//! errors the proxy writes itself).
//!
//! - [`Frame`]: the value, and its encoder ([`Frame::write_to`], or
//!   [`Frame::encode`] for a RESP2 or RESP3 connection).
//! - [`check`]: is one whole frame at the start of the buffer? Its kind
//!   and length, without allocating ([`Error::Incomplete`] when not yet).
//!   [`parse`] builds the frame. Both read under [`Limits`] (length, line,
//!   element count, nesting): hostile input costs no more memory than a
//!   small multiple of its own size, and never panics.
//! - [`multibulk`] / [`parse_command`]: commands as a server reads them,
//!   multibulk (zero-copy) or inline.
//! - For the relay's observer, on the hot path and allocating nothing:
//!   [`whole_multibulk`] walks a command wholly inside a chunk in one pass,
//!   and [`stream::Replies`] counts replies in a stream that arrives in
//!   chunks (byte by byte; a `check`-first fast path was measured slower).
//! - [`Reply`] / [`parse_reply`]: a reply as a RESP2 client sees it.

mod command;
mod frame;
mod parse;
mod reply;
pub mod stream;
#[cfg(test)]
mod tests;

pub use command::{multibulk, parse_command, whole_multibulk, Args, Command, CommandLimits};
pub use frame::{write_command, Frame};
pub use parse::{check, parse, Scan};
pub use reply::{parse_reply, Reply, MAX_ARRAY, MAX_BULK, MAX_DEPTH, MAX_LINE, MAX_REPLY};

/// Why bytes are not (yet) a frame. Cheap to build: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// More bytes are needed: what is there may still become valid.
    #[error("incomplete frame")]
    Incomplete,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{what} of {len} is too large")]
    TooLarge { what: &'static str, len: usize },
    #[error("frame nested too deeply")]
    TooDeep,
    #[error("unexpected frame type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("expected '{}', got '{}'", ch(.expected), ch(.got))]
    Unexpected { expected: u8, got: u8 },
    /// A RESP3 push or attribute frame where [`Limits::out_of_band`] is off.
    #[error("out-of-band frame (push or attribute)")]
    OutOfBand,
}

fn ch(b: &u8) -> char {
    char::from(*b)
}

impl Error {
    /// A fixed text for the error, for reports that take a `&'static str`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Incomplete => "resp: incomplete frame",
            Error::Invalid(why) => why,
            Error::TooLarge { .. } => "resp: too large",
            Error::TooDeep => "resp: reply nested too deep",
            Error::UnknownType(_) => "resp: unknown reply type",
            Error::Unexpected { .. } => "resp: unexpected byte",
            Error::OutOfBand => "resp: out-of-band frame",
        }
    }
}

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Simple,
    Error,
    Integer,
    Bulk,
    Null,
    Array,
    Boolean,
    Double,
    BigNumber,
    BulkError,
    Verbatim,
    Map,
    Set,
    Attribute,
    Push,
}

impl Kind {
    /// The kind a type byte starts; `None` for a byte that starts none.
    pub fn of(tag: u8) -> Option<Kind> {
        Some(match tag {
            b'+' => Kind::Simple,
            b'-' => Kind::Error,
            b':' => Kind::Integer,
            b'$' => Kind::Bulk,
            b'*' => Kind::Array,
            b'_' => Kind::Null,
            b'#' => Kind::Boolean,
            b',' => Kind::Double,
            b'(' => Kind::BigNumber,
            b'!' => Kind::BulkError,
            b'=' => Kind::Verbatim,
            b'%' => Kind::Map,
            b'~' => Kind::Set,
            b'|' => Kind::Attribute,
            b'>' => Kind::Push,
            _ => return None,
        })
    }

    /// Whether only RESP3 has this kind.
    pub fn is_resp3(self) -> bool {
        !matches!(
            self,
            Kind::Simple | Kind::Error | Kind::Integer | Kind::Bulk | Kind::Array
        )
    }
}

/// Bounds a frame is read under. A declared length or count past them is
/// refused as soon as it is read, before anything is reserved for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting: a frame inside more aggregates is refused.
    pub max_depth: usize,
    /// Longest simple string, error, integer or length line.
    pub max_line: usize,
    /// Largest bulk string (and bulk error, verbatim string).
    pub max_bulk: usize,
    /// Most elements (pairs, for a map) in one aggregate.
    pub max_elements: usize,
    /// Most digits in an integer or a length.
    pub max_digits: usize,
    /// Whether RESP3 types are accepted (else they are unknown types).
    pub resp3: bool,
    /// Whether push and attribute frames are accepted (else
    /// [`Error::OutOfBand`]).
    pub out_of_band: bool,
}

impl Limits {
    /// A reply to a RESP2 client of ours (the fallback's journal replay):
    /// what its probes always accepted.
    pub const RESP2_REPLY: Limits = Limits {
        max_depth: reply::MAX_DEPTH,
        max_line: reply::MAX_LINE,
        max_bulk: reply::MAX_BULK,
        max_elements: reply::MAX_ARRAY,
        max_digits: 20,
        resp3: false,
        out_of_band: false,
    };

    /// Any RESP3 frame a well-behaved server sends (Redis's own bounds:
    /// 512 MB bulk strings).
    pub const RESP3: Limits = Limits {
        max_depth: 32,
        max_line: 64 * 1024,
        max_bulk: 512 * 1024 * 1024,
        max_elements: 1 << 24,
        max_digits: 20,
        resp3: true,
        out_of_band: true,
    };
}

/// A RESP error line `-ERR <message>`; CR and LF in the message become
/// spaces so that the reply stays one line whatever the message holds.
pub fn error_reply(message: &str) -> Vec<u8> {
    let frame = Frame::Error(format!("ERR {message}"));
    let mut out = Vec::with_capacity(frame.encoded_len(2));
    frame.write_to(&mut out);
    out
}
