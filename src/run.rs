//! `continuity run`: wires the data plane and the control plane together,
//! then waits for signals. Everything that can be refused (a listener that
//! cannot bind, a bad certificate, an audit log that cannot be opened) is
//! checked before traffic starts, so a problem is a clear exit, never a
//! half-started engine.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use continuity_control::alerts::{self, AlertSettings, Alerts};
use continuity_control::audit::{AuditLog, AuditSettings};
use continuity_control::snapshots::{Retention, Snapshots};
use continuity_control::AppState;
use continuity_proxy::{Engine, ProxyError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;

/// Why `run` stopped early: the binary maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not bind, or TLS files are unusable (exit 64, like
    /// an invalid config).
    #[error("{0}")]
    Bind(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Damaged `queue.log` lines the HTTP queue moved to its quarantine file
/// at open (docs/http-gateway.md): each is an audited diagnostic event, as
/// the queue may have lost a request's record with it.
async fn audit_queue_quarantine(engine: &Engine, audit: &AuditLog) {
    let Some(queue) = engine.queue() else {
        return;
    };
    for q in queue.quarantined() {
        let entry = continuity_control::audit::NewEntry::new(
            continuity_control::audit::Action::DiagnosticEvent,
            continuity_control::audit::Severity::Error,
            "system",
            serde_json::json!({
                "event": "queue_log_line_quarantined",
                "line": q.line,
                "byte_offset": q.byte_offset,
                "bytes": q.bytes,
                "error": q.error,
                "quarantine_file": q.file.display().to_string(),
            }),
        );
        if let Err(e) = audit.append(entry).await {
            tracing::error!(error = %e, "cannot audit a quarantined queue.log line");
        }
    }
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
    let tls = match (&config.control.tls_cert, &config.control.tls_key) {
        (Some(cert), Some(key)) => Some(
            continuity_control::tls::load_server_config(cert, key)
                .map_err(|e| RunError::Bind(format!("control: TLS: {e}")))?,
        ),
        _ => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;

    let registry = prometheus::Registry::new();
    // The audit log is opened (and its chain verified) before the engine
    // starts, and subscribed before the first probe: no event is lost.
    let (audit, report) = AuditLog::open(audit_settings(&config), &registry)
        .await
        .context("cannot open the audit log")?;
    if report.verify.chain_verified {
        tracing::info!(entries = report.verify.entries, "audit log verified");
    } else {
        tracing::error!(report = ?report.verify, "audit log chain is BROKEN; continuing, and saying so in /api/ops/audit/status");
    }
    for q in &report.quarantined {
        tracing::error!(?q, "torn audit line moved aside");
    }
    let (engine, events, audit_queue) = Engine::start_audited(config.engine.clone(), &registry)
        .await
        .map_err(|e| match e {
            ProxyError::Bind { .. } | ProxyError::Config { .. } => RunError::Bind(e.to_string()),
            other => RunError::Other(other.into()),
        })?;
    audit_queue_quarantine(&engine, &audit).await;
    let bridge_events = events.resubscribe();
    let diagnostics_events = events.resubscribe();
    drop(events);
    // The recorder reads its own queue of auditable events, never the
    // broadcast (control/src/recorder.rs).
    let recorder = continuity_control::recorder::spawn(audit.clone(), audit_queue, &registry);
    let services = &config.engine.services;
    let retention_hours = services
        .iter()
        .map(|s| s.health.snapshot_retention_hours)
        .max()
        .unwrap_or(24);
    let snapshots = Snapshots::open(
        &config.data_dir.join("snapshots"),
        Retention::from_hours(retention_hours),
    )
    .context("cannot open the snapshot history")?
    .with_buffer_timeouts(services.iter().map(|s| (s.name.clone(), s.buffer_timeout)));
    let mut state = AppState::new(engine.clone(), Arc::new(config.control.clone()), registry)
        .context("cannot register control-plane metrics")?
        .with_audit(audit.clone());
    let reloader = crate::reload::Reloader::new(&config, engine.clone(), audit.clone());
    state = state.with_reload(reloader.hook());
    let sighup = tokio::spawn(reloader.on_sighup());
    state.snapshots = snapshots.clone();
    // Rules were validated with the config (exit 64 on a bad one).
    let rules = if config.alerts.rules.is_empty() {
        alerts::default_rules()
    } else {
        alerts::parse_rules(&config.alerts.rules)
            .map_err(|problems| anyhow::anyhow!("[[alerts.rule]]: {}", problems.join("; ")))?
    };
    let alert_settings = AlertSettings {
        webhook_url: config.alerts.webhook_url.clone(),
        liaison_webhook_url: config.alerts.liaison_webhook_url.clone(),
        rules,
        ..AlertSettings::default()
    }
    .with_services(&config.engine.services);
    state.alerts =
        Alerts::new(alert_settings, &state.registry).map_err(|e| RunError::Bind(e.to_string()))?;
    let sampler = snapshots.spawn_sampler(engine.clone());
    tokio::spawn(continuity_control::bridge::run(
        state.bus.clone(),
        engine.clone(),
        bridge_events,
    ));
    let alert_task = alerts::spawn(state.clone());
    let diagnostics_task = continuity_control::diagnostics::spawn(&state, diagnostics_events);
    // SPEC 9: clients of our own WebSocket channels dropped over 20 % in a minute.
    let ws_drops = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                state
                    .alerts
                    .websocket_drop_ratio(state.ws.drop_ratio_last_minute());
            }
        })
    };
    let ws = state.ws.clone();
    let control_addr = control_listener
        .local_addr()
        .unwrap_or(config.control.listen);
    for (service, addr) in engine.listen_addrs() {
        tracing::info!(service, %addr, "proxy listening");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %control_addr, scheme, "control plane listening");

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stop = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let control = match tls {
        Some(tls) => tokio::spawn(continuity_control::tls::serve_tls(
            control_listener,
            state,
            tls,
            stop,
        )),
        None => tokio::spawn(continuity_control::serve(control_listener, state, stop)),
    };

    shutdown.await;
    tracing::info!(
        drain_ms = config.drain_timeout.as_millis() as u64,
        "shutting down: draining connections"
    );
    sighup.abort();
    engine.shutdown(config.drain_timeout).await;
    ws.shutdown();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(std::time::Duration::from_secs(5), control).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "control plane stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "control plane task failed"),
    }
    // The recorder writes what is still queued (what the drain caused) and
    // the last hold-timeout summaries; then the log is flushed and signed.
    recorder.finish(std::time::Duration::from_secs(10)).await;
    sampler.abort();
    alert_task.abort();
    ws_drops.abort();
    diagnostics_task.abort();
    if let Err(e) = snapshots.flush().await {
        tracing::error!(error = %e, "cannot write the snapshot history");
    }
    audit.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn audit_settings(config: &Config) -> AuditSettings {
    AuditSettings {
        dir: config.audit.dir.clone(),
        retention_days: config.audit.retention_days,
        mask_patterns: config.audit.mask_patterns.clone(),
        signing_key: config.audit.signing_key.clone(),
        ..AuditSettings::default()
    }
}

/// Resolves on SIGTERM or SIGINT. SIGHUP is caught here too (so it never
/// kills the process); `run` reloads the config on it (src/reload.rs).
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
            _ = hup.recv() => {}
        }
    }
}
