//! WebSocket channels `/ws/ops/health`, `/ws/ops/failover` and
//! `/ws/ops/diagnostics` (SPEC 5): a full snapshot on connect, then the
//! channel's live messages from the operations bus.
//!
//! Authentication is the auth middleware's (`Authorization: Bearer` or
//! `?token=` on `/ws/` paths), so a refused client gets a 401 and never a
//! 101. Each client gets its own send and receive tasks under `select!`
//! (axum `chat`), and nothing a client does reaches the publishers: the
//! bus never waits, a client that falls behind its bus subscription (the
//! bounded per-client queue, [`crate::bus::BUS_CAPACITY`] messages) is sent
//! a `lagged` notice with how many messages of its channel it will not
//! see, and a client whose socket stays blocked for [`SEND_TIMEOUT`] on
//! one send is disconnected.
//!
//! `seq` is strictly increasing per client: the snapshot carries the
//! channel's current seq, read *after* subscribing to the bus, so every
//! later message is delivered and every earlier one (seq at most the
//! snapshot's) is skipped.
//!
//! Every message is sent masked with the audit log's masker
//! ([`masked`]): a secret the audit file would not keep is not sent either.

mod drops;
mod masked;
mod state;

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio::sync::oneshot;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use state::{names, Disconnect, WsState, RECENT_DIAGNOSTICS};

use crate::audit::mask::Masker;
use crate::auth::Actor;
use crate::bus::{Channel, OpsBus, OpsMessage};
use crate::error::ApiError;
use crate::routes::{failover::status_body, health::health_body};
use crate::AppState;

/// A client whose socket accepts nothing for this long on one message is
/// disconnected (counted as cut in the drop ratio).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a closing connection may take to flush its Close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Clients only send control frames; anything bigger is a protocol error.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(failover))
        .routes(routes!(diagnostics))
}

type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

#[utoipa::path(
    get, path = "/ws/ops/health", operation_id = "ws_health", tag = "websocket",
    summary = "WebSocket channel `health` (SPEC 5)",
    description = "Upgrade with `Connection: Upgrade`, `Upgrade: websocket`. Every text frame is one JSON message (`WsMessage`): first a `health_update` snapshot, then `service_status_change`, `service_degraded`, `service_failure`; `lagged` (`data.missed`) when the client fell behind. Clients send only control frames (64 KiB at most). Without a valid token the upgrade is refused with 401 and no 101.",
    responses(
        (status = 101, description = "Switching Protocols: the channel's messages follow as text frames", body = crate::openapi::WsMessage),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn health(State(state): State<AppState>, actor: Actor, ws: Upgrade) -> Response {
    upgrade(state, Channel::Health, actor, ws)
}

#[utoipa::path(
    get, path = "/ws/ops/failover", operation_id = "ws_failover", tag = "websocket",
    summary = "WebSocket channel `failover` (SPEC 5)",
    description = "Upgrade with `Connection: Upgrade`, `Upgrade: websocket`. Every text frame is one JSON message (`WsMessage`): first a `failover_event` snapshot, then `failover_activated`, `recovery_completed`, `emergency_state`; `lagged` (`data.missed`) when the client fell behind. Clients send only control frames (64 KiB at most). Without a valid token the upgrade is refused with 401 and no 101.",
    responses(
        (status = 101, description = "Switching Protocols: the channel's messages follow as text frames", body = crate::openapi::WsMessage),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn failover(State(state): State<AppState>, actor: Actor, ws: Upgrade) -> Response {
    upgrade(state, Channel::Failover, actor, ws)
}

#[utoipa::path(
    get, path = "/ws/ops/diagnostics", operation_id = "ws_diagnostics", tag = "websocket",
    summary = "WebSocket channel `diagnostics` (SPEC 5)",
    description = "Upgrade with `Connection: Upgrade`, `Upgrade: websocket`. Every text frame is one JSON message (`WsMessage`): first a `diagnostic_event` snapshot, then `slow_query`, `predictive_alert`, `vendor_unavailable`, `federal_interruption`, `etl_stall`; `lagged` (`data.missed`) when the client fell behind. Clients send only control frames (64 KiB at most). Without a valid token the upgrade is refused with 401 and no 101.",
    responses(
        (status = 101, description = "Switching Protocols: the channel's messages follow as text frames", body = crate::openapi::WsMessage),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn diagnostics(State(state): State<AppState>, actor: Actor, ws: Upgrade) -> Response {
    upgrade(state, Channel::Diagnostics, actor, ws)
}

/// A plain GET (no upgrade headers) gets our JSON error envelope, not
/// axum's text rejection.
fn upgrade(state: AppState, channel: Channel, actor: Actor, ws: Upgrade) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let msg = format!("this is a WebSocket endpoint; upgrade required ({e})");
            return ApiError::BadRequest(msg).into_response();
        }
    };
    // The query (which may hold the token) is never logged.
    tracing::debug!(?channel, actor = %actor.name, "WebSocket client connecting");
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| client(socket, state, channel))
}

