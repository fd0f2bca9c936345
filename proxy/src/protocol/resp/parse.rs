//! Reading frames from a byte slice: [`check`] walks one whole frame
//! without allocating and says its length and kind; [`parse`] builds the
//! [`Frame`]. One walker does both (`BUILD` picks), so they cannot disagree
//! on what is valid. Every declared length and count is checked against
//! [`Limits`] before anything is reserved, and nothing is allocated for a
//! frame until its bytes are all there: memory stays a small multiple of
//! the input, whatever the input declares.

use super::{Error, Frame, Kind, Limits};

/// What [`check`] found: a whole frame of `len` bytes, of type `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub kind: Kind,
    pub len: usize,
}

/// Validates that `buf` starts with one whole frame, without allocating:
/// its kind and length, [`Error::Incomplete`] when more bytes are needed,
/// another error when no more bytes can make it valid.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Scan, Error> {
    let kind = match buf.first() {
        None => return Err(Error::Incomplete),
        Some(&t) => Kind::of(t).ok_or(Error::UnknownType(t))?,
    };
    let mut r = Reader::new(buf, limits);
    r.frame::<false>(0)?;
    Ok(Scan { kind, len: r.pos })
}

/// Parses one frame from the start of `buf`: the frame and the bytes it
/// took. Checks first, so an incomplete frame costs no allocation.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<(Frame, usize), Error> {
    check(buf, limits)?;
    let mut r = Reader::new(buf, limits);
    let frame = r.frame::<true>(0)?;
    Ok((frame.unwrap_or(Frame::Null), r.pos))
}

