//! One bucket of history (a minute or an hour of one service) and the
//! accumulator of the minute in progress.

use continuity_proxy::snapshot::ServiceStatus;
use serde::{Deserialize, Serialize};

/// Seconds in a minute and an hour, as bucket widths.
pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;

/// A bucket's `status`: the worst status seen in it. Ordered by severity;
/// `unknown` is the least severe (it only shows when nothing else was seen).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BucketStatus {
    #[default]
    Unknown,
    Healthy,
    Degraded,
    Down,
}

impl From<ServiceStatus> for BucketStatus {
    fn from(s: ServiceStatus) -> BucketStatus {
        match s {
            ServiceStatus::Unknown => BucketStatus::Unknown,
            ServiceStatus::Healthy => BucketStatus::Healthy,
            ServiceStatus::Degraded => BucketStatus::Degraded,
            ServiceStatus::Down => BucketStatus::Down,
        }
    }
}

/// What a bucket holds; also the persisted form (flattened into a line).
/// Seconds are fractional: the sampler attributes the exact time between
/// two observations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bucket {
    pub checks: u64,
    pub failures: u64,
    /// How many latency samples the percentiles were taken from.
    pub latency_samples: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub status: BucketStatus,
    pub healthy_seconds: f64,
    pub degraded_seconds: f64,
    pub down_seconds: f64,
    pub unknown_seconds: f64,
    /// Down seconds that clients saw (SLA).
    pub client_visible_seconds: f64,
    /// Down seconds the proxy absorbed by holding clients (SLA).
    pub absorbed_seconds: f64,
    /// Held clients refused after `buffer_timeout_ms`.
    pub hold_timeouts: u64,
}

impl Bucket {
    /// Seconds with a known status: the denominator of uptime.
    pub fn observed_seconds(&self) -> f64 {
        self.healthy_seconds + self.degraded_seconds + self.down_seconds
    }

    /// Adds `seconds` spent in `status`.
    pub fn add_seconds(&mut self, status: BucketStatus, seconds: f64) {
        match status {
            BucketStatus::Unknown => self.unknown_seconds += seconds,
            BucketStatus::Healthy => self.healthy_seconds += seconds,
            BucketStatus::Degraded => self.degraded_seconds += seconds,
            BucketStatus::Down => self.down_seconds += seconds,
        }
    }

    /// Folds `other` (a later part of the same minute, or a minute of the
    /// same hour) into this one. Counts and seconds add up, the status is
    /// the worse one; p50 is the sample-weighted mean of the two p50s and
    /// p99 the larger p99 (an upper bound: bucket summaries keep no raw
    /// samples).
    pub fn merge(&mut self, other: &Bucket) {
        self.checks += other.checks;
        self.failures += other.failures;
        let (n1, n2) = (self.latency_samples as f64, other.latency_samples as f64);
        self.latency_p50_ms = match (self.latency_p50_ms, other.latency_p50_ms) {
            (Some(a), Some(b)) if n1 + n2 > 0.0 => Some((a * n1 + b * n2) / (n1 + n2)),
            (Some(a), Some(b)) => Some((a + b) / 2.0),
            (a, b) => a.or(b),
        };
        self.latency_p99_ms = match (self.latency_p99_ms, other.latency_p99_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.latency_samples += other.latency_samples;
        self.status = self.status.max(other.status);
        self.healthy_seconds += other.healthy_seconds;
        self.degraded_seconds += other.degraded_seconds;
        self.down_seconds += other.down_seconds;
        self.unknown_seconds += other.unknown_seconds;
        self.client_visible_seconds += other.client_visible_seconds;
        self.absorbed_seconds += other.absorbed_seconds;
        self.hold_timeouts += other.hold_timeouts;
    }

    /// True when nothing at all was recorded.
    pub fn is_empty(&self) -> bool {
        *self == Bucket::default()
    }
}

/// The minute in progress of one service: a bucket plus its raw latency
/// samples, summarised into p50/p99 when the minute closes.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// Unix seconds, minute-aligned.
    pub start: i64,
    pub bucket: Bucket,
    pub samples: Vec<f64>,
}

impl Current {
    pub fn new(start: i64) -> Current {
        Current {
            start,
            ..Current::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bucket.is_empty() && self.samples.is_empty()
    }

    /// The bucket as it stands, percentiles computed from the samples so far.
    pub fn summary(&self) -> Bucket {
        let mut b = self.bucket.clone();
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        b.latency_samples = s.len() as u64;
        b.latency_p50_ms = nearest_rank(&s, 0.50);
        b.latency_p99_ms = nearest_rank(&s, 0.99);
        b
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// Start of the minute or hour holding unix second `t`.
pub fn floor_to(t: i64, width: i64) -> i64 {
    t.div_euclid(width) * width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_merge() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&s, 0.5), Some(50.0));
        assert_eq!(nearest_rank(&s, 0.99), Some(99.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
        let mut a = Bucket {
            checks: 2,
            latency_samples: 1,
            latency_p50_ms: Some(10.0),
            latency_p99_ms: Some(10.0),
            status: BucketStatus::Healthy,
            healthy_seconds: 30.0,
            ..Bucket::default()
        };
        let b = Bucket {
            checks: 3,
            failures: 1,
            latency_samples: 3,
            latency_p50_ms: Some(2.0),
            latency_p99_ms: Some(40.0),
            status: BucketStatus::Down,
            down_seconds: 30.0,
            client_visible_seconds: 30.0,
            ..Bucket::default()
        };
        a.merge(&b);
        assert_eq!((a.checks, a.failures, a.latency_samples), (5, 1, 4));
        assert_eq!(a.latency_p50_ms, Some(4.0));
        assert_eq!(a.latency_p99_ms, Some(40.0));
        assert_eq!(a.status, BucketStatus::Down);
        assert_eq!(a.observed_seconds(), 60.0);
        assert_eq!(floor_to(125, MINUTE), 120);
        assert_eq!(floor_to(-1, HOUR), -3600);
    }
}
