//! What the WebSocket channels share across clients: their metrics, the
//! ring of recent diagnostics-channel messages a new diagnostics client is
//! sent first, and the connect/disconnect record behind
//! [`WsState::drop_ratio_last_minute`] (SPEC 9: clients dropped over 20 %
//! within a minute).
//!
//! The ring is filled from its own bus subscription, drained under a lock
//! both by a small collector task (so that heavy traffic on the other
//! channels cannot push diagnostics out of the bus before they are kept)
//! and by every snapshot read (so that a snapshot holds every diagnostics
//! message published before it, whether or not the collector has run).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::sync::watch;

use super::drops::DropWindow;
use super::masked::MaskedTexts;
use crate::bus::{Channel, OpsBus, OpsMessage};

/// Metric names of the WebSocket channels.
pub mod names {
    pub const WS_CLIENTS: &str = "continuity_ws_clients";
    pub const WS_MESSAGES_TOTAL: &str = "continuity_ws_messages_total";
    pub const WS_LAGGED_TOTAL: &str = "continuity_ws_lagged_total";
}

/// Diagnostics-channel messages kept for the diagnostics snapshot.
pub const RECENT_DIAGNOSTICS: usize = 50;

/// How often the collector drains its bus subscription into the ring.
const COLLECT_EVERY: Duration = Duration::from_millis(200);

/// How a client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// A Close frame from the client, or the server going away.
    Normal,
    /// The connection broke (reset, EOF without Close, protocol error).
    Abnormal,
    /// Cut by us: a send blocked past the send timeout.
    Cut,
}

/// Cheap to clone; every clone is the same state.
#[derive(Clone)]
pub struct WsState {
    inner: Arc<Inner>,
}

struct Inner {
    clients: IntGaugeVec,
    messages: IntCounterVec,
    lagged: IntCounterVec,
    recent: Mutex<Recent>,
    collector_started: AtomicBool,
    connected: AtomicUsize,
    drops: Mutex<DropWindow>,
    shutdown: watch::Sender<bool>,
    /// The masked text of recent bus messages, shared by all clients.
    texts: Arc<MaskedTexts>,
}

/// A state attached to no bus: metrics registered nowhere and an empty
/// diagnostics ring. [`WsState::new`] is what `AppState` uses.
impl Default for WsState {
    fn default() -> Self {
        WsState::build(None, None)
    }
}

impl WsState {
    /// Subscribes the diagnostics ring to `bus` and registers the metrics
    /// into `registry`. A name already registered there (a second state
    /// on one registry) is logged and the metrics are kept unregistered
    /// rather than failing the control plane. Inside a Tokio runtime the
    /// collector starts now, else with the first WebSocket client.
    pub fn new(bus: &OpsBus, registry: &Registry) -> WsState {
        let state = WsState::build(Some(bus), Some(registry));
        if tokio::runtime::Handle::try_current().is_ok() {
            state.ensure_collector();
        }
        state
    }

    fn build(bus: Option<&OpsBus>, registry: Option<&Registry>) -> WsState {
        let (clients, messages, lagged) = families();
        if let Some(registry) = registry {
            for c in [
                Box::new(clients.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(messages.clone()),
                Box::new(lagged.clone()),
            ] {
                if let Err(e) = registry.register(c) {
                    tracing::warn!(error = %e, "WebSocket metrics not registered");
                }
            }
        }
        // Every channel's series exists from the start, at 0.
        for ch in Channel::ALL {
            clients.with_label_values(&[label(ch)]).set(0);
            messages.with_label_values(&[label(ch)]);
            lagged.with_label_values(&[label(ch)]);
        }
        WsState {
            inner: Arc::new(Inner {
                clients,
                messages,
                lagged,
                recent: Mutex::new(Recent {
                    rx: bus.map(OpsBus::subscribe),
                    ring: VecDeque::with_capacity(RECENT_DIAGNOSTICS),
                }),
                collector_started: AtomicBool::new(false),
                connected: AtomicUsize::new(0),
                drops: Mutex::new(DropWindow::new()),
                shutdown: watch::channel(false).0,
                texts: Arc::new(MaskedTexts::default()),
            }),
        }
    }

    /// Starts the ring's collector task once (needs a Tokio runtime).
    pub fn ensure_collector(&self) {
        if self.inner.collector_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COLLECT_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if !lock(&inner.recent).drain() {
                    return;
                }
            }
        });
    }

    /// The diagnostics-channel messages published so far (the last
    /// [`RECENT_DIAGNOSTICS`]) whose seq is at most `upto`, oldest first.
    pub fn recent_diagnostics(&self, upto: u64) -> Vec<Arc<OpsMessage>> {
        let mut recent = lock(&self.inner.recent);
        recent.drain();
        recent
            .ring
            .iter()
            .filter(|m| m.seq <= upto)
            .cloned()
            .collect()
    }

    /// Clients connected now, on every channel.
    pub fn clients(&self) -> usize {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// Clients dropped (abnormal disconnects and clients cut for lag) over
    /// clients seen (connected now, or disconnected) in the last minute;
    /// 0 when none was seen. SPEC 9 alerts past 0.2.
    pub fn drop_ratio_last_minute(&self) -> f64 {
        let (disconnected, dropped) = lock(&self.inner.drops).totals(Instant::now());
        let seen = self.clients() as u64 + disconnected;
        if seen == 0 {
            0.0
        } else {
            dropped as f64 / seen as f64
        }
    }

    /// Sends every connected client a Close (1001, going away) and ends
    /// its tasks; clients connecting later are closed right after their
    /// snapshot. The HTTP server's graceful shutdown does not reach
    /// upgraded connections, so the caller stopping the control plane
    /// calls this.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub(crate) fn masked_texts(&self) -> Arc<MaskedTexts> {
        self.inner.texts.clone()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Counts a client in; the guard counts it out when dropped.
    pub(crate) fn connect(&self, channel: Channel) -> ClientGuard {
        self.inner.connected.fetch_add(1, Ordering::SeqCst);
        self.inner
            .clients
            .with_label_values(&[label(channel)])
            .inc();
        ClientGuard {
            state: self.clone(),
            channel,
            end: Disconnect::Abnormal,
        }
    }

    pub(crate) fn messages_counter(&self, channel: Channel) -> prometheus::IntCounter {
        self.inner.messages.with_label_values(&[label(channel)])
    }

    pub(crate) fn lagged_counter(&self, channel: Channel) -> prometheus::IntCounter {
        self.inner.lagged.with_label_values(&[label(channel)])
    }
}

