//! RESP pieces the proxy writes itself, encoded by the one codec
//! ([`super::resp`]).

pub use super::resp::error_reply;

#[cfg(test)]
mod tests {
    #[test]
    fn error_is_one_line() {
        assert_eq!(super::error_reply("a\r\nb"), b"-ERR a  b\r\n".to_vec());
    }
}
