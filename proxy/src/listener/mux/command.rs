//! The commands of a multiplexed client: cut from its byte stream one
//! whole command at a time ([`Scan`], incremental: a command arriving in
//! many reads is walked once), and what each asks of the multiplexer
//! ([`classify`]). Nothing malformed may reach the shared upstream
//! connection: Redis closes a connection on a protocol error, and that
//! connection carries every other client's commands too.

use crate::protocol::resp::{multibulk, parse_command, CommandLimits, Limits};

/// Largest command a multiplexed client may send (all its bytes). Redis
/// itself allows 512 MB arguments; a command is held whole here before it
/// joins the shared connection, so the bound is lower (docs/multiplex.md).
pub(super) const MAX_COMMAND: usize = 64 * 1024 * 1024;
/// Most arguments in one command (Redis: 1024 × 1024 before AUTH).
const MAX_ARGS: i64 = 1024 * 1024;
/// Longest `*<n>` or `$<n>` header line, CRLF included.
const MAX_HEADER: usize = 32;
/// Longest inline command line (Redis: PROTO_INLINE_MAX_SIZE).
const MAX_INLINE: usize = 64 * 1024;

/// Where the reading of the command at the front of the buffer stands.
/// `pos` and `left` are 0 between commands.
#[derive(Default)]
pub(super) struct Scan {
    pos: usize,
    left: i64,
}

/// What the front of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Not a whole command yet.
    More,
    /// A whole multibulk command of this many bytes.
    Multibulk(usize),
    /// An inline command (`PING\r\n`): its bytes and its words.
    Inline(usize, Vec<Vec<u8>>),
    /// Bytes that hold no command (`*0`, a blank line): dropped.
    Empty(usize),
}

impl Scan {
    /// Reads on from where the last call stopped; `buf` starts with the
    /// same command, with more bytes after. An error is a protocol error:
    /// the client is told and closed, as Redis does.
    pub(super) fn next(&mut self, buf: &[u8]) -> Result<Step, &'static str> {
        if self.left == 0 {
            match buf.first() {
                None => return Ok(Step::More),
                Some(b'*') => {}
                Some(_) => return inline(buf),
            }
            let Some((n, at)) = header(buf, 1)? else {
                return Ok(Step::More);
            };
            if n <= 0 {
                return Ok(Step::Empty(at));
            }
            if n > MAX_ARGS {
                return Err("invalid multibulk length");
            }
            (self.left, self.pos) = (n, at);
        }
        while self.left > 0 {
            match buf.get(self.pos) {
                None => return Ok(Step::More),
                Some(b'$') => {}
                Some(_) => return Err("expected '$'"),
            }
            let Some((len, at)) = header(buf, self.pos + 1)? else {
                return Ok(Step::More);
            };
            let len = usize::try_from(len).map_err(|_| "invalid bulk length")?;
            let end = at.saturating_add(len).saturating_add(2);
            if end > MAX_COMMAND {
                return Err("command too large for a multiplexed connection");
            }
            let Some(tail) = buf.get(end - 2..end) else {
                return Ok(Step::More);
            };
            if tail != b"\r\n" {
                return Err("bulk string not followed by CRLF");
            }
            self.pos = end;
            self.left -= 1;
        }
        let len = self.pos;
        *self = Scan::default();
        Ok(Step::Multibulk(len))
    }
}

/// `<digits>\r\n` from `from`: the number and where the line ends; `None`
/// while its CRLF is not in.
fn header(buf: &[u8], from: usize) -> Result<Option<(i64, usize)>, &'static str> {
    let rest = buf.get(from..).unwrap_or_default();
    let window = rest.get(..MAX_HEADER).unwrap_or(rest);
    let Some(nl) = window.iter().position(|b| *b == b'\n') else {
        return if rest.len() >= MAX_HEADER {
            Err("header line too long")
        } else {
            Ok(None)
        };
    };
    let line = window.get(..nl).unwrap_or_default();
    let digits = line.strip_suffix(b"\r").ok_or("header line without CR")?;
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or("invalid length")?;
    Ok(Some((n, from + nl + 1)))
}

