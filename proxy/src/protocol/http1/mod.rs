//! The HTTP/1 codec: request and response heads (on `httparse`) and the
//! chunked transfer coding (RFC 9112 7.1), with the bounds a proxy needs.
//!
//! As mini-redis's `Frame`, each part has a `check` (is a whole one in the
//! buffer, and how long is it) and a `parse`, with [`Error::Incomplete`]
//! when more bytes are needed; the connection that owns the socket and the
//! buffer (the gateway's lean path, `gateway/h1/`) reads more and calls
//! again. Nothing here allocates per call, except [`chunked::parse`], which
//! returns the decoded payload (never longer than its input).
//!
//! Bounds: a head still incomplete past [`MAX_HEAD`] bytes is
//! [`Error::HeadTooLarge`]; more than [`MAX_HEADERS`] fields is
//! [`Error::TooManyHeaders`]; a chunk-size line of more than
//! [`chunked::MAX_SIZE_DIGITS`] hex digits, or a chunk extension or trailer
//! line longer than [`chunked::MAX_LINE`], is [`Error::LineTooLong`].

pub mod chunked;
mod head;

pub use head::{
    check_request, check_response, content_length, parse_request, parse_response,
    parse_response_fields, retry_after, Framing, RequestHead, ResponseFields, ResponseHead,
};
pub use httparse::{Header, EMPTY_HEADER};

/// A head still incomplete past this many bytes is refused: a peer cannot
/// make the reader buffer more than this waiting for a head's end.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields in one head, at most (the field array lives on the stack).
pub const MAX_HEADERS: usize = 100;

/// Why a buffer holds no usable HTTP/1 message (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A valid beginning: read more and call again.
    #[error("incomplete message")]
    Incomplete,
    /// A head still incomplete past [`MAX_HEAD`] bytes.
    #[error("head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// A chunk-size, chunk-extension or trailer line over its bound.
    #[error("chunk line too long")]
    LineTooLong,
    /// Not HTTP/1 (or not what the peer may send): says what.
    #[error("invalid HTTP/1 message: {0}")]
    Invalid(&'static str),
}

#[cfg(test)]
mod tests;
