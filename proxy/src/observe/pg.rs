//! PostgreSQL protocol 3.0, read just enough to time statements: a simple
//! `Query` from send to its `ReadyForQuery`; an extended batch (`Parse`,
//! `Bind`, `Describe`, `Execute`, ...) from its first message to the
//! `ReadyForQuery` that answers its `Sync`. Every `Query`, `Sync` and
//! `FunctionCall` gets exactly one `ReadyForQuery`, so a FIFO pairs them,
//! pipelined or not. The startup phase (untyped messages, SSL/GSS
//! negotiation, authentication up to the first `ReadyForQuery`) is
//! skipped; TLS, cancel requests and replication (`CopyBoth`) turn the
//! observer off quietly. Framing (tag, length and its bounds) and the
//! ErrorResponse fields come from the codec, [`crate::protocol::postgres`];
//! this module streams bodies through without buffering whole messages.

use std::collections::VecDeque;
use std::time::Instant;

use super::normalize::{self, Dialect};
use super::{capture, Out, Pending, Stop, TEXT_CAP};
use crate::protocol::postgres::startup::{CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST};
use crate::protocol::postgres::{backend, frontend, parse_error_fields, Header};

/// Statements awaiting their ReadyForQuery.
const MAX_PENDING: usize = 256;
/// Named prepared statements remembered for `Bind` (beyond: oldest forgotten).
const MAX_NAMED: usize = 64;
/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1) plus its NUL.
const NAME_CAP: usize = 64;
/// PostgreSQL's own ceiling for one message (1 GiB).
const MESSAGE_MAX: usize = crate::protocol::postgres::MESSAGE_MAX;

/// A complete frame or header, as the framer walks a stream.
enum Step {
    /// A header was read; set `cap` before the body is captured.
    Header(u8),
    /// A whole message was read; its captured body is in `body`.
    Message(u8),
}

/// Splits a byte stream into messages, capturing up to `cap` body bytes.
#[derive(Default)]
struct Framer {
    typed: bool,
    header: [u8; 5],
    got: usize,
    in_body: bool,
    rem: usize,
    tag: u8,
    cap: usize,
    body: Vec<u8>,
}

impl Framer {
    fn step(&mut self, data: &mut &[u8]) -> Result<Option<Step>, Stop> {
        if !self.in_body {
            let want = if self.typed { 5 } else { 4 };
            let take = (want - self.got).min(data.len());
            let (head, rest) = data.split_at(take);
            if let Some(dst) = self.header.get_mut(self.got..self.got + take) {
                dst.copy_from_slice(head);
            }
            *data = rest;
            self.got += take;
            if self.got < want {
                return Ok(None);
            }
            self.got = 0;
            // The codec's header scan: no copy, no allocation.
            let head = if self.typed {
                Header::typed(&self.header, MESSAGE_MAX)
            } else {
                Header::untyped(&self.header)
            };
            let Ok(head) = head else {
                return Err(Stop::Confused("postgres: implausible message length"));
            };
            self.tag = head.tag;
            self.rem = head.body_len();
            self.in_body = true;
            self.cap = 0;
            self.body.clear();
            return Ok(Some(Step::Header(head.tag)));
        }
        if self.rem > 0 {
            if data.is_empty() {
                return Ok(None);
            }
            let n = self.rem.min(data.len());
            let (chunk, rest) = data.split_at(n);
            capture(&mut self.body, chunk, self.cap);
            *data = rest;
            self.rem -= n;
        }
        if self.rem == 0 {
            self.in_body = false;
            return Ok(Some(Step::Message(self.tag)));
        }
        Ok(None)
    }
}

/// A statement sent and not yet answered by ReadyForQuery.
struct Unit {
    start: Instant,
    kind: &'static str,
}

