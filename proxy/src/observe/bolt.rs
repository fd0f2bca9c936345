//! Bolt (Neo4j), read just enough to time statements: after the 20-byte
//! client handshake and the server's 4-byte answer, both sides send
//! chunked PackStream messages. Every request but GOODBYE gets exactly one
//! summary (SUCCESS, FAILURE or IGNORED; RECORDs come before a PULL's),
//! so a FIFO pairs them. A statement is timed from its RUN to the summary
//! that ends its result stream: the FAILURE of the RUN, or the last
//! SUCCESS of the PULL/DISCARD that follows it (one without
//! `has_more: true`); this is the time a driver waits for the whole result.
//! With several open result streams in one explicit transaction, a PULL is
//! attributed to the latest RUN. A FAILURE of a statement that looks like
//! a write (or of the COMMIT of a transaction that ran one) is reported as
//! a write failure, unless its code says the statement itself is wrong
//! (`Neo.ClientError.Statement.*`, `Neo.ClientError.Request.*`). Bolt 5.7
//! manifest negotiation turns the observer off.

use std::time::Instant;

use super::normalize::{looks_like_write, mask, Dialect};
use super::{capture, Out, Pending, Stop, TEXT_CAP};

/// Requests awaiting their summary.
const MAX_PENDING: usize = 1024;
const MAGIC: [u8; 4] = [0x60, 0x60, 0xB0, 0x17];

const RUN: u8 = 0x10;
const BEGIN: u8 = 0x11;
const COMMIT: u8 = 0x12;
const ROLLBACK: u8 = 0x13;
const RESET: u8 = 0x0F;
const GOODBYE: u8 = 0x02;
const DISCARD: u8 = 0x2F;
const PULL: u8 = 0x3F;
const SUCCESS: u8 = 0x70;
const RECORD: u8 = 0x71;
const IGNORED: u8 = 0x7E;
const FAILURE: u8 = 0x7F;
/// HELLO/INIT, ACK_FAILURE, TELEMETRY, ROUTE, LOGON, LOGOFF.
const OTHER_REQUESTS: [u8; 6] = [0x01, 0x0E, 0x54, 0x66, 0x6A, 0x6B];

/// Splits a chunked stream into messages, capturing each message's start.
#[derive(Default)]
struct Chunker {
    head: [u8; 2],
    got: usize,
    rem: usize,
    msg_len: usize,
    body: Vec<u8>,
    cap: usize,
    done: bool,
}

impl Chunker {
    /// Advances to the end of the next whole message (`Some(())`), whose
    /// first bytes are then in `body` (marker, tag, fields).
    fn step(&mut self, data: &mut &[u8], cap_for: fn(u8) -> usize) -> Result<Option<()>, Stop> {
        if self.done {
            self.done = false;
            self.body.clear();
            self.msg_len = 0;
        }
        loop {
            if self.rem == 0 {
                let take = (2 - self.got).min(data.len());
                let (head, rest) = data.split_at(take);
                if let Some(dst) = self.head.get_mut(self.got..self.got + take) {
                    dst.copy_from_slice(head);
                }
                *data = rest;
                self.got += take;
                if self.got < 2 {
                    return Ok(None);
                }
                self.got = 0;
                let size = usize::from(u16::from_be_bytes(self.head));
                if size > 0 {
                    self.rem = size;
                    continue;
                }
                if self.msg_len == 0 {
                    continue; // NOOP chunk (keep-alive)
                }
                self.done = true;
                return Ok(Some(()));
            }
            if data.is_empty() {
                return Ok(None);
            }
            let n = self.rem.min(data.len());
            let (mut chunk, rest) = data.split_at(n);
            *data = rest;
            self.rem -= n;
            self.msg_len += n;
            if self.body.len() < 2 {
                let k = (2 - self.body.len()).min(chunk.len());
                let (a, b) = chunk.split_at(k);
                self.body.extend_from_slice(a);
                chunk = b;
                if let [marker, tag] = self.body[..] {
                    if !(0xB0..=0xBF).contains(&marker) {
                        return Err(Stop::Confused("bolt: message is not a structure"));
                    }
                    self.cap = cap_for(tag);
                }
            }
            capture(&mut self.body, chunk, self.cap);
        }
    }

