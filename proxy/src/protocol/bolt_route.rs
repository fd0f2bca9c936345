//! Keeps `neo4j://` drivers on the proxy: in the bytes a Bolt server sends
//! its client, the routing table a `ROUTE` request is answered with
//! (`SUCCESS {rt: {ttl, db, servers: [{addresses, role}]}}`) gets the
//! proxy's own address in place of every server address, as Neo4j's
//! server-side routing answers with its advertised address. The driver
//! then sends its reads and writes to the proxy, which keeps routing them
//! to the active upstream through failovers.
//!
//! [`RouteRewriter::feed`] takes what the server sent, in any pieces, and
//! returns what goes to the client. It follows the 4-byte version answer
//! of the handshake, then the chunked messages: a message is passed on as
//! it comes once its first 6 bytes show it is not `SUCCESS {rt: ...}`;
//! such a message is held whole (at most [`MAX_ROUTE`] bytes), rewritten
//! and sent as one chunk. Anything it cannot read (a manifest handshake,
//! Bolt 5.7+; TLS passed through to the upstream, whose first bytes are no
//! Bolt version; a table it cannot decode; one too large) goes on
//! unchanged, and a stream it turned off for is never held back.

use super::packstream::{self, Value};

/// The largest routing answer held for rewriting; bigger ones pass as they are.
pub const MAX_ROUTE: usize = 1 << 20;

/// `SUCCESS` (tiny struct of 1 field, tag 0x70) whose metadata is a map of
/// one entry named `rt`.
const ROUTE_SUCCESS: [u8; 6] = [0xB1, 0x70, 0xA1, 0x82, b'r', b't'];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The message's first bytes are still being read.
    Undecided,
    /// Not a routing table: its bytes go on as they come.
    Pass,
    /// A routing table: held until the message ends.
    Hold,
}

/// The server-to-client half of one Bolt connection.
pub struct RouteRewriter {
    /// `host:port` the client reached the proxy at.
    advertised: String,
    /// Handshake bytes still to pass before the first chunk, and the
    /// version they name.
    handshake: usize,
    version: [u8; 4],
    /// Set when the stream is not one this can follow (passes everything).
    off: bool,
    /// The 2-byte chunk header being read, and how much of it is there.
    head: [u8; 2],
    head_got: usize,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    mode: Mode,
    /// Raw bytes of the current message not yet sent on (while undecided
    /// or held).
    raw: Vec<u8>,
    /// Its body, without chunk headers (while undecided or held).
    body: Vec<u8>,
    /// Routing tables rewritten so far.
    pub rewritten: u64,
}

impl RouteRewriter {
    pub fn new(advertised: String) -> RouteRewriter {
        RouteRewriter {
            advertised,
            handshake: 4,
            version: [0; 4],
            off: false,
            head: [0; 2],
            head_got: 0,
            chunk_left: 0,
            mode: Mode::Undecided,
            raw: Vec::new(),
            body: Vec::new(),
            rewritten: 0,
        }
    }

