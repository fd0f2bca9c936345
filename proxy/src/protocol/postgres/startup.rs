//! Startup-phase messages: untyped (a length, then a 4-byte code), sent
//! by a client before its first typed message. A client may send an
//! `SSLRequest` or `GSSENCRequest` (answered with one byte, `S`/`G` or
//! `N`) before its `StartupMessage`; a `CancelRequest` comes alone on a
//! connection of its own.

use super::wire::{framed, put_cstr, Cursor};
use super::{Error, Header, STARTUP_MAX};

/// Protocol version 3.0, the StartupMessage code.
pub const PROTOCOL_V3: i32 = 196_608;
/// `SSLRequest` code.
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// One startup-phase message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// `StartupMessage`: a protocol version (major 3) and `name=value`
    /// parameters (`user`, `database`, `application_name`, ...).
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    /// `CancelRequest` for the backend `pid`; the secret key is 4 bytes in
    /// protocol 3.0, longer in 3.2.
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
}

/// The code of an untyped message whose header is at the front of `buf`.
fn code(buf: &[u8]) -> Option<u32> {
    match buf.get(4..8)? {
        &[a, b, c, d] => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

impl Startup {
    /// Whether one whole startup message is at the front of `buf`: its
    /// length.
    pub fn check(buf: &[u8]) -> Result<usize, Error> {
        let len = Header::untyped(buf)?.len;
        if buf.len() < len {
            return Err(Error::Incomplete);
        }
        Ok(len)
    }

    /// The startup message at the front of `buf`, and its length.
    pub fn parse(buf: &[u8]) -> Result<(Startup, usize), Error> {
        let len = Startup::check(buf)?;
        let mut c = Cursor::new(buf.get(8..len).unwrap_or_default());
        let msg = match code(buf).ok_or(Error::Incomplete)? {
            SSL_REQUEST => Startup::SslRequest,
            GSSENC_REQUEST => Startup::GssEncRequest,
            CANCEL_REQUEST => Startup::Cancel {
                pid: c.i32()?,
                secret: c.rest().to_vec(),
            },
            v if v >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let name = c.string()?;
                    if name.is_empty() {
                        break;
                    }
                    params.push((name, c.string()?));
                }
                Startup::Startup {
                    version: v as i32,
                    params,
                }
            }
            _ => return Err(Error::Invalid("unknown startup code")),
        };
        c.end()?;
        Ok((msg, len))
    }

    /// Appends the message; a string with a NUL cannot be sent.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        framed(out, 0, STARTUP_MAX, |out| {
            match self {
                Startup::Startup { version, params } => {
                    out.extend_from_slice(&version.to_be_bytes());
                    for (k, v) in params {
                        if k.is_empty() {
                            return Err(Error::Invalid("empty parameter name"));
                        }
                        put_cstr(out, k.as_bytes())?;
                        put_cstr(out, v.as_bytes())?;
                    }
                    out.push(0);
                }
                Startup::SslRequest => out.extend_from_slice(&SSL_REQUEST.to_be_bytes()),
                Startup::GssEncRequest => out.extend_from_slice(&GSSENC_REQUEST.to_be_bytes()),
                Startup::Cancel { pid, secret } => {
                    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
                    out.extend_from_slice(&pid.to_be_bytes());
                    out.extend_from_slice(secret);
                }
            }
            Ok(())
        })
    }
}

/// Whether `early` begins with an SSL or GSS encryption request.
pub fn starts_with_encryption_request(early: &[u8]) -> bool {
    matches!(Header::untyped(early), Ok(h) if h.len == 8)
        && matches!(code(early), Some(SSL_REQUEST | GSSENC_REQUEST))
}

/// The StartupMessage the proxy's own clients send for `user` and
/// `database` (protocol 3.0, `application_name=continuity-probe`).
pub fn startup_message(user: &str, database: &str) -> Result<Vec<u8>, Error> {
    let msg = Startup::Startup {
        version: PROTOCOL_V3,
        params: [
            ("user", user),
            ("database", database),
            ("application_name", "continuity-probe"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    };
    let mut out = Vec::new();
    msg.encode(&mut out)?;
    Ok(out)
}
