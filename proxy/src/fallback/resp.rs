//! The server side of RESP for the memory fallback: a bounded command
//! parser (multibulk arrays and inline commands) and a reply encoder that
//! speaks RESP2, or RESP3 after `HELLO 3`.

/// Largest command accepted (all of its bytes, framing included).
pub const MAX_COMMAND: usize = 512 * 1024;
/// Most arguments accepted in one command.
pub const MAX_ARGS: usize = 16 * 1024;

/// A command's name and arguments.
pub type Args = Vec<Vec<u8>>;

/// Bytes that can never become a valid command: the connection answers
/// `-ERR Protocol error: ...` and closes, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

fn err<T>(msg: &str) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.to_string()))
}

/// Finds the CRLF-terminated line at `pos`: (line, position after CRLF).
fn line_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((rest.get(..end)?, pos + end + 2))
}

fn parse_len(line: &[u8], max: usize) -> Result<i64, ProtocolError> {
    let s = std::str::from_utf8(line).map_err(|_| ProtocolError("invalid length".into()))?;
    let n: i64 = s
        .parse()
        .map_err(|_| ProtocolError(format!("invalid length {s:?}")))?;
    if n > max as i64 {
        return err("length too large");
    }
    Ok(n)
}

/// Parses one command from the start of `buf`: `Ok(Some((args, used)))`,
/// `Ok(None)` when more bytes are needed. An empty `args` (a blank inline
/// line, or `*0`) is to be skipped.
pub fn parse_command(buf: &[u8]) -> Result<Option<(Args, usize)>, ProtocolError> {
    let r = match buf.first() {
        None => return Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    };
    match r {
        Ok(None) if buf.len() > MAX_COMMAND => err("command too large"),
        Ok(Some((_, used))) if used > MAX_COMMAND => err("command too large"),
        other => other,
    }
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<(Args, usize)>, ProtocolError> {
    let Some((line, mut pos)) = line_at(buf, 0) else {
        return if buf.len() > 32 {
            err("invalid multibulk length")
        } else {
            Ok(None)
        };
    };
    let n = parse_len(line.get(1..).unwrap_or_default(), MAX_ARGS)?;
    if n <= 0 {
        return Ok(Some((Vec::new(), pos)));
    }
    let mut args = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let Some((line, next)) = line_at(buf, pos) else {
            return if buf.len().saturating_sub(pos) > 32 {
                err("invalid bulk length")
            } else {
                Ok(None)
            };
        };
        if line.first() != Some(&b'$') {
            return err(&format!(
                "expected '$', got '{}'",
                line.first().map(|b| char::from(*b)).unwrap_or(' ')
            ));
        }
        let len = parse_len(line.get(1..).unwrap_or_default(), MAX_COMMAND)?;
        if len < 0 {
            return err("invalid bulk length");
        }
        let end = next + len as usize;
        if buf.len() < end + 2 {
            if end > MAX_COMMAND {
                return err("command too large");
            }
            return Ok(None);
        }
        if buf.get(end..end + 2) != Some(b"\r\n".as_slice()) {
            return err("bulk string not terminated by CRLF");
        }
        args.push(buf.get(next..end).unwrap_or_default().to_vec());
        pos = end + 2;
    }
    Ok(Some((args, pos)))
}

/// `PING\r\n`, `SET a b\n`: words separated by spaces; no quoting.
fn parse_inline(buf: &[u8]) -> Result<Option<(Args, usize)>, ProtocolError> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    let line = buf.get(..end).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args: Vec<Vec<u8>> = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if args.len() > MAX_ARGS {
        return err("too many arguments");
    }
    Ok(Some((args, end + 1)))
}

