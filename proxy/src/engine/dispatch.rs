//! The one handler of each [`Command`]: find the service, run the change
//! on it (upstream/), refresh the engine state, answer a snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::command::{Command, CommandOutcome};
use crate::engine::project::{engine_snapshot, service_snapshot};
use crate::engine::reload::{services, ReloadReport};
use crate::engine::shared::Shared;
use crate::error::CommandError;
use crate::events::{Event, EventKind, Trigger};
use crate::health;
use crate::snapshot::UpstreamHealth;
use crate::upstream::failover;
use crate::upstream::probe;
use crate::upstream::resync;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, SwitchKind};
use crate::upstream::switch::switch;
use crate::upstream::switchover::commands::{failback_pool, failover_pool};
use crate::upstream::switchover::SwitchReport;

/// Applies one command, on the caller's task.
pub(crate) async fn dispatch(
    shared: &Arc<Shared>,
    cmd: Command,
) -> Result<CommandOutcome, CommandError> {
    match cmd {
        Command::Trigger {
            service,
            actor,
            reason,
        } => {
            let svc = shared.find(&service)?;
            trigger(&svc, actor, reason).await?;
            shared.refresh_state();
            Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
        }
        Command::Recover {
            service,
            actor,
            reason,
        } => {
            let svc = shared.find(&service)?;
            recover(&svc, actor, reason).await?;
            shared.refresh_state();
            Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
        }
        Command::Switchover {
            pool,
            to,
            actor,
            reason,
        } => {
            let (svc, from) = shared.find_pool(&pool)?;
            let to = match to {
                Some(name) => Some(
                    svc.upstreams
                        .iter()
                        .position(|u| u.cfg.name == name)
                        .ok_or_else(|| {
                            CommandError::NotFound(format!(
                                "no pool named {name} in {}",
                                svc.cfg.name
                            ))
                        })?,
                ),
                None => None,
            };
            let report = failover_pool(&svc, from, to, actor, reason).await;
            switched(shared, &svc, report)
        }
        Command::Failback {
            pool,
            actor,
            reason,
        } => {
            let (svc, to) = shared.find_pool(&pool)?;
            let report = failback_pool(&svc, to, actor, reason).await;
            switched(shared, &svc, report)
        }
        Command::Resync { service, .. } => {
            let svc = shared.find(&service)?;
            resync::resync_service(&svc).await?;
            shared.refresh_state();
            Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
        }
        Command::Emergency {
            enabled,
            actor,
            reason,
        } => {
            shared.emergency.store(enabled, Ordering::SeqCst);
            let _ = shared.events.send(Event::new(
                None,
                EventKind::EmergencyDeclared {
                    enabled,
                    actor,
                    reason,
                },
            ));
            shared.refresh_state();
            Ok(CommandOutcome::Engine(Box::new(engine_snapshot(shared))))
        }
        Command::ReportStatus { service, status } => {
            let svc = shared.find(&service)?;
            if !svc.upstreams.is_empty() {
                return Err(CommandError::Conflict(format!(
                    "{service} is judged by its probes"
                )));
            }
            svc.report(status);
            shared.refresh_state();
            Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
        }
        Command::AddService { config } => reloaded(services::add(shared, *config).await),
        Command::RemoveService { name } => reloaded(services::remove(shared, name)),
        Command::ReplaceService { config } => reloaded(services::replace(shared, *config)),
    }
}

fn reloaded(report: Result<ReloadReport, CommandError>) -> Result<CommandOutcome, CommandError> {
    report.map(|r| CommandOutcome::Reloaded(Box::new(r)))
}

fn switched(
    shared: &Shared,
    svc: &ServiceRt,
    report: Result<SwitchReport, CommandError>,
) -> Result<CommandOutcome, CommandError> {
    shared.refresh_state();
    let report = report?;
    Ok(CommandOutcome::Switched {
        service: Box::new(service_snapshot(svc)),
        pause_ms: report.pause.as_millis() as u64,
        position: report.position,
    })
}

/// `Command::Trigger`: an operator's failover to the best usable other
/// upstream (a never-probed candidate is probed once first).
async fn trigger(svc: &ServiceRt, actor: String, reason: String) -> Result<(), CommandError> {
    let _guard = svc.switch_lock.lock().await;
    let active = svc.route.load().active;
    for (i, u) in svc.upstreams.iter().enumerate() {
        if i != active && lock(&u.health).counters.health == UpstreamHealth::Unknown {
            let outcome = health::run_probe(&svc.cfg, &u.cfg).await;
            probe::record_locked(svc, i, outcome);
        }
    }
    let view = svc.view();
    let Some(to) = failover::best_other(&view, active) else {
        return Err(CommandError::Conflict(format!(
            "service {} has no usable upstream other than {}",
            svc.cfg.name,
            svc.upstream_name(active).unwrap_or("?")
        )));
    };
    let evidence = serde_json::json!({ "requested_by": actor });
    let kind = SwitchKind::Failover {
        trigger: Trigger::Manual,
        actor,
        reason,
        evidence,
    };
    switch(svc, to, kind).await
}

/// `Command::Recover`: back to the configured primary, a zero-loss
/// planned switch when it is a caught-up replica, 409 `not_resynced`
/// while a promotion has left it diverged.
async fn recover(svc: &ServiceRt, actor: String, reason: String) -> Result<(), CommandError> {
    let target = svc.cfg.configured_primary();
    if svc.upstreams.get(target).is_none() {
        return Err(CommandError::NotFound("service has no upstreams".into()));
    }
    failback_pool(svc, target, actor, reason).await.map(|_| ())
}