    fn tag(&self) -> u8 {
        self.body.get(1).copied().unwrap_or(0)
    }
}

fn client_cap(tag: u8) -> usize {
    if tag == RUN {
        TEXT_CAP + 16
    } else {
        2
    }
}

fn server_cap(tag: u8) -> usize {
    match tag {
        SUCCESS => 256,
        FAILURE => 1024,
        _ => 2,
    }
}

/// A request sent and not yet summarised.
struct Req {
    tag: u8,
    start: Instant,
}

#[derive(Default)]
pub(crate) struct Bolt {
    client_hs: usize,
    server_hs: [u8; 4],
    server_got: usize,
    client: Chunker,
    server: Chunker,
    pending: Option<Pending<Req>>,
    /// A RUN answered with SUCCESS whose records are still to come.
    stream: Option<(Instant, Vec<u8>)>,
    /// The explicit transaction ran a write: its last one.
    tx_write: Option<Vec<u8>>,
}

/// The PackStream string at the start of `b` (cut short if `b` is).
fn string_at(b: &[u8]) -> &[u8] {
    let (len, skip) = match b {
        [m @ 0x80..=0x8F, ..] => (usize::from(m & 0x0F), 1),
        [0xD0, l, ..] => (usize::from(*l), 2),
        [0xD1, a, c, ..] => (usize::from(u16::from_be_bytes([*a, *c])), 3),
        [0xD2, a, c, d, e, ..] => (u32::from_be_bytes([*a, *c, *d, *e]) as usize, 5),
        _ => return &[],
    };
    let s = b.get(skip..).unwrap_or_default();
    s.get(..len.min(s.len())).unwrap_or_default()
}

/// The string value following `key` (a PackStream-encoded key) in `b`.
fn value_of<'a>(b: &'a [u8], key: &[u8]) -> &'a [u8] {
    b.windows(key.len())
        .position(|w| w == key)
        .and_then(|p| b.get(p + key.len()..))
        .map(string_at)
        .unwrap_or_default()
}

fn has_more(success: &[u8]) -> bool {
    success.windows(10).any(|w| w == b"\x88has_more\xC3")
}

impl Bolt {
    fn pending(&mut self) -> &mut Pending<Req> {
        self.pending
            .get_or_insert_with(|| Pending::new(MAX_PENDING))
    }

    pub fn client(&mut self, mut data: &[u8], out: &mut Out) -> Result<(), Stop> {
        while self.client_hs < 20 {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            if MAGIC.get(self.client_hs).is_some_and(|&m| m != b) {
                return Err(Stop::Quiet); // not Bolt over TCP (e.g. Bolt over WebSocket)
            }
            self.client_hs += 1;
            data = rest;
        }
        while self.client.step(&mut data, client_cap)?.is_some() {
            let tag = self.client.tag();
            let mut text = Vec::new();
            match tag {
                RUN => {
                    text = self.pending().buffer();
                    capture(
                        &mut text,
                        string_at(self.client.body.get(2..).unwrap_or_default()),
                        TEXT_CAP,
                    );
                    if let Some(last) = self.tx_write.as_mut() {
                        if looks_like_write(&text) {
                            last.clear();
                            last.extend_from_slice(&text);
                        }
                    }
                }
                BEGIN => self.tx_write = Some(Vec::new()),
                GOODBYE => continue,
                COMMIT | ROLLBACK | RESET | DISCARD | PULL => {}
                t if OTHER_REQUESTS.contains(&t) => {}
                _ => return Err(Stop::Confused("bolt: unknown request")),
            }
            let req = Req {
                tag,
                start: out.now,
            };
            self.pending().push(req, text)?;
        }
        Ok(())
    }