/// An inline command: words separated by spaces, no quoting (a quote is
/// refused by [`classify`], not sent: Redis would close the shared
/// connection on unbalanced quotes).
fn inline(buf: &[u8]) -> Result<Step, &'static str> {
    let Some(nl) = buf.iter().take(MAX_INLINE + 1).position(|b| *b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Err("too big inline request")
        } else {
            Ok(Step::More)
        };
    };
    let limits = CommandLimits {
        max_command: MAX_INLINE + 1,
        max_args: 1024,
    };
    match parse_command(buf.get(..=nl).unwrap_or_default(), &limits) {
        Ok(Some((words, used))) if words.is_empty() => Ok(Step::Empty(used)),
        Ok(Some((words, used))) => Ok(Step::Inline(used, words)),
        Ok(None) => Ok(Step::More),
        Err(_) => Err("invalid inline request"),
    }
}

/// Bounds of a command [`Scan`] has cut whole.
const LIMITS: Limits = Limits {
    max_line: MAX_HEADER,
    max_bulk: MAX_COMMAND,
    max_elements: MAX_ARGS as usize,
    ..Limits::RESP2_REPLY
};

/// The arguments of a whole multibulk command, in place.
pub(super) fn args(cmd: &[u8]) -> Vec<&[u8]> {
    match multibulk(cmd, &LIMITS) {
        Ok(Some(args)) => args.map_while(Result::ok).collect(),
        _ => Vec::new(),
    }
}

/// The name of a whole multibulk command (its first argument), in place:
/// what every command costs to classify, without collecting the others.
pub(super) fn name(cmd: &[u8]) -> &[u8] {
    match multibulk(cmd, &LIMITS) {
        Ok(Some(mut args)) => args.next().and_then(Result::ok).unwrap_or_default(),
        _ => &[],
    }
}

/// What a command asks of the multiplexer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Send it on the shared connection.
    Forward,
    /// Answer it here with these bytes.
    Reply(Vec<u8>),
    /// `AUTH`: checked against the service's password here.
    Auth,
    /// `QUIT`: `+OK`, then close once every reply is written.
    Quit,
}

