//! The operations bus: every message the WebSocket channels carry (SPEC 5),
//! published by whoever observes the condition (the engine bridge, the
//! diagnostics engine, the alert engine, the snapshot store).
//!
//! A message is stamped with its channel's next `seq` when it is
//! published, so `seq` is strictly increasing per channel for every
//! subscriber. Publishing never waits: a subscriber that falls behind
//! gets `Lagged` and is told how many it missed (the WebSocket layer turns
//! that into a `lagged` message).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

/// The three channels of SPEC 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Health,
    Failover,
    Diagnostics,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Health, Channel::Failover, Channel::Diagnostics];

    /// The message types SPEC 5 lists for this channel.
    pub fn types(self) -> &'static [&'static str] {
        match self {
            Channel::Health => &[
                "health_update",
                "service_status_change",
                "service_degraded",
                "service_failure",
            ],
            Channel::Failover => &[
                "failover_event",
                "failover_activated",
                "recovery_completed",
                "emergency_state",
            ],
            Channel::Diagnostics => &[
                "diagnostic_event",
                "slow_query",
                "predictive_alert",
                "vendor_unavailable",
                "federal_interruption",
                "etl_stall",
            ],
        }
    }

    fn index(self) -> usize {
        match self {
            Channel::Health => 0,
            Channel::Failover => 1,
            Channel::Diagnostics => 2,
        }
    }
}

/// One WebSocket message: `{"type","seq","timestamp","service","data"}`.
#[derive(Debug, Clone, Serialize)]
pub struct OpsMessage {
    #[serde(skip)]
    pub channel: Channel,
    #[serde(rename = "type")]
    pub kind: String,
    pub seq: u64,
    pub timestamp: DateTime<Utc>,
    pub service: Option<String>,
    pub data: serde_json::Value,
}

/// Bus capacity per subscriber before it lags.
pub const BUS_CAPACITY: usize = 1024;

/// Cheap to clone; every clone is the same bus.
#[derive(Clone)]
pub struct OpsBus {
    tx: broadcast::Sender<Arc<OpsMessage>>,
    seqs: Arc<[AtomicU64; 3]>,
    /// Stamping and sending happen under one lock, so two publishers on a
    /// channel can never deliver seq N+1 before N.
    order: Arc<std::sync::Mutex<()>>,
}

impl Default for OpsBus {
    fn default() -> Self {
        OpsBus {
            tx: broadcast::channel(BUS_CAPACITY).0,
            seqs: Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]),
            order: Arc::new(std::sync::Mutex::new(())),
        }
    }
}

impl OpsBus {
    /// Stamps and sends a message; returns it (with its seq).
    pub fn publish(
        &self,
        channel: Channel,
        kind: &str,
        service: Option<&str>,
        data: serde_json::Value,
    ) -> Arc<OpsMessage> {
        // Poisoning cannot leave anything inconsistent here: the lock guards no data.
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let msg = Arc::new(OpsMessage {
            channel,
            kind: kind.to_string(),
            seq: self.seqs[channel.index()].fetch_add(1, Ordering::SeqCst) + 1,
            timestamp: Utc::now(),
            service: service.map(str::to_string),
            data,
        });
        // No subscriber is fine: nobody is watching.
        let _ = self.tx.send(msg.clone());
        msg
    }

    /// The seq of the last message published on `channel` (0: none yet).
    /// A snapshot sent on connect carries this value, and every later
    /// message on that channel a greater one.
    pub fn current_seq(&self, channel: Channel) -> u64 {
        self.seqs[channel.index()].load(Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OpsMessage>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_per_channel_and_increasing() {
        let bus = OpsBus::default();
        let mut rx = bus.subscribe();
        bus.publish(
            Channel::Health,
            "health_update",
            None,
            serde_json::json!({}),
        );
        bus.publish(
            Channel::Failover,
            "failover_event",
            Some("redis"),
            serde_json::json!({}),
        );
        bus.publish(
            Channel::Health,
            "service_failure",
            Some("redis"),
            serde_json::json!({}),
        );
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        let c = rx.try_recv().unwrap();
        assert_eq!((a.seq, b.seq, c.seq), (1, 1, 2));
        assert_eq!(bus.current_seq(Channel::Health), 2);
        let json = serde_json::to_value(&*c).unwrap();
        assert_eq!(json["type"], "service_failure");
        assert_eq!(json["service"], "redis");
    }
}