    /// Takes the next bytes from the server; appends what goes to the
    /// client to `out` (possibly nothing yet, while a table is held).
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            if self.off {
                out.extend_from_slice(data);
                return;
            }
            if self.handshake > 0 {
                let n = self.handshake.min(data.len());
                let (version, rest) = data.split_at(n);
                out.extend_from_slice(version);
                let at = 4 - self.handshake;
                if let Some(dst) = self.version.get_mut(at..at + n) {
                    dst.copy_from_slice(version);
                }
                self.handshake -= n;
                data = rest;
                // A Bolt version answer is 0x0000MMmm; 0x000001FF means a
                // manifest follows (Bolt 5.7+), not chunks. Anything else
                // is not plain Bolt (TLS passed through, `bolt+s://`): its
                // bytes must never be held, so the rewrite is off.
                if self.handshake == 0
                    && (self.version[..2] != [0, 0] || self.version[2..] == [0x01, 0xFF])
                {
                    self.off = true;
                }
                continue;
            }
            if self.chunk_left == 0 {
                // A chunk header.
                let n = (2 - self.head_got).min(data.len());
                let (h, rest) = data.split_at(n);
                if let Some(dst) = self.head.get_mut(self.head_got..self.head_got + n) {
                    dst.copy_from_slice(h);
                }
                self.head_got += n;
                self.emit_or_keep(h, out);
                data = rest;
                if self.head_got < 2 {
                    continue;
                }
                self.head_got = 0;
                let size = usize::from(u16::from_be_bytes(self.head));
                if size > 0 {
                    self.chunk_left = size;
                } else if self.raw.len() > 2 || self.mode != Mode::Undecided {
                    self.end_of_message(out);
                } else {
                    // A NOOP (keep-alive) between messages.
                    out.append(&mut self.raw);
                }
                continue;
            }
            let n = self.chunk_left.min(data.len());
            let (part, rest) = data.split_at(n);
            self.chunk_left -= n;
            data = rest;
            match self.mode {
                Mode::Pass => out.extend_from_slice(part),
                Mode::Undecided | Mode::Hold => {
                    self.raw.extend_from_slice(part);
                    self.body.extend_from_slice(part);
                    self.decide(out);
                }
            }
        }
    }

    /// Chunk-header bytes: sent on while passing, kept otherwise.
    fn emit_or_keep(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self.mode {
            Mode::Pass => out.extend_from_slice(bytes),
            Mode::Undecided | Mode::Hold => self.raw.extend_from_slice(bytes),
        }
    }

    /// Once 6 body bytes are known: pass or hold; a held one that grows
    /// too large is passed as it is.
    fn decide(&mut self, out: &mut Vec<u8>) {
        match self.mode {
            Mode::Undecided if self.body.len() >= ROUTE_SUCCESS.len() => {
                if self.body.get(..ROUTE_SUCCESS.len()) == Some(&ROUTE_SUCCESS[..]) {
                    self.mode = Mode::Hold;
                } else {
                    self.pass_held(out);
                }
            }
            Mode::Hold if self.raw.len() > MAX_ROUTE => self.pass_held(out),
            _ => {}
        }
    }

    fn pass_held(&mut self, out: &mut Vec<u8>) {
        self.mode = Mode::Pass;
        out.append(&mut self.raw);
        self.body.clear();
    }

    /// The 0x0000 chunk that ends a message has been read (and kept in
    /// `raw` unless passing).
    fn end_of_message(&mut self, out: &mut Vec<u8>) {
        if self.mode == Mode::Hold {
            match rewrite(&self.body, &self.advertised) {
                Some(body) => {
                    self.rewritten += 1;
                    for chunk in body.chunks(u16::MAX as usize) {
                        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                        out.extend_from_slice(chunk);
                    }
                    out.extend_from_slice(&[0, 0]);
                    self.raw.clear();
                }
                None => out.append(&mut self.raw),
            }
        } else {
            // Undecided (a message shorter than 6 bytes) or passing.
            out.append(&mut self.raw);
        }
        self.body.clear();
        self.mode = Mode::Undecided;
    }
}

