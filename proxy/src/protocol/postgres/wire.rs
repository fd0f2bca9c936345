//! Field readers and writers shared by the message kinds: a cursor over a
//! message body that never panics, and the framing of what we encode.

use super::Error;

/// Reads fields out of a message body; every read is bounds-checked.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.data.len() {
            return Err(Error::Invalid("truncated field"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        let b = self.take(1)?;
        b.first().copied().ok_or(Error::Invalid("truncated field"))
    }

    pub fn i16(&mut self) -> Result<i16, Error> {
        match self.take(2)? {
            &[a, b] => Ok(i16::from_be_bytes([a, b])),
            _ => Err(Error::Invalid("short int16")),
        }
    }

    pub fn i32(&mut self) -> Result<i32, Error> {
        match self.take(4)? {
            &[a, b, c, d] => Ok(i32::from_be_bytes([a, b, c, d])),
            _ => Err(Error::Invalid("short int32")),
        }
    }

    /// A count (int16) that may not be negative.
    pub fn count(&mut self) -> Result<usize, Error> {
        usize::try_from(self.i16()?).map_err(|_| Error::Invalid("negative count"))
    }

    /// A NUL-terminated string, without its NUL.
    pub fn cstr(&mut self) -> Result<&'a [u8], Error> {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::Invalid("unterminated string"))?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }

    /// A NUL-terminated string as UTF-8 text.
    pub fn string(&mut self) -> Result<String, Error> {
        let s = self.cstr()?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| Error::Invalid("non-UTF-8 string"))
    }

    /// An int32 length, then that many bytes; -1 is NULL.
    pub fn value(&mut self) -> Result<Option<&'a [u8]>, Error> {
        match self.i32()? {
            -1 => Ok(None),
            n => {
                let n = usize::try_from(n).map_err(|_| Error::Invalid("negative length"))?;
                self.take(n).map(Some)
            }
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// The body must be used up.
    pub fn end(&self) -> Result<(), Error> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid("trailing bytes"))
        }
    }
}

/// Appends `s` and its NUL; a NUL inside `s` would cut it short.
pub(crate) fn put_cstr(out: &mut Vec<u8>, s: &[u8]) -> Result<(), Error> {
    if s.contains(&0) {
        return Err(Error::Invalid("string contains a NUL byte"));
    }
    out.extend_from_slice(s);
    out.push(0);
    Ok(())
}

/// Appends an int32 length and the bytes, or -1 for NULL.
pub(crate) fn put_value(out: &mut Vec<u8>, v: Option<&[u8]>) -> Result<(), Error> {
    match v {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            let n = i32::try_from(v.len()).map_err(|_| Error::Invalid("value too long"))?;
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    Ok(())
}

/// Appends an int16 count.
pub(crate) fn put_count(out: &mut Vec<u8>, n: usize) -> Result<(), Error> {
    let n = i16::try_from(n).map_err(|_| Error::Invalid("too many items"))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// Frames a message: `tag` (none for startup when 0), the length, then
/// what `body` writes. The length is patched in once the body is known.
pub(crate) fn framed(
    out: &mut Vec<u8>,
    tag: u8,
    max: usize,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<(), Error> {
    let start = out.len();
    if tag != 0 {
        out.push(tag);
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let result = body(out).and_then(|()| {
        let len = out.len() - at;
        let declared = i32::try_from(len)
            .ok()
            .filter(|_| len <= max)
            .ok_or(Error::Length(i64::try_from(len).unwrap_or(i64::MAX)))?;
        if let Some(dst) = out.get_mut(at..at + 4) {
            dst.copy_from_slice(&declared.to_be_bytes());
        }
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}
