//! Typed frontend (client to server) messages, once startup is done.
//! Text is kept as bytes: the proxy sees bytes, not values, and the
//! client's encoding need not be UTF-8.

use super::wire::{framed, put_count, put_cstr, put_value, Cursor};
use super::{split_typed, Error, MESSAGE_MAX};

/// One frontend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// `Q`: a simple query (one or more statements).
    Query(Vec<u8>),
    /// `P`: prepares `query` as statement `name` ("" is the unnamed one).
    Parse {
        name: Vec<u8>,
        query: Vec<u8>,
        param_types: Vec<i32>,
    },
    /// `B`: binds `statement` into `portal` with these parameters.
    Bind {
        portal: Vec<u8>,
        statement: Vec<u8>,
        param_formats: Vec<i16>,
        params: Vec<Option<Vec<u8>>>,
        result_formats: Vec<i16>,
    },
    /// `D`: describes a statement (`S`) or portal (`P`).
    Describe { kind: u8, name: Vec<u8> },
    /// `E`: runs `portal`, at most `max_rows` rows (0: all).
    Execute { portal: Vec<u8>, max_rows: i32 },
    /// `C`: closes a statement (`S`) or portal (`P`).
    Close { kind: u8, name: Vec<u8> },
    /// `S`: ends an extended batch; answered by one ReadyForQuery.
    Sync,
    /// `H`: asks for pending output.
    Flush,
    /// `X`: the client leaves.
    Terminate,
    /// `p`: PasswordMessage, SASLInitialResponse, SASLResponse and
    /// GSSResponse share the tag; which one depends on the
    /// authentication asked for, so the body is kept whole.
    Password(Vec<u8>),
    /// `F`: a function call (kept whole; answered by one ReadyForQuery).
    FunctionCall(Vec<u8>),
    /// `d`: COPY data.
    CopyData(Vec<u8>),
    /// `c`: end of COPY data.
    CopyDone,
    /// `f`: COPY failed, with a reason.
    CopyFail(Vec<u8>),
}

/// Whether `tag` starts a frontend message this codec knows (the ones
/// [`Frontend::parse`] reads); anything else is not PostgreSQL 3.0.
#[inline]
pub const fn is_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P'
            | b'B'
            | b'D'
            | b'E'
            | b'C'
            | b'S'
            | b'H'
            | b'X'
            | b'p'
            | b'F'
            | b'd'
            | b'c'
            | b'f'
    )
}

/// Capacity for `n` items of at least `per` bytes each in `left` bytes:
/// a declared count never allocates more than the message could hold.
pub(crate) fn room(n: usize, left: usize, per: usize) -> usize {
    n.min(left / per.max(1))
}

fn formats(c: &mut Cursor<'_>, left: usize) -> Result<Vec<i16>, Error> {
    let n = c.count()?;
    let mut v = Vec::with_capacity(room(n, left, 2));
    for _ in 0..n {
        v.push(c.i16()?);
    }
    Ok(v)
}

fn put_formats(out: &mut Vec<u8>, f: &[i16]) -> Result<(), Error> {
    put_count(out, f.len())?;
    for x in f {
        out.extend_from_slice(&x.to_be_bytes());
    }
    Ok(())
}

impl Frontend {
    /// Whether one whole frontend message is at the front of `buf`: its
    /// length on the wire.
    pub fn check(buf: &[u8]) -> Result<usize, Error> {
        super::check_typed(buf)
    }

