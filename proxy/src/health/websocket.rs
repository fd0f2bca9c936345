//! `websocket` probe: the upgrade handshake on `ws://{address}{health_path}`,
//! then a Ping; healthy when the matching Pong comes back (the whole probe
//! is bounded by the service's `timeout_ms`).
//!
//! Plain `ws://` only: the probe does not speak TLS, so a `wss://` upstream
//! is not probed correctly (its `tls` keys are not used here).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

use super::{BoxFuture, HealthCheck, ProbeError, Probed};
use crate::config::{ServiceConfig, UpstreamConfig};

/// The Ping payload; the Pong must echo it.
pub const PING_PAYLOAD: &[u8] = b"continuity-probe";

/// Largest frame or message accepted from the upstream.
const MAX_MESSAGE: usize = 64 * 1024;

/// Other messages tolerated before the Pong.
const MAX_MESSAGES: usize = 64;

pub struct WebSocketCheck;

impl HealthCheck for WebSocketCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            let uri = format!(
                "ws://{}{}",
                upstream.target(),
                super::http::health_path(service)
            );
            let mut request = uri.as_str().into_client_request().map_err(ws_error)?;
            request.headers_mut().insert(
                header::USER_AGENT,
                HeaderValue::from_static(super::http::USER_AGENT),
            );
            let stream = super::connect(service, upstream).await?;
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE));
            let (mut ws, _) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .map_err(ws_error)?;
            ws.send(Message::Ping(Bytes::from_static(PING_PAYLOAD)))
                .await
                .map_err(ws_error)?;
            let mut other = 0;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Pong(p))) if p.as_ref() == PING_PAYLOAD => break,
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(ProbeError::Protocol(
                            "websocket closed before the pong".into(),
                        ))
                    }
                    Some(Ok(_)) => {
                        other += 1;
                        if other >= MAX_MESSAGES {
                            return Err(ProbeError::Protocol(format!(
                                "websocket: no pong among the first {MAX_MESSAGES} messages"
                            )));
                        }
                    }
                    Some(Err(e)) => return Err(ws_error(e)),
                }
            }
            // Polite close; the probe has already succeeded.
            let _ = tokio::time::timeout(Duration::from_millis(100), ws.close(None)).await;
            Ok(Probed::up())
        })
    }
}

fn ws_error(e: tungstenite::Error) -> ProbeError {
    use tungstenite::Error as E;
    match e {
        E::Io(io) => ProbeError::Io(io),
        E::Http(resp) => {
            let status = resp.status();
            let msg = format!("websocket upgrade refused: HTTP {status}");
            if matches!(status.as_u16(), 401 | 403 | 407) {
                ProbeError::Auth(msg)
            } else {
                ProbeError::Protocol(msg)
            }
        }
        E::ConnectionClosed | E::AlreadyClosed => {
            ProbeError::Protocol("websocket closed before the pong".into())
        }
        other => ProbeError::Protocol(format!("websocket: {other}")),
    }
}
