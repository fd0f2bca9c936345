//! `continuity run`: wires the data plane and the control plane together,
//! then waits for signals. Binding happens before anything starts, so a
//! port that is taken is a clear exit 64, never a half-started engine.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use continuity_control::AppState;
use continuity_proxy::{Engine, ProxyError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;

/// Why `run` stopped early: the binary maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not bind (exit 64, like an invalid config).
    #[error("{0}")]
    Bind(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Runs until `shutdown` resolves, then drains for `drain_timeout_ms`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let control_listener = TcpListener::bind(config.control.listen)
        .await
        .map_err(|e| {
            RunError::Bind(format!(
                "control: cannot listen on {}: {e}",
                config.control.listen
            ))
        })?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let registry = prometheus::Registry::new();
    let engine = Engine::start(config.engine.clone(), &registry)
        .await
        .map_err(|e| match e {
            ProxyError::Bind { .. } => RunError::Bind(e.to_string()),
            other => RunError::Other(other.into()),
        })?;
    let state = AppState::new(engine.clone(), Arc::new(config.control.clone()), registry)
        .context("cannot register control-plane metrics")?;
    let control_addr = control_listener
        .local_addr()
        .unwrap_or(config.control.listen);
    for (service, addr) in engine.listen_addrs() {
        tracing::info!(service, %addr, "proxy listening");
    }
    tracing::info!(addr = %control_addr, "control plane listening");

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let control = tokio::spawn(continuity_control::serve(
        control_listener,
        state,
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));

    shutdown.await;
    tracing::info!(
        drain_ms = config.drain_timeout.as_millis() as u64,
        "shutting down: draining connections"
    );
    engine.shutdown(config.drain_timeout).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(std::time::Duration::from_secs(5), control).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "control plane stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "control plane task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. SIGHUP is caught (so it never kills the
/// process) and logged; live reload arrives with the redundancy issue.
pub async fn signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => tracing::warn!("SIGHUP: live reload is not implemented yet; config unchanged"),
        }
    }
}
