//! The history of one service: closed minute buckets (the last 24 h or
//! more), hour buckets (every retained hour, the one in progress too), the
//! minute in progress, and what the sampler needs to turn the next engine
//! snapshot into seconds, checks and latency samples.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use continuity_proxy::config::Category;
use continuity_proxy::snapshot::ServiceSnapshot;

use super::bucket::{floor_to, Bucket, BucketStatus, Current, HOUR, MINUTE};

/// How the sampler classifies a service's down seconds (see docs/uptime.md).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The service has a proxy listener: new clients are held while down.
    pub proxied: bool,
    /// `buffer_timeout_ms`, in seconds.
    pub buffer_seconds: f64,
    /// A longer silence between two observations is not attributed.
    pub max_gap_seconds: f64,
}

/// Whether a persisted bucket is a minute or an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    Minute,
    Hour,
}

#[derive(Debug, Default)]
pub struct ServiceHistory {
    pub category: Option<Category>,
    /// Closed minutes (or flushed parts of one), by minute start.
    pub minutes: BTreeMap<i64, Bucket>,
    /// Every retained hour, including closed minutes of the current one.
    pub hours: BTreeMap<i64, Bucket>,
    /// Hours whose minute detail is gone (older than the minute
    /// retention, or loaded as hour lines): persisted as hour lines.
    pub hour_only: BTreeSet<i64>,
    pub current: Option<Current>,
    /// Sampler state, never persisted.
    last_obs: Option<f64>,
    last_checks: u64,
    last_failed: u64,
    last_probe_at: Option<DateTime<Utc>>,
    outage_start: Option<f64>,
    pending_timeouts: u64,
    pending_worst: BucketStatus,
}

impl ServiceHistory {
    /// A held client of this service was refused (`HoldTimedOut`).
    pub fn note_hold_timeout(&mut self) {
        self.pending_timeouts += 1;
    }

    /// A status change event: the bucket shows it even if no tick saw it.
    pub fn note_status(&mut self, status: BucketStatus) {
        self.pending_worst = self.pending_worst.max(status);
    }

    /// One sampler step at unix time `t` (fractional seconds). The time
    /// since the previous step is attributed to the status seen now, split
    /// at minute boundaries; closed minutes are pushed to `out`.
    pub fn observe(
        &mut self,
        t: f64,
        s: &ServiceSnapshot,
        p: &Policy,
        out: &mut Vec<(i64, Bucket)>,
    ) {
        self.category = Some(s.category);
        let status = BucketStatus::from(s.status);
        let from = self
            .last_obs
            .filter(|&l| t > l && t - l <= p.max_gap_seconds);
        let timeouts = std::mem::take(&mut self.pending_timeouts);
        if status == BucketStatus::Down {
            if self.outage_start.is_none() {
                self.outage_start = Some(from.unwrap_or(t));
            }
        } else {
            self.outage_start = None;
        }
        if let Some(from) = from {
            let outage_start = self.outage_start;
            let mut a = from;
            while a < t {
                let minute = floor_to(a.floor() as i64, MINUTE);
                let b = t.min((minute + MINUTE) as f64);
                let cur = self.roll(minute, out);
                let secs = b - a;
                cur.bucket.add_seconds(status, secs);
                cur.bucket.status = cur.bucket.status.max(status);
                if status == BucketStatus::Down {
                    let visible = if !p.proxied || timeouts > 0 {
                        secs
                    } else {
                        let absorbed_until = outage_start.unwrap_or(a) + p.buffer_seconds;
                        (b - absorbed_until.max(a)).clamp(0.0, secs)
                    };
                    cur.bucket.client_visible_seconds += visible;
                    cur.bucket.absorbed_seconds += secs - visible;
                }
                a = b;
            }
        }
        let (checks, failed) = (s.total_checks, s.failed_checks);
        let d_checks = checks.checked_sub(self.last_checks).unwrap_or(checks);
        let d_failed = failed.checked_sub(self.last_failed).unwrap_or(failed);
        (self.last_checks, self.last_failed) = (checks, failed);
        let mut samples = Vec::new();
        if let Some(up) = s.upstreams.iter().find(|u| u.active) {
            let seen = self.last_probe_at;
            for rec in up.history.iter().filter(|r| Some(r.at) > seen) {
                if rec.ok && rec.latency_ms.is_finite() {
                    samples.push(rec.latency_ms);
                }
                self.last_probe_at = self.last_probe_at.max(Some(rec.at));
            }
        }
        let worst = std::mem::take(&mut self.pending_worst);
        let cur = self.roll(floor_to(t.floor() as i64, MINUTE), out);
        cur.bucket.checks += d_checks;
        cur.bucket.failures += d_failed;
        cur.bucket.hold_timeouts += timeouts;
        cur.bucket.status = cur.bucket.status.max(status).max(worst);
        cur.samples.extend(samples);
        self.last_obs = Some(t);
    }