#[derive(Default)]
pub(crate) struct Pg {
    client: Framer,
    server: Framer,
    /// The next server byte answers an SSLRequest or GSSENCRequest.
    ssl_answer: bool,
    /// The server's first ReadyForQuery (end of startup) was seen.
    ready: bool,
    pending: Option<Pending<Unit>>,
    /// The extended batch being built (not yet closed by Sync).
    open: Option<(Instant, Vec<u8>)>,
    unnamed: Vec<u8>,
    named: VecDeque<(Vec<u8>, Vec<u8>)>,
}

/// The NUL-terminated string at the start of `b`, and what follows it.
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(p) => (
            b.get(..p).unwrap_or_default(),
            b.get(p + 1..).unwrap_or_default(),
        ),
        None => (b, &[]),
    }
}

impl Pg {
    fn pending(&mut self) -> &mut Pending<Unit> {
        self.pending
            .get_or_insert_with(|| Pending::new(MAX_PENDING))
    }

    pub fn client(&mut self, mut data: &[u8], out: &mut Out) -> Result<(), Stop> {
        while let Some(step) = self.client.step(&mut data)? {
            match step {
                Step::Header(tag) => {
                    self.client.cap = match tag {
                        0 => 8,
                        b'Q' | b'P' => TEXT_CAP + NAME_CAP,
                        b'B' => 2 * NAME_CAP,
                        _ => 0,
                    }
                }
                Step::Message(0) => self.startup()?,
                Step::Message(tag) => self.frontend(tag, out.now)?,
            }
        }
        Ok(())
    }

