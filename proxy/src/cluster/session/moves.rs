//! The writes that move a service: the leader's decision on the pooled
//! views, an operator's move for the whole cluster, the promotion between
//! the `promoting` and `serving` writes, a forced move published when etcd
//! returns; each one a compare-and-swap on the route key's revision.

use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{json, Result, Session};
use crate::cluster::decide::{self, Verdict};
use crate::cluster::doc::{AgreedRoute, Phase, ViewDoc};
use crate::cluster::{decision_event, Agreed, Move};
use crate::error::CommandError;
use crate::events::{EventKind, Trigger};
use crate::health;
use crate::upstream::failover;
use crate::upstream::service::ServiceRt;

/// Why a move did not land.
pub(super) enum Moved {
    /// Another write to the route key landed first.
    Lost,
    Refused(String),
    Etcd(String),
}

impl From<Moved> for CommandError {
    fn from(m: Moved) -> CommandError {
        match m {
            Moved::Lost => CommandError::Conflict(
                "another decision for this service landed first; read GET /api/ops/cluster".into(),
            ),
            Moved::Refused(m) => CommandError::Conflict(m),
            Moved::Etcd(e) => CommandError::Conflict(format!("etcd: {e}")),
        }
    }
}

/// Whether a move of `svc` promotes its target (`on_failover = "promote"`
/// on Redis or PostgreSQL).
pub(super) fn promotes(svc: &ServiceRt) -> bool {
    svc.cfg.on_failover == crate::config::OnFailover::Promote
        && matches!(
            svc.cfg.kind,
            crate::config::Kind::Redis | crate::config::Kind::Postgres
        )
}

impl Session {
    /// Writes this engine's route, moved with `force=true` while etcd was
    /// unreachable, as the agreed one (a compare-and-swap on `rev`).
    pub(super) async fn publish_forced(
        &mut self,
        client: &mut Client,
        svc: &ServiceRt,
        agreed: &AgreedRoute,
        rev: i64,
    ) -> Result<()> {
        let local = svc.route.load_full();
        let next = AgreedRoute {
            active: svc.upstream_name(local.active).unwrap_or("?").to_string(),
            epoch: local.epoch,
            fenced: svc
                .upstreams
                .iter()
                .zip(local.fenced.iter())
                .filter(|(_, f)| **f)
                .map(|(u, _)| u.cfg.name.clone())
                .collect(),
            phase: Phase::Serving,
            decided_by: self.me.clone(),
            trigger: "manual".into(),
            actor: "force".into(),
            reason: format!(
                "moved on {} with force=true while etcd was unreachable",
                self.me
            ),
            at: Utc::now(),
            planned: false,
        };
        match self.cas(client, svc.name(), rev, &next).await {
            Ok(Some(new_rev)) => {
                tracing::warn!(service = svc.name(), active = %next.active, epoch = next.epoch, "cluster: a forced move became the agreed route");
                let evidence = serde_json::json!({ "forced": true, "replaced": agreed });
                self.host.emit(
                    Some(svc.name()),
                    decision_event(&self.me, new_rev, &agreed.active, &next, evidence),
                );
                Ok(())
            }
            Ok(None) | Err(Moved::Lost) | Err(Moved::Refused(_)) => Ok(()),
            Err(Moved::Etcd(e)) => Err(e),
        }
    }

    /// Runs the leader's decision for every service this engine leads.
    pub(super) async fn decide_all(&mut self, client: &mut Client) -> Result<()> {
        for svc in self.coordinated() {
            let leads = self.cluster.known().leaders.get(svc.name()) == Some(&self.me);
            if leads {
                self.decide(client, &svc).await?;
            }
        }
        Ok(())
    }

