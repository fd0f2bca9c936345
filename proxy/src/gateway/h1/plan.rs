//! A request head on the lean path: whether this path takes it, and the
//! head the upstream gets (base path, `host`, `x-forwarded-*`, no
//! hop-by-hop fields).

use std::io::Write as _;

use super::{Conn, Lean, MAX_BODY};
use crate::gateway::proxy as gw;
use crate::protocol::http1::{self, content_length, EMPTY_HEADER, MAX_HEADERS};

/// One request the lean path takes, from its head.
pub(super) struct Plan {
    pub(super) idx: usize,
    pub(super) head_len: usize,
    pub(super) body_len: usize,
    /// Where the method and the path (with its query, as sent; masked when
    /// logged) are in the connection's buffer, which keeps the request head
    /// until the exchange is over.
    pub(super) method: std::ops::Range<usize>,
    pub(super) path: std::ops::Range<usize>,
    pub(super) head_only: bool,
    pub(super) retry_safe: bool,
    /// The client asked to close after this request.
    pub(super) close: bool,
    pub(super) route: Option<usize>,
}

pub(super) enum Parsed {
    Partial,
    /// Not for this path: pingora takes the connection.
    HandOver,
    /// No upstream the lean path may send to now (an outage, a 429
    /// window): pingora takes the connection for now.
    Outage,
    /// Refused here with 400, and the connection closed.
    Bad(Refused),
    Ready(Plan),
}

/// A request the lean path refuses itself: why, and what its access line
/// says (method and path are ranges of the connection's buffer).
pub(super) struct Refused {
    pub(super) why: &'static str,
    pub(super) method: std::ops::Range<usize>,
    pub(super) path: std::ops::Range<usize>,
    pub(super) route: Option<usize>,
}

impl Lean {
    /// Parses the head in `c.buf` and writes the upstream's version of it
    /// into `c.out`.
    pub(super) fn plan(&self, c: &mut Conn) -> Parsed {
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        // Too large or not HTTP/1.1 as this path takes it: pingora answers.
        let req = match http1::parse_request(&c.buf, &mut headers) {
            Ok(req) => req,
            Err(http1::Error::Incomplete) => return Parsed::Partial,
            Err(_) => return Parsed::HandOver,
        };
        let (method, path, head_len) = (req.method, req.path, req.len);
        if req.version != 1 {
            return Parsed::HandOver;
        }
        if !path.starts_with('/') || method == "CONNECT" {
            return Parsed::HandOver;
        }
        // A way out of the upstream's base path (issue 12): refused here.
        if let Err(why) = crate::gateway::path::check(path) {
            let query_at = path.find('?').unwrap_or(path.len());
            return Parsed::Bad(Refused {
                why,
                method: span(&c.buf, method),
                path: span(&c.buf, path),
                route: self.svc.cfg.http.route_index(&path[..query_at]),
            });
        }
        let Some(idx) = self.target() else {
            return Parsed::Outage;
        };
        let Some(tpl) = self.shared.peers.get(idx) else {
            return Parsed::HandOver;
        };
        let route = |path: &str| {
            let query_at = path.find('?').unwrap_or(path.len());
            self.svc.cfg.http.route_index(&path[..query_at])
        };
        let mut body_len: Option<usize> = None;
        let mut close = false;
        let mut has_key = false;
        let mut xff: Option<&[u8]> = None;
        let mut conn_tokens: Vec<&[u8]> = Vec::new();
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                // Not digits only: refused, as pingora would read `+5` as 5
                // and another hop may not (request smuggling).
                let Some(n) = content_length(h.value).and_then(|n| usize::try_from(n).ok()) else {
                    return Parsed::Bad(Refused {
                        why: "invalid Content-Length",
                        method: span(&c.buf, method),
                        path: span(&c.buf, path),
                        route: route(path),
                    });
                };
                if body_len.is_some() {
                    return Parsed::HandOver;
                }
                body_len = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("expect")
                || name.eq_ignore_ascii_case("upgrade")
            {
                return Parsed::HandOver;
            } else if name.eq_ignore_ascii_case("connection") {
                for t in h.value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::HandOver;
                    }
                    conn_tokens.push(t);
                }
            } else if name.eq_ignore_ascii_case("idempotency-key") {
                has_key = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-for") && xff.is_none() {
                xff = Some(h.value);
            }
        }
        let body_len = body_len.unwrap_or(0);
        let max = self.svc.cfg.http.max_body_bytes;
        if body_len > MAX_BODY || body_len as u64 > max {
            return Parsed::HandOver;
        }
        let out = &mut c.out;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tpl.target.base_path.as_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(tpl.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host")
                || name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("x-forwarded-proto")
                || gw::HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
                || conn_tokens
                    .iter()
                    .any(|t| name.as_bytes().eq_ignore_ascii_case(t))
            {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = xff {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{}", c.peer.ip());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
        let retry_safe = matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ) || has_key;
        Parsed::Ready(Plan {
            idx,
            head_len,
            body_len,
            method: span(&c.buf, method),
            path: span(&c.buf, path),
            head_only: method == "HEAD",
            retry_safe,
            close,
            route: route(path),
        })
    }
}

/// Where `part` (a slice httparse took from `buf`) is in `buf`.
fn span(buf: &[u8], part: &str) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize)
        .checked_sub(buf.as_ptr() as usize)
        .filter(|s| s + part.len() <= buf.len())
        .unwrap_or(0);
    start..start + part.len()
}
