//! Per-protocol codecs the L4 proxy needs: today, the error each protocol
//! gives a held client whose `buffer_timeout_ms` ran out (SPEC 3).

pub mod postgres;
pub mod redis;

use crate::config::Kind;

/// Bytes to send a held client that timed out, given the bytes it sent
/// while held. `None`: the protocol has no error to give; just close.
pub fn hold_timeout_reply(kind: Kind, service: &str, early: &[u8]) -> Option<Vec<u8>> {
    let message = format!("continuity: no upstream available for {service}");
    match kind {
        Kind::Redis => Some(redis::error_reply(&message)),
        Kind::Postgres => Some(postgres::refuse_startup(early, &message)),
        _ => None,
    }
}
