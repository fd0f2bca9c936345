//! Applying a reload: the diff of the running and the new config becomes
//! [`Command`]s. Every new listener is bound first (a failure refuses the
//! whole reload, nothing applied); then each command goes through the
//! engine's one dispatcher, and the reports of the steps are joined.

use std::sync::Arc;

use crate::config::EngineConfig;
use crate::engine::command::{Command, CommandOutcome};
use crate::engine::dispatch::dispatch;
use crate::engine::reload::{diff, ReloadReport, ReloadStep};
use crate::engine::shared::Shared;
use crate::engine::slot::Prepared;
use crate::engine::spawn::{bind, dup};
use crate::error::CommandError;
use crate::upstream::state::lock;

/// The command that applies one reload step.
pub(crate) fn command(step: ReloadStep) -> Command {
    match step {
        ReloadStep::Add(config) => Command::AddService {
            config: Box::new(config),
        },
        ReloadStep::Remove(name) => Command::RemoveService { name },
        ReloadStep::Replace(config) => Command::ReplaceService {
            config: Box::new(config),
        },
    }
}

/// Applies `new` (see the module docs). The caller holds the reload lock.
pub(crate) async fn reconfigure(
    shared: &Arc<Shared>,
    new: EngineConfig,
) -> Result<ReloadReport, CommandError> {
    if *shared.shutdown_tx.borrow() {
        return Err(CommandError::Conflict("the engine is shutting down".into()));
    }
    let old = lock(&shared.config).clone();
    let steps = diff(&old, &new);
    // Everything that can fail happens before anything changes.
    let prepared = prepare(shared, &steps).await?;
    *lock(&shared.prepared) = prepared;
    {
        let mut config = lock(&shared.config);
        config.drain_timeout = new.drain_timeout;
        config.data_dir = new.data_dir.clone();
    }
    let mut report = ReloadReport::default();
    for step in steps {
        match dispatch(shared, command(step)).await {
            Ok(CommandOutcome::Reloaded(r)) => report.join(*r),
            Ok(_) => {}
            // A step whose service changed meanwhile: the rest still apply.
            Err(e) => tracing::warn!(error = %e, "reload step not applied"),
        }
    }
    lock(&shared.prepared).clear();
    *lock(&shared.config) = new;
    shared.refresh_state();
    tracing::info!(?report, "config reloaded");
    Ok(report)
}

/// Binds the listener of every added service and duplicates that of every
/// replaced one; any failure refuses the reload.
async fn prepare(
    shared: &Shared,
    steps: &[ReloadStep],
) -> Result<Vec<(String, Prepared)>, CommandError> {
    let mut prepared = Vec::new();
    for step in steps {
        match step {
            ReloadStep::Add(cfg) => match bind(cfg).await {
                Ok(Some(b)) => prepared.push((cfg.name.clone(), Prepared::Bound(b))),
                Ok(None) => {}
                Err(e) => return Err(CommandError::Conflict(e.to_string())),
            },
            ReloadStep::Replace(cfg) => {
                let slots = lock(&shared.slots);
                let l = slots.iter().find(|s| s.svc.cfg.name == cfg.name);
                if let Some(std) = l.and_then(|s| s.listener.as_ref()) {
                    let accept = dup(std).map_err(|e| {
                        CommandError::Conflict(format!("{}: cannot reuse listener: {e}", cfg.name))
                    })?;
                    prepared.push((cfg.name.clone(), Prepared::Dup(accept)));
                }
            }
            ReloadStep::Remove(_) => {}
        }
    }
    Ok(prepared)
}
