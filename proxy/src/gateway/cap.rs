//! A gateway listener's cap on client sockets (`max_client_connections`)
//! and the 503 a client past it gets.

use std::sync::Arc;

use crate::upstream::runtime::ServiceRt;

/// Clients past `max_client_connections` being answered 503 at once; past
/// this many, a refused client is closed without a word.
const MAX_REFUSING: usize = 64;

/// A gateway listener's cap on client sockets
/// (`max_client_connections`, default 1024): a slot is held for the
/// socket's whole life, on the lean path and after a hand-over to pingora.
pub(crate) struct ClientCap {
    svc: Arc<ServiceRt>,
    slots: Arc<tokio::sync::Semaphore>,
    refusing: Arc<tokio::sync::Semaphore>,
}

impl ClientCap {
    pub(crate) fn new(svc: &Arc<ServiceRt>) -> ClientCap {
        let n = svc.cfg.http.max_client_connections.max(1) as usize;
        ClientCap {
            svc: svc.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(n)),
            refusing: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING)),
        }
    }

    /// A slot for a new client socket, if one is free.
    pub(crate) fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Counts a client past the cap in
    /// `continuity_connections_refused_total{listener}` and, with `answer`,
    /// answers it 503 (`Retry-After: 1`, `Connection: close`); it is just
    /// closed without `answer` (a TLS listener) or when [`MAX_REFUSING`]
    /// others are being answered.
    pub(crate) fn refuse(
        &self,
        mut client: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        answer: bool,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let name = self.svc.name().to_string();
        self.svc
            .metrics
            .connections_refused
            .with_label_values(&[&name])
            .inc();
        let max = self.svc.cfg.http.max_client_connections;
        tracing::debug!(service = %name, %peer, max_client_connections = max, "connection refused (max_client_connections)");
        if !answer {
            return;
        }
        let Ok(slot) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let body = serde_json::json!({"error": {"code": "overloaded", "message":
                format!("continuity: {name} has {max} client connections open (max_client_connections)")}})
            .to_string();
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let wait = std::time::Duration::from_secs(2);
            let _ = tokio::time::timeout(wait, client.write_all(answer.as_bytes())).await;
            let _ = client.shutdown().await;
            // Read what the client still sends, so that the kernel does not
            // answer it with a reset that could destroy the 503.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(wait, async {
                while let Ok(n) = client.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}
