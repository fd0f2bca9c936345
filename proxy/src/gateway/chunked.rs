//! Finds where a `Transfer-Encoding: chunked` body ends, so that the lean
//! HTTP/1.1 path (`h1.rs`) can relay it byte for byte without decoding it
//! and still know when the response is over (RFC 9112 7.1).

/// Hex digits of a chunk size, at most (16 = 64 bits).
const MAX_SIZE_DIGITS: u32 = 16;
/// Bytes of one trailer line or chunk extension, at most.
const MAX_LINE: u32 = 8 * 1024;

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

/// A malformed chunked body (the upstream's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

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
    /// ends after `bytes[..n]`; `Ok(None)`: more is needed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(rem) = self.state {
                let take = rem.min((bytes.len() - i) as u64);
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
                            return Err(Malformed);
                        }
                        let d = u64::from(hex(b));
                        State::Size {
                            value: value << 4 | d,
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 0 => return Err(Malformed),
                    b';' | b' ' | b'\t' => State::Ext { value, len: 0 },
                    b'\r' => State::SizeLf { value },
                    b'\n' => size_line_end(value),
                    _ => return Err(Malformed),
                },
                State::Ext { value, len } => match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => size_line_end(value),
                    _ if len >= MAX_LINE => return Err(Malformed),
                    _ => State::Ext {
                        value,
                        len: len + 1,
                    },
                },
                State::SizeLf { value } => match b {
                    b'\n' => size_line_end(value),
                    _ => return Err(Malformed),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(Malformed),
                },
                State::DataLf => match b {
                    b'\n' => State::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(Malformed),
                },
                State::Trailer { start, len } => match b {
                    b'\r' if start => State::EndLf,
                    b'\n' if start => State::Done,
                    b'\n' => State::Trailer {
                        start: true,
                        len: 0,
                    },
                    _ if len >= MAX_LINE => return Err(Malformed),
                    _ => State::Trailer {
                        start: false,
                        len: len + 1,
                    },
                },
                State::EndLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(Malformed),
                },
                State::Data(_) | State::Done => return Err(Malformed),
            };
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<Option<usize>, Malformed> {
        ChunkScanner::default().feed(body)
    }

    #[test]
    fn finds_the_end_of_a_body() {
        let body = b"5\r\nhello\r\n1A;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok(Some(body.len() - 4)));
        let trailer = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n";
        assert_eq!(whole(trailer), Ok(Some(trailer.len())));
        // Bare LF line ends are tolerated.
        assert_eq!(whole(b"2\nab\n0\n\n"), Ok(Some(8)));
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
    fn incomplete_bodies_need_more() {
        assert_eq!(whole(b"5\r\nhel"), Ok(None));
        assert_eq!(whole(b"5\r\nhello\r\n0\r\n"), Ok(None));
        assert_eq!(whole(b""), Ok(None));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(whole(b"x\r\n"), Err(Malformed));
        assert_eq!(whole(b"\r\n"), Err(Malformed));
        assert_eq!(whole(b"5\r\nhelloX"), Err(Malformed));
        assert_eq!(whole(b"11111111111111111\r\n"), Err(Malformed));
        assert_eq!(whole(b"5\rX"), Err(Malformed));
        let long = [b'a'; 9000];
        let mut s = ChunkScanner::default();
        assert_eq!(s.feed(b"1;"), Ok(None));
        assert_eq!(s.feed(&long), Err(Malformed));
    }
}
