//! Typed backend (server to client) messages, and the ErrorResponse the
//! proxy writes itself when it refuses a client.

use super::frontend::room;
use super::wire::{framed, put_count, put_cstr, put_value, Cursor};
use super::{split_typed, Error, MESSAGE_MAX};

/// An `Authentication*` request (`R`), by its int32 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// 0: authenticated.
    Ok,
    /// 3: send the password in clear.
    Cleartext,
    /// 5: send `md5` of the password, salted with these 4 bytes.
    Md5 { salt: [u8; 4] },
    /// 10: SASL, with the mechanisms offered (e.g. `SCRAM-SHA-256`).
    Sasl(Vec<Vec<u8>>),
    /// 11: a SASL challenge.
    SaslContinue(Vec<u8>),
    /// 12: the SASL outcome.
    SaslFinal(Vec<u8>),
    /// Any other method (Kerberos, GSS, SSPI, ...), with its data.
    Other { code: i32, data: Vec<u8> },
}

/// One column of a `RowDescription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub table_oid: i32,
    pub column: i16,
    pub type_oid: i32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `R`
    Authentication(Auth),
    /// `S`: a run-time parameter's value.
    ParameterStatus { name: Vec<u8>, value: Vec<u8> },
    /// `K`: what a CancelRequest needs (the key is longer in 3.2).
    BackendKeyData { pid: i32, secret: Vec<u8> },
    /// `Z`: ready, with the transaction status (`I`, `T` or `E`).
    ReadyForQuery(u8),
    /// `T`
    RowDescription(Vec<Field>),
    /// `D`: column values, `None` for NULL.
    DataRow(Vec<Option<Vec<u8>>>),
    /// `C`: the command tag (`SELECT 1`, `INSERT 0 1`, ...).
    CommandComplete(Vec<u8>),
    /// `E`: fields by their one-byte code (`S`, `C`, `M`, ...).
    ErrorResponse(Vec<(u8, Vec<u8>)>),
    /// `N`: same fields as an error.
    NoticeResponse(Vec<(u8, Vec<u8>)>),
    /// `I`
    EmptyQueryResponse,
    /// `1`
    ParseComplete,
    /// `2`
    BindComplete,
    /// `3`
    CloseComplete,
    /// `n`
    NoData,
    /// `s`
    PortalSuspended,
    /// `t`: the parameter type OIDs of a statement.
    ParameterDescription(Vec<i32>),
    /// `A`: a NOTIFY.
    Notification {
        pid: i32,
        channel: Vec<u8>,
        payload: Vec<u8>,
    },
    /// `d`: COPY data.
    CopyData(Vec<u8>),
    /// `c`: end of COPY data.
    CopyDone,
    /// Known tags not modelled field by field, body kept whole: `G`
    /// CopyIn, `H` CopyOut, `W` CopyBoth, `V` FunctionCallResponse, `v`
    /// NegotiateProtocolVersion.
    Other { tag: u8, body: Vec<u8> },
}

/// Tags kept as [`Backend::Other`].
pub const OTHER_TAGS: &[u8] = b"GHWVv";

/// Whether `tag` starts a backend message this codec knows (the ones
/// [`Backend::parse`] reads); anything else is not PostgreSQL 3.0.
#[inline]
pub const fn is_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'R' | b'S'
            | b'K'
            | b'Z'
            | b'T'
            | b'D'
            | b'C'
            | b'E'
            | b'N'
            | b'I'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b's'
            | b't'
            | b'A'
            | b'd'
            | b'c'
            | b'G'
            | b'H'
            | b'W'
            | b'V'
            | b'v'
    )
}

fn fields(c: &mut Cursor<'_>) -> Result<Vec<(u8, Vec<u8>)>, Error> {
    let mut v = Vec::new();
    loop {
        match c.u8()? {
            0 => return Ok(v),
            code => v.push((code, c.cstr()?.to_vec())),
        }
    }
}

fn put_fields(out: &mut Vec<u8>, f: &[(u8, Vec<u8>)]) -> Result<(), Error> {
    for (code, value) in f {
        if *code == 0 {
            return Err(Error::Invalid("field code 0"));
        }
        out.push(*code);
        put_cstr(out, value)?;
    }
    out.push(0);
    Ok(())
}

impl Backend {
    /// Whether one whole backend message is at the front of `buf`: its
    /// length on the wire.
    pub fn check(buf: &[u8]) -> Result<usize, Error> {
        super::check_typed(buf)
    }

    /// The backend message at the front of `buf`, and its length.
    pub fn parse(buf: &[u8]) -> Result<(Backend, usize), Error> {
        Backend::parse_limited(buf, MESSAGE_MAX)
    }

