//! Idle upstream connections kept per gateway thread for the next client
//! connection (HAProxy's `http-reuse safe`): a client connection that ends
//! leaves its pinned upstream connection here, most recent last.
//!
//! # Why a thread-local is safe here
//!
//! [`POOL`] is keyed by upstream *index* only, not by service or address.
//! That is sound because every thread that touches it serves exactly one
//! gateway generation, whose upstream list never changes:
//!
//! - the pool is used only by `Lean::connection` (`pool_put`, `pool_take`),
//!   which `Lean::serve` runs only through `Workers::spawn`, that is on
//!   the gateway's own threads (`workers.rs`, one single-threaded runtime
//!   per thread: a task never moves to another thread);
//! - `gateway::start` makes a new `Workers` (new threads) for every gateway
//!   it starts; a reload that changes a service (`ReloadStep::Replace`)
//!   builds a new `ServiceRt` and starts a new gateway, so a new generation
//!   never runs on an old generation's threads, and the old threads end
//!   after their drain (dropping their pool with them);
//! - a `ServiceRt`'s `upstreams` (and the gateway's `Shared::peers`, built
//!   from it at start) are fixed for its life: index `i` names the same
//!   upstream address for as long as the thread lives.
//!
//! Should threads ever be shared between gateways or generations, the key
//! must become (service generation, upstream) or the pool must move into
//! `Lean`.

use std::time::{Duration, Instant};

use super::upstream::still_open;
use super::Pinned;

/// Connections kept per thread, at most (the oldest is closed first).
const POOL_MAX: usize = 32;
/// A pooled connection idle longer than this is closed rather than reused
/// (servers close idle connections on their own schedule).
const POOL_IDLE: Duration = Duration::from_secs(15);

thread_local! {
    /// See the module doc for the invariant that makes this safe.
    static POOL: std::cell::RefCell<Vec<(Pinned, Instant)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `p` (a connection whose last answer was read whole) for reuse.
pub(super) fn pool_put(p: Option<Pinned>) {
    let Some(p) = p else {
        return;
    };
    if !p.buf.is_empty() {
        return;
    }
    POOL.with_borrow_mut(|pool| {
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push((p, Instant::now()));
    });
}

/// The most recently parked usable connection to upstream `idx`.
pub(super) fn pool_take(idx: usize) -> Option<Pinned> {
    POOL.with_borrow_mut(|pool| {
        pool.retain(|(_, at)| at.elapsed() < POOL_IDLE);
        while let Some(i) = pool.iter().rposition(|(p, _)| p.idx == idx) {
            let (mut p, _) = pool.remove(i);
            if still_open(&mut p) {
                return Some(p);
            }
        }
        None
    })
}
