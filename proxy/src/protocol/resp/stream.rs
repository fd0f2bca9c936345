//! Scanning replies in a stream that arrives in chunks, for the relay's
//! observer: [`Replies`] counts complete top-level replies, nested
//! aggregates included (RESP2 and RESP3), keeping nothing but the first
//! bytes of a top-level error line, byte by byte so that a reply split
//! anywhere across chunks costs nothing more. (Taking whole replies with
//! [`check`](super::check) first was measured slower on the relay's
//! workload, so it is not done.) Push and attribute frames are
//! [`Error::OutOfBand`].

use super::Error;

/// Longest status or error line followed.
pub const LINE_MAX: usize = 64 * 1024;
/// Deepest reply nesting followed.
pub const MAX_DEPTH: usize = 32;
/// Bytes kept of a top-level error line.
const ERROR_KEPT: usize = 256;

/// A CRLF-terminated decimal, possibly split across chunks.
#[derive(Default)]
pub struct Num {
    value: i64,
    neg: bool,
    digits: u8,
    cr: bool,
}

impl Num {
    /// Reads digits from `data`: the value once its CRLF is in.
    #[inline]
    pub fn feed(&mut self, data: &mut &[u8]) -> Result<Option<i64>, Error> {
        const BAD: Error = Error::Invalid("resp: bad length");
        while let Some((&b, rest)) = data.split_first() {
            *data = rest;
            match b {
                b'\n' if self.cr => {
                    let v = if self.neg { -self.value } else { self.value };
                    *self = Num::default();
                    return Ok(Some(v));
                }
                _ if self.cr => return Err(BAD),
                b'\r' if self.digits > 0 => self.cr = true,
                b'-' if self.digits == 0 && !self.neg => self.neg = true,
                b'0'..=b'9' if self.digits < 18 => {
                    self.value = self.value * 10 + i64::from(b - b'0');
                    self.digits += 1;
                }
                _ => return Err(BAD),
            }
        }
        Ok(None)
    }
}

enum State {
    Type,
    Line { seen: usize, error: bool },
    BulkLen,
    AggLen { per: i64 },
    Bulk { rem: u64 },
}

/// The reply scanner of one connection.
pub struct Replies {
    state: State,
    num: Num,
    /// Elements still expected at each open aggregate level, innermost
    /// last. A Vec, not an inline `[i64; MAX_DEPTH]`: a connection that
    /// never sees an aggregate reply keeps 24 bytes here instead of 256,
    /// and one observer lives for every idle connection (issue 16's
    /// 4 KiB per connection).
    stack: Vec<i64>,
    /// The top-level error line being read (or just completed).
    error: Vec<u8>,
}

impl Default for Replies {
    fn default() -> Self {
        Replies {
            state: State::Type,
            num: Num::default(),
            stack: Vec::new(),
            error: Vec::new(),
        }
    }
}

impl Replies {
    /// Advances to the end of the next complete top-level reply:
    /// `Some(Some(line))` for an error reply (its line without CRLF),
    /// `Some(None)` for any other; `None` when `data` ran out first.
    #[inline]
    pub fn next(&mut self, data: &mut &[u8]) -> Result<Option<Option<&[u8]>>, Error> {
        self.bytewise(data)
    }

    #[inline]
    fn bytewise(&mut self, data: &mut &[u8]) -> Result<Option<Option<&[u8]>>, Error> {
        while !data.is_empty() {
            let complete = match &mut self.state {
                State::Type => {
                    let Some((&t, rest)) = data.split_first() else {
                        break;
                    };
                    *data = rest;
                    if self.stack.is_empty() {
                        self.error.clear();
                    }
                    self.state = match t {
                        b'+' | b':' | b'_' | b',' | b'#' | b'(' => State::Line {
                            seen: 0,
                            error: false,
                        },
                        b'-' => State::Line {
                            seen: 0,
                            error: self.stack.is_empty(),
                        },
                        b'$' | b'=' | b'!' => State::BulkLen,
                        b'*' | b'~' => State::AggLen { per: 1 },
                        b'%' => State::AggLen { per: 2 },
                        b'>' | b'|' => return Err(Error::OutOfBand),
                        _ => return Err(Error::UnknownType(t)),
                    };
                    false
                }
                State::Line { seen, error } => {
                    let end = data.iter().position(|&b| b == b'\n');
                    let line = data.get(..end.unwrap_or(data.len())).unwrap_or_default();
                    *seen += line.len();
                    if *seen > LINE_MAX {
                        return Err(Error::Invalid("resp: reply line too long"));
                    }
                    if *error {
                        let room = ERROR_KEPT.saturating_sub(self.error.len());
                        let kept = line.get(..room.min(line.len())).unwrap_or_default();
                        self.error.extend_from_slice(kept);
                    }
                    match end {
                        Some(p) => {
                            *data = data.get(p + 1..).unwrap_or_default();
                            true
                        }
                        None => {
                            *data = &[];
                            false
                        }
                    }
                }
                State::BulkLen => match self.num.feed(data)? {
                    Some(-1) => true,
                    Some(n) if n < 0 => return Err(Error::Invalid("resp: bad bulk length")),
                    Some(n) => {
                        self.state = State::Bulk {
                            rem: n.unsigned_abs() + 2,
                        };
                        false
                    }
                    None => false,
                },
                State::AggLen { per } => {
                    let per = *per;
                    match self.num.feed(data)? {
                        Some(-1 | 0) => true,
                        Some(n) if n < 0 => {
                            return Err(Error::Invalid("resp: bad aggregate length"))
                        }
                        Some(n) => {
                            if self.stack.len() >= MAX_DEPTH {
                                return Err(Error::TooDeep);
                            }
                            self.stack.push(n.saturating_mul(per));
                            self.state = State::Type;
                            false
                        }
                        None => false,
                    }
                }
                State::Bulk { rem } => {
                    let n = usize::try_from(*rem).unwrap_or(usize::MAX).min(data.len());
                    *rem -= n as u64;
                    *data = data.get(n..).unwrap_or_default();
                    *rem == 0
                }
            };
            if complete {
                self.state = State::Type;
                if self.element_closes_reply() {
                    let error = (!self.error.is_empty()).then_some(self.error.as_slice());
                    return Ok(Some(error.map(|e| e.strip_suffix(b"\r").unwrap_or(e))));
                }
            }
        }
        Ok(None)
    }

    /// Whether the scanner is between top-level replies (none partly read).
    pub fn between(&self) -> bool {
        matches!(self.state, State::Type) && self.stack.is_empty()
    }

    /// One element is complete: closes the aggregates it completes, and
    /// says whether it completed a top-level reply.
    #[inline]
    fn element_closes_reply(&mut self) -> bool {
        while let Some(left) = self.stack.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.stack.pop();
        }
        true
    }
}