    /// [`Backend::parse`] with a lower ceiling than PostgreSQL's, for a
    /// client that expects only small answers.
    pub fn parse_limited(buf: &[u8], max: usize) -> Result<(Backend, usize), Error> {
        let (h, body) = split_typed(buf, max)?;
        let left = body.len();
        let mut c = Cursor::new(body);
        let msg = match h.tag {
            b'R' => Backend::Authentication(match c.i32()? {
                0 => Auth::Ok,
                3 => Auth::Cleartext,
                5 => match c.take(4)? {
                    &[a, b, d, e] => Auth::Md5 { salt: [a, b, d, e] },
                    _ => return Err(Error::Invalid("short md5 salt")),
                },
                10 => {
                    let mut mechanisms = Vec::new();
                    loop {
                        let m = c.cstr()?;
                        if m.is_empty() {
                            break;
                        }
                        mechanisms.push(m.to_vec());
                    }
                    Auth::Sasl(mechanisms)
                }
                11 => Auth::SaslContinue(c.rest().to_vec()),
                12 => Auth::SaslFinal(c.rest().to_vec()),
                code => Auth::Other {
                    code,
                    data: c.rest().to_vec(),
                },
            }),
            b'S' => Backend::ParameterStatus {
                name: c.cstr()?.to_vec(),
                value: c.cstr()?.to_vec(),
            },
            b'K' => Backend::BackendKeyData {
                pid: c.i32()?,
                secret: c.rest().to_vec(),
            },
            b'Z' => Backend::ReadyForQuery(c.u8()?),
            b'T' => {
                let n = c.count()?;
                let mut cols = Vec::with_capacity(room(n, left, 19));
                for _ in 0..n {
                    cols.push(Field {
                        name: c.cstr()?.to_vec(),
                        table_oid: c.i32()?,
                        column: c.i16()?,
                        type_oid: c.i32()?,
                        type_size: c.i16()?,
                        type_modifier: c.i32()?,
                        format: c.i16()?,
                    });
                }
                Backend::RowDescription(cols)
            }
            b'D' => {
                let n = c.count()?;
                let mut row = Vec::with_capacity(room(n, left, 4));
                for _ in 0..n {
                    row.push(c.value()?.map(<[u8]>::to_vec));
                }
                Backend::DataRow(row)
            }
            b'C' => Backend::CommandComplete(c.cstr()?.to_vec()),
            b'E' => Backend::ErrorResponse(fields(&mut c)?),
            b'N' => Backend::NoticeResponse(fields(&mut c)?),
            b'I' => Backend::EmptyQueryResponse,
            b'1' => Backend::ParseComplete,
            b'2' => Backend::BindComplete,
            b'3' => Backend::CloseComplete,
            b'n' => Backend::NoData,
            b's' => Backend::PortalSuspended,
            b't' => {
                let n = c.count()?;
                let mut types = Vec::with_capacity(room(n, left, 4));
                for _ in 0..n {
                    types.push(c.i32()?);
                }
                Backend::ParameterDescription(types)
            }
            b'A' => Backend::Notification {
                pid: c.i32()?,
                channel: c.cstr()?.to_vec(),
                payload: c.cstr()?.to_vec(),
            },
            b'd' => Backend::CopyData(c.rest().to_vec()),
            b'c' => Backend::CopyDone,
            tag if OTHER_TAGS.contains(&tag) => Backend::Other {
                tag,
                body: c.rest().to_vec(),
            },
            _ => return Err(Error::Invalid("unknown backend message")),
        };
        c.end()?;
        Ok((msg, h.total()))
    }

    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Backend::Authentication(_) => b'R',
            Backend::ParameterStatus { .. } => b'S',
            Backend::BackendKeyData { .. } => b'K',
            Backend::ReadyForQuery(_) => b'Z',
            Backend::RowDescription(_) => b'T',
            Backend::DataRow(_) => b'D',
            Backend::CommandComplete(_) => b'C',
            Backend::ErrorResponse(_) => b'E',
            Backend::NoticeResponse(_) => b'N',
            Backend::EmptyQueryResponse => b'I',
            Backend::ParseComplete => b'1',
            Backend::BindComplete => b'2',
            Backend::CloseComplete => b'3',
            Backend::NoData => b'n',
            Backend::PortalSuspended => b's',
            Backend::ParameterDescription(_) => b't',
            Backend::Notification { .. } => b'A',
            Backend::CopyData(_) => b'd',
            Backend::CopyDone => b'c',
            Backend::Other { tag, .. } => *tag,
        }
    }

    /// Appends the message; a string with a NUL cannot be sent.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        framed(out, self.tag(), MESSAGE_MAX, |out| {
            match self {
                Backend::Authentication(auth) => encode_auth(out, auth)?,
                Backend::ParameterStatus { name, value } => {
                    put_cstr(out, name)?;
                    put_cstr(out, value)?;
                }
                Backend::BackendKeyData { pid, secret } => {
                    out.extend_from_slice(&pid.to_be_bytes());
                    out.extend_from_slice(secret);
                }
                Backend::ReadyForQuery(status) => out.push(*status),
                Backend::RowDescription(cols) => {
                    put_count(out, cols.len())?;
                    for f in cols {
                        put_cstr(out, &f.name)?;
                        out.extend_from_slice(&f.table_oid.to_be_bytes());
                        out.extend_from_slice(&f.column.to_be_bytes());
                        out.extend_from_slice(&f.type_oid.to_be_bytes());
                        out.extend_from_slice(&f.type_size.to_be_bytes());
                        out.extend_from_slice(&f.type_modifier.to_be_bytes());
                        out.extend_from_slice(&f.format.to_be_bytes());
                    }
                }
                Backend::DataRow(row) => {
                    put_count(out, row.len())?;
                    for v in row {
                        put_value(out, v.as_deref())?;
                    }
                }
                Backend::CommandComplete(tag) => put_cstr(out, tag)?,
                Backend::ErrorResponse(f) | Backend::NoticeResponse(f) => put_fields(out, f)?,
                Backend::EmptyQueryResponse
                | Backend::ParseComplete
                | Backend::BindComplete
                | Backend::CloseComplete
                | Backend::NoData
                | Backend::PortalSuspended
                | Backend::CopyDone => {}
                Backend::ParameterDescription(types) => {
                    put_count(out, types.len())?;
                    for t in types {
                        out.extend_from_slice(&t.to_be_bytes());
                    }
                }
                Backend::Notification {
                    pid,
                    channel,
                    payload,
                } => {
                    out.extend_from_slice(&pid.to_be_bytes());
                    put_cstr(out, channel)?;
                    put_cstr(out, payload)?;
                }
                Backend::CopyData(b) => out.extend_from_slice(b),
                Backend::Other { tag, body } => {
                    if !OTHER_TAGS.contains(tag) {
                        return Err(Error::Invalid("unknown backend message"));
                    }
                    out.extend_from_slice(body)
                }
            }
            Ok(())
        })
    }
}

