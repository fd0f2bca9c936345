//! Heartbeat services (`kind = "heartbeat"`, an ETL pipeline): the last
//! report of each, and stall detection. A pipeline that has not reported
//! for `stall_after` is stalled (counted from start-up until its first
//! report); its next report resumes it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::model::Effect;

#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub name: String,
    pub stall_after: Duration,
    last: Instant,
    pub last_at: Option<DateTime<Utc>>,
    pub processed: Option<u64>,
    pub checkpoint: Option<String>,
    pub beats: u64,
    pub stalled_since: Option<DateTime<Utc>>,
}

impl Heartbeat {
    pub fn stalled(&self) -> bool {
        self.stalled_since.is_some()
    }

    /// The heartbeat's status as the API and the bus show it.
    pub fn to_json(&self, now: Instant) -> Value {
        json!({
            "name": self.name,
            "stall_after_seconds": self.stall_after.as_secs_f64(),
            "silent_seconds": (now.saturating_duration_since(self.last).as_secs_f64() * 10.0).round() / 10.0,
            "last_heartbeat_at": self.last_at,
            "processed": self.processed,
            "checkpoint": self.checkpoint,
            "heartbeats": self.beats,
            "stalled": self.stalled(),
            "stalled_since": self.stalled_since,
        })
    }
}

/// What a heartbeat POST carries (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub processed: Option<u64>,
    pub checkpoint: Option<String>,
}

#[derive(Debug, Default)]
pub struct Heartbeats {
    map: BTreeMap<String, Heartbeat>,
}

/// The design's ETL pipeline recovery, sent with a stall.
pub const ETL_RECOVERY: [&str; 7] = [
    "Detect pipeline stall",
    "Identify stall point",
    "Checkpoint current state",
    "Restart pipeline from checkpoint",
    "Process backlog",
    "Verify data integrity",
    "Resume normal ingestion",
];

impl Heartbeats {
    pub fn new(list: &[(String, Duration)], now: Instant) -> Heartbeats {
        let map = list
            .iter()
            .map(|(name, stall_after)| {
                let hb = Heartbeat {
                    name: name.clone(),
                    stall_after: *stall_after,
                    last: now,
                    last_at: None,
                    processed: None,
                    checkpoint: None,
                    beats: 0,
                    stalled_since: None,
                };
                (name.clone(), hb)
            })
            .collect();
        Heartbeats { map }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn stalled(&self) -> impl Iterator<Item = &Heartbeat> {
        self.map.values().filter(|h| h.stalled())
    }

    /// Marks pipelines silent past their `stall_after` as stalled.
    pub fn check(&mut self, now: Instant, wall: DateTime<Utc>) -> Vec<Effect> {
        let mut out = Vec::new();
        for h in self.map.values_mut() {
            if !h.stalled() && now.saturating_duration_since(h.last) > h.stall_after {
                h.stalled_since = Some(wall);
                let mut v = h.to_json(now);
                v["state"] = json!("stalled");
                v["recovery"] = json!(ETL_RECOVERY);
                out.push(Effect::Stalled(v));
            }
        }
        out
    }

    /// Records a report. `None` if no heartbeat service has that name;
    /// else its status, and `Resumed` if it was stalled.
    pub fn beat(
        &mut self,
        name: &str,
        report: Report,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Option<(Value, Option<Effect>)> {
        let h = self.map.get_mut(name)?;
        h.last = now;
        h.last_at = Some(wall);
        h.beats += 1;
        if report.processed.is_some() {
            h.processed = report.processed;
        }
        if report.checkpoint.is_some() {
            h.checkpoint = report.checkpoint;
        }
        let resumed = h.stalled_since.take().map(|since| {
            let mut v = h.to_json(now);
            v["state"] = json!("resumed");
            v["stalled_since"] = json!(since);
            v["stalled_seconds"] =
                json!(((wall - since).num_milliseconds() as f64 / 1000.0).max(0.0));
            Effect::Resumed(v)
        });
        Some((h.to_json(now), resumed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_once_then_resume_on_next_beat() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut hb = Heartbeats::new(&[("etl".to_string(), Duration::from_secs(5))], t0);
        assert!(hb.check(t0 + Duration::from_secs(4), wall).is_empty());
        let (_, resumed) = hb
            .beat("etl", Report::default(), t0 + Duration::from_secs(4), wall)
            .expect("known");
        assert!(resumed.is_none());
        assert!(hb.check(t0 + Duration::from_secs(8), wall).is_empty());
        let stalled = hb.check(t0 + Duration::from_secs(10), wall);
        assert!(matches!(&stalled[..], [Effect::Stalled(v)] if v["state"] == "stalled"));
        assert!(
            hb.check(t0 + Duration::from_secs(11), wall).is_empty(),
            "once"
        );
        assert_eq!(hb.stalled().count(), 1);
        let report = Report {
            processed: Some(42),
            checkpoint: Some("batch-7".into()),
        };
        let (status, resumed) = hb
            .beat("etl", report, t0 + Duration::from_secs(12), wall)
            .expect("known");
        assert!(matches!(resumed, Some(Effect::Resumed(_))));
        assert_eq!(status["processed"], 42);
        assert_eq!(status["checkpoint"], "batch-7");
        assert_eq!(status["stalled"], false);
        assert!(hb.beat("nope", Report::default(), t0, wall).is_none());
    }
}
