//! Delivery of queued requests: oldest first, one at a time per service, to
//! the active upstream once it is usable. Each attempt is recorded durably
//! before its bytes leave, and carries `Idempotency-Key: <queue id>` (unless
//! the client sent its own key), so a re-send after a crash or a lost answer
//! is recognised by the upstream: exactly once from the proxy's side.
//!
//! The delivery loop runs under a supervisor ([`supervise`]): a loop that
//! dies (a panic) is logged at ERROR and started again after a pause, and
//! the entry it was working on goes back to `queued` (`mark_retry`), so one
//! bad moment never stops a service's delivery for good. An entry that was
//! in hand at 3 such deaths is given up (`failed`), so that it cannot stop
//! the entries behind it.
//!
//! The request body is streamed from its file in the queue's data dir
//! (`queue.rs`), 64 KiB at a time.

mod supervise;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::ErrorType;
use tokio::io::AsyncReadExt;

use super::proxy::{parse_retry_after, HOP_BY_HOP};
use super::queue::{DeliveryResult, QueuedEntry};
use super::Shared;
use crate::health::FailureKind;
use crate::upstream::runtime::{lock, ServiceRt};
use supervise::{supervise, Holding};

/// Largest upstream answer kept for the client to fetch.
const MAX_RESULT_BYTES: usize = 1024 * 1024;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Request bodies are read from their file and sent in pieces this big.
const BODY_CHUNK: usize = 64 * 1024;

enum Attempt {
    Delivered,
    /// Try again after this long (at least).
    Retry(Duration),
}

/// Delivers `svc`'s queued requests until the gateway stops, restarting
/// the delivery loop if it dies.
pub async fn run(svc: Arc<ServiceRt>, shared: Arc<Shared>) {
    let Some(queue) = shared.queue.clone() else {
        return;
    };
    let name = svc.name().to_string();
    let stop = shared.shutdown.clone();
    supervise(&name, &queue, stop, move |holding| {
        deliver_loop(svc.clone(), shared.clone(), holding)
    })
    .await;
}

