//! The upstream path of a request: the upstream's base path (`url =
//! "https://host/api"` gives `/api`) joined with the client's path, and the
//! one check that keeps a client inside that base path.
//!
//! A client path with a `.` or `..` segment is refused (400), not
//! normalised: no conformant client sends one (RFC 3986 5.2.4 has clients
//! remove them), so a request that has one is probing, and refusing it
//! leaves no room for the gateway and the upstream to normalise
//! differently. A segment counts as a dot segment however it is spelled:
//! `..`, `%2e%2e`, `%2E%2e`, `.%2e`, double-encoded `%252e%252e`, with a
//! `;parameter` after it (`..;/`, which Tomcat and Jetty read as `..`),
//! and with `/`, `\`, `%2f` or `%5c` as the separator (an upstream that
//! decodes `%2f` or reads `\` as `/` would otherwise see `a/../..`).
//! The query is not looked at; neither is anything after a `#`, which an
//! upstream would drop.
//!
//! Used by the lean HTTP/1 path (`h1/`), the pingora path (`proxy/`,
//! also before a request is queued) and queued deliveries (`peers.rs`
//! `upstream_path`).

/// Why a client's path was refused: the message of the 400 and of the
/// access line.
pub const DOT_SEGMENT: &str = "dot segment (. or ..) in the request path";

/// `Err` with the reason when the path of `path_and_query` has a `.` or
/// `..` segment, in any spelling.
pub fn check(path_and_query: &str) -> Result<(), &'static str> {
    let raw = path_and_query.as_bytes();
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let path = &raw[..end];
    // Fast path: no `.` and no `%` at all (most requests).
    if !path.iter().any(|&b| b == b'.' || b == b'%') {
        return Ok(());
    }
    let decoded = decode(path);
    let dot = decoded
        .split(|&b| b == b'/' || b == b'\\')
        .map(|seg| seg.split(|&b| b == b';').next().unwrap_or(seg))
        .any(|seg| seg == b"." || seg == b"..");
    if dot {
        Err(DOT_SEGMENT)
    } else {
        Ok(())
    }
}

/// `base` (no trailing `/`, or empty) followed by the client's path and
/// query, once [`check`] passes.
pub fn join(base: &str, path_and_query: &str) -> Result<String, &'static str> {
    check(path_and_query)?;
    let mut out = String::with_capacity(base.len() + path_and_query.len());
    out.push_str(base);
    out.push_str(path_and_query);
    Ok(out)
}

/// `path` with `%2e`, `%2f`, `%5c` and `%25` decoded, again and again until
/// nothing changes (so `%252e` is a `.` too). Other escapes stay as they
/// are. Each round shortens the text, so this ends.
fn decode(path: &[u8]) -> Vec<u8> {
    let mut cur = path.to_vec();
    loop {
        let mut next = Vec::with_capacity(cur.len());
        let mut i = 0;
        while i < cur.len() {
            let decoded = match cur.get(i..i + 3) {
                Some([b'%', h, l]) => match (h.to_ascii_lowercase(), l.to_ascii_lowercase()) {
                    (b'2', b'e') => Some(b'.'),
                    (b'2', b'f') => Some(b'/'),
                    (b'5', b'c') => Some(b'\\'),
                    (b'2', b'5') => Some(b'%'),
                    _ => None,
                },
                _ => None,
            };
            match decoded {
                Some(b) => {
                    next.push(b);
                    i += 3;
                }
                None => {
                    next.push(cur[i]);
                    i += 1;
                }
            }
        }
        if next.len() == cur.len() {
            return next;
        }
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_every_spelling_are_refused() {
        for p in [
            "/..",
            "/.",
            "/../admin",
            "/./admin",
            "/a/..",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/%2E%2e/admin",
            "/.%2e/admin",
            "/%2e./admin",
            "/%2e/admin",
            "/a%2f..%2f..%2fadmin",
            "/a%2F%2e%2e%2Fadmin",
            "/a%5c..%5cadmin",
            "/a\\..\\admin",
            "/..;/admin",
            "/..;jsessionid=1/admin",
            "/%252e%252e/admin",
            "/%25252e%25252e/admin",
            "/../admin?x=1",
            "/..#frag",
            "..",
        ] {
            assert_eq!(check(p), Err(DOT_SEGMENT), "{p}");
            assert!(join("/api", p).is_err(), "{p}");
        }
    }

    #[test]
    fn look_alikes_go_through() {
        for p in [
            "/",
            "",
            "/ok",
            "/a..b/c",
            "/...",
            "/..../x",
            "/.well-known/acme",
            "/files/..hidden",
            "/files/hidden..",
            "/a/.b/c.",
            "/q?next=/../x",
            "/q?x=%2e%2e",
            "/%2e%2e%2e",
            "/100%25",
            "/%41%42",
            "*",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn join_puts_the_base_first() {
        assert_eq!(join("/api", "/q?x=1").as_deref(), Ok("/api/q?x=1"));
        assert_eq!(join("", "/q").as_deref(), Ok("/q"));
    }

    #[test]
    fn decoding_leaves_other_escapes_alone() {
        assert_eq!(decode(b"/%41%2e%2F%5C%252e"), b"/%41./\\.".to_vec());
    }
}
