//! Reading the upstream's answer on a pinned connection: its head (parsed
//! by the HTTP/1 codec), a small body read whole, and whether an idle
//! connection is still usable.

use tokio::io::AsyncReadExt;

use super::Pinned;
use crate::gateway::peers::READ_TIMEOUT;
use crate::health::FailureKind;
use crate::protocol::http1::{self, chunked::ChunkScanner, Framing, ResponseHead};

/// Whether an idle pinned connection is still usable: the upstream has not
/// closed it nor sent anything unasked. No system call unless the reactor
/// saw the socket readable since it was last drained (`try_read` answers
/// `WouldBlock` from tokio's readiness alone).
pub(super) fn still_open(p: &mut Pinned) -> bool {
    if !p.buf.is_empty() {
        return false;
    }
    let mut probe = [0u8; 1];
    matches!(p.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

pub(super) struct HeadError {
    pub(super) kind: FailureKind,
    pub(super) what: &'static str,
}

/// Reads and parses the upstream's response head.
pub(super) async fn read_head(p: &mut Pinned) -> Result<ResponseHead, HeadError> {
    loop {
        if !p.buf.is_empty() {
            match http1::parse_response(&p.buf) {
                Ok(h) => return Ok(h),
                Err(http1::Error::HeadTooLarge) => {
                    return Err(HeadError {
                        kind: FailureKind::Protocol,
                        what: "response head too large",
                    })
                }
                Err(http1::Error::Incomplete) => {}
                Err(_) => {
                    return Err(HeadError {
                        kind: FailureKind::Protocol,
                        what: "invalid response",
                    })
                }
            }
        }
        read_upstream(p, "closed before answering").await?;
    }
}

/// Reads more of the upstream's answer into `p.buf` (`READ_TIMEOUT`);
/// `eof` names an end of the connection at this point.
async fn read_upstream(p: &mut Pinned, eof: &'static str) -> Result<(), HeadError> {
    if p.buf.capacity() - p.buf.len() < 4096 {
        p.buf.reserve(16 * 1024);
    }
    let (kind, what) = match tokio::time::timeout(READ_TIMEOUT, p.stream.read_buf(&mut p.buf)).await
    {
        Ok(Ok(n)) if n > 0 => return Ok(()),
        Ok(Ok(_)) => (FailureKind::Io, eof),
        Ok(Err(_)) => (FailureKind::Io, "read"),
        Err(_) => (FailureKind::Timeout, "read timed out"),
    };
    Err(HeadError { kind, what })
}

/// Answers up to this size (head and body) are buffered whole.
const MAX_BUFFERED: usize = 64 * 1024;

/// Reads the rest of a small answer (a `Content-Length` or chunked body
/// that ends within [`MAX_BUFFERED`] bytes) into `p.buf`. Larger answers,
/// and those delimited by the connection's end, are left to stream.
pub(super) async fn read_small_body(
    p: &mut Pinned,
    head_len: usize,
    framing: Framing,
) -> Result<(), HeadError> {
    let mut scanner = ChunkScanner::default();
    let mut scanned = head_len;
    loop {
        let complete = match framing {
            Framing::Empty | Framing::UntilClose => return Ok(()),
            Framing::Length(n) => {
                // `n` is the upstream's word: up to u64::MAX.
                let total = (head_len as u64).saturating_add(n);
                if total > MAX_BUFFERED as u64 {
                    return Ok(());
                }
                p.buf.len() as u64 >= total
            }
            Framing::Chunked => {
                let found = scanner.feed(&p.buf[scanned..]).map_err(|_| HeadError {
                    kind: FailureKind::Protocol,
                    what: "invalid chunked body",
                })?;
                scanned = p.buf.len();
                if found.is_none() && p.buf.len() >= MAX_BUFFERED {
                    return Ok(());
                }
                found.is_some()
            }
        };
        if complete {
            return Ok(());
        }
        read_upstream(p, "closed mid-answer").await?;
    }
}
