//! Live reload of the config file (SPEC 1): on SIGHUP and through
//! `POST /api/ops/config/reload`. The file is loaded and validated like at
//! start; parts that only take effect at start (control plane, TLS,
//! data_dir, audit, alerts, cluster) must be unchanged, or the reload is
//! refused; the data plane then applies `diff(old, new)` through
//! `Engine::reconfigure`, which applies each step as one command
//! (`AddService`, `RemoveService`, `ReplaceService`). Every outcome is
//! audited as `config_change`: one `info` entry per applied step
//! (`service_added`, `service_removed`, `service_changed`), then the
//! `config_reloaded` summary with what changed, or one `error` entry with
//! the problems.

use std::path::PathBuf;
use std::sync::Arc;

use continuity_control::audit::{Action, AuditLog, NewEntry, Severity};
use continuity_control::routes::config::ReloadHook;
use continuity_proxy::{Engine, ReloadReport};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::config::{self, Config};

/// Reloads one config file into one engine; cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    path: PathBuf,
    engine: Engine,
    audit: AuditLog,
    /// The running config; the lock also serialises reloads.
    current: Arc<Mutex<Config>>,
}

impl Reloader {
    pub fn new(config: &Config, engine: Engine, audit: AuditLog) -> Reloader {
        Reloader {
            path: config.path.clone(),
            engine,
            audit,
            current: Arc::new(Mutex::new(config.clone())),
        }
    }

    /// The hook `POST /api/ops/config/reload` calls.
    pub fn hook(&self) -> ReloadHook {
        let me = self.clone();
        Arc::new(move |actor, reason| {
            let me = me.clone();
            Box::pin(async move { me.reload(&actor, &reason).await })
        })
    }

    /// Loads, checks and applies the file; audits the outcome. `Err` lists
    /// every problem; the running config is then unchanged.
    pub async fn reload(&self, actor: &str, reason: &str) -> Result<Value, Vec<String>> {
        let mut current = self.current.lock().await;
        let outcome = match config::load(&self.path) {
            Err(errors) => Err(errors.to_string().lines().map(str::to_string).collect()),
            Ok(new) => match restart_only(&current, &new) {
                problems if !problems.is_empty() => Err(problems),
                _ => match self.engine.reconfigure(new.engine.clone()).await {
                    Ok(report) => {
                        *current = new;
                        Ok(report)
                    }
                    Err(e) => Err(vec![e.to_string()]),
                },
            },
        };
        let file = self.path.display().to_string();
        match outcome {
            Ok(report) => {
                for step in steps(&report) {
                    let details = json!({
                        "event": step.0,
                        "service": step.1,
                        "file": file,
                        "reason": reason,
                        "change": step.2,
                    });
                    let entry = NewEntry::new(Action::ConfigChange, Severity::Info, actor, details);
                    self.record(entry.service(step.1)).await;
                }
                let report = serde_json::to_value(&report).unwrap_or(Value::Null);
                let m = self.audit.masker();
                tracing::info!(
                    actor,
                    reason = %m.mask_str(reason),
                    report = %m.masked(&report).as_ref().unwrap_or(&report),
                    "config reloaded"
                );
                let details = json!({
                    "event": "config_reloaded",
                    "file": file,
                    "reason": reason,
                    "changes": report,
                });
                self.record(NewEntry::new(
                    Action::ConfigChange,
                    Severity::Info,
                    actor,
                    details,
                ))
                .await;
                Ok(json!({ "applied": true, "file": file, "changes": report }))
            }
            Err(problems) => {
                let m = self.audit.masker();
                tracing::error!(
                    actor,
                    reason = %m.mask_str(reason),
                    problems = ?problems.iter().map(|p| m.mask_str(p)).collect::<Vec<_>>(),
                    "config reload refused; the running config is unchanged"
                );
                let details = json!({
                    "event": "config_refused",
                    "file": file,
                    "reason": reason,
                    "problems": problems,
                });
                self.record(NewEntry::new(
                    Action::ConfigChange,
                    Severity::Error,
                    actor,
                    details,
                ))
                .await;
                Err(problems)
            }
        }
    }

    async fn record(&self, entry: NewEntry) {
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, "cannot audit the config reload");
        }
    }

    /// Reloads on every SIGHUP (actor `system`, reason `SIGHUP`), forever.
    pub async fn on_sighup(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot listen for SIGHUP; reload through the API only");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            let _ = self.reload("system", "SIGHUP").await;
        }
    }
}

/// The applied steps of a reload: (event, service, change details).
fn steps(report: &ReloadReport) -> Vec<(&'static str, &str, Value)> {
    let added = report
        .added_services
        .iter()
        .map(|s| ("service_added", s.as_str(), Value::Null));
    let removed = report
        .removed_services
        .iter()
        .map(|s| ("service_removed", s.as_str(), Value::Null));
    let changed = report.changed_services.iter().map(|c| {
        let details = serde_json::to_value(c).unwrap_or(Value::Null);
        ("service_changed", c.service.as_str(), details)
    });
    removed.chain(added).chain(changed).collect()
}

/// Settings read only at start: a change to any is refused, by name.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |changed: bool, what: &str| {
        if changed {
            problems.push(format!(
                "{what} cannot change without a restart (the running value is kept)"
            ));
        }
    };
    check(old.control.listen != new.control.listen, "control.listen");
    check(
        old.control.tls_cert != new.control.tls_cert || old.control.tls_key != new.control.tls_key,
        "control TLS (tls_cert, tls_key)",
    );
    let same_socket = old.control.listen == new.control.listen
        && old.control.tls_cert == new.control.tls_cert
        && old.control.tls_key == new.control.tls_key;
    check(
        same_socket && old.control != new.control,
        "[control] (tokens, CORS, limits)",
    );
    check(old.data_dir != new.data_dir, "data_dir");
    check(old.audit != new.audit, "[audit]");
    check(old.alerts != new.alerts, "[alerts]");
    check(old.cluster != new.cluster, "[cluster]");
    check(old.drain_timeout != new.drain_timeout, "drain_timeout_ms");
    problems
}

#[cfg(test)]
mod tests {
    use continuity_proxy::ServiceChange;

    use super::*;

    #[test]
    fn one_audited_step_per_applied_command() {
        let report = ReloadReport {
            added_services: vec!["b".into()],
            removed_services: vec!["a".into()],
            changed_services: vec![ServiceChange {
                service: "c".into(),
                kept_upstreams: vec!["c1".into()],
                ..ServiceChange::default()
            }],
        };
        let got: Vec<(&str, &str)> = steps(&report).iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(
            got,
            [
                ("service_removed", "a"),
                ("service_added", "b"),
                ("service_changed", "c")
            ]
        );
        assert_eq!(steps(&report)[2].2["kept_upstreams"], json!(["c1"]));
        assert!(steps(&ReloadReport::default()).is_empty());
    }
}
