//! The control listener's connection limits and timeouts (`[control]`
//! `max_connections`, `header_read_timeout_ms`, `idle_timeout_ms`).
//!
//! axum's own `serve` installs no hyper timer (so hyper's header-read
//! timeout never fires), no idle timeout and no cap: a client that sends
//! half a request head, or nothing at all, kept its connection for ever.
//! [`serve_limited`] is the same accept loop, with:
//!
//! - a cap: past `max_connections` open connections a new one is closed at
//!   once and counted in `continuity_connections_refused_total{listener=
//!   "control"}`. The slot is held by the socket itself, so an upgraded
//!   WebSocket keeps its slot for as long as it lives;
//! - hyper's `TokioTimer` and `header_read_timeout`: a request head must be
//!   whole `header_read_timeout` after its first byte, and on HTTP/1 the
//!   next request of a keep-alive connection must start within it;
//! - a watchdog per connection: its first request must arrive within
//!   `header_read_timeout` of the accept, and afterwards a connection with
//!   no request in flight and no byte moved either way for `idle_timeout`
//!   is closed (HTTP/2 included). An upgraded WebSocket has left hyper's
//!   connection, and with it the watchdog: it is never closed for idleness.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::ConnLimits;

/// What the watchdog of one connection reads.
struct Activity {
    origin: Instant,
    /// Milliseconds from `origin` to the last byte moved either way.
    last_ms: AtomicU64,
    /// Requests in flight (their response bodies included).
    busy: AtomicUsize,
    /// Requests seen so far.
    requests: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection is to be closed if nothing happens until then;
    /// `None` while a request is in flight.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            // A first request must come soon after the accept (bytes of a
            // request head trickled one by one do not extend it).
            return Some(self.origin + limits.header_read_timeout);
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.origin + last + limits.idle_timeout)
    }

    fn start_request(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

/// A request in flight, until its response body is done (or dropped).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The accepted socket with its slot under the cap, stamping every byte
/// moved. It moves into an upgraded WebSocket, slot included.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves,
/// then lets in-flight requests finish (as `axum::serve` with graceful
/// shutdown does). The peer address reaches handlers as
/// `ConnectInfo<SocketAddr>`; `refused` counts connections past the cap.
pub async fn serve_limited<L, F>(
    mut listener: L,
    app: Router,
    limits: ConnLimits,
    refused: prometheus::IntCounter,
    shutdown: F,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1) as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a receiver; all gone = all finished.
    let (close_tx, close_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            tracing::debug!(
                %peer,
                max_connections = limits.max_connections,
                "control: connection refused (max_connections)"
            );
            drop(io);
            continue;
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: io,
            activity: activity.clone(),
            _slot: slot,
        });
        let service = {
            let activity = activity.clone();
            let app = app.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let busy = activity.start_request();
                let app = app.clone();
                async move {
                    let resp = app.oneshot(req.map(Body::new)).await?;
                    // In flight until the body is sent (or dropped).
                    Ok::<_, std::convert::Infallible>(resp.map(|b| {
                        Body::new(b.map_frame(move |f| {
                            let _ = &busy;
                            f
                        }))
                    }))
                }
            })
        };
        let mut stop = stop_rx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                // HTTP/2 WebSockets (RFC 8441), as axum::serve enables.
                .enable_connect_protocol();
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                let deadline = activity.deadline(&limits);
                let wake = deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::trace!(%peer, error = %e, "control: connection ended");
                        }
                        break;
                    }
                    r = stop.changed(), if !draining => {
                        draining = true;
                        if r.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    _ = tokio::time::sleep_until(wake) => {
                        if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                            tracing::debug!(%peer, "control: closing an idle connection");
                            break;
                        }
                    }
                }
            }
            drop(close_rx);
        });
    }
    let _ = stop_tx.send(true);
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_request_is_due_within_the_header_timeout_then_idleness_counts() {
        let limits = ConnLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let a = Arc::new(Activity::new());
        assert_eq!(
            a.deadline(&limits),
            Some(a.origin + limits.header_read_timeout)
        );
        let busy = a.start_request();
        assert_eq!(
            a.deadline(&limits),
            None,
            "never idle with a request in flight"
        );
        drop(busy);
        let d = a.deadline(&limits).expect("idle again");
        assert!(d >= a.origin + limits.idle_timeout);
    }
}
