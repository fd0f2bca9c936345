//! Uptime of a service: per-minute counts of probe rounds and of rounds
//! that were up, kept for 24 h, read as a percentage over 1 h or 24 h.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

/// Per-minute (rounds, up rounds) for uptime over 1 h and 24 h.
#[derive(Debug, Default)]
pub struct Uptime {
    minutes: VecDeque<(i64, u64, u64)>,
}

impl Uptime {
    pub fn record(&mut self, at: DateTime<Utc>, up: bool) {
        let minute = at.timestamp() / 60;
        match self.minutes.back_mut() {
            Some((m, rounds, ups)) if *m == minute => {
                *rounds += 1;
                *ups += u64::from(up);
            }
            _ => self.minutes.push_back((minute, 1, u64::from(up))),
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _, _)| *m < minute - 24 * 60)
        {
            self.minutes.pop_front();
        }
    }

    /// Percentage of rounds that were up over the last `minutes`; 100 with no data.
    pub fn percent(&self, now: DateTime<Utc>, minutes: i64) -> f64 {
        let from = now.timestamp() / 60 - minutes;
        let (rounds, ups) = self
            .minutes
            .iter()
            .filter(|(m, _, _)| *m > from)
            .fold((0u64, 0u64), |(r, u), (_, rr, uu)| (r + rr, u + uu));
        if rounds == 0 {
            100.0
        } else {
            ups as f64 * 100.0 / rounds as f64
        }
    }
}