fn encode_auth(out: &mut Vec<u8>, auth: &Auth) -> Result<(), Error> {
    let code: i32 = match auth {
        Auth::Ok => 0,
        Auth::Cleartext => 3,
        Auth::Md5 { .. } => 5,
        Auth::Sasl(_) => 10,
        Auth::SaslContinue(_) => 11,
        Auth::SaslFinal(_) => 12,
        Auth::Other { code, .. } => *code,
    };
    out.extend_from_slice(&code.to_be_bytes());
    match auth {
        Auth::Ok | Auth::Cleartext => {}
        Auth::Md5 { salt } => out.extend_from_slice(salt),
        Auth::Sasl(mechanisms) => {
            for m in mechanisms {
                if m.is_empty() {
                    return Err(Error::Invalid("empty SASL mechanism"));
                }
                put_cstr(out, m)?;
            }
            out.push(0);
        }
        Auth::SaslContinue(d) | Auth::SaslFinal(d) => out.extend_from_slice(d),
        Auth::Other { code, data } => {
            if matches!(code, 0 | 3 | 5 | 10 | 11 | 12) {
                return Err(Error::Invalid("modelled authentication code"));
            }
            out.extend_from_slice(data)
        }
    }
    Ok(())
}

/// The fields of an ErrorResponse or NoticeResponse most callers need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Reads an ErrorResponse / NoticeResponse body leniently: the fields up
/// to the first one that does not parse (a truncated body still gives
/// what it has); a repeated field keeps its last value.
pub fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut out = ServerError::default();
    let mut c = Cursor::new(body);
    while let Ok(kind) = c.u8() {
        if kind == 0 {
            break;
        }
        let Ok(value) = c.cstr() else { break };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
    out
}

/// An `ErrorResponse` with severity FATAL and the given SQLSTATE (NUL
/// bytes in the text are dropped), as the proxy refuses a client.
pub fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    error_response_of("FATAL", sqlstate, message)
}

/// An `ErrorResponse` of `severity` (`ERROR`: the statement failed and
/// the session goes on; `FATAL`: the connection ends).
pub fn error_response_of(severity: &str, sqlstate: &str, message: &str) -> Vec<u8> {
    let field = |s: &str| s.bytes().filter(|b| *b != 0).collect::<Vec<u8>>();
    let msg = Backend::ErrorResponse(vec![
        (b'S', field(severity)),
        (b'V', field(severity)),
        (b'C', field(sqlstate)),
        (b'M', field(message)),
    ]);
    let mut out = Vec::with_capacity(64 + message.len());
    // Cannot fail: no NUL is left, and a message over 1 GiB is not ours
    // to send; an empty Vec is what the caller would then write.
    let _ = msg.encode(&mut out);
    out
}