    /// Makes `minute` the minute in progress (closing the previous one).
    fn roll(&mut self, minute: i64, out: &mut Vec<(i64, Bucket)>) -> &mut Current {
        if self.current.as_ref().is_some_and(|c| c.start != minute) {
            if let Some(c) = self.current.take() {
                self.close(c, out);
            }
        }
        self.current.get_or_insert_with(|| Current::new(minute))
    }

    fn close(&mut self, c: Current, out: &mut Vec<(i64, Bucket)>) {
        if c.is_empty() {
            return;
        }
        let b = c.summary();
        self.add_closed(c.start, &b);
        out.push((c.start, b));
    }

    /// Closes what the minute in progress holds so far (to persist it on
    /// flush) and keeps accumulating the rest of that minute afresh; the
    /// two parts merge again in memory and on load.
    pub fn split(&mut self, out: &mut Vec<(i64, Bucket)>) {
        if let Some(c) = self.current.take() {
            let start = c.start;
            self.close(c, out);
            self.current = Some(Current::new(start));
        }
    }

    fn add_closed(&mut self, start: i64, b: &Bucket) {
        self.minutes.entry(start).or_default().merge(b);
        self.hours
            .entry(floor_to(start, HOUR))
            .or_default()
            .merge(b);
    }

    /// A bucket read back from disk. Call [`ServiceHistory::finish_load`]
    /// once every line is in.
    pub fn load(&mut self, res: Res, start: i64, b: &Bucket) {
        match res {
            Res::Minute => {
                self.minutes.entry(start).or_default().merge(b);
            }
            Res::Hour => {
                let h = floor_to(start, HOUR);
                self.hours.entry(h).or_default().merge(b);
                self.hour_only.insert(h);
            }
        }
    }

    /// Rolls loaded minutes into their hours; an hour line wins over
    /// minute lines of the same hour (which only a crash between a
    /// compaction's write and its rename could leave).
    pub fn finish_load(&mut self) {
        for (m, b) in &self.minutes {
            let h = floor_to(*m, HOUR);
            if !self.hour_only.contains(&h) {
                self.hours.entry(h).or_default().merge(b);
            }
        }
    }

    /// Drops minutes before `minute_cut` (hour-aligned; their hours keep
    /// the totals) and hours before `hour_cut`.
    pub fn prune(&mut self, minute_cut: i64, hour_cut: i64) {
        let keep = self.minutes.split_off(&minute_cut);
        for m in std::mem::replace(&mut self.minutes, keep).into_keys() {
            self.hour_only.insert(floor_to(m, HOUR));
        }
        self.hours = self.hours.split_off(&hour_cut);
        self.hour_only = self.hour_only.split_off(&hour_cut);
    }

    /// Everything retained, as the lines of a compacted file.
    pub fn lines(&self) -> Vec<(Res, i64, &Bucket)> {
        let hours = self
            .hour_only
            .iter()
            .filter_map(|h| self.hours.get(h).map(|b| (Res::Hour, *h, b)));
        let minutes = self
            .minutes
            .iter()
            .filter(|(m, _)| !self.hour_only.contains(&floor_to(**m, HOUR)))
            .map(|(m, b)| (Res::Minute, *m, b));
        hours.chain(minutes).collect()
    }

    /// The minute in progress as a bucket, merged with any flushed part of
    /// the same minute.
    pub fn current_minute(&self) -> Option<(i64, Bucket)> {
        let c = self.current.as_ref()?;
        let mut b = self.minutes.get(&c.start).cloned().unwrap_or_default();
        b.merge(&c.summary());
        Some((c.start, b))
    }

    /// The hour in progress: its closed minutes plus the minute in progress.
    pub fn current_hour(&self) -> Option<(i64, Bucket)> {
        let c = self.current.as_ref()?;
        let h = floor_to(c.start, HOUR);
        let mut b = self.hours.get(&h).cloned().unwrap_or_default();
        b.merge(&c.summary());
        Some((h, b))
    }
}
