//! [`WarmPool`]: the idle pre-connected connections to one upstream
//! (`redundancy = "hot"`, filled by the keeper in upstream/pool.rs).
//!
//! A pooled connection is handed out only if it still looks healthy: a
//! non-blocking 1-byte read must find nothing to read (`WouldBlock`). EOF
//! means the upstream closed it, data means it said something unprompted;
//! either way it is dropped. Idle connections are recycled after
//! [`MAX_IDLE`] (postgres closes a connection that sends no startup message
//! within `authentication_timeout`, 60 s by default).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpStream;

/// An idle pooled connection older than this is closed and replaced.
pub const MAX_IDLE: Duration = Duration::from_secs(30);

/// Idle pre-connected connections to one upstream.
#[derive(Debug, Default)]
pub struct WarmPool {
    idle: Mutex<VecDeque<(TcpStream, Instant)>>,
    /// Mirror of `idle.len()`, so the hot path skips the lock when empty.
    len: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Whether an idle connection is still open and silent.
fn healthy(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // Ok(0): closed by the upstream; Ok(_): unexpected data.
        Ok(_) => false,
    }
}

impl WarmPool {
    pub fn new() -> WarmPool {
        WarmPool::default()
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients served from the pool.
    #[cfg(test)]
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Clients of a `hot` service that found the pool empty and connected.
    #[cfg(test)]
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// A healthy, not too old idle connection, oldest first; dead or stale
    /// ones met on the way are dropped. Counts a hit when one is returned.
    pub fn take(&self) -> Option<TcpStream> {
        if self.is_empty() {
            return None;
        }
        let mut idle = self.idle.lock();
        let found = loop {
            let Some((stream, since)) = idle.pop_front() else {
                break None;
            };
            if since.elapsed() < MAX_IDLE && healthy(&stream) {
                break Some(stream);
            }
        };
        self.len.store(idle.len(), Ordering::Relaxed);
        drop(idle);
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn put(&self, stream: TcpStream) {
        let mut idle = self.idle.lock();
        idle.push_back((stream, Instant::now()));
        self.len.store(idle.len(), Ordering::Relaxed);
    }

    /// Drops dead and stale connections; returns how many are left.
    pub fn prune(&self) -> usize {
        let mut idle = self.idle.lock();
        idle.retain(|(s, since)| since.elapsed() < MAX_IDLE && healthy(s));
        self.len.store(idle.len(), Ordering::Relaxed);
        idle.len()
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        let mut idle = self.idle.lock();
        idle.clear();
        self.len.store(0, Ordering::Relaxed);
    }
}
