//! RESP (Redis), read just enough to time commands: each command (an array
//! of bulk strings, or an inline line) is paired in order with the next
//! complete reply, so pipelines work; a small scanner counts complete
//! replies, nested aggregates included (RESP2 and RESP3). Commands that
//! make the server speak without being asked (SUBSCRIBE, MONITOR,
//! CLIENT REPLY, replication) and RESP3 push or attribute frames turn the
//! observer off quietly. Blocking commands (BLPOP, XREAD BLOCK, WAIT, ...)
//! are followed but never reported slow: waiting is what they are for.

use std::time::Instant;

use super::normalize::{has_subcommand, redis_command};
use super::session::{Session, FRAME_MAX};
use super::{Out, Pending, Stop};
use crate::protocol::resp;
use crate::protocol::resp::stream::{Num, Replies, LINE_MAX};

/// Commands awaiting their reply.
const MAX_PENDING: usize = 1024;
/// Bytes kept of a command name and of its subcommand.
const NAME: usize = 24;
/// Redis refuses multibulk lengths above this.
const MAX_ARGS: i64 = i32::MAX as i64;
const QUIET: &[&[u8]] = &[
    b"SUBSCRIBE",
    b"PSUBSCRIBE",
    b"SSUBSCRIBE",
    b"MONITOR",
    b"SYNC",
    b"PSYNC",
];
const BLOCKING: &[&[u8]] = &[
    b"BLPOP",
    b"BRPOP",
    b"BRPOPLPUSH",
    b"BLMOVE",
    b"BLMPOP",
    b"BZPOPMIN",
    b"BZPOPMAX",
    b"BZMPOP",
    b"WAIT",
    b"WAITAOF",
];
const OPERATIONAL: &[&[u8]] = &[
    b"LOADING",
    b"MASTERDOWN",
    b"READONLY",
    b"OOM",
    b"BUSY",
    b"MISCONF",
    b"NOAUTH",
    b"WRONGPASS",
    b"NOPERM",
    b"NOREPLICAS",
    b"CLUSTERDOWN",
    b"TRYAGAIN",
    b"ERR max number of clients",
];

/// A command sent and not yet answered.
#[derive(Clone, Copy)]
struct Entry {
    start: Instant,
    name: [u8; NAME],
    name_len: u8,
    sub: [u8; NAME],
    sub_len: u8,
    args: u32,
    blocking: bool,
    /// A command whose reply the session waits for (observe/session.rs).
    replay: bool,
}

impl Entry {
    fn name(&self) -> &[u8] {
        self.name
            .get(..usize::from(self.name_len))
            .unwrap_or_default()
    }

    fn sub(&self) -> &[u8] {
        self.sub
            .get(..usize::from(self.sub_len))
            .unwrap_or_default()
    }

    fn statement(&self) -> String {
        let with_sub = has_subcommand(self.name()) && self.args >= 2;
        let sub = with_sub.then(|| self.sub());
        let masked = u64::from(self.args).saturating_sub(1 + u64::from(with_sub));
        redis_command(self.name(), sub, masked)
    }
}

enum Client {
    Start,
    ArrayLen,
    ArgHeader,
    ArgLen,
    /// `len` payload bytes plus CRLF; `at` bytes of them read.
    ArgData {
        len: u64,
        at: u64,
    },
    Inline {
        seen: usize,
        in_token: bool,
    },
}

pub(crate) struct Resp {
    client: Client,
    num: Num,
    cmd: Entry,
    arg: u32,
    /// XREAD/XREADGROUP: an argument `BLOCK` makes the command blocking.
    watch_block: bool,
    /// A container command (`CONFIG`, `CLIENT`, ...): keep its subcommand.
    want_sub: bool,
    word: [u8; 5],
    replies: Replies,
    pending: Option<Pending<Entry>>,
    /// What the connection set on its server (re-attachment at a failover).
    pub(super) session: Session,
    /// The bytes of a command read byte-wise, up to [`FRAME_MAX`] (the fast
    /// path hands its command's bytes over whole).
    frame: Vec<u8>,
    frame_over: bool,
}

impl Default for Resp {
    fn default() -> Self {
        Resp {
            client: Client::Start,
            num: Num::default(),
            cmd: Entry {
                start: Instant::now(),
                name: [0; NAME],
                name_len: 0,
                sub: [0; NAME],
                sub_len: 0,
                args: 0,
                blocking: false,
                replay: false,
            },
            arg: 0,
            watch_block: false,
            want_sub: false,
            word: [0; 5],
            replies: Replies::default(),
            pending: None,
            session: Session::default(),
            frame: Vec::new(),
            frame_over: false,
        }
    }
}

/// Copies an argument's bytes at offset `at` into a fixed slot.
fn keep(slot: &mut [u8], len: &mut u8, at: u64, chunk: &[u8]) {
    let Some(room) = usize::try_from(at).ok().and_then(|at| slot.get_mut(at..)) else {
        return;
    };
    let n = chunk.len().min(room.len());
    if n == 0 {
        return;
    }
    if let (Some(dst), Some(src)) = (room.get_mut(..n), chunk.get(..n)) {
        dst.copy_from_slice(src);
        dst.make_ascii_uppercase();
        let end = u8::try_from(at.saturating_add(n as u64)).unwrap_or(u8::MAX);
        *len = (*len).max(end);
    }
}