async fn deliver_loop(svc: Arc<ServiceRt>, shared: Arc<Shared>, holding: Holding) {
    let Some(queue) = shared.queue.clone() else {
        return;
    };
    let connector = Connector::new(None);
    let mut changed = svc.changed_tx.subscribe();
    let mut stop = shared.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failures: u32 = 0;
    // Finished results older than their retention leave memory and disk
    // when the log is compacted; do that hourly as well as at start.
    let mut compact = tokio::time::interval(Duration::from_secs(3600));
    compact.tick().await;
    loop {
        if *stop.borrow() {
            return;
        }
        shared.update_queue_metrics();
        let next = queue.next_pending(svc.name());
        // Only the active upstream, as for live traffic.
        let route = svc.route.load_full();
        let target = svc.usable(&route, route.active).then_some(route.active);
        if let (Some(entry), Some(idx)) = (next, target) {
            let quota = shared.quota.get(idx).and_then(|q| *lock(q));
            let wait = quota.and_then(|u| u.checked_duration_since(Instant::now()));
            let outcome = match wait {
                Some(w) => Attempt::Retry(w),
                None => {
                    holding.set(Some(&entry.id));
                    let a = attempt(&connector, &svc, &shared, idx, &entry).await;
                    holding.set(None);
                    a
                }
            };
            match outcome {
                Attempt::Delivered => {
                    failures = 0;
                    if queue.depth(svc.name()) == 0 {
                        tracing::info!(service = svc.name(), "queue backlog delivered");
                    }
                    continue;
                }
                Attempt::Retry(at_least) => {
                    failures = failures.saturating_add(1);
                    let backoff = RETRY_MIN
                        .saturating_mul(1u32 << failures.min(7))
                        .min(RETRY_MAX);
                    let pause = backoff.max(at_least);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            r = changed.changed() => if r.is_err() { return; },
            _ = tick.tick() => {}
            _ = compact.tick() => {
                let q = queue.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || q.compact()).await {
                    tracing::warn!(service = svc.name(), error = %e, "queue compaction failed");
                }
            }
            _ = stop.changed() => {}
        }
    }
}

/// One delivery attempt of `entry` to upstream `idx`.
async fn attempt(
    connector: &Connector,
    svc: &Arc<ServiceRt>,
    shared: &Shared,
    idx: usize,
    entry: &QueuedEntry,
) -> Attempt {
    let (Some(queue), Some(tpl), Some(up)) = (
        shared.queue.clone(),
        shared.peers.get(idx),
        svc.upstreams.get(idx),
    ) else {
        return Attempt::Retry(RETRY_MAX);
    };
    let result_metric = |r: &str| {
        shared
            .metrics
            .queue_deliveries
            .with_label_values(&[svc.name(), r])
            .inc();
    };
    let req = match request(entry, tpl) {
        Ok(r) => r,
        Err(e) => {
            // A stored request that no longer forms a valid one: say so.
            let _ = blocking(&queue, {
                let id = entry.id.clone();
                move |q| q.mark_failed(&id, &e)
            })
            .await;
            result_metric("failed");
            return Attempt::Delivered;
        }
    };
    let body_file = queue.body_file(entry);
    if let Some(path) = &body_file {
        if let Err(e) = check_body(path, entry.body_len).await {
            // Its body is gone or damaged: it can never be sent as received.
            let _ = blocking(&queue, {
                let id = entry.id.clone();
                move |q| q.mark_failed(&id, &e)
            })
            .await;
            tracing::error!(service = svc.name(), id = %entry.id, "queued request failed: its stored body is unreadable");
            result_metric("failed");
            return Attempt::Delivered;
        }
    }
    let id = entry.id.clone();
    if blocking(&queue, move |q| q.mark_attempt(&id).map(|_| ()))
        .await
        .is_err()
    {
        return Attempt::Retry(RETRY_MAX);
    }
    let started = Instant::now();
    let addr = match tpl.address().await {
        Ok(a) => a,
        Err(e) => return retry(shared, svc, entry, format!("resolve: {e}"), None).await,
    };
    let peer = tpl.peer(addr);
    let (mut session, _) = match connector.get_http_session(&peer).await {
        Ok(s) => s,
        Err(e) => {
            if matches!(e.etype(), ErrorType::ConnectRefused) {
                let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                svc.on_refused(idx, &io).await;
            } else {
                report(svc, idx, started, FailureKind::Io, format!("connect: {e}")).await;
            }
            return retry(shared, svc, entry, format!("connect: {e}"), None).await;
        }
    };
    session.set_read_timeout(Some(super::peers::READ_TIMEOUT));
    session.set_write_timeout(Some(super::peers::READ_TIMEOUT));
    let sent = async {
        session.write_request_header(Box::new(req)).await?;
        if let Some(path) = &body_file {
            send_body(&mut session, path, entry.body_len).await?;
        }
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let mut body = Vec::new();
        while let Some(chunk) = session.read_response_body().await? {
            if body.len() < MAX_RESULT_BYTES {
                let room = MAX_RESULT_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        Ok::<_, Box<pingora::Error>>(body)
    }
    .await;
    let body = match sent {
        Ok(b) => b,
        Err(e) => {
            let kind = if matches!(e.etype(), ErrorType::ReadTimedout) {
                FailureKind::Timeout
            } else {
                FailureKind::Io
            };
            report(
                svc,
                idx,
                started,
                kind,
                format!("delivery: {}", e.etype().as_str()),
            )
            .await;
            return retry(shared, svc, entry, format!("delivery: {e}"), None).await;
        }
    };
    let Some(resp) = session.response_header() else {
        return retry(shared, svc, entry, "no response header".into(), None).await;
    };
    let status = resp.status.as_u16();
    up.inline.record(started.elapsed());
    if status == 429 {
        // Capped (max_retry_after_seconds): an upstream's 2^64-1 seconds
        // would overflow the Instant, and a year-9999 date stall the queue.
        let wait = resp
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .unwrap_or(Duration::from_secs(1))
            .min(svc.cfg.http.max_retry_after);
        if let Some(q) = shared.quota.get(idx) {
            *lock(q) = Instant::now().checked_add(wait);
        }
        return retry(
            shared,
            svc,
            entry,
            "HTTP 429 from upstream".into(),
            Some(wait),
        )
        .await;
    }
    if matches!(status, 502..=504) {
        report(
            svc,
            idx,
            started,
            FailureKind::Protocol,
            format!("HTTP {status} from upstream"),
        )
        .await;
        return retry(
            shared,
            svc,
            entry,
            format!("HTTP {status} from upstream"),
            None,
        )
        .await;
    }
    let headers = resp
        .headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let result = DeliveryResult {
        status,
        headers,
        body,
        upstream: up.cfg.name.clone(),
    };
    let id = entry.id.clone();
    match blocking(&queue, move |q| q.mark_delivered(&id, result)).await {
        Ok(()) => {
            result_metric("delivered");
            tracing::info!(service = svc.name(), id = %entry.id, status, upstream = %up.cfg.name,
                attempts = entry.attempts + 1, "queued request delivered");
            Attempt::Delivered
        }
        // The upstream has it; the record did not stick. The next attempt
        // re-sends with the same Idempotency-Key.
        Err(_) => Attempt::Retry(RETRY_MAX),
    }
}

/// The upstream request for a queued entry.
fn request(entry: &QueuedEntry, tpl: &super::peers::PeerTemplate) -> Result<RequestHeader, String> {
    let path = tpl
        .upstream_path(&entry.path)
        .map_err(|e| format!("stored request: {e}"))?;
    let mut req = RequestHeader::build(entry.method.as_bytes(), path.as_bytes(), None)
        .map_err(|e| format!("stored request: {e}"))?;
    let mut has_key = false;
    for (n, v) in &entry.headers {
        let lower = n.to_ascii_lowercase();
        if lower == "host" || lower == "content-length" || HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        has_key |= lower == "idempotency-key";
        req.append_header(n.clone(), v.as_str())
            .map_err(|e| format!("stored header {n}: {e}"))?;
    }
    let set = |req: &mut RequestHeader, n: &'static str, v: String| {
        req.insert_header(n, v)
            .map_err(|e| format!("header {n}: {e}"))
    };
    set(&mut req, "host", tpl.authority.clone())?;
    set(&mut req, "content-length", entry.body_len.to_string())?;
    set(&mut req, "x-continuity-queue-id", entry.id.clone())?;
    if !has_key {
        set(&mut req, "idempotency-key", entry.id.clone())?;
    }
    Ok(req)
}

async fn blocking<T: Send + 'static>(
    queue: &super::queue::QueueStore,
    f: impl FnOnce(&super::queue::QueueStore) -> Result<T, super::queue::QueueError> + Send + 'static,
) -> Result<T, super::queue::QueueError> {
    let q = queue.clone();
    match tokio::task::spawn_blocking(move || f(&q)).await {
        Ok(r) => r,
        Err(e) => Err(super::queue::QueueError::Io(std::io::Error::other(
            e.to_string(),
        ))),
    }
}

async fn report(svc: &ServiceRt, idx: usize, started: Instant, kind: FailureKind, message: String) {
    svc.on_passive_failure(idx, kind, started.elapsed(), message)
        .await;
}

async fn retry(
    shared: &Shared,
    svc: &ServiceRt,
    entry: &QueuedEntry,
    error: String,
    wait: Option<Duration>,
) -> Attempt {
    shared
        .metrics
        .queue_deliveries
        .with_label_values(&[svc.name(), "retried"])
        .inc();
    tracing::warn!(service = svc.name(), id = %entry.id, error = %error, "queued request not delivered yet");
    if let Some(q) = &shared.queue {
        let id = entry.id.clone();
        let _ = blocking(q, move |q| q.mark_retry(&id, &error)).await;
    }
    Attempt::Retry(wait.unwrap_or(RETRY_MIN))
}

/// The stored body is there with the length the log recorded.
async fn check_body(path: &Path, len: u64) -> Result<(), String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("stored body {}: {e}", path.display()))?;
    if meta.len() != len {
        return Err(format!(
            "stored body {}: {} bytes, the queue log says {len}",
            path.display(),
            meta.len()
        ));
    }
    Ok(())
}

/// Streams a stored request body to the upstream, [`BODY_CHUNK`] at a time.
async fn send_body(
    session: &mut HttpSession,
    path: &Path,
    len: u64,
) -> Result<(), Box<pingora::Error>> {
    let read_err =
        |e: std::io::Error| pingora::Error::because(ErrorType::FileReadError, "queued body", e);
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).map_or(BODY_CHUNK, |l| l.min(BODY_CHUNK));
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            return Err(pingora::Error::explain(
                ErrorType::FileReadError,
                "queued body shorter than recorded",
            ));
        }
        buf.truncate(n);
        left -= n as u64;
        session
            .write_request_body(Bytes::from(buf), left == 0)
            .await?;
    }
    Ok(())
}