    /// The leader's decision for one service on the live engines' views.
    async fn decide(&mut self, client: &mut Client, svc: &ServiceRt) -> Result<()> {
        let (route, rev, views) = {
            let known = self.cluster.known();
            let Some((route, rev)) = known.routes.get(svc.name()).cloned() else {
                return Ok(());
            };
            let views: Vec<ViewDoc> = known
                .views
                .get(svc.name())
                .map(|m| {
                    m.values()
                        .filter(|v| known.members.contains_key(&v.node_id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            (route, rev, views)
        };
        if route.phase == Phase::Promoting {
            // Its decider died before finishing, or it is this engine in
            // an earlier session (this session's own moves finish before
            // it decides again): finish it.
            let decider_alive = self.cluster.known().members.contains_key(&route.decided_by);
            if !decider_alive || route.decided_by == self.me {
                self.finish_promotion(client, svc, route, rev).await?;
            }
            return Ok(());
        }
        let hold_down = svc.cfg.health.hold_down;
        if (Utc::now() - route.at).to_std().unwrap_or_default() < hold_down
            && route.trigger != "initial"
        {
            return Ok(());
        }
        let names: Vec<String> = svc.upstreams.iter().map(|u| u.cfg.name.clone()).collect();
        let refs: Vec<&ViewDoc> = views.iter().collect();
        match decide::verdict(&route, &names, &refs, self.cluster.cfg.quorum) {
            Verdict::Stay => Ok(()),
            Verdict::NoQuorum { down, needed, .. } => {
                tracing::debug!(
                    service = svc.name(),
                    ?down,
                    needed,
                    "cluster: too few engines see the active upstream down"
                );
                Ok(())
            }
            Verdict::NoTarget { down } => {
                tracing::warn!(service = svc.name(), ?down, "cluster: a quorum sees the active upstream down, and no other upstream is seen up");
                Ok(())
            }
            Verdict::Failover { to, needed, .. } => {
                let reason = format!(
                    "upstream {} is down (seen by a quorum of engines)",
                    route.active
                );
                let evidence = decide::evidence(&refs, needed);
                self.move_to(
                    client,
                    svc,
                    &route,
                    rev,
                    &to,
                    Trigger::Auto,
                    "system",
                    &reason,
                    evidence,
                    true,
                )
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    Moved::Lost => Ok(()),
                    Moved::Etcd(e) => Err(e),
                    Moved::Refused(_) => Ok(()),
                })
            }
        }
    }

    /// An operator's trigger, recover or planned switchover, for the whole
    /// cluster.
    pub(super) async fn operator_move(
        &mut self,
        client: &mut Client,
        mv: &Move,
    ) -> std::result::Result<Agreed, CommandError> {
        let Some(svc) = self
            .host
            .services()
            .iter()
            .find(|s| s.cfg.name == mv.service)
            .cloned()
        else {
            return Err(CommandError::NotFound(format!(
                "no service named {}",
                mv.service
            )));
        };
        let Some((route, rev)) = self.cluster.known().routes.get(svc.name()).cloned() else {
            return Err(CommandError::Conflict(
                "the cluster has no route for it yet".into(),
            ));
        };
        if route.phase == Phase::Promoting {
            return Err(CommandError::Conflict(format!(
                "{} is being moved to {} by {}; retry when it is done",
                svc.name(),
                route.active,
                route.decided_by
            )));
        }
        if let Some(from) = &mv.from {
            if *from != route.active {
                return Err(CommandError::Conflict(format!(
                    "{from} is not the active upstream of {} (the agreed active one is {})",
                    svc.name(),
                    route.active
                )));
            }
        }
        let to = match &mv.to {
            Some(name) => name.clone(),
            None => {
                let active = svc.route.load().active;
                let view = svc.view();
                let best = failover::best_other(&view, active)
                    .and_then(|i| svc.upstream_name(i))
                    .map(str::to_string);
                best.ok_or_else(|| {
                    CommandError::Conflict(format!(
                        "service {} has no usable upstream other than {}",
                        svc.name(),
                        route.active
                    ))
                })?
            }
        };
        if to == route.active && route.fenced.is_empty() {
            return Ok(Agreed {
                epoch: route.epoch,
                ..Agreed::default()
            });
        }
        if mv.planned && promotes(&svc) {
            return self.planned(client, &svc, &route, rev, &to, mv).await;
        }
        let evidence = serde_json::json!({ "requested_by": mv.actor, "received_by": self.me });
        match self
            .move_to(
                client,
                &svc,
                &route,
                rev,
                &to,
                mv.trigger,
                &mv.actor,
                &mv.reason,
                evidence,
                mv.to.is_none() || mv.from.is_some(),
            )
            .await
        {
            Ok(epoch) => Ok(Agreed {
                epoch,
                ..Agreed::default()
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the move of `svc` to `to` with a compare-and-swap on the
    /// route key's revision `rev` (`fence_old`: a failover, which fences
    /// the old active upstream; else a recover, which clears the fencing);
    /// then, with `on_failover = "promote"`, promotes `to` and marks the
    /// route `serving`. Returns the epoch.
    #[allow(clippy::too_many_arguments)]
    async fn move_to(
        &mut self,
        client: &mut Client,
        svc: &ServiceRt,
        route: &AgreedRoute,
        rev: i64,
        to: &str,
        trigger: Trigger,
        actor: &str,
        reason: &str,
        evidence: serde_json::Value,
        fence_old: bool,
    ) -> std::result::Result<u64, Moved> {
        if !svc.upstreams.iter().any(|u| u.cfg.name == to) {
            return Err(Moved::Refused(format!("no upstream named {to}")));
        }
        let recover = !fence_old;
        let promote = promotes(svc);
        let mut fenced: Vec<String> = route.fenced.iter().filter(|f| *f != to).cloned().collect();
        if !recover && !fenced.contains(&route.active) {
            fenced.push(route.active.clone());
        }
        if recover {
            fenced.clear();
        }
        let next = AgreedRoute {
            active: to.to_string(),
            epoch: route.epoch + 1,
            fenced,
            phase: if promote {
                Phase::Promoting
            } else {
                Phase::Serving
            },
            decided_by: self.me.clone(),
            trigger: trigger.as_str().to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
            at: Utc::now(),
            planned: false,
        };
        let Some(new_rev) = self.cas(client, svc.name(), rev, &next).await? else {
            return Err(Moved::Lost);
        };
        tracing::warn!(service = svc.name(), from = %route.active, to, epoch = next.epoch, revision = new_rev, "cluster: decided");
        self.host.emit(
            Some(svc.name()),
            decision_event(&self.me, new_rev, &route.active, &next, evidence),
        );
        if promote {
            let epoch = next.epoch;
            self.finish_promotion(client, svc, next, new_rev)
                .await
                .map_err(Moved::Etcd)?;
            return Ok(epoch);
        }
        Ok(next.epoch)
    }

    /// Promotes a `promoting` route's target and marks it `serving`; if
    /// the promotion fails, the route goes back to where it was, one
    /// epoch on. Both writes are compare-and-swaps.
    pub(super) async fn finish_promotion(
        &mut self,
        client: &mut Client,
        svc: &ServiceRt,
        route: AgreedRoute,
        rev: i64,
    ) -> Result<()> {
        let Some(target) = svc.upstreams.iter().find(|u| u.cfg.name == route.active) else {
            return Ok(());
        };
        let result = health::promote(&svc.cfg, &target.cfg).await;
        let next = match result {
            Ok(()) => AgreedRoute {
                phase: Phase::Serving,
                at: Utc::now(),
                ..route.clone()
            },
            Err(e) => {
                let message = format!("promotion of {} failed: {e}", route.active);
                tracing::error!(service = svc.name(), error = %message, "cluster: switch blocked");
                self.host.emit(
                    Some(svc.name()),
                    EventKind::FailoverBlocked {
                        reason: message.clone(),
                    },
                );
                let back = route
                    .fenced
                    .last()
                    .cloned()
                    .unwrap_or_else(|| route.active.clone());
                AgreedRoute {
                    active: back.clone(),
                    epoch: route.epoch + 1,
                    fenced: route
                        .fenced
                        .iter()
                        .filter(|f| **f != back)
                        .cloned()
                        .collect(),
                    phase: Phase::Serving,
                    decided_by: self.me.clone(),
                    trigger: route.trigger.clone(),
                    actor: route.actor.clone(),
                    reason: message,
                    at: Utc::now(),
                    planned: false,
                }
            }
        };
        match self.cas(client, svc.name(), rev, &next).await {
            Ok(_) => Ok(()),
            Err(Moved::Etcd(e)) => Err(e),
            Err(_) => Ok(()),
        }
    }

    /// Compare-and-swap of `service`'s route: written only if its key is
    /// still at `rev`. Returns the new revision, `None` if it was not.
    pub(super) async fn cas(
        &mut self,
        client: &mut Client,
        service: &str,
        rev: i64,
        next: &AgreedRoute,
    ) -> std::result::Result<Option<i64>, Moved> {
        let key = self.keys.route(service);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, json(next).map_err(Moved::Etcd)?, None)]);
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| Moved::Etcd(format!("etcd compare-and-swap: {e}")))?;
        let new_rev = resp.header().map_or(0, |h| h.revision());
        if !resp.succeeded() {
            return Ok(None);
        }
        self.cluster
            .known()
            .routes
            .insert(service.to_string(), (next.clone(), new_rev));
        Ok(Some(new_rev))
    }
}