impl Resp {
    fn pending(&mut self) -> &mut Pending<Entry> {
        self.pending
            .get_or_insert_with(|| Pending::new(MAX_PENDING))
    }

    fn begin(&mut self, now: Instant) {
        self.cmd.start = now;
        self.cmd.name_len = 0;
        self.cmd.sub_len = 0;
        self.cmd.args = 0;
        self.cmd.blocking = false;
        self.arg = 0;
        self.watch_block = false;
        self.want_sub = false;
        self.frame.clear();
        self.frame_over = false;
    }

    /// Keeps `bytes` of the command being read byte-wise.
    fn keep_frame(&mut self, bytes: &[u8]) {
        if self.frame_over || self.frame.len() + bytes.len() > FRAME_MAX {
            self.frame_over = true;
            self.frame.clear();
        } else {
            self.frame.extend_from_slice(bytes);
        }
    }

    /// Whether the connection may be re-attached now: between commands,
    /// every reply in, and nothing set that cannot be replayed.
    pub(super) fn idle(&self) -> Result<(), &'static str> {
        if !matches!(self.client, Client::Start) {
            return Err("a command partly received");
        }
        if self.pending.as_ref().is_some_and(|p| !p.is_empty()) || !self.replies.between() {
            return Err("a reply outstanding");
        }
        self.session.ineligible().map_or(Ok(()), Err)
    }

    pub fn client(&mut self, mut data: &[u8], out: &mut Out) -> Result<(), Stop> {
        while !data.is_empty() {
            let before = data;
            // A command read byte-wise ended with this step.
            let mut done = false;
            match &mut self.client {
                Client::Start => {
                    self.begin(out.now);
                    if let Some(used) = self.whole_command(data) {
                        let (frame, rest) = data.split_at(used.min(data.len()));
                        data = rest;
                        self.command(Some(frame))?;
                        continue;
                    } else if data.first() == Some(&b'*') {
                        data = data.get(1..).unwrap_or_default();
                        self.client = Client::ArrayLen;
                    } else {
                        self.client = Client::Inline {
                            seen: 0,
                            in_token: false,
                        };
                    }
                }
                Client::ArrayLen => match self.num.feed(&mut data).map_err(stop)? {
                    Some(n) if n <= 0 => self.client = Client::Start,
                    Some(n) if n > MAX_ARGS => {
                        return Err(Stop::Confused("resp: too many arguments"))
                    }
                    Some(n) => {
                        self.cmd.args = u32::try_from(n).unwrap_or(u32::MAX);
                        self.client = Client::ArgHeader;
                    }
                    None => {}
                },
                Client::ArgHeader => {
                    if data.first() != Some(&b'$') {
                        return Err(Stop::Confused("resp: expected a bulk string argument"));
                    }
                    data = data.get(1..).unwrap_or_default();
                    self.client = Client::ArgLen;
                }
                Client::ArgLen => match self.num.feed(&mut data).map_err(stop)? {
                    Some(n) if n < 0 => {
                        return Err(Stop::Confused("resp: negative argument length"))
                    }
                    Some(n) => {
                        self.client = Client::ArgData {
                            len: n.unsigned_abs(),
                            at: 0,
                        }
                    }
                    None => {}
                },
                Client::ArgData { len, at } => {
                    let (len, start) = (*len, *at);
                    let total = len + 2;
                    let n = usize::try_from(total - start)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let (chunk, rest) = data.split_at(n);
                    let payload_end = usize::try_from(len.saturating_sub(start))
                        .unwrap_or(usize::MAX)
                        .min(chunk.len());
                    let payload = chunk.get(..payload_end).unwrap_or_default();
                    match self.arg {
                        0 => keep(&mut self.cmd.name, &mut self.cmd.name_len, start, payload),
                        1 if self.want_sub => {
                            keep(&mut self.cmd.sub, &mut self.cmd.sub_len, start, payload)
                        }
                        _ => {}
                    }
                    if self.watch_block && len == 5 {
                        let mut l = 0;
                        keep(&mut self.word, &mut l, start, payload);
                    }
                    data = rest;
                    let at = start + n as u64;
                    if at < total {
                        // Not `continue`: the bytes still go to the frame.
                        self.client = Client::ArgData { len, at };
                    } else {
                        if chunk.get(chunk.len().saturating_sub(2)..) != Some(b"\r\n".as_slice())
                            && n >= 2
                        {
                            return Err(Stop::Confused("resp: argument not ended by CRLF"));
                        }
                        self.end_arg(len);
                        if self.arg >= self.cmd.args {
                            self.client = Client::Start;
                            done = true;
                        } else {
                            self.client = Client::ArgHeader;
                        }
                    }
                }
                Client::Inline { seen, in_token } => {
                    let end = data.iter().position(|&b| b == b'\n');
                    let line = data.get(..end.unwrap_or(data.len())).unwrap_or_default();
                    *seen += line.len();
                    if *seen > LINE_MAX {
                        return Err(Stop::Confused("resp: inline command too long"));
                    }
                    let mut tokens = self.cmd.args;
                    let mut inside = *in_token;
                    for &b in line {
                        let space = b.is_ascii_whitespace();
                        if !space && !inside {
                            tokens = tokens.saturating_add(1);
                        }
                        inside = !space;
                        let slot = match tokens {
                            1 => Some((&mut self.cmd.name, &mut self.cmd.name_len)),
                            2 => Some((&mut self.cmd.sub, &mut self.cmd.sub_len)),
                            _ => None,
                        };
                        if let (Some((slot, len)), false) = (slot, space) {
                            let at = u64::from(*len);
                            keep(slot, len, at, &[b]);
                        }
                    }
                    self.cmd.args = tokens;
                    *in_token = inside;
                    match end {
                        Some(p) => {
                            data = data.get(p + 1..).unwrap_or_default();
                            self.client = Client::Start;
                            done = tokens > 0;
                        }
                        None => data = &[],
                    }
                }
            }
            let used = before.len() - data.len();
            self.keep_frame(before.get(..used).unwrap_or_default());
            if done {
                let frame = std::mem::take(&mut self.frame);
                let kept = (!self.frame_over).then_some(frame.as_slice());
                let r = self.command(kept);
                self.frame = frame;
                r?;
            }
        }
        Ok(())
    }

    /// The fast path: a well-formed command wholly inside `data` is read
    /// in one go (the usual case); `None` leaves anything else (split,
    /// unusual or malformed) to the byte-wise state machine, which reaches
    /// the same result.
    fn whole_command(&mut self, data: &[u8]) -> Option<usize> {
        let cmd = &mut self.cmd;
        let (n, used) = resp::whole_multibulk(data, 1024, |i, payload| {
            match i {
                0 => keep(&mut cmd.name, &mut cmd.name_len, 0, payload),
                1 if has_subcommand(cmd.name()) => keep(&mut cmd.sub, &mut cmd.sub_len, 0, payload),
                _ => {}
            }
            if i > 0 && payload.len() == 5 && payload.eq_ignore_ascii_case(b"BLOCK") {
                let name = cmd.name();
                cmd.blocking |= name == b"XREAD" || name == b"XREADGROUP";
            }
        })?;
        self.cmd.args = u32::try_from(n).ok()?;
        Some(used)
    }

    fn end_arg(&mut self, len: u64) {
        if self.arg == 0 {
            let name = self.cmd.name();
            self.watch_block = name == b"XREAD" || name == b"XREADGROUP";
            self.want_sub = has_subcommand(name);
        } else if self.watch_block && len == 5 && &self.word == b"BLOCK" {
            self.cmd.blocking = true;
        }
        self.arg += 1;
    }

    /// A whole command was read (`frame`: its bytes, if kept).
    fn command(&mut self, frame: Option<&[u8]>) -> Result<(), Stop> {
        let replay = self.session.command(self.cmd.name(), self.cmd.sub(), frame);
        self.cmd.replay = replay;
        let name = self.cmd.name();
        // The first letter keeps the common commands off the list scans.
        match name.first() {
            Some(b'S' | b'P' | b'M' | b'C')
                if QUIET.contains(&name) || (name == b"CLIENT" && self.cmd.sub() == b"REPLY") =>
            {
                return Err(Stop::Quiet);
            }
            Some(b'B' | b'W') => self.cmd.blocking |= BLOCKING.contains(&name),
            _ => {}
        }
        let cmd = self.cmd;
        self.pending().push(cmd, Vec::new())
    }

    pub fn server(&mut self, mut data: &[u8], out: &mut Out) -> Result<(), Stop> {
        while let Some(error) = self.replies.next(&mut data).map_err(stop)? {
            let pending = self
                .pending
                .get_or_insert_with(|| Pending::new(MAX_PENDING));
            let Some((cmd, _)) = pending.pop() else {
                return Err(Stop::Confused("resp: reply without a command"));
            };
            if cmd.replay {
                self.session.answered(error.is_none());
            }
            if let Some(line) = error {
                if OPERATIONAL.iter().any(|p| line.starts_with(p)) {
                    let code = line.split(|&b| b == b' ').next().unwrap_or_default();
                    out.upstream_error(code, line);
                }
            }
            if !cmd.blocking {
                out.timed(cmd.start, "command", || cmd.statement());
            }
        }
        Ok(())
    }
}

/// A codec error as the observer's stop: out-of-band frames (push,
/// attribute) are expected and quiet, the rest is confusion.
fn stop(e: resp::Error) -> Stop {
    match e {
        resp::Error::OutOfBand => Stop::Quiet,
        other => Stop::Confused(other.reason()),
    }
}

#[cfg(test)]
#[path = "resp_tests.rs"]
mod tests;
