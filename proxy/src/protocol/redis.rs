//! RESP pieces the proxy writes itself.

/// A RESP error line. CR and LF in the message are replaced so the reply
/// stays one line whatever the message holds.
pub fn error_reply(message: &str) -> Vec<u8> {
    let clean: String = message
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    format!("-ERR {clean}\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_is_one_line() {
        assert_eq!(super::error_reply("a\r\nb"), b"-ERR a  b\r\n".to_vec());
    }
}