/// `name` and, for the few commands whose arguments matter, `args` (all of
/// them, name first). Commands that hold state on their connection, block
/// it or turn it into a subscriber would hold or change the shared
/// connection for every client on it: they are refused with `-ERR`
/// (docs/multiplex.md has the list and why).
pub(super) fn classify<'a>(name: &[u8], args: impl FnOnce() -> Vec<&'a [u8]>) -> Action {
    let mut upper = [0u8; 16];
    let Some(slot) = upper.get_mut(..name.len()) else {
        return Action::Forward;
    };
    slot.copy_from_slice(name);
    slot.make_ascii_uppercase();
    let refuse = |what: &str| {
        Action::Reply(crate::protocol::resp::error_reply(&format!(
            "{what} is not supported on a multiplexed connection (continuity multiplex; \
             docs/multiplex.md)"
        )))
    };
    match &*slot {
        b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH" | b"BLPOP" | b"BRPOP"
        | b"BRPOPLPUSH" | b"BLMOVE" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX" | b"BZMPOP"
        | b"WAIT" | b"WAITAOF" | b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE"
        | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" | b"MONITOR" | b"HELLO" | b"RESET" | b"CLIENT"
        | b"READONLY" | b"READWRITE" | b"ASKING" | b"SYNC" | b"PSYNC" | b"REPLCONF" => {
            refuse(&String::from_utf8_lossy(slot))
        }
        b"XREAD" | b"XREADGROUP" => {
            let blocking = args()
                .iter()
                .skip(1)
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK"));
            if blocking {
                refuse(&format!("{} BLOCK", String::from_utf8_lossy(slot)))
            } else {
                Action::Forward
            }
        }
        b"SELECT" => match args().get(1) {
            Some(&b"0") => Action::Reply(b"+OK\r\n".to_vec()),
            Some(_) => refuse("SELECT of a database other than 0"),
            None => Action::Forward,
        },
        b"AUTH" => Action::Auth,
        b"QUIT" => Action::Quit,
        _ => Action::Forward,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all(stream: &[u8], chunk: usize) -> Vec<Result<Step, &'static str>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut scan = Scan::default();
        for piece in stream.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match scan.next(&buf) {
                    Ok(Step::More) => break,
                    Ok(step) => {
                        let used = match &step {
                            Step::Multibulk(n) | Step::Inline(n, _) | Step::Empty(n) => *n,
                            Step::More => 0,
                        };
                        buf.drain(..used);
                        out.push(Ok(step));
                    }
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn commands_are_cut_whole_however_they_arrive() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let mut stream = Vec::new();
        stream.extend_from_slice(set);
        stream.extend_from_slice(b"PING\r\n*0\r\n\r\n");
        stream.extend_from_slice(set);
        for chunk in [1, 2, 3, 7, 1000] {
            let got = all(&stream, chunk);
            assert_eq!(
                got,
                vec![
                    Ok(Step::Multibulk(set.len())),
                    Ok(Step::Inline(6, vec![b"PING".to_vec()])),
                    Ok(Step::Empty(4)),
                    Ok(Step::Empty(2)),
                    Ok(Step::Multibulk(set.len())),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn malformed_commands_are_refused_before_they_are_whole() {
        for bad in [
            &b"*1\r\n:5\r\n"[..],
            b"*1\r\n$3\r\nGETX\r\n",
            b"*1\r\n$-1\r\n",
            b"*x\r\n",
            b"*1\r\n$1234567890123456789012345678901234\r\n",
            b"*2000000\r\n",
            b"*1\r\n$100000000\r\n",
        ] {
            let got = all(bad, 1);
            assert!(matches!(got.last(), Some(Err(_))), "{bad:?}: {got:?}");
        }
        let long_inline = vec![b'a'; MAX_INLINE + 2];
        assert!(matches!(all(&long_inline, 4096).last(), Some(Err(_))));
    }

    #[test]
    fn stateful_commands_are_refused_and_select_0_is_answered() {
        let no_args = Vec::new;
        for name in [&b"multi"[..], b"BLPOP", b"subscribe", b"Client", b"HELLO"] {
            assert!(
                matches!(classify(name, no_args), Action::Reply(r) if r.starts_with(b"-ERR")),
                "{name:?}"
            );
        }
        for name in [
            &b"GET"[..],
            b"set",
            b"PING",
            b"averyveryverylongcommandname",
        ] {
            assert_eq!(classify(name, no_args), Action::Forward);
        }
        let cmd = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n";
        assert_eq!(name(cmd), b"SELECT");
        let select0 = args(cmd);
        assert_eq!(
            classify(b"SELECT", || select0),
            Action::Reply(b"+OK\r\n".to_vec())
        );
        let select1 = vec![&b"SELECT"[..], b"1"];
        assert!(
            matches!(classify(b"select", || select1), Action::Reply(r) if r.starts_with(b"-ERR"))
        );
        let xread = vec![&b"XREAD"[..], b"block", b"0", b"STREAMS", b"s", b"$"];
        assert!(matches!(classify(b"XREAD", || xread), Action::Reply(_)));
        let xread = vec![&b"XREAD"[..], b"STREAMS", b"s", b"0"];
        assert_eq!(classify(b"XREAD", || xread), Action::Forward);
        assert_eq!(classify(b"auth", no_args), Action::Auth);
        assert_eq!(classify(b"QUIT", no_args), Action::Quit);
    }
}