/// One reply, encoded for the connection's protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    /// The whole error line after `-` (e.g. `ERR wrong number ...`).
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Reply>),
    /// RESP3 map; a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn err(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }

    pub fn bulk(b: &[u8]) -> Reply {
        Reply::Bulk(b.to_vec())
    }

    /// How many bytes [`Reply::encode`] appends, to reserve them at once.
    pub fn encoded_len(&self, proto: u8) -> usize {
        fn digits(n: usize) -> usize {
            n.checked_ilog10().map_or(1, |d| d as usize + 1)
        }
        match self {
            Reply::Simple(s) | Reply::Error(s) => s.len() + 3,
            Reply::Int(i) => i.to_string().len() + 3,
            Reply::Bulk(b) => digits(b.len()) + b.len() + 5,
            Reply::Null if proto >= 3 => 3,
            Reply::Null => 5,
            Reply::Array(items) => items.iter().fold(digits(items.len()) + 3, |n, i| {
                n.saturating_add(i.encoded_len(proto))
            }),
            Reply::Map(pairs) => {
                let head = if proto >= 3 {
                    pairs.len()
                } else {
                    pairs.len().saturating_mul(2)
                };
                pairs.iter().fold(digits(head) + 3, |n, (k, v)| {
                    n.saturating_add(k.encoded_len(proto))
                        .saturating_add(v.encoded_len(proto))
                })
            }
        }
    }

    /// Appends the reply to `out`; `proto` is 2 or 3.
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => line(out, b'+', s),
            Reply::Error(s) => line(out, b'-', s),
            Reply::Int(i) => line(out, b':', &i.to_string()),
            Reply::Bulk(b) => {
                line(out, b'$', &b.len().to_string());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', &items.len().to_string());
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                if proto >= 3 {
                    line(out, b'%', &pairs.len().to_string());
                } else {
                    line(out, b'*', &(pairs.len() * 2).to_string());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

/// A one-line reply; CR and LF in the text become spaces.
fn line(out: &mut Vec<u8>, prefix: u8, text: &str) {
    out.push(prefix);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_and_inline() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$0\r\n\r\nPING\r\n";
        let (a, used) = parse_command(buf).unwrap().unwrap();
        assert_eq!(a, args(&["SET", "a", ""]));
        let (b, used2) = parse_command(&buf[used..]).unwrap().unwrap();
        assert_eq!(b, args(&["PING"]));
        assert_eq!(used + used2, buf.len());
        assert_eq!(
            parse_command(b"get  k\n").unwrap().unwrap().0,
            args(&["get", "k"])
        );
    }

    #[test]
    fn incomplete_waits_and_garbage_errs() {
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_command(&full[..cut]).unwrap(), None, "cut {cut}");
        }
        assert!(parse_command(b"*2\r\n:3\r\n").is_err());
        assert!(parse_command(b"*x\r\n").is_err());
        assert!(parse_command(b"*1\r\n$3\r\nabcXY").is_err());
        assert!(parse_command(b"*999999999\r\n").is_err());
        assert!(parse_command(b"*1\r\n$999999999\r\n").is_err());
        let big = vec![b'a'; MAX_COMMAND + 10];
        assert!(parse_command(&big).is_err());
    }

    #[test]
    fn encodes_both_protocols() {
        let r = Reply::Map(vec![(Reply::bulk(b"f"), Reply::bulk(b"v"))]);
        let mut two = Vec::new();
        r.encode(2, &mut two);
        assert_eq!(two, b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
        let mut three = Vec::new();
        r.encode(3, &mut three);
        assert_eq!(three, b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
        let mut n = Vec::new();
        Reply::Null.encode(3, &mut n);
        Reply::Null.encode(2, &mut n);
        Reply::err("A\r\nB").encode(2, &mut n);
        assert_eq!(n, b"_\r\n$-1\r\n-A  B\r\n");
    }

    #[test]
    fn encoded_len_is_exact() {
        let replies = [
            Reply::ok(),
            Reply::err("ERR x"),
            Reply::Int(-1234),
            Reply::Int(0),
            Reply::bulk(b""),
            Reply::bulk(&[7u8; 12345]),
            Reply::Null,
            Reply::Array(vec![Reply::Null; 10]),
            Reply::Array(Vec::new()),
            Reply::Map(vec![
                (Reply::bulk(b"f"), Reply::Array(vec![Reply::Int(9)]));
                5
            ]),
        ];
        for r in replies {
            for proto in [2, 3] {
                let mut out = Vec::new();
                r.encode(proto, &mut out);
                assert_eq!(r.encoded_len(proto), out.len(), "{r:?} in RESP{proto}");
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"*$:+-\r\n0123456789abc ";
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.gen_bool(0.8) {
                        alphabet[rng.gen_range(0..alphabet.len())]
                    } else {
                        rng.gen()
                    }
                })
                .collect();
            let mut rest = buf.as_slice();
            while let Ok(Some((_, used))) = parse_command(rest) {
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
            }
        }
    }
}
