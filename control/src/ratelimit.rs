//! Failed-authentication limiter (SPEC 2 `[control] auth_failures_per_minute`).
//!
//! Only failures (a missing, malformed or unknown token) are counted, and
//! only failures are refused: a valid token is checked first and always
//! gets in (`auth::require`), so a bad neighbour behind the same NAT or
//! reverse proxy cannot lock every operator out (issue 12).
//!
//! Each client address has a budget of `N = auth_failures_per_minute`
//! failures: a burst of `N`, refilled at `N` per minute (one every `60/N`
//! seconds; a generic cell rate algorithm, the token bucket in one
//! timestamp). Past it, a failure is answered 429 with `Retry-After` (when
//! the next failure would be counted again) and is not counted itself.
//!
//! IPv6 clients are keyed by their /64, the unit a single host usually
//! controls; keying by full address would give an attacker 2^64 budgets.
//!
//! Cost and size. Each failure costs O(1): one hash-map lookup and update,
//! no scan. The table is two generations of at most one entry (an address
//! and one instant) per address: an address is written into the current
//! generation, and every 60 s the previous generation is dropped whole and
//! the current one becomes the previous. An entry untouched for 60 s has
//! its whole budget back, so nothing is lost. Together the generations hold
//! at most [`MAX_ADDRESSES`] addresses; once full, failures from addresses
//! not in the table share one overflow budget of `N` per minute, so a
//! spray of source addresses neither grows the table nor gets a budget
//! each (valid tokens are unaffected, as always).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The refill period of a whole budget, and the age at which an entry is
/// forgotten.
pub const WINDOW: Duration = Duration::from_secs(60);

/// At most this many client addresses are tracked (both generations
/// together), about 4 MiB at worst.
pub const MAX_ADDRESSES: usize = 65_536;

#[derive(Debug)]
pub struct FailureLimiter {
    /// 0 disables the limiter.
    max_failures: u32,
    /// `WINDOW / max_failures`: one failure's worth of budget.
    per_failure: Duration,
    max_addresses: usize,
    state: Mutex<State>,
}

/// Per address: the theoretical arrival time (GCRA): the budget is whole
/// again at this instant, and a failure is counted while it is at most
/// `WINDOW - per_failure` ahead of now.
#[derive(Debug)]
struct State {
    current: HashMap<IpAddr, Instant>,
    previous: HashMap<IpAddr, Instant>,
    /// When `current` becomes `previous`.
    rotate_at: Instant,
    /// The shared budget of addresses that found the table full.
    overflow: Instant,
}

impl FailureLimiter {
    pub fn new(max_failures_per_minute: u32) -> FailureLimiter {
        FailureLimiter::with_max_addresses(max_failures_per_minute, MAX_ADDRESSES)
    }

    /// As [`FailureLimiter::new`], with a table of `max_addresses` (tests).
    pub fn with_max_addresses(
        max_failures_per_minute: u32,
        max_addresses: usize,
    ) -> FailureLimiter {
        let now = Instant::now();
        FailureLimiter {
            max_failures: max_failures_per_minute,
            per_failure: WINDOW / max_failures_per_minute.max(1),
            max_addresses: max_addresses.max(1),
            state: Mutex::new(State {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotate_at: now + WINDOW,
                overflow: now,
            }),
        }
    }