    /// The frontend message at the front of `buf`, and its length.
    pub fn parse(buf: &[u8]) -> Result<(Frontend, usize), Error> {
        let (h, body) = split_typed(buf, MESSAGE_MAX)?;
        let left = body.len();
        let mut c = Cursor::new(body);
        let msg = match h.tag {
            b'Q' => Frontend::Query(c.cstr()?.to_vec()),
            b'P' => {
                let name = c.cstr()?.to_vec();
                let query = c.cstr()?.to_vec();
                let n = c.count()?;
                let mut param_types = Vec::with_capacity(room(n, left, 4));
                for _ in 0..n {
                    param_types.push(c.i32()?);
                }
                Frontend::Parse {
                    name,
                    query,
                    param_types,
                }
            }
            b'B' => {
                let portal = c.cstr()?.to_vec();
                let statement = c.cstr()?.to_vec();
                let param_formats = formats(&mut c, left)?;
                let n = c.count()?;
                let mut params = Vec::with_capacity(room(n, left, 4));
                for _ in 0..n {
                    params.push(c.value()?.map(<[u8]>::to_vec));
                }
                let result_formats = formats(&mut c, left)?;
                Frontend::Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                }
            }
            b'D' | b'C' => {
                let kind = c.u8()?;
                let name = c.cstr()?.to_vec();
                if h.tag == b'D' {
                    Frontend::Describe { kind, name }
                } else {
                    Frontend::Close { kind, name }
                }
            }
            b'E' => Frontend::Execute {
                portal: c.cstr()?.to_vec(),
                max_rows: c.i32()?,
            },
            b'S' => Frontend::Sync,
            b'H' => Frontend::Flush,
            b'X' => Frontend::Terminate,
            b'c' => Frontend::CopyDone,
            b'p' => Frontend::Password(c.rest().to_vec()),
            b'F' => Frontend::FunctionCall(c.rest().to_vec()),
            b'd' => Frontend::CopyData(c.rest().to_vec()),
            b'f' => Frontend::CopyFail(c.cstr()?.to_vec()),
            _ => return Err(Error::Invalid("unknown frontend message")),
        };
        c.end()?;
        Ok((msg, h.total()))
    }

    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Frontend::Query(_) => b'Q',
            Frontend::Parse { .. } => b'P',
            Frontend::Bind { .. } => b'B',
            Frontend::Describe { .. } => b'D',
            Frontend::Execute { .. } => b'E',
            Frontend::Close { .. } => b'C',
            Frontend::Sync => b'S',
            Frontend::Flush => b'H',
            Frontend::Terminate => b'X',
            Frontend::Password(_) => b'p',
            Frontend::FunctionCall(_) => b'F',
            Frontend::CopyData(_) => b'd',
            Frontend::CopyDone => b'c',
            Frontend::CopyFail(_) => b'f',
        }
    }

    /// Appends the message; a string with a NUL cannot be sent.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        framed(out, self.tag(), MESSAGE_MAX, |out| {
            match self {
                Frontend::Query(sql) | Frontend::CopyFail(sql) => put_cstr(out, sql)?,
                Frontend::Parse {
                    name,
                    query,
                    param_types,
                } => {
                    put_cstr(out, name)?;
                    put_cstr(out, query)?;
                    put_count(out, param_types.len())?;
                    for t in param_types {
                        out.extend_from_slice(&t.to_be_bytes());
                    }
                }
                Frontend::Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                } => {
                    put_cstr(out, portal)?;
                    put_cstr(out, statement)?;
                    put_formats(out, param_formats)?;
                    put_count(out, params.len())?;
                    for p in params {
                        put_value(out, p.as_deref())?;
                    }
                    put_formats(out, result_formats)?;
                }
                Frontend::Describe { kind, name } | Frontend::Close { kind, name } => {
                    out.push(*kind);
                    put_cstr(out, name)?;
                }
                Frontend::Execute { portal, max_rows } => {
                    put_cstr(out, portal)?;
                    out.extend_from_slice(&max_rows.to_be_bytes());
                }
                Frontend::Sync | Frontend::Flush | Frontend::Terminate | Frontend::CopyDone => {}
                Frontend::Password(b) | Frontend::FunctionCall(b) | Frontend::CopyData(b) => {
                    out.extend_from_slice(b)
                }
            }
            Ok(())
        })
    }
}

/// A simple `Query` for `sql`.
pub fn query(sql: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    Frontend::Query(sql.as_bytes().to_vec()).encode(&mut out)?;
    Ok(out)
}