/// The `SUCCESS {rt: ...}` message `body` with every server address
/// replaced by `advertised` (one address per role); `None` if it is not
/// one this can read.
pub fn rewrite(body: &[u8], advertised: &str) -> Option<Vec<u8>> {
    let (mut msg, used) = packstream::decode(body).ok()?;
    if used != body.len() {
        return None;
    }
    let Value::Struct { tag: 0x70, fields } = &mut msg else {
        return None;
    };
    let servers = fields.first_mut()?.get_mut("rt")?.get_mut("servers")?;
    let Value::List(servers) = servers else {
        return None;
    };
    for server in servers.iter_mut() {
        let addresses = server.get_mut("addresses")?;
        *addresses = Value::List(vec![Value::String(advertised.to_string())]);
    }
    let mut out = Vec::with_capacity(body.len());
    packstream::encode(&msg, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    /// A routing table as a server sends it.
    fn table(addresses: &[&str]) -> Vec<u8> {
        let servers = ["ROUTE", "READ", "WRITE"]
            .iter()
            .map(|role| {
                Value::Map(vec![
                    (
                        "addresses".into(),
                        Value::List(addresses.iter().map(|a| s(a)).collect()),
                    ),
                    ("role".into(), s(role)),
                ])
            })
            .collect();
        let msg = Value::Struct {
            tag: 0x70,
            fields: vec![Value::Map(vec![(
                "rt".into(),
                Value::Map(vec![
                    ("ttl".into(), Value::Int(300)),
                    ("db".into(), s("neo4j")),
                    ("servers".into(), Value::List(servers)),
                ]),
            )])],
        };
        let mut out = Vec::new();
        packstream::encode(&msg, &mut out);
        out
    }

    /// `body` as chunks of at most `size` bytes, then the end marker.
    fn chunked(body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in body.chunks(size) {
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// Every address in a rewritten stream's routing tables.
    fn addresses_in(stream: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        let mut pos = 4;
        let mut body = Vec::new();
        while pos + 2 <= stream.len() {
            let n = usize::from(u16::from_be_bytes([stream[pos], stream[pos + 1]]));
            pos += 2;
            if n == 0 {
                let servers = packstream::decode(&body).ok().and_then(|(v, _)| match v {
                    Value::Struct { mut fields, .. } if !fields.is_empty() => fields
                        .swap_remove(0)
                        .get("rt")
                        .and_then(|rt| rt.get("servers"))
                        .cloned(),
                    _ => None,
                });
                if let Some(Value::List(servers)) = servers {
                    for srv in &servers {
                        if let Some(Value::List(a)) = srv.get("addresses") {
                            found.extend(a.iter().filter_map(|x| match x {
                                Value::String(x) => Some(x.clone()),
                                _ => None,
                            }));
                        }
                    }
                }
                body.clear();
                continue;
            }
            body.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
        }
        found
    }

    fn server_stream() -> (Vec<u8>, Vec<u8>) {
        let hello = vec![
            0xB1, 0x70, 0xA1, 0x86, b's', b'e', b'r', b'v', b'e', b'r', 0x81, b'x',
        ];
        let record = vec![0xB1, 0x71, 0x91, 0x01];
        let t = table(&["10.0.0.9:7687", "10.0.0.10:7687"]);
        let mut stream = vec![0x00, 0x00, 0x04, 0x05]; // version 5.4
        stream.extend(chunked(&hello, 5));
        stream.extend_from_slice(&[0, 0]); // NOOP
        stream.extend(chunked(&t, 7));
        stream.extend(chunked(&record, 100));
        (stream, t)
    }

    #[test]
    fn a_routing_table_names_the_proxy_and_the_rest_passes_unchanged() {
        let (stream, _) = server_stream();
        let mut rw = RouteRewriter::new("127.0.0.1:17687".into());
        let mut out = Vec::new();
        rw.feed(&stream, &mut out);
        assert_eq!(rw.rewritten, 1);
        assert_eq!(addresses_in(&out), vec!["127.0.0.1:17687"; 3]);
        assert_eq!(addresses_in(&stream).len(), 6);
        // Everything else byte for byte: the stream with its table taken
        // out is a prefix and a suffix of the output.
        let hello_end = 4 + 3 * 2 + 12 + 2 + 2;
        assert_eq!(out[..hello_end], stream[..hello_end]);
        let record = chunked(&[0xB1, 0x71, 0x91, 0x01], 100);
        assert!(out.ends_with(&record));
    }

    #[test]
    fn a_manifest_handshake_turns_it_off() {
        let (stream, _) = server_stream();
        let mut manifest = stream.clone();
        manifest[..4].copy_from_slice(&[0x00, 0x00, 0x01, 0xFF]);
        let mut rw = RouteRewriter::new("127.0.0.1:1".into());
        let mut out = Vec::new();
        rw.feed(&manifest, &mut out);
        assert_eq!(out, manifest);
        assert_eq!(rw.rewritten, 0);
    }

    /// TLS passed through (`bolt+s://` to the upstream): the server's
    /// first bytes are a TLS record, and nothing is ever held back, even
    /// bytes that would look like a routing table.
    #[test]
    fn a_tls_stream_passes_as_it_comes() {
        let mut tls = vec![0x16, 0x03, 0x03, 0x00, 0x00, 0x08];
        tls.extend_from_slice(&ROUTE_SUCCESS);
        let mut rw = RouteRewriter::new("p:1".into());
        let mut out = Vec::new();
        for b in &tls {
            rw.feed(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out, tls);
        assert!(rw.raw.is_empty());
    }

    proptest! {
        /// However the stream is cut into reads, the output is the same.
        #[test]
        fn any_split_gives_the_same_output(cuts in proptest::collection::vec(1usize..40, 1..60)) {
            let (stream, _) = server_stream();
            let mut whole = Vec::new();
            RouteRewriter::new("p:1".into()).feed(&stream, &mut whole);
            let mut rw = RouteRewriter::new("p:1".into());
            let mut out = Vec::new();
            let mut rest = &stream[..];
            for c in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let (a, b) = rest.split_at((*c).min(rest.len()));
                rw.feed(a, &mut out);
                rest = b;
            }
            prop_assert_eq!(out, whole);
        }

        /// Arbitrary server bytes: no panic, nothing lost when nothing is a
        /// routing table, and never more held than the cap.
        #[test]
        fn arbitrary_bytes_pass(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut rw = RouteRewriter::new("p:1".into());
            let mut out = Vec::new();
            rw.feed(&bytes, &mut out);
            prop_assert!(rw.raw.len() <= MAX_ROUTE + u16::MAX as usize + 2);
            if rw.rewritten == 0 {
                let mut all = out.clone();
                all.extend_from_slice(&rw.raw);
                prop_assert_eq!(all, bytes);
            }
        }
    }
}