    pub fn server(&mut self, mut data: &[u8], out: &mut Out) -> Result<(), Stop> {
        while self.server_got < 4 {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            if let Some(slot) = self.server_hs.get_mut(self.server_got) {
                *slot = b;
            }
            self.server_got += 1;
            data = rest;
            if self.server_got == 4 {
                match self.server_hs {
                    [0, 0, _, 1..=6] => {}
                    _ => return Err(Stop::Quiet), // no version, or a manifest
                }
            }
        }
        while self.server.step(&mut data, server_cap)?.is_some() {
            let tag = self.server.tag();
            match tag {
                RECORD => continue,
                SUCCESS | IGNORED | FAILURE => {}
                _ => return Err(Stop::Confused("bolt: unknown response")),
            }
            let Some((req, text)) = self.pending().pop() else {
                return Err(Stop::Confused("bolt: summary without a request"));
            };
            let body = std::mem::take(&mut self.server.body);
            self.summary(req, text, tag, &body, out);
            self.server.body = body;
        }
        Ok(())
    }

    fn summary(&mut self, req: Req, text: Vec<u8>, tag: u8, body: &[u8], out: &mut Out) {
        let code = value_of(body, b"\x84code");
        if tag == FAILURE && operational(code) {
            out.upstream_error(code, value_of(body, b"\x87message"));
        }
        match (req.tag, tag) {
            (RUN, SUCCESS) => {
                if let Some((_, old)) = self.stream.replace((req.start, text)) {
                    self.pending().recycle(old);
                }
                return;
            }
            (RUN, FAILURE) => return self.finished(req.start, text, Some(code), out),
            (PULL | DISCARD, SUCCESS) if has_more(body) => {}
            (PULL | DISCARD, SUCCESS | FAILURE) => {
                if let Some((start, run)) = self.stream.take() {
                    let failed = (tag == FAILURE).then_some(code);
                    self.finished(start, run, failed, out);
                }
            }
            (PULL | DISCARD | RESET, _) => {
                if req.tag == RESET {
                    self.tx_write = None;
                }
                if let Some((_, old)) = self.stream.take() {
                    self.pending().recycle(old);
                }
            }
            (COMMIT, FAILURE) => {
                if let Some(write) = self.tx_write.take().filter(|w| !w.is_empty()) {
                    out.findings.push(super::Finding::WriteFailure {
                        statement: mask(&write, Dialect::Cypher),
                        code: String::from_utf8_lossy(code).into_owned(),
                    });
                }
            }
            (COMMIT | ROLLBACK, _) => self.tx_write = None,
            _ => {}
        }
        self.pending().recycle(text);
    }

    /// A statement's result stream ended (with `failed`'s code if it failed).
    fn finished(&mut self, start: Instant, text: Vec<u8>, failed: Option<&[u8]>, out: &mut Out) {
        out.timed(start, "run", || mask(&text, Dialect::Cypher));
        if let Some(code) = failed {
            if looks_like_write(&text) && !statement_error(code) {
                out.findings.push(super::Finding::WriteFailure {
                    statement: mask(&text, Dialect::Cypher),
                    code: String::from_utf8_lossy(code).into_owned(),
                });
            }
        }
        self.pending().recycle(text);
    }
}

/// The statement itself is wrong (syntax, types, a missing parameter, a
/// malformed request): an application bug, not a database that failed to
/// take a write.
fn statement_error(code: &[u8]) -> bool {
    code.starts_with(b"Neo.ClientError.Statement.") || code.starts_with(b"Neo.ClientError.Request.")
}

/// Neo4j codes that speak of the server rather than the statement.
fn operational(code: &[u8]) -> bool {
    [
        b"Neo.TransientError.".as_slice(),
        b"Neo.DatabaseError.",
        b"Neo.ClientError.Security.",
        b"Neo.ClientError.Cluster.",
    ]
    .iter()
    .any(|p| code.starts_with(p))
}

#[cfg(test)]
#[path = "bolt_tests.rs"]
mod tests;
