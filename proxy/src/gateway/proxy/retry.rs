//! When a gateway request is repeated, and how soon: at most
//! [`MAX_ATTEMPTS`] attempts, a full-jitter exponential backoff before
//! retrying the same upstream, and which upstream statuses count as a
//! failed attempt.

use std::time::Duration;

use rand::Rng;

use super::Gateway;

/// Most upstream attempts for one request (the first one included).
pub const MAX_ATTEMPTS: u32 = 4;
/// First retry delay on the same upstream; doubles per attempt (full jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

impl Gateway {
    /// Full-jitter exponential backoff before retrying the same upstream.
    pub(super) fn backoff(attempt: u32) -> Duration {
        let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(10));
        let cap = exp.min(BACKOFF_CAP);
        let ms = rand::thread_rng().gen_range(0..=cap.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

pub(in crate::gateway) fn retryable(status: u16) -> bool {
    matches!(status, 502..=504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 0..20 {
            assert!(Gateway::backoff(attempt) <= BACKOFF_CAP);
        }
        let max1 = (0..200)
            .map(|_| Gateway::backoff(1))
            .max()
            .unwrap_or_default();
        assert!(max1 <= BACKOFF_BASE * 2);
    }
}
