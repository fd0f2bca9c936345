//! A lock-free latency window for the hot path: log-scale buckets of
//! atomics in two rotating one-minute slots, so "p50 over the last minute"
//! costs a few relaxed atomic adds per request and no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Quarter-octave buckets over microseconds: bucket b holds
/// [2^(b/4), 2^((b+1)/4)) us. 112 buckets reach past 100 s.
const BUCKETS: usize = 112;

struct Slot {
    minute: AtomicU64,
    counts: [AtomicU64; BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            minute: AtomicU64::new(u64::MAX),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

pub struct LatencyWindow {
    origin: Instant,
    slots: [Slot; 2],
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow::new()
    }
}

fn bucket_of(d: Duration) -> usize {
    let us = d.as_micros().max(1) as f64;
    let b = (us.log2() * 4.0).floor();
    if b < 0.0 {
        0
    } else {
        (b as usize).min(BUCKETS - 1)
    }
}

/// Upper edge of a bucket in milliseconds (a conservative estimate).
fn bucket_upper_ms(b: usize) -> f64 {
    2f64.powf((b as f64 + 1.0) / 4.0) / 1000.0
}

impl LatencyWindow {
    pub fn new() -> LatencyWindow {
        LatencyWindow {
            origin: Instant::now(),
            slots: [Slot::new(), Slot::new()],
        }
    }

    fn minute_now(&self) -> u64 {
        self.origin.elapsed().as_secs() / 60
    }

    pub fn record(&self, d: Duration) {
        self.record_n(d, 1);
    }

    /// `n` samples of `d` (requests answered together), at the cost of one.
    pub fn record_n(&self, d: Duration, n: usize) {
        let minute = self.minute_now();
        let slot = &self.slots[(minute % 2) as usize];
        let seen = slot.minute.load(Ordering::Relaxed);
        if seen != minute
            && slot
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // We won the rotation: clear the slot's old minute. A sample racing
            // with this may be lost or kept; the window is an estimate.
            for c in &slot.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        slot.counts[bucket_of(d)].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Percentile `q` (0..=1) in ms over the current and previous minute.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let merged = self.merged();
        let total: u64 = merged.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in merged.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_ms(b));
            }
        }
        None
    }

    pub fn samples(&self) -> u64 {
        self.merged().iter().sum()
    }

    fn merged(&self) -> [u64; BUCKETS] {
        let minute = self.minute_now();
        let mut out = [0u64; BUCKETS];
        for slot in &self.slots {
            let m = slot.minute.load(Ordering::Relaxed);
            if m == minute || m.wrapping_add(1) == minute {
                for (o, c) in out.iter_mut().zip(slot.counts.iter()) {
                    *o += c.load(Ordering::Relaxed);
                }
            }
        }
        out
    }
}

/// Exact percentiles of a small sample (probe history).
pub fn percentiles_of(samples: &[f64]) -> crate::snapshot::Percentiles {
    if samples.is_empty() {
        return crate::snapshot::Percentiles::default();
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i.min(v.len() - 1)).copied()
    };
    crate::snapshot::Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        samples: v.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_window_has_no_percentile() {
        assert_eq!(LatencyWindow::new().percentile_ms(0.5), None);
    }

    #[test]
    fn p50_lands_in_the_right_bucket() {
        let w = LatencyWindow::new();
        for _ in 0..90 {
            w.record(Duration::from_micros(300));
        }
        for _ in 0..10 {
            w.record(Duration::from_millis(50));
        }
        let p50 = w.percentile_ms(0.5).unwrap();
        assert!(p50 > 0.3 && p50 < 0.36, "p50 {p50}");
        let p99 = w.percentile_ms(0.99).unwrap();
        assert!(p99 > 50.0 && p99 < 60.0, "p99 {p99}");
        assert_eq!(w.samples(), 100);
    }

    #[test]
    fn exact_percentiles() {
        let p = percentiles_of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(p.p50, Some(3.0));
        assert_eq!(p.p99, Some(5.0));
    }
}