/// One connected client; records how it ended when dropped (abnormal
/// unless told otherwise, so that a panicking task counts as a drop).
pub(crate) struct ClientGuard {
    state: WsState,
    channel: Channel,
    end: Disconnect,
}

impl ClientGuard {
    pub(crate) fn ended(&mut self, end: Disconnect) {
        self.end = end;
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let inner = &self.state.inner;
        inner.connected.fetch_sub(1, Ordering::SeqCst);
        inner
            .clients
            .with_label_values(&[label(self.channel)])
            .dec();
        let dropped = self.end != Disconnect::Normal;
        lock(&inner.drops).record(Instant::now(), dropped);
    }
}

fn label(channel: Channel) -> &'static str {
    match channel {
        Channel::Health => "health",
        Channel::Failover => "failover",
        Channel::Diagnostics => "diagnostics",
    }
}

/// A poisoned lock only means another client's task panicked; the data
/// (counters, a ring of `Arc`s) is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// Constant, valid names and labels: creating the families cannot fail.
#[allow(clippy::expect_used)]
fn families() -> (IntGaugeVec, IntCounterVec, IntCounterVec) {
    let opts = Opts::new;
    (
        IntGaugeVec::new(
            opts(names::WS_CLIENTS, "WebSocket clients connected, by channel."),
            &["channel"],
        )
        .expect("valid metric"),
        IntCounterVec::new(
            opts(
                names::WS_MESSAGES_TOTAL,
                "WebSocket messages sent to clients (snapshots, events, lagged notices), by channel.",
            ),
            &["channel"],
        )
        .expect("valid metric"),
        IntCounterVec::new(
            opts(
                names::WS_LAGGED_TOTAL,
                "Lagged notices sent to WebSocket clients that fell behind, by channel.",
            ),
            &["channel"],
        )
        .expect("valid metric"),
    )
}

struct Recent {
    rx: Option<broadcast::Receiver<Arc<OpsMessage>>>,
    ring: VecDeque<Arc<OpsMessage>>,
}

impl Recent {
    /// Moves every pending diagnostics message into the ring; false once
    /// the bus is gone.
    fn drain(&mut self) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        loop {
            match rx.try_recv() {
                Ok(m) if m.channel == Channel::Diagnostics => {
                    if self.ring.len() == RECENT_DIAGNOSTICS {
                        self.ring.pop_front();
                    }
                    self.ring.push_back(m);
                }
                Ok(_) => {}
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "diagnostics ring lagged behind the bus");
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Closed) => {
                    self.rx = None;
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drop_ratio_counts_connected_clients_as_seen() {
        let ws = WsState::default();
        assert_eq!(ws.drop_ratio_last_minute(), 0.0);
        let keep: Vec<_> = (0..3).map(|_| ws.connect(Channel::Health)).collect();
        let mut normal = ws.connect(Channel::Failover);
        normal.ended(Disconnect::Normal);
        drop(normal);
        let mut cut = ws.connect(Channel::Failover);
        cut.ended(Disconnect::Cut);
        drop(cut);
        // 3 connected + 2 gone, 1 of them dropped.
        assert!((ws.drop_ratio_last_minute() - 0.2).abs() < 1e-9);
        drop(ws.connect(Channel::Diagnostics)); // abnormal by default
        assert!((ws.drop_ratio_last_minute() - 2.0 / 6.0).abs() < 1e-9);
        assert_eq!(ws.clients(), 3);
        drop(keep);
        assert_eq!(ws.clients(), 0);
    }

    #[test]
    fn ring_keeps_the_last_diagnostics_messages_up_to_a_seq() {
        let bus = OpsBus::default();
        let ws = WsState::new(&bus, &Registry::new());
        for i in 0..(RECENT_DIAGNOSTICS + 10) {
            bus.publish(
                Channel::Diagnostics,
                "diagnostic_event",
                None,
                json!({ "i": i }),
            );
            bus.publish(Channel::Health, "health_update", None, json!({}));
        }
        let all = ws.recent_diagnostics(u64::MAX);
        assert_eq!(all.len(), RECENT_DIAGNOSTICS);
        assert_eq!(all[0].seq, 11);
        assert!(all.iter().all(|m| m.channel == Channel::Diagnostics));
        let upto = ws.recent_diagnostics(20);
        assert_eq!(upto.last().map(|m| m.seq), Some(20));
        assert_eq!(upto.len(), 10);
    }

    #[test]
    fn metrics_register_once_and_tolerate_a_second_state() {
        let registry = Registry::new();
        let bus = OpsBus::default();
        let a = WsState::new(&bus, &registry);
        let _b = WsState::new(&bus, &registry);
        a.messages_counter(Channel::Health).inc();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&names::WS_CLIENTS.to_string()), "{names:?}");
        assert!(names.contains(&names::WS_MESSAGES_TOTAL.to_string()));
    }
}
