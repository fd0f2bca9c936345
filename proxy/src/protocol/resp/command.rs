//! Commands as a server reads them: a multibulk array of bulk strings
//! (zero-copy, [`multibulk`]) or an inline line (`PING\r\n`, `SET a b\n`),
//! and the bounded, owning [`parse_command`] the memory fallback serves.

use super::parse::Reader;
use super::{Error, Limits};

/// A command's name and arguments, owned.
pub type Command = Vec<Vec<u8>>;

/// Bounds on one command read by [`parse_command`].
#[derive(Debug, Clone, Copy)]
pub struct CommandLimits {
    /// Largest command (all of its bytes, framing included).
    pub max_command: usize,
    /// Most arguments in one command.
    pub max_args: usize,
}

/// The arguments of a multibulk command, read in place from the buffer.
/// Each item is one argument's bytes; [`Args::consumed`] is where the
/// reading stands (the command's length once all are read).
pub struct Args<'a> {
    r: Reader<'a>,
    left: usize,
    count: usize,
    max_end: usize,
}

/// Reads the `*<n>` header at the start of `buf`: the arguments to come,
/// or `Ok(None)` for `*0` or a negative count (no command). Lines longer
/// than `limits.max_line` and counts above `limits.max_elements` are
/// refused; an argument ending past `limits.max_bulk` bytes from the
/// start of `buf` is refused as soon as its length is read.
pub fn multibulk<'a>(buf: &'a [u8], limits: &'a Limits) -> Result<Option<Args<'a>>, Error> {
    match buf.first() {
        None => return Err(Error::Incomplete),
        Some(b'*') => {}
        Some(&got) => {
            return Err(Error::Unexpected {
                expected: b'*',
                got,
            })
        }
    }
    let mut r = Reader::at(buf, 1, limits);
    let n = r.int()?;
    if n <= 0 {
        return Ok(None);
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > limits.max_elements {
        return Err(Error::TooLarge {
            what: "multibulk length",
            len: n,
        });
    }
    Ok(Some(Args {
        r,
        left: n,
        count: n,
        max_end: limits.max_bulk,
    }))
}

impl<'a> Args<'a> {
    /// How many arguments the header declared.
    pub fn declared(&self) -> usize {
        self.count
    }

    /// Bytes of `buf` read so far.
    pub fn consumed(&self) -> usize {
        self.r.pos
    }

    #[inline]
    fn arg(&mut self) -> Result<&'a [u8], Error> {
        match self.r.byte()? {
            b'$' => {}
            got => {
                return Err(Error::Unexpected {
                    expected: b'$',
                    got,
                })
            }
        }
        // The usual plain length first, in one pass (the observer's hot
        // path); anything else through the general reader.
        let at = self.r.pos;
        let n = match self.r.plain_int().map(usize::try_from) {
            Some(Ok(n)) if n <= self.max_end => n,
            _ => {
                self.r.pos = at;
                self.r
                    .len(self.max_end, "bulk length")?
                    .ok_or(Error::Invalid("invalid bulk length"))?
            }
        };
        if self.r.pos.saturating_add(n) > self.max_end {
            return Err(Error::TooLarge {
                what: "command",
                len: self.r.pos.saturating_add(n),
            });
        }
        self.r.data(n)
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = Result<&'a [u8], Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let arg = self.arg();
        // After an error the reading is over: nothing more can be trusted.
        self.left = if arg.is_ok() { self.left - 1 } else { 0 };
        Some(arg)
    }
}

/// The reader limits [`parse_command`] uses for `limits`: no header line
/// of a valid command is longer than 32 bytes.
fn reader_limits(limits: &CommandLimits) -> Limits {
    Limits {
        max_line: 31,
        max_bulk: limits.max_command,
        max_elements: limits.max_args,
        ..Limits::RESP2_REPLY
    }
}

/// Parses one command from the start of `buf`: `Ok(Some((args, used)))`,
/// `Ok(None)` when more bytes are needed. An empty `args` (a blank inline
/// line, or `*0`) is to be skipped. A command larger than
/// `limits.max_command` is refused, even before all of it is in.
pub fn parse_command(
    buf: &[u8],
    limits: &CommandLimits,
) -> Result<Option<(Command, usize)>, Error> {
    let r = match buf.first() {
        None => return Ok(None),
        Some(b'*') => parse_multibulk(buf, &reader_limits(limits)),
        Some(_) => parse_inline(buf, limits),
    };
    let too_large = |len| Error::TooLarge {
        what: "command",
        len,
    };
    match r {
        Err(Error::Incomplete) if buf.len() > limits.max_command => Err(too_large(buf.len())),
        Err(Error::Incomplete) => Ok(None),
        Ok((_, used)) if used > limits.max_command => Err(too_large(used)),
        Ok(done) => Ok(Some(done)),
        Err(e) => Err(e),
    }
}

fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<(Command, usize), Error> {
    let Some(mut args) = multibulk(buf, limits)? else {
        // `*0` or `*-1`: no command, but its line is consumed.
        let mut r = Reader::at(buf, 1, limits);
        r.line()?;
        return Ok((Vec::new(), r.pos));
    };
    let mut out = Vec::with_capacity(args.declared().min(64));
    for arg in &mut args {
        out.push(arg?.to_vec());
    }
    Ok((out, args.consumed()))
}

/// `PING\r\n`, `SET a b\n`: words separated by spaces or tabs, no quoting.
fn parse_inline(buf: &[u8], limits: &CommandLimits) -> Result<(Command, usize), Error> {
    let end = buf
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Error::Incomplete)?;
    let line = buf.get(..end).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let words = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty());
    if words.clone().count() > limits.max_args {
        return Err(Error::TooLarge {
            what: "inline command",
            len: words.count(),
        });
    }
    Ok((words.map(<[u8]>::to_vec).collect(), end + 1))
}

/// The relay observer's fast path: a multibulk command of at most
/// `max_args` arguments wholly inside `buf`, with plain lengths (at most
/// 18 digits), walked in one pass without copying: `each(index, arg)` for
/// every argument, then the argument count and the command's length.
/// `None` for anything else (incomplete, unusual or malformed), which the
/// caller reads some other way. Same bytes as [`multibulk`], tighter loop.
#[inline]
pub fn whole_multibulk(
    buf: &[u8],
    max_args: usize,
    mut each: impl FnMut(usize, &[u8]),
) -> Option<(usize, usize)> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (n, mut pos) = plain_len(buf, 1)?;
    if n == 0 || n > max_args {
        return None;
    }
    for i in 0..n {
        if buf.get(pos) != Some(&b'$') {
            return None;
        }
        let (len, at) = plain_len(buf, pos + 1)?;
        let end = at.checked_add(len)?;
        let arg = buf.get(at..end)?;
        if buf.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        each(i, arg);
        pos = end + 2;
    }
    Some((n, pos))
}

/// A non-negative decimal of 1 to 18 digits at `at`, ended by CRLF: its
/// value and the index after the CRLF.
#[inline]
fn plain_len(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut value: usize = 0;
    let mut i = at;
    while let Some(&b) = buf.get(i) {
        match b {
            b'0'..=b'9' if i - at < 18 => value = value * 10 + usize::from(b - b'0'),
            b'\r' if i > at && buf.get(i + 1) == Some(&b'\n') => return Some((value, i + 2)),
            _ => return None,
        }
        i += 1;
    }
    None
}
