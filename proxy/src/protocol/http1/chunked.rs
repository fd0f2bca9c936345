//! The chunked transfer coding (RFC 9112 7.1): an incremental scanner that
//! finds where a chunked body ends, so that a proxy can relay it byte for
//! byte without decoding it ([`ChunkScanner::feed`]), and the same state
//! machine decoding the payload ([`ChunkScanner::decode`], [`parse`]).
//! Its state is a few words whatever the input: memory is bounded.

use super::Error;

/// Hex digits of a chunk size, at most (16 = 64 bits).
pub const MAX_SIZE_DIGITS: u32 = 16;
/// Bytes of one trailer line or chunk extension, at most.
pub const MAX_LINE: u32 = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the next chunk's size.
    Size {
        value: u64,
        digits: u32,
    },
    /// `;ext` after the size, up to the end of the line.
    Ext {
        value: u64,
        len: u32,
    },
    /// The size line's `\r`, waiting for `\n`.
    SizeLf {
        value: u64,
    },
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// Trailer fields after the last chunk; `start`: at a line's start.
    Trailer {
        start: bool,
        len: u32,
    },
    /// The `\r` of the empty line that ends the trailer.
    EndLf,
    Done,
}

/// Where a chunked body ends, fed its bytes as they arrive.
#[derive(Debug, Clone)]
pub struct ChunkScanner {
    state: State,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        ChunkScanner {
            state: State::Size {
                value: 0,
                digits: 0,
            },
        }
    }
}

impl ChunkScanner {
    /// Reads `bytes`, the next bytes of the body. `Ok(Some(n))`: the body
    /// ends after `bytes[..n]`; `Ok(None)`: more is needed. Never returns
    /// [`Error::Incomplete`].
    #[inline]
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Error> {
        self.run(bytes, |_| {})
    }

    /// As [`feed`](Self::feed), and hands each piece of chunk data in
    /// `bytes` to `data`, in order.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        data: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, Error> {
        self.run(bytes, data)
    }

    #[inline]
    fn run(&mut self, bytes: &[u8], mut data: impl FnMut(&[u8])) -> Result<Option<usize>, Error> {
        const BAD: Error = Error::Invalid("malformed chunked body");
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(rem) = self.state {
                let take = rem.min((bytes.len() - i) as u64);
                data(&bytes[i..i + take as usize]);
                i += take as usize;
                self.state = if rem == take {
                    State::DataCr
                } else {
                    State::Data(rem - take)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match self.state {
                State::Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= MAX_SIZE_DIGITS {
                            return Err(Error::LineTooLong);
                        }
                        let d = u64::from(hex(b));
                        State::Size {
                            value: value << 4 | d,
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 0 => return Err(BAD),
                    b';' | b' ' | b'\t' => State::Ext { value, len: 0 },
                    b'\r' => State::SizeLf { value },
                    b'\n' => size_line_end(value),
                    _ => return Err(BAD),
                },
                State::Ext { value, len } => match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => size_line_end(value),
                    _ if len >= MAX_LINE => return Err(Error::LineTooLong),
                    _ => State::Ext {
                        value,
                        len: len + 1,
                    },
                },
                State::SizeLf { value } => match b {
                    b'\n' => size_line_end(value),
                    _ => return Err(BAD),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(BAD),
                },
                State::DataLf => match b {
                    b'\n' => State::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(BAD),
                },
                State::Trailer { start, len } => match b {
                    b'\r' if start => State::EndLf,
                    b'\n' if start => State::Done,
                    b'\n' => State::Trailer {
                        start: true,
                        len: 0,
                    },
                    _ if len >= MAX_LINE => return Err(Error::LineTooLong),
                    _ => State::Trailer {
                        start: false,
                        len: len + 1,
                    },
                },
                State::EndLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(BAD),
                },
                State::Data(_) | State::Done => return Err(BAD),
            };
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

/// The length of the whole chunked body at the start of `buf`.
pub fn check(buf: &[u8]) -> Result<usize, Error> {
    ChunkScanner::default().feed(buf)?.ok_or(Error::Incomplete)
}

/// The payload of the whole chunked body at the start of `buf`, and the
/// body's length in `buf`. The payload is never longer than `buf`.
pub fn parse(buf: &[u8]) -> Result<(Vec<u8>, usize), Error> {
    let mut payload = Vec::new();
    let end = ChunkScanner::default().decode(buf, |d| payload.extend_from_slice(d))?;
    Ok((payload, end.ok_or(Error::Incomplete)?))
}

fn size_line_end(value: u64) -> State {
    if value == 0 {
        State::Trailer {
            start: true,
            len: 0,
        }
    } else {
        State::Data(value)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}
