//! Failed-authentication limiter: at most `auth_failures_per_minute` failed
//! attempts per client address in any sliding 60 s window; past that, every
//! request from the address that needs a token is refused with 429 until
//! the oldest failure leaves the window (SPEC 2 `[control]`).
//!
//! Only failures are counted, so a dashboard with a good token polling
//! every second is never limited. Once an address is limited even a good
//! token is refused: otherwise a brute-forcer would just keep guessing.
//!
//! IPv6 clients are keyed by their /64, the unit a single host usually
//! controls; keying by full address would give an attacker 2^64 budgets.
//! The table is pruned as it grows so that it stays bounded by the number
//! of addresses that failed within the last minute.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub const WINDOW: Duration = Duration::from_secs(60);

/// Prune expired entries once the table holds this many addresses.
const PRUNE_AT: usize = 1024;

#[derive(Debug)]
pub struct FailureLimiter {
    /// 0 disables the limiter.
    max_failures: u32,
    table: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureLimiter {
    pub fn new(max_failures_per_minute: u32) -> FailureLimiter {
        FailureLimiter {
            max_failures: max_failures_per_minute,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` when `ip` has used up its failures: how long until one
    /// of them leaves the window.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        let now = Instant::now();
        let mut table = self.lock();
        let key = key(ip);
        let q = table.get_mut(&key)?;
        expire(q, now);
        if q.len() < self.max_failures as usize {
            if q.is_empty() {
                table.remove(&key);
            }
            return None;
        }
        let oldest = *q.front()?;
        Some((oldest + WINDOW).saturating_duration_since(now))
    }

    /// Records one failed attempt from `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let now = Instant::now();
        let mut table = self.lock();
        if table.len() >= PRUNE_AT {
            table.retain(|_, q| {
                expire(q, now);
                !q.is_empty()
            });
        }
        let q = table.entry(key(ip)).or_default();
        expire(q, now);
        q.push_back(now);
        // Only the newest `max_failures` matter for the decision.
        while q.len() > self.max_failures as usize {
            q.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        // The critical sections cannot panic midway in a way that leaves
        // the table inconsistent, so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn expire(q: &mut VecDeque<Instant>, now: Instant) {
    while let Some(&t) = q.front() {
        if now.saturating_duration_since(t) >= WINDOW {
            q.pop_front();
        } else {
            break;
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn blocks_after_max_failures_and_recovers_after_a_minute() {
        let l = FailureLimiter::new(3);
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(l.blocked(a).is_none());
            l.record_failure(a);
        }
        let wait = l.blocked(a).expect("blocked after 3 failures");
        assert!(wait <= WINDOW && wait > Duration::from_secs(59));
        assert!(
            l.blocked(ip("10.0.0.2")).is_none(),
            "other clients unaffected"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(l.blocked(a).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn window_is_sliding() {
        let l = FailureLimiter::new(2);
        let a = ip("10.0.0.1");
        l.record_failure(a);
        tokio::time::advance(Duration::from_secs(40)).await;
        l.record_failure(a);
        assert!(l.blocked(a).is_some());
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(l.blocked(a).is_none(), "first failure left the window");
        l.record_failure(a);
        assert!(l.blocked(a).is_some());
    }

    #[tokio::test]
    async fn ipv6_keyed_by_slash_64_and_mapped_v4_is_v4() {
        let l = FailureLimiter::new(1);
        l.record_failure(ip("2001:db8:1:2::1"));
        assert!(l.blocked(ip("2001:db8:1:2::ffff")).is_some());
        assert!(l.blocked(ip("2001:db8:1:3::1")).is_none());
        l.record_failure(ip("::ffff:192.0.2.7"));
        assert!(l.blocked(ip("192.0.2.7")).is_some());
    }

    #[tokio::test]
    async fn zero_disables() {
        let l = FailureLimiter::new(0);
        let a = ip("10.0.0.1");
        for _ in 0..100 {
            l.record_failure(a);
        }
        assert!(l.blocked(a).is_none());
    }
}
