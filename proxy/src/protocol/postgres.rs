//! PostgreSQL wire pieces the proxy writes itself.

/// `SSLRequest` and `GSSENCRequest` codes: an 8-byte message a client may
/// send before its StartupMessage, answered with one byte.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Whether `early` begins with an SSL or GSS encryption request.
pub fn starts_with_encryption_request(early: &[u8]) -> bool {
    let (Some(len), Some(code)) = (early.get(0..4), early.get(4..8)) else {
        return false;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST)
}

/// An `ErrorResponse` with severity FATAL and the given SQLSTATE.
pub fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

/// What a held client gets on timeout: `N` to a pending encryption request
/// (so the client proceeds in plain text and reads the error), then an
/// ErrorResponse with SQLSTATE 08006 (connection_failure).
pub fn refuse_startup(early: &[u8], message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if starts_with_encryption_request(early) {
        out.push(b'N');
    }
    out.extend(error_response("08006", message));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_request_gets_n_first() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let out = refuse_startup(&ssl, "x");
        assert_eq!(out[0], b'N');
        assert_eq!(out[1], b'E');
        let plain = refuse_startup(&[0, 0, 0, 9], "x");
        assert_eq!(plain[0], b'E');
    }

    #[test]
    fn error_response_is_well_framed() {
        let e = error_response("08006", "no upstream");
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len + 1, e.len());
        assert!(e.windows(5).any(|w| w == b"08006"));
    }
}
