//! The one PostgreSQL protocol 3.0 message codec, and the few replies the
//! proxy writes itself (the refusal of a held or surplus client).
//!
//! Like mini-redis's `Frame`, every message kind has
//! - `check(&[u8]) -> Result<usize, Error>`: is one whole message at the
//!   front of the buffer? Its length, read from the header, without
//!   allocating; [`Error::Incomplete`] when more bytes are needed;
//! - `parse(&[u8]) -> Result<(Self, usize), Error>`: the message and the
//!   bytes it took;
//! - `encode(&self, &mut Vec<u8>)`: the bytes, for what we write.
//!
//! Three families, as the protocol has them:
//! - [`startup`]: the untyped messages a client sends first
//!   (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest);
//! - [`frontend`]: typed client messages (Query, Parse, Bind, ...);
//! - [`backend`]: typed server messages (Authentication, ReadyForQuery,
//!   DataRow, ErrorResponse, ...).
//!
//! Bounds: a declared length above [`MESSAGE_MAX`] (PostgreSQL's own 1 GiB)
//! or, for startup, above [`STARTUP_MAX`] is an error read from the header
//! alone, so a caller that buffers until `check` succeeds never holds more
//! than that; parsing allocates at most what the message holds. Nothing
//! here panics on any input.
//!
//! The relay's observer walks a stream without buffering whole messages;
//! it uses the zero-copy [`Header`] scan (tag and length) from here.

pub mod backend;
pub mod frontend;
mod refuse;
pub mod startup;
mod wire;

#[cfg(test)]
mod tests;

pub use backend::{error_response, parse_error_fields, Backend, ServerError};
pub use frontend::Frontend;
pub use refuse::{refuse_startup, refuse_startup_with};
pub use startup::{starts_with_encryption_request, startup_message, Startup};

/// PostgreSQL's own ceiling for one message, length field included (1 GiB).
pub const MESSAGE_MAX: usize = 1 << 30;
/// PostgreSQL refuses startup packets above this length.
pub const STARTUP_MAX: usize = 10_000;

/// Why bytes are not (yet) a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// More bytes are needed; nothing is wrong yet.
    #[error("incomplete message")]
    Incomplete,
    /// A declared length outside what the protocol allows (below the
    /// header's own size, negative, or above the limit).
    #[error("implausible message length {0}")]
    Length(i64),
    /// A whole message whose content does not parse.
    #[error("malformed message: {0}")]
    Invalid(&'static str),
}

/// The header of a typed message: its tag and its declared length (which
/// counts itself, not the tag). Read without copying or allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The tag; 0 for an untyped (startup-phase) message.
    pub tag: u8,
    /// Declared length, the 4 length bytes included.
    pub len: usize,
    /// A typed message (its tag byte comes before the length), even if
    /// that byte is 0.
    typed: bool,
}

impl Header {
    /// Size of a typed header: tag and length.
    pub const SIZE: usize = 5;

    /// Reads a typed header at the front of `buf`, with `max` as the
    /// largest length accepted.
    #[inline]
    pub fn typed(buf: &[u8], max: usize) -> Result<Header, Error> {
        match buf {
            [tag, a, b, c, d, ..] => Ok(Header {
                tag: *tag,
                len: length([*a, *b, *c, *d], 4, max)?,
                typed: true,
            }),
            _ => Err(Error::Incomplete),
        }
    }

    /// Reads the length of an untyped (startup-phase) message at the front
    /// of `buf`; its tag is 0. At least 8 bytes (length and code).
    #[inline]
    pub fn untyped(buf: &[u8]) -> Result<Header, Error> {
        match buf {
            [a, b, c, d, ..] => Ok(Header {
                tag: 0,
                len: length([*a, *b, *c, *d], 8, STARTUP_MAX)?,
                typed: false,
            }),
            _ => Err(Error::Incomplete),
        }
    }

    /// Bytes of the whole message on the wire (tag included if typed).
    #[inline]
    pub fn total(&self) -> usize {
        if self.typed {
            self.len + 1
        } else {
            self.len
        }
    }

    /// Bytes of the body (after the length).
    #[inline]
    pub fn body_len(&self) -> usize {
        self.len - 4
    }
}

/// A declared length, checked against `min..=max`.
#[inline]
fn length(be: [u8; 4], min: usize, max: usize) -> Result<usize, Error> {
    let len = i32::from_be_bytes(be);
    match usize::try_from(len) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::Length(i64::from(len))),
    }
}

/// A whole typed message at the front of `buf`, limited to `max`: its
/// header and body. `check` and `parse` of [`frontend`] and [`backend`]
/// are built on this.
pub fn split_typed(buf: &[u8], max: usize) -> Result<(Header, &[u8]), Error> {
    let h = Header::typed(buf, max)?;
    let body = buf.get(Header::SIZE..h.total()).ok_or(Error::Incomplete)?;
    Ok((h, body))
}

/// A whole typed message at the front of `buf` (any tag): its length on
/// the wire.
pub fn check_typed(buf: &[u8]) -> Result<usize, Error> {
    split_typed(buf, MESSAGE_MAX).map(|(h, _)| h.total())
}