/// A position in a buffer and the limits to read it under.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pub pos: usize,
    limits: &'a Limits,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], limits: &'a Limits) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            limits,
        }
    }

    pub fn at(buf: &'a [u8], pos: usize, limits: &'a Limits) -> Reader<'a> {
        Reader { buf, pos, limits }
    }

    #[inline]
    pub fn byte(&mut self) -> Result<u8, Error> {
        let b = *self.buf.get(self.pos).ok_or(Error::Incomplete)?;
        self.pos += 1;
        Ok(b)
    }

    /// The line at the position, without its CRLF. The first LF ends it and
    /// must follow a CR; a line longer than `max_line` is refused as soon
    /// as that is known, so an endless line is never searched to its end.
    #[inline]
    pub fn line(&mut self) -> Result<&'a [u8], Error> {
        let max = self.limits.max_line;
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let window = rest.get(..max.saturating_add(2)).unwrap_or(rest);
        match window.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let end = lf
                    .checked_sub(1)
                    .ok_or(Error::Invalid("resp: line not ended by CRLF"))?;
                if rest.get(end) != Some(&b'\r') {
                    return Err(Error::Invalid("resp: line not ended by CRLF"));
                }
                if end > max {
                    return Err(Error::Invalid("resp: line too long"));
                }
                self.pos += lf + 1;
                Ok(rest.get(..end).unwrap_or_default())
            }
            None if rest.len() > max.saturating_add(1) => {
                Err(Error::Invalid("resp: line too long"))
            }
            None => Err(Error::Incomplete),
        }
    }

    /// A decimal line: an optional `-` and at most `max_digits` digits.
    #[inline]
    pub fn int(&mut self) -> Result<i64, Error> {
        if let Some(v) = self.plain_int() {
            return Ok(v);
        }
        let line = self.line()?;
        decimal(line, self.limits.max_digits)
    }

    /// The usual integer line, read in one pass (this is the hot path of
    /// the relay's observer): an optional `-`, up to 18 digits, CRLF.
    /// `None` leaves anything else, errors and incomplete lines included,
    /// to [`Reader::line`] and [`decimal`], which reach the same value.
    #[inline]
    pub fn plain_int(&mut self) -> Option<i64> {
        let rest = self.buf.get(self.pos..)?;
        let neg = rest.first() == Some(&b'-');
        let start = usize::from(neg);
        let max = self.limits.max_digits.min(18);
        let mut v: i64 = 0;
        let mut i = start;
        while let Some(&b) = rest.get(i) {
            match b {
                b'0'..=b'9' if i - start < max => v = v * 10 + i64::from(b - b'0'),
                b'\r' if i > start && i <= self.limits.max_line => {
                    if rest.get(i + 1) != Some(&b'\n') {
                        return None;
                    }
                    self.pos += i + 2;
                    return Some(if neg { -v } else { v });
                }
                _ => return None,
            }
            i += 1;
        }
        None
    }

    /// A length line: `None` for `-1` (null); `what` names it in errors.
    #[inline]
    pub fn len(&mut self, max: usize, what: &'static str) -> Result<Option<usize>, Error> {
        match self.int()? {
            -1 => Ok(None),
            n if n < 0 => Err(Error::Invalid("resp: negative length")),
            n => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > max {
                    return Err(Error::TooLarge { what, len: n });
                }
                Ok(Some(n))
            }
        }
    }

    /// `n` bytes then CRLF.
    #[inline]
    pub fn data(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Incomplete)?;
        let after = end.checked_add(2).ok_or(Error::Incomplete)?;
        let (Some(data), Some(crlf)) = (self.buf.get(self.pos..end), self.buf.get(end..after))
        else {
            return Err(Error::Incomplete);
        };
        if crlf != b"\r\n" {
            return Err(Error::Invalid("resp: bulk string not ended by CRLF"));
        }
        self.pos = after;
        Ok(data)
    }

    /// Room for `n` elements of at least `min` bytes each: never more than
    /// the bytes left can hold, whatever `n` says.
    fn room(&self, n: usize, min: usize) -> usize {
        n.min(self.buf.len().saturating_sub(self.pos) / min)
    }

    /// Walks one frame at `depth` enclosing aggregates; builds it when
    /// `BUILD`, else returns `None` and allocates nothing.
    pub fn frame<const BUILD: bool>(&mut self, depth: usize) -> Result<Option<Frame>, Error> {
        let l = self.limits;
        if depth > l.max_depth {
            return Err(Error::TooDeep);
        }
        let tag = self.byte()?;
        let kind = Kind::of(tag).ok_or(Error::UnknownType(tag))?;
        if !l.resp3 && kind.is_resp3() {
            return Err(Error::UnknownType(tag));
        }
        if !l.out_of_band && matches!(kind, Kind::Push | Kind::Attribute) {
            return Err(Error::OutOfBand);
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(match kind {
            Kind::Simple => self.line().map(|s| BUILD.then(|| Frame::Simple(text(s))))?,
            Kind::Error => self.line().map(|s| BUILD.then(|| Frame::Error(text(s))))?,
            Kind::Integer => self.int().map(|i| BUILD.then_some(Frame::Integer(i)))?,
            Kind::Null => match self.line()? {
                b"" => BUILD.then_some(Frame::Null),
                _ => return Err(Error::Invalid("resp: bad null")),
            },
            Kind::Boolean => match self.line()? {
                b"t" => BUILD.then_some(Frame::Boolean(true)),
                b"f" => BUILD.then_some(Frame::Boolean(false)),
                _ => return Err(Error::Invalid("resp: bad boolean")),
            },
            Kind::Double => {
                let d = double(self.line()?)?;
                BUILD.then_some(Frame::Double(d))
            }
            Kind::BigNumber => {
                let line = self.line()?;
                let digits = line.strip_prefix(b"-").unwrap_or(line);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(Error::Invalid("resp: bad big number"));
                }
                BUILD.then(|| Frame::BigNumber(text(line)))
            }
            Kind::Bulk | Kind::BulkError | Kind::Verbatim => {
                let Some(n) = self.len(l.max_bulk, "bulk string")? else {
                    return match kind {
                        Kind::Bulk => Ok(BUILD.then_some(Frame::Null)),
                        _ => Err(Error::Invalid("resp: negative length")),
                    };
                };
                let data = self.data(n)?;
                match kind {
                    Kind::Bulk => BUILD.then(|| Frame::Bulk(data.to_vec())),
                    Kind::BulkError => BUILD.then(|| Frame::BulkError(data.to_vec())),
                    _ => match data {
                        [a, b, c, b':', text @ ..] => BUILD.then(|| Frame::Verbatim {
                            format: [*a, *b, *c],
                            text: text.to_vec(),
                        }),
                        _ => return Err(Error::Invalid("resp: bad verbatim string")),
                    },
                }
            }
            Kind::Array | Kind::Set | Kind::Push => {
                let Some(n) = self.len(l.max_elements, "aggregate")? else {
                    return match kind {
                        Kind::Array => Ok(BUILD.then_some(Frame::Null)),
                        _ => Err(Error::Invalid("resp: negative length")),
                    };
                };
                let mut items = Vec::with_capacity(if BUILD { self.room(n, 3) } else { 0 });
                for _ in 0..n {
                    items.extend(self.frame::<BUILD>(depth + 1)?);
                }
                BUILD.then_some(match kind {
                    Kind::Array => Frame::Array(items),
                    Kind::Set => Frame::Set(items),
                    _ => Frame::Push(items),
                })
            }
            Kind::Map | Kind::Attribute => {
                let Some(n) = self.len(l.max_elements, "map")? else {
                    return Err(Error::Invalid("resp: negative length"));
                };
                let mut pairs = Vec::with_capacity(if BUILD { self.room(n, 6) } else { 0 });
                for _ in 0..n {
                    let k = self.frame::<BUILD>(depth + 1)?;
                    let v = self.frame::<BUILD>(depth + 1)?;
                    if let (Some(k), Some(v)) = (k, v) {
                        pairs.push((k, v));
                    }
                }
                BUILD.then_some(match kind {
                    Kind::Map => Frame::Map(pairs),
                    _ => Frame::Attribute(pairs),
                })
            }
        })
    }
}

/// An optional `-` and 1 to `max_digits` ASCII digits that fit an `i64`.
pub(super) fn decimal(line: &[u8], max_digits: usize) -> Result<i64, Error> {
    const BAD: Error = Error::Invalid("resp: bad integer");
    let (neg, digits) = match line.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, line),
    };
    if digits.is_empty() || digits.len() > max_digits {
        return Err(BAD);
    }
    let mut v: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(BAD);
        }
        let d = i64::from(b - b'0');
        v = v
            .checked_mul(10)
            .and_then(|v| {
                if neg {
                    v.checked_sub(d)
                } else {
                    v.checked_add(d)
                }
            })
            .ok_or(BAD)?;
    }
    Ok(v)
}

/// A RESP3 double: a decimal with optional fraction and exponent, `inf`,
/// `-inf` or `nan`.
fn double(line: &[u8]) -> Result<f64, Error> {
    const BAD: Error = Error::Invalid("resp: bad double");
    let plain = line
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    let s = std::str::from_utf8(line).map_err(|_| BAD)?;
    match s {
        "inf" | "+inf" => Ok(f64::INFINITY),
        "-inf" => Ok(f64::NEG_INFINITY),
        "nan" | "-nan" => Ok(f64::NAN),
        _ if plain => s.parse().map_err(|_| BAD),
        _ => Err(BAD),
    }
}
