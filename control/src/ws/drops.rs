//! The disconnect record behind `WsState::drop_ratio_last_minute`: how
//! many clients left, and how many of those were dropped, per second over
//! the last minute.

use std::time::Instant;

/// The window, in one-second buckets.
const WINDOW_SECS: u64 = 60;

/// Disconnects per second over the last [`WINDOW_SECS`], in a fixed ring
/// of buckets (bounded whatever the churn).
pub(super) struct DropWindow {
    start: Instant,
    buckets: [(u64, u64, u64); WINDOW_SECS as usize],
}

impl DropWindow {
    pub(super) fn new() -> DropWindow {
        DropWindow {
            start: Instant::now(),
            buckets: [(u64::MAX, 0, 0); WINDOW_SECS as usize],
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    pub(super) fn record(&mut self, now: Instant, dropped: bool) {
        let sec = self.second(now);
        let b = &mut self.buckets[(sec % WINDOW_SECS) as usize];
        if b.0 != sec {
            *b = (sec, 0, 0);
        }
        b.1 += 1;
        b.2 += u64::from(dropped);
    }

    /// (disconnected, dropped) in the last minute.
    pub(super) fn totals(&self, now: Instant) -> (u64, u64) {
        let sec = self.second(now);
        self.buckets
            .iter()
            .filter(|b| b.0 != u64::MAX && b.0 <= sec && sec - b.0 < WINDOW_SECS)
            .fold((0, 0), |(t, d), b| (t + b.1, d + b.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn drop_window_forgets_after_a_minute() {
        let mut w = DropWindow::new();
        let t0 = w.start;
        w.record(t0, true);
        w.record(t0 + Duration::from_secs(30), false);
        w.record(t0 + Duration::from_secs(30), true);
        assert_eq!(w.totals(t0 + Duration::from_secs(59)), (3, 2));
        assert_eq!(w.totals(t0 + Duration::from_secs(60)), (2, 1));
        assert_eq!(w.totals(t0 + Duration::from_secs(95)), (0, 0));
        w.record(t0 + Duration::from_secs(120), true);
        assert_eq!(w.totals(t0 + Duration::from_secs(120)), (1, 1));
    }
}
