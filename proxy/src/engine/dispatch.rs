//! The one handler of each [`Command`]: find the service, run the change
//! on it (upstream/), refresh the engine state, answer a snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cluster::{self, Cluster, Move};
use crate::config::OnFailover;
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
            force,
        } => {
            let svc = shared.find(&service)?;
            match clustered(shared, &svc, force) {
                Some(c) => {
                    let agreed = c
                        .request(Move {
                            service,
                            to: None,
                            from: None,
                            planned: false,
                            trigger: Trigger::Manual,
                            actor,
                            reason,
                        })
                        .await?;
                    applied(&svc, agreed.epoch).await?;
                }
                None => trigger(&svc, actor, reason).await?,
            }
            shared.refresh_state();
            Ok(CommandOutcome::Service(Box::new(service_snapshot(&svc))))
        }
        Command::Recover {
            service,
            actor,
            reason,
            force,
        } => {
            let svc = shared.find(&service)?;
            match clustered(shared, &svc, force) {
                Some(c) => {
                    // With `on_failover = "promote"`: a planned switchover
                    // back, refused unless the configured primary is a
                    // replica of the active upstream again.
                    let primary = svc
                        .upstream_name(svc.cfg.configured_primary())
                        .map(str::to_string);
                    let agreed = c
                        .request(Move {
                            service,
                            to: primary,
                            from: None,
                            planned: svc.cfg.on_failover == OnFailover::Promote,
                            trigger: Trigger::Manual,
                            actor,
                            reason,
                        })
                        .await?;
                    applied(&svc, agreed.epoch).await?;
                }
                None => recover(&svc, actor, reason).await?,
            }
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
            let report = match clustered(shared, &svc, false) {
                Some(c) => {
                    let mv = Move {
                        service: svc.cfg.name.clone(),
                        to: to.and_then(|i| svc.upstream_name(i)).map(str::to_string),
                        from: Some(pool),
                        planned: true,
                        trigger: Trigger::Manual,
                        actor,
                        reason,
                    };
                    coordinated_switch(c, &svc, mv).await
                }
                None => failover_pool(&svc, from, to, actor, reason).await,
            };
            switched(shared, &svc, report)
        }
        Command::Failback {
            pool,
            actor,
            reason,
        } => {
            let (svc, to) = shared.find_pool(&pool)?;
            let report = match clustered(shared, &svc, false) {
                Some(c) => {
                    let mv = Move {
                        service: svc.cfg.name.clone(),
                        to: Some(pool),
                        from: None,
                        planned: true,
                        trigger: Trigger::Manual,
                        actor,
                        reason,
                    };
                    coordinated_switch(c, &svc, mv).await
                }
                None => failback_pool(&svc, to, actor, reason).await,
            };
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

/// The cluster that decides for `svc`, unless `force` (this engine alone).
fn clustered<'a>(shared: &'a Shared, svc: &ServiceRt, force: bool) -> Option<&'a Arc<Cluster>> {
    shared
        .cluster
        .as_ref()
        .filter(|_| !force && cluster::coordinated(svc))
}

/// A planned switchover for the whole cluster: sent to the session, then
/// waited for here until this engine serves the agreed route.
async fn coordinated_switch(
    c: &Cluster,
    svc: &ServiceRt,
    mv: Move,
) -> Result<SwitchReport, CommandError> {
    let started = tokio::time::Instant::now();
    let agreed = c.request(mv).await?;
    applied(svc, agreed.epoch).await?;
    Ok(SwitchReport {
        pause: agreed.pause.unwrap_or_else(|| started.elapsed()),
        position: agreed.position,
    })
}

/// Waits until this engine serves the agreed route of `epoch` (it comes
/// back through the watch).
async fn applied(svc: &ServiceRt, epoch: u64) -> Result<(), CommandError> {
    let limit = std::time::Duration::from_secs(10);
    let mut changed = svc.route_tx.subscribe();
    let wait = async {
        while svc.route.load().epoch < epoch || svc.route.load().switching {
            if changed.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| CommandError::Timeout(limit))
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