    fn startup(&mut self) -> Result<(), Stop> {
        let b = &self.client.body;
        let code = match b.get(..4) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            _ => return Err(Stop::Confused("postgres: short startup message")),
        };
        match code {
            SSL_REQUEST | GSSENC_REQUEST => self.ssl_answer = true,
            CANCEL_REQUEST => return Err(Stop::Quiet),
            c if c >> 16 == 3 => self.client.typed = true,
            _ => return Err(Stop::Confused("postgres: unknown startup message")),
        }
        Ok(())
    }

    fn open_batch(&mut self, now: Instant) -> &mut (Instant, Vec<u8>) {
        if self.open.is_none() {
            let buf = self.pending().buffer();
            self.open = Some((now, buf));
        }
        // Just filled above when it was empty.
        self.open.get_or_insert_with(|| (now, Vec::new()))
    }

    fn frontend(&mut self, tag: u8, now: Instant) -> Result<(), Stop> {
        match tag {
            b'Q' => {
                if let Some((_, text)) = self.open.take() {
                    self.pending().recycle(text);
                }
                let mut text = self.pending().buffer();
                capture(&mut text, cstr(&self.client.body).0, TEXT_CAP);
                let unit = Unit {
                    start: now,
                    kind: "simple_query",
                };
                self.pending().push(unit, text)?;
            }
            b'P' => {
                let body = std::mem::take(&mut self.client.body);
                let (name, rest) = cstr(&body);
                let query = cstr(rest).0;
                self.remember(name, query);
                let (_, text) = self.open_batch(now);
                if text.is_empty() {
                    capture(text, query, TEXT_CAP);
                }
                self.client.body = body;
            }
            b'B' => {
                let body = std::mem::take(&mut self.client.body);
                let statement = cstr(cstr(&body).1).0;
                let known = if statement.is_empty() {
                    Some(std::mem::take(&mut self.unnamed))
                } else {
                    self.named
                        .iter_mut()
                        .find(|(n, _)| n == statement)
                        .map(|(_, t)| std::mem::take(t))
                };
                let (_, text) = self.open_batch(now);
                if let Some(known) = known {
                    if text.is_empty() {
                        capture(text, &known, TEXT_CAP);
                    }
                    self.restore(statement, known);
                }
                self.client.body = body;
            }
            b'E' | b'D' | b'C' | b'H' => {
                self.open_batch(now);
            }
            b'S' => {
                let (start, text) = match self.open.take() {
                    Some(batch) => batch,
                    None => (now, self.pending().buffer()),
                };
                let unit = Unit {
                    start,
                    kind: "extended_query",
                };
                self.pending().push(unit, text)?;
            }
            b'F' => {
                let mut text = self.pending().buffer();
                text.extend_from_slice(b"function call");
                let unit = Unit {
                    start: now,
                    kind: "function_call",
                };
                self.pending().push(unit, text)?;
            }
            // CopyData/Done/Fail, password and SASL, Terminate.
            t if frontend::is_tag(t) => {}
            _ => return Err(Stop::Confused("postgres: unknown frontend message")),
        }
        Ok(())
    }

    /// Keeps the text of a parsed statement for later `Bind`s.
    fn remember(&mut self, name: &[u8], query: &[u8]) {
        if name.is_empty() {
            self.unnamed.clear();
            capture(&mut self.unnamed, query, TEXT_CAP);
            return;
        }
        let mut text = Vec::new();
        capture(&mut text, query, TEXT_CAP);
        if let Some(slot) = self.named.iter_mut().find(|(n, _)| n == name) {
            slot.1 = text;
            return;
        }
        if self.named.len() >= MAX_NAMED {
            self.named.pop_front();
        }
        self.named.push_back((name.to_vec(), text));
    }

    /// Puts back a statement text taken out for a `Bind`.
    fn restore(&mut self, name: &[u8], text: Vec<u8>) {
        if name.is_empty() {
            self.unnamed = text;
        } else if let Some(slot) = self.named.iter_mut().find(|(n, _)| n == name) {
            slot.1 = text;
        }
    }

    pub fn server(&mut self, mut data: &[u8], out: &mut Out) -> Result<(), Stop> {
        if self.ssl_answer {
            let Some((&answer, rest)) = data.split_first() else {
                return Ok(());
            };
            match answer {
                b'N' => self.ssl_answer = false,
                b'S' | b'G' => return Err(Stop::Quiet),
                _ => return Err(Stop::Confused("postgres: unexpected answer to SSLRequest")),
            }
            data = rest;
        }
        self.server.typed = true;
        while let Some(step) = self.server.step(&mut data)? {
            match step {
                Step::Header(tag) => self.server.cap = if tag == b'E' { 512 } else { 0 },
                Step::Message(tag) => self.backend(tag, out)?,
            }
        }
        Ok(())
    }

    fn backend(&mut self, tag: u8, out: &mut Out) -> Result<(), Stop> {
        match tag {
            b'Z' if !self.ready => self.ready = true,
            b'Z' => {
                let Some((unit, text)) = self.pending().pop() else {
                    return Err(Stop::Confused(
                        "postgres: ReadyForQuery without a statement",
                    ));
                };
                out.timed(unit.start, unit.kind, || statement(&text));
                self.pending().recycle(text);
            }
            b'E' => {
                let e = parse_error_fields(&self.server.body);
                if operational(&e.code) {
                    out.upstream_error(e.code.as_bytes(), e.message.as_bytes());
                }
            }
            // CopyBothResponse: streaming replication, not statements.
            b'W' => return Err(Stop::Quiet),
            t if backend::is_tag(t) => {}
            _ => return Err(Stop::Confused("postgres: unknown backend message")),
        }
        Ok(())
    }
}

fn statement(text: &[u8]) -> String {
    if text.is_empty() {
        "(unknown statement)".to_string()
    } else {
        normalize::mask(text, Dialect::Sql)
    }
}

/// SQLSTATEs that speak of the server rather than the statement: classes
/// 08 (connection), 28 (authorization), 53 (resources), 57 (operator
/// intervention), 58 (system), XX (internal), and 25006 (a write sent to a
/// read-only standby, typical right after a failover).
pub(crate) fn operational(code: &str) -> bool {
    ["08", "28", "53", "57", "58", "XX"]
        .iter()
        .any(|c| code.starts_with(c))
        || code == "25006"
}

#[cfg(test)]
#[path = "pg_tests.rs"]
mod tests;
