//! Request and response heads: `httparse` does the tokenising; this adds
//! the bounds ([`MAX_HEAD`], [`MAX_HEADERS`]) and what a proxy must read
//! from a response head to relay its body (RFC 9112 6.3: framing, and
//! whether the connection may carry another message).

use std::time::Duration;

use super::{Error, MAX_HEAD, MAX_HEADERS};

/// What a response head says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by the upstream closing the connection.
    UntilClose,
}

/// A parsed request head; its strings are slices of the parsed buffer.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: &'b str,
    /// The request target, as sent.
    pub path: &'b str,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, its final empty line included.
    pub len: usize,
}

/// A parsed response head, as fields (for a proxy rewriting it).
#[derive(Debug)]
pub struct ResponseFields<'h, 'b> {
    pub version: u8,
    pub status: u16,
    pub reason: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    pub len: usize,
}

/// What a proxy needs of a response head to relay the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head.
    pub len: usize,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub reusable: bool,
    /// The head has hop-by-hop fields or is not HTTP/1.1: a proxy must
    /// rewrite it rather than relay it as is.
    pub rewrite: bool,
    /// A `Retry-After` the response carries (uncapped).
    pub retry_after: Option<Duration>,
}

/// `httparse`'s verdict on `buf` in the codec's terms.
fn status(r: httparse::Result<usize>, buf: &[u8]) -> Result<usize, Error> {
    match r {
        Ok(httparse::Status::Complete(n)) => Ok(n),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => Err(Error::Incomplete),
        Err(httparse::Error::TooManyHeaders) => Err(Error::TooManyHeaders),
        Err(_) => Err(Error::Invalid("malformed head")),
    }
}

/// Parses the request head at the start of `buf` into `headers` (at most
/// `headers.len()` fields; give it [`MAX_HEADERS`]).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<RequestHead<'h, 'b>, Error> {
    let mut req = httparse::Request::new(headers);
    let len = status(req.parse(buf), buf)?;
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Error::Invalid("malformed request line"));
    };
    Ok(RequestHead {
        method,
        path,
        version,
        headers: req.headers,
        len,
    })
}

/// The length of the whole request head at the start of `buf`.
pub fn check_request(buf: &[u8]) -> Result<usize, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    parse_request(buf, &mut headers).map(|h| h.len)
}

/// Parses the response head at the start of `buf` into `headers`.
pub fn parse_response_fields<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<ResponseFields<'h, 'b>, Error> {
    let mut resp = httparse::Response::new(headers);
    let len = status(resp.parse(buf), buf)?;
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(Error::Invalid("malformed status line"));
    };
    Ok(ResponseFields {
        version,
        status,
        reason: resp.reason.unwrap_or(""),
        headers: resp.headers,
        len,
    })
}

/// The length of the whole response head at the start of `buf`.
pub fn check_response(buf: &[u8]) -> Result<usize, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    parse_response_fields(buf, &mut headers).map(|h| h.len)
}

/// Parses the response head at the start of `buf` and reads its framing.
/// Conflicting `Content-Length`s, or one that is not digits only, are
/// invalid (a response another hop may frame otherwise).
pub fn parse_response(buf: &[u8]) -> Result<ResponseHead, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let resp = parse_response_fields(buf, &mut headers)?;
    let (status, version) = (resp.status, resp.version);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = version == 0;
    let mut rewrite = version != 1;
    let mut retry = None;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(h.value).ok_or(Error::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Invalid("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            rewrite = true;
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("proxy-connection")
        {
            rewrite = true;
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry = std::str::from_utf8(h.value).ok().and_then(retry_after);
        }
    }
    let framing = if te {
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3): the
        // Content-Length must not be passed on, and such a connection is
        // not reused.
        if length.is_some() {
            close = true;
            rewrite = true;
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if (100..200).contains(&status) {
        Framing::Empty
    } else {
        Framing::UntilClose
    };
    Ok(ResponseHead {
        status,
        len: resp.len,
        framing,
        reusable: !close,
        rewrite,
        retry_after: retry,
    })
}

/// A `Content-Length` value: digits only (RFC 9110 8.6; Rust's integer
/// parser would also take `+5`, which another hop may read otherwise).
pub fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Seconds from a `Retry-After` (delta-seconds or an HTTP date). Not
/// capped: every user caps it (the gateway at the service's
/// `max_retry_after_seconds`) before adding it to an `Instant`.
pub fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    Some(Duration::from_secs(secs.max(0) as u64))
}