    /// `Some(wait)` when `ip` has no budget left: how long until its next
    /// failure would be counted (whole seconds, rounded up). Changes
    /// nothing.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        let now = Instant::now();
        let key = key(ip);
        let mut state = self.lock();
        let stale = state.rotate(now);
        let tat = match state.get(&key) {
            Some(t) => t,
            None if state.len() >= self.max_addresses => state.overflow,
            None => return None,
        };
        drop(state);
        drop(stale);
        self.wait(tat, now)
    }

    /// One failed attempt from `ip`: `None` when it is within the budget
    /// (counted; answer 401), `Some(wait)` when the budget is used up (not
    /// counted; answer 429 with `Retry-After: wait`).
    pub fn failure(&self, ip: IpAddr) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        let now = Instant::now();
        let key = key(ip);
        let mut state = self.lock();
        let stale = state.rotate(now);
        let verdict = match state.get(&key) {
            Some(tat) => self.charge(tat, now).map(|tat| {
                // Written into the current generation (moved out of the
                // previous one if it was there).
                state.previous.remove(&key);
                state.current.insert(key, tat);
            }),
            None if state.len() >= self.max_addresses => self
                .charge(state.overflow, now)
                .map(|tat| state.overflow = tat),
            None => self.charge(now, now).map(|tat| {
                state.current.insert(key, tat);
            }),
        };
        drop(state);
        // A dropped generation is freed outside the lock.
        drop(stale);
        verdict.err()
    }

    /// The new arrival time when one more failure fits the budget, else
    /// how long until it would.
    fn charge(&self, tat: Instant, now: Instant) -> Result<Instant, Duration> {
        match self.wait(tat, now) {
            Some(wait) => Err(wait),
            None => Ok(tat.max(now) + self.per_failure),
        }
    }

    fn wait(&self, tat: Instant, now: Instant) -> Option<Duration> {
        // Counted while tat <= now + WINDOW - per_failure.
        let ahead = tat.saturating_duration_since(now);
        let tolerance = WINDOW.saturating_sub(self.per_failure);
        (ahead > tolerance).then(|| ceil_secs(ahead - tolerance))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No critical section can panic midway and leave the table
        // inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

impl State {
    /// Moves to the next generation when it is due; returns the dropped
    /// one, for the caller to free outside the lock. Every entry of the
    /// dropped generation was last written over `WINDOW` ago, so its whole
    /// budget is back: forgetting it changes no verdict.
    fn rotate(&mut self, now: Instant) -> Option<HashMap<IpAddr, Instant>> {
        if now < self.rotate_at {
            return None;
        }
        let stale = if now >= self.rotate_at + WINDOW {
            // Quiet for two windows: both generations are stale.
            self.previous.clear();
            std::mem::take(&mut self.current)
        } else {
            std::mem::replace(&mut self.previous, std::mem::take(&mut self.current))
        };
        self.rotate_at = now + WINDOW;
        Some(stale)
    }

    fn get(&self, key: &IpAddr) -> Option<Instant> {
        self.current
            .get(key)
            .or_else(|| self.previous.get(key))
            .copied()
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Rounded up to whole seconds, as `Retry-After` says it: a client that
/// waits that long is counted again.
fn ceil_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_n_then_one_per_share_of_the_minute() {
        let l = FailureLimiter::new(3);
        let a = ip("10.0.0.1");
        for i in 0..3 {
            assert!(l.blocked(a).is_none(), "failure {i}");
            assert_eq!(l.failure(a), None, "failure {i} counted");
        }
        // The budget is used up: 429 until one failure's worth (20 s) is back.
        let wait = l.failure(a).expect("limited after 3 failures");
        assert_eq!(wait, Duration::from_secs(20));
        assert_eq!(l.blocked(a), Some(Duration::from_secs(20)));
        // A refused failure is not counted: the wait does not grow.
        for _ in 0..100 {
            assert_eq!(l.failure(a), Some(Duration::from_secs(20)));
        }
        assert!(
            l.blocked(ip("10.0.0.2")).is_none(),
            "other clients unaffected"
        );
        // Retry-After is whole seconds, rounded up.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(l.blocked(a), Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(l.blocked(a), Some(Duration::from_secs(19)));
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(l.blocked(a), None);
        assert_eq!(l.failure(a), None, "one failure's worth is back");
        assert!(l.failure(a).is_some());
        // After a quiet minute the whole burst is back.
        tokio::time::advance(WINDOW).await;
        for i in 0..3 {
            assert_eq!(l.failure(a), None, "failure {i} after a quiet minute");
        }
        assert!(l.failure(a).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_rate_is_n_per_minute() {
        let l = FailureLimiter::new(6);
        let a = ip("10.0.0.1");
        let mut counted = 0;
        // Ten minutes of one attempt a second.
        for _ in 0..600 {
            if l.failure(a).is_none() {
                counted += 1;
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // The burst of 6, then 6 a minute.
        assert!((60..=66).contains(&counted), "{counted}");
    }

    #[tokio::test(start_paused = true)]
    async fn generations_forget_only_what_has_its_budget_back() {
        // 2 a minute: one failure's worth is 30 s.
        let l = FailureLimiter::new(2);
        let a = ip("10.0.0.1");
        assert_eq!(l.failure(a), None);
        assert_eq!(l.failure(a), None);
        assert_eq!(l.failure(a), Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(l.failure(a), None);
        assert_eq!(l.failure(a), Some(Duration::from_secs(10)));
        // At 61 s the first generation rotates: the entry is kept (in the
        // previous generation) and still counts.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(l.blocked(ip("10.9.9.9")).is_none());
        assert_eq!(l.tracked(), 1);
        assert_eq!(l.failure(a), None);
        assert_eq!(l.failure(a), Some(Duration::from_secs(29)));
        // Two quiet windows: everything is dropped, and the budget is whole.
        tokio::time::advance(WINDOW * 2).await;
        assert!(l.blocked(a).is_none());
        assert_eq!(l.tracked(), 0);
        assert_eq!(l.failure(a), None);
        assert_eq!(l.failure(a), None);
        assert!(l.failure(a).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_spray_of_addresses_cannot_grow_the_table() {
        let l = FailureLimiter::with_max_addresses(2, 100);
        for n in 0..10_000 {
            let _ = l.failure(v4(0x0a00_0000 + n));
        }
        assert_eq!(l.tracked(), 100, "the table is bounded");
        // The first 100 have their own budgets; the rest shared one, used up.
        assert!(l.failure(v4(0x0a00_0000)).is_none());
        assert!(
            l.blocked(v4(0x0b00_0000)).is_some(),
            "overflow budget spent"
        );
        assert!(l.failure(v4(0x0b00_0001)).is_some());
        // A minute later the overflow budget is back; two minutes later the
        // table has emptied and addresses get their own again.
        tokio::time::advance(WINDOW).await;
        assert!(l.blocked(v4(0x0b00_0000)).is_none());
        tokio::time::advance(WINDOW * 2).await;
        assert_eq!(l.failure(v4(0x0c00_0000)), None);
        assert_eq!(l.tracked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_failure_is_constant_time_even_with_a_full_table() {
        // Not a timing assert: the work is bounded by construction (no
        // scan); this only shows a full table keeps answering, and that
        // many rotations do not leak entries.
        let l = FailureLimiter::new(10);
        for round in 0..5u32 {
            for n in 0..(MAX_ADDRESSES as u32 + 1000) {
                let _ = l.failure(v4(round << 24 | n));
            }
            assert!(l.tracked() <= MAX_ADDRESSES);
            tokio::time::advance(WINDOW).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_keyed_by_slash_64_and_mapped_v4_is_v4() {
        let l = FailureLimiter::new(1);
        assert_eq!(l.failure(ip("2001:db8:1:2::1")), None);
        assert!(l.blocked(ip("2001:db8:1:2::ffff")).is_some());
        assert!(l.blocked(ip("2001:db8:1:3::1")).is_none());
        assert_eq!(l.failure(ip("::ffff:192.0.2.7")), None);
        assert!(l.blocked(ip("192.0.2.7")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_disables() {
        let l = FailureLimiter::new(0);
        let a = ip("10.0.0.1");
        for _ in 0..100 {
            assert_eq!(l.failure(a), None);
        }
        assert!(l.blocked(a).is_none());
        assert_eq!(l.tracked(), 0);
    }
}
