//! The server side of RESP for the memory fallback, over the one codec
//! ([`crate::protocol::resp`]): its bounds on a command, and its reply
//! type, a [`Frame`] encoded for RESP2, or RESP3 after `HELLO 3`.

use crate::protocol::resp::{self, CommandLimits};

pub use crate::protocol::resp::Frame as Reply;

/// Largest command accepted (all of its bytes, framing included).
pub const MAX_COMMAND: usize = 512 * 1024;
/// Most arguments accepted in one command.
pub const MAX_ARGS: usize = 16 * 1024;

const LIMITS: CommandLimits = CommandLimits {
    max_command: MAX_COMMAND,
    max_args: MAX_ARGS,
};

/// A command's name and arguments.
pub type Args = resp::Command;

/// Bytes that can never become a valid command: the connection answers
/// `-ERR Protocol error: ...` and closes, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Parses one command from the start of `buf`: `Ok(Some((args, used)))`,
/// `Ok(None)` when more bytes are needed. An empty `args` (a blank inline
/// line, or `*0`) is to be skipped.
pub fn parse_command(buf: &[u8]) -> Result<Option<(Args, usize)>, ProtocolError> {
    resp::parse_command(buf, &LIMITS).map_err(|e| ProtocolError(e.to_string()))
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