/// One client, from upgrade to disconnect.
async fn client(socket: WebSocket, state: AppState, channel: Channel) {
    state.ws.ensure_collector();
    let mut guard = state.ws.connect(channel);
    // Subscribe first, then read the seq and the snapshot: nothing
    // published in between can be lost, only skipped as already covered.
    let rx = state.bus.subscribe();
    let seq = state.bus.current_seq(channel);
    let first = snapshot(&state, channel, seq);
    let (sink, stream) = socket.split();
    let out = Outbound {
        sink,
        rx,
        bus: state.bus.clone(),
        channel,
        last: seq,
        messages: state.ws.messages_counter(channel),
        lagged: state.ws.lagged_counter(channel),
        shutdown: state.ws.shutdown_signal(),
        masker: state.masker().clone(),
        texts: state.ws.masked_texts(),
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut send = tokio::spawn(out.run(first, stop_rx));
    let mut recv = tokio::spawn(receive(stream));
    let end = tokio::select! {
        sent = &mut send => {
            recv.abort();
            sent.map_or(Disconnect::Abnormal, |(_, end)| end)
        }
        received = &mut recv => {
            // Stop the send side and take the sink back to flush the
            // close reply tungstenite queued for the client's Close.
            let _ = stop_tx.send(());
            if let Ok(Ok((mut sink, _))) = tokio::time::timeout(CLOSE_TIMEOUT, &mut send).await {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            }
            send.abort();
            received.unwrap_or(Disconnect::Abnormal)
        }
    };
    tracing::debug!(?channel, ?end, "WebSocket client gone");
    guard.ended(end);
}

/// The first message of a channel: the whole current view, with the
/// channel's current seq.
fn snapshot(state: &AppState, channel: Channel, seq: u64) -> OpsMessage {
    let value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialise a WebSocket snapshot");
            json!({})
        })
    };
    let (kind, data) = match channel {
        Channel::Health => {
            let snap = state.engine.snapshot();
            (
                "health_update",
                value(serde_json::to_value(health_body(&snap))),
            )
        }
        Channel::Failover => {
            let snap = state.engine.snapshot();
            (
                "failover_event",
                value(serde_json::to_value(status_body(&snap))),
            )
        }
        Channel::Diagnostics => {
            let recent = state.ws.recent_diagnostics(seq);
            let events: Vec<&OpsMessage> = recent.iter().map(|m| &**m).collect();
            ("diagnostic_event", json!({ "events": events }))
        }
    };
    OpsMessage {
        channel,
        kind: kind.to_string(),
        seq,
        timestamp: Utc::now(),
        service: None,
        data,
    }
}

/// The send side of one client: its bus subscription and its socket.
struct Outbound {
    sink: SplitSink<WebSocket, Message>,
    rx: Receiver<Arc<OpsMessage>>,
    bus: OpsBus,
    channel: Channel,
    /// The seq of the last message sent (the snapshot's at first).
    last: u64,
    messages: prometheus::IntCounter,
    lagged: prometheus::IntCounter,
    shutdown: tokio::sync::watch::Receiver<bool>,
    masker: Masker,
    texts: Arc<masked::MaskedTexts>,
}

impl Outbound {
    /// Forwards until the client is gone or `stop` fires; hands the sink
    /// back so that the caller can close it.
    async fn run(
        mut self,
        first: OpsMessage,
        stop: oneshot::Receiver<()>,
    ) -> (SplitSink<WebSocket, Message>, Disconnect) {
        let end = tokio::select! {
            end = self.forward(first) => end,
            _ = stop => Disconnect::Normal,
        };
        (self.sink, end)
    }

    async fn forward(&mut self, first: OpsMessage) -> Disconnect {
        let text = masked::render(&self.masker, &first);
        if let Err(end) = self.send(text, &first.kind).await {
            return end;
        }
        loop {
            let next = tokio::select! {
                next = self.rx.recv() => next,
                _ = self.shutdown.wait_for(|down| *down) => Err(RecvError::Closed),
            };
            match next {
                Ok(m) if m.channel == self.channel && m.seq > self.last => {
                    self.last = m.seq;
                    let text = self.texts.text(&self.masker, &m);
                    if let Err(end) = self.send(text, &m.kind).await {
                        return end;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    if let Err(end) = self.lagged().await {
                        return end;
                    }
                }
                Err(RecvError::Closed) => {
                    let bye = Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: "server shutting down".into(),
                    }));
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.send(bye)).await;
                    return Disconnect::Normal;
                }
            }
        }
    }

    /// The subscription overflowed. The notice jumps the client to the
    /// channel's current seq and says how many of its channel's messages
    /// it will not see (the bus's own count covers every channel). Older
    /// messages still queued are then skipped as already covered.
    async fn lagged(&mut self) -> Result<(), Disconnect> {
        let current = self.bus.current_seq(self.channel);
        if current <= self.last {
            return Ok(()); // only other channels' messages were lost
        }
        let missed = current - self.last;
        self.last = current;
        self.lagged.inc();
        tracing::debug!(channel = ?self.channel, missed, "WebSocket client lagged");
        let notice = OpsMessage {
            channel: self.channel,
            kind: "lagged".to_string(),
            seq: current,
            timestamp: Utc::now(),
            service: None,
            data: json!({ "missed": missed }),
        };
        let text = masked::render(&self.masker, &notice);
        self.send(text, &notice.kind).await
    }

    /// Sends one message's (masked) text.
    async fn send(
        &mut self,
        text: Result<Utf8Bytes, serde_json::Error>,
        kind: &str,
    ) -> Result<(), Disconnect> {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, kind, "cannot serialise a WebSocket message; skipped");
                return Ok(());
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, self.sink.send(Message::Text(text))).await {
            Ok(Ok(())) => {
                self.messages.inc();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket send failed");
                Err(Disconnect::Abnormal)
            }
            Err(_) => {
                tracing::warn!(channel = ?self.channel, "WebSocket client blocked a send past the timeout; disconnected");
                Err(Disconnect::Cut)
            }
        }
    }
}

/// The receive side: clients send nothing but control frames. A Close
/// ends the connection normally; tungstenite answers Pings with Pongs on
/// its own (queued while reading, flushed by this very read loop), so
/// they need nothing here.
async fn receive(mut stream: SplitStream<WebSocket>) -> Disconnect {
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Close(_)) => return Disconnect::Normal,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket receive failed");
                return Disconnect::Abnormal;
            }
        }
    }
    // The connection ended without a Close frame.
    Disconnect::Abnormal
}
