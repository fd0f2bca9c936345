//! neo4j probe: the Bolt handshake only (magic + four version proposals,
//! then the server's 4-byte choice). No HELLO: it stays cheap and needs no
//! credentials. Bolt does not tell a replication role here.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BoxFuture, HealthCheck, ProbeError, Probed};
use crate::config::{ServiceConfig, UpstreamConfig};

/// The Bolt preamble.
pub const MAGIC: [u8; 4] = [0x60, 0x60, 0xB0, 0x17];

/// Our proposals, best first: 5.4..5.0, 4.4, 4.0, 3.0 (`[0, range, minor, major]`).
pub const PROPOSALS: [[u8; 4]; 4] = [
    [0x00, 0x04, 0x04, 0x05],
    [0x00, 0x00, 0x04, 0x04],
    [0x00, 0x00, 0x00, 0x04],
    [0x00, 0x00, 0x00, 0x03],
];

/// The 20 bytes the client sends.
pub fn handshake_request() -> [u8; 20] {
    let mut out = [0u8; 20];
    for (dst, src) in out
        .iter_mut()
        .zip(MAGIC.iter().chain(PROPOSALS.iter().flatten()))
    {
        *dst = *src;
    }
    out
}

/// The `(major, minor)` a server chose, or `None` for the all-zero "no
/// common version" answer or bytes that are not a version at all.
pub fn negotiated_version(resp: [u8; 4]) -> Option<(u8, u8)> {
    match resp {
        [0, 0, 0, 0] => None,
        [0, 0, minor, major] => Some((major, minor)),
        _ => None,
    }
}

/// Whether `(major, minor)` is within one of our proposals.
pub fn was_proposed(major: u8, minor: u8) -> bool {
    PROPOSALS.iter().any(|&[_, range, top, maj]| {
        maj == major && minor <= top && minor >= top.saturating_sub(range)
    })
}

/// Checks a handshake answer.
pub fn check_response(resp: [u8; 4]) -> Result<(u8, u8), ProbeError> {
    if resp == [0, 0, 0, 0] {
        return Err(ProbeError::Protocol("no common Bolt version".into()));
    }
    match negotiated_version(resp) {
        Some((major, minor)) if was_proposed(major, minor) => Ok((major, minor)),
        Some((major, minor)) => Err(ProbeError::Protocol(format!(
            "server chose Bolt {major}.{minor}, which was not proposed"
        ))),
        None => Err(ProbeError::Protocol(format!(
            "not a Bolt server (handshake answer {})",
            hex::encode(resp)
        ))),
    }
}

pub struct BoltCheck;

impl HealthCheck for BoltCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            let mut stream = super::connect(service, upstream).await?;
            stream.write_all(&handshake_request()).await?;
            let mut resp = [0u8; 4];
            stream.read_exact(&mut resp).await?;
            check_response(resp)?;
            let _ = stream.shutdown().await;
            Ok(Probed::up())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_bytes() {
        let r = handshake_request();
        assert_eq!(
            r,
            [0x60, 0x60, 0xB0, 0x17, 0, 4, 4, 5, 0, 0, 4, 4, 0, 0, 0, 4, 0, 0, 0, 3]
        );
    }

    #[test]
    fn versions() {
        assert_eq!(negotiated_version([0, 0, 4, 5]), Some((5, 4)));
        assert_eq!(negotiated_version([0, 0, 4, 4]), Some((4, 4)));
        assert_eq!(negotiated_version([0, 0, 0, 0]), None);
        assert_eq!(negotiated_version(*b"HTTP"), None);
        assert_eq!(check_response([0, 0, 0, 5]).unwrap(), (5, 0));
        assert_eq!(check_response([0, 0, 2, 5]).unwrap(), (5, 2));
        assert_eq!(check_response([0, 0, 0, 3]).unwrap(), (3, 0));
        assert!(matches!(
            check_response([0, 0, 0, 0]),
            Err(ProbeError::Protocol(m)) if m == "no common Bolt version"
        ));
        assert!(check_response([0, 0, 6, 5]).is_err());
        assert!(check_response([0, 0, 2, 4]).is_err());
        assert!(check_response(*b"HTTP").is_err());
    }
}
