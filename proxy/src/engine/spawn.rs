//! Starting one generation of a service: binding its listener (before
//! anything changes, so a bind failure refuses the start or the reload),
//! then spawning its probe loops and its accept loop or HTTP gateway.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::ServiceConfig;
use crate::engine::probe::probe_loop;
use crate::engine::shared::Shared;
use crate::engine::slot::{Bound, Slot};
use crate::error::ProxyError;
use crate::fallback::Fallback;
use crate::listener;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;

/// A new memory fallback for `svc`, when it has one.
pub(crate) fn new_fallback(svc: &ServiceConfig) -> Option<Arc<Fallback>> {
    (svc.kind == crate::config::Kind::Redis && svc.fallback_memory)
        .then(|| Arc::new(Fallback::new(svc.fallback_max_bytes)))
}

/// Binds `svc`'s listener if it is an L4-proxied service with `listen`.
pub(crate) async fn bind(svc: &ServiceConfig) -> Result<Option<(Bound, SocketAddr)>, ProxyError> {
    let proxied = svc.kind.is_l4_proxied() || svc.kind.is_http_proxied();
    let (Some(addr), true) = (svc.listen, proxied) else {
        return Ok(None);
    };
    if svc.kind.is_http_proxied() {
        crate::gateway::check(svc).map_err(|message| ProxyError::Config {
            service: svc.name.clone(),
            message,
        })?;
    }
    let err = |source: std::io::Error| ProxyError::Bind {
        service: svc.name.clone(),
        addr,
        source,
    };
    let l = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().unwrap_or(addr);
    let std = l.into_std().map_err(err)?;
    let accept = dup(&std).map_err(err)?;
    Ok(Some(((std, accept), local)))
}

/// A second handle on the same listening socket (the kernel backlog is
/// shared, so no client is lost while accept loops change hands).
pub(crate) fn dup(l: &std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(l.try_clone()?)
}

/// Starts `svc`'s probes and, with a listener, its accept loop.
///
/// `fallback`: the memory fallback the accept loop serves from (a new
/// one, or the previous generation's carried over).
pub(crate) fn spawn_service(
    shared: &Arc<Shared>,
    svc: Arc<ServiceRt>,
    bound: Option<Bound>,
    fallback: Option<Arc<Fallback>>,
) -> Slot {
    if let Some(c) = &shared.cluster {
        if crate::cluster::coordinated(&svc) {
            let _ = svc.coordination.set(c.link.clone());
        }
    }
    let stop = watch::channel(false).0;
    let mut tasks = Vec::new();
    for idx in 0..svc.upstreams.len() {
        tasks.push(tokio::spawn(probe_loop(
            shared.clone(),
            svc.clone(),
            idx,
            stop.subscribe(),
        )));
    }
    let listener = bound.map(|(std, accept)| {
        if svc.cfg.kind.is_http_proxied() {
            drop(accept);
            let started = crate::gateway::start(crate::gateway::GatewayParams {
                svc: svc.clone(),
                listener: &std,
                stop: stop.subscribe(),
                queue: shared.queue.clone(),
                access_log: true,
                open: shared.open_connections.clone(),
            });
            match started {
                Ok(t) => tasks.extend(t),
                Err(e) => {
                    tracing::error!(service = svc.name(), error = %e, "HTTP gateway not started")
                }
            }
            return std;
        }
        tasks.push(tokio::spawn(listener::accept_loop(
            svc.clone(),
            fallback.clone(),
            accept,
            listener::Signals {
                shutdown: stop.subscribe(),
                force_close: shared.force_close_tx.subscribe(),
                open: shared.open_connections.clone(),
            },
            shared.l4.clone(),
        )));
        std
    });
    let mut all = lock(&shared.tasks);
    all.retain(|t| !t.is_finished());
    all.extend(tasks);
    Slot {
        svc,
        stop,
        listener,
        fallback,
    }
}
