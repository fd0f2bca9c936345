//! A zero-loss planned switchover for the whole cluster
//! (`POST /api/ops/redundancy/failover|failback/{pool}` and `recover` with
//! `on_failover = "promote"`), made by the engine that received it, with
//! the steps one engine takes alone (upstream/switchover.rs) and the route
//! key's compare-and-swap between them:
//!
//! 1. the target must be a replica (standby) of the active upstream;
//! 2. Redis: `CLIENT PAUSE WRITE` on the old primary (it holds the writes
//!    of every engine's clients, not only this one's);
//! 3. the route is written `promoting` (`planned: true`, epoch + 1, the old
//!    primary fenced): every engine holds new clients; PostgreSQL
//!    connections to the old primary drain for `PG_DRAIN`, then close;
//! 4. the target catches up (bounded by half the lease TTL, so that the
//!    session stays alive) and is promoted;
//! 5. the route is written `serving`: every engine closes its connections
//!    to the old primary and releases its held clients to the target;
//! 6. Redis: the old primary replicates from the target and is unpaused
//!    (fenced in the route if that fails); PostgreSQL: it stays fenced.
//!
//! If step 4 fails, the old primary is unpaused and the route goes back to
//! it, one epoch on. The session renews its lease between steps.

use std::time::Duration;

use chrono::Utc;
use etcd_client::{Client, GetOptions};
use serde_json::json;
use tokio::time::Instant;

use super::moves::Moved;
use super::Session;
use crate::cluster::doc::{AgreedRoute, MemberDoc, Phase, ViewDoc};
use crate::cluster::{adopt, decision_event, Agreed, Move};
use crate::config::Kind;
use crate::error::CommandError;
use crate::events::EventKind;
use crate::health;
use crate::upstream::service::ServiceRt;
use crate::upstream::switchover::{self, CATCH_UP, PG_DRAIN};

/// Time for every engine to see the `promoting` route before the old
/// PostgreSQL primary's last LSN is read (on top of `PG_DRAIN`).
const PROPAGATION: Duration = Duration::from_millis(300);

impl Session {
    /// Runs the planned switchover of `svc` from the agreed active upstream
    /// to `to` (module docs). `route` is the agreed route at `rev`.
    pub(super) async fn planned(
        &mut self,
        client: &mut Client,
        svc: &ServiceRt,
        route: &AgreedRoute,
        rev: i64,
        to: &str,
        mv: &Move,
    ) -> Result<Agreed, CommandError> {
        let position = |n: &str| svc.upstreams.iter().position(|u| u.cfg.name == n);
        let (Some(from), Some(target)) = (position(&route.active), position(to)) else {
            return Err(CommandError::NotFound(format!(
                "no upstream named {to} (or {}) in {}",
                route.active,
                svc.name()
            )));
        };
        if from == target {
            return Err(CommandError::Conflict(format!(
                "cannot switch {to} over to itself"
            )));
        }
        let host = self.host.clone();
        let blocked = |message: String| {
            host.emit(
                Some(svc.name()),
                EventKind::FailoverBlocked {
                    reason: message.clone(),
                },
            );
            CommandError::Conflict(message)
        };
        // 1.
        if let Err(m) = switchover::precheck(svc, from, target).await {
            return Err(blocked(format!("planned switchover refused: {m}")));
        }
        let is_redis = svc.cfg.kind == Kind::Redis;
        self.renew().await;
        let started = Instant::now();
        // 2.
        if is_redis {
            if let Err(m) = switchover::redis_pause(svc, from, true).await {
                return Err(blocked(format!("planned switchover refused: {m}")));
            }
        }
        // 3.
        let mut fenced: Vec<String> = route.fenced.iter().filter(|f| *f != to).cloned().collect();
        if !fenced.contains(&route.active) {
            fenced.push(route.active.clone());
        }
        let promoting = AgreedRoute {
            active: to.to_string(),
            epoch: route.epoch + 1,
            fenced,
            phase: Phase::Promoting,
            decided_by: self.me.clone(),
            trigger: mv.trigger.as_str().to_string(),
            actor: mv.actor.clone(),
            reason: mv.reason.clone(),
            at: Utc::now(),
            planned: true,
        };
        let promoting_rev = match self.cas(client, svc.name(), rev, &promoting).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.unpause(svc, from, is_redis).await;
                return Err(Moved::Lost.into());
            }
            Err(e) => {
                self.unpause(svc, from, is_redis).await;
                return Err(e.into());
            }
        };
        tracing::warn!(service = svc.name(), from = %route.active, to, epoch = promoting.epoch, revision = promoting_rev, "cluster: planned switchover started");
        adopt(svc, &promoting, promoting_rev, &self.me).await;
        // 4.
        let ttl = self.cluster.cfg.lease_ttl.max(Duration::from_secs(1));
        let prepared = async {
            if !is_redis {
                tokio::time::sleep(PG_DRAIN + PROPAGATION).await;
                self.renew().await;
            }
            let position =
                switchover::wait_caught_up(svc, from, target, CATCH_UP.min(ttl / 2)).await?;
            self.renew().await;
            let up = svc
                .upstreams
                .get(target)
                .ok_or_else(|| "no such upstream".to_string())?;
            health::promote(&svc.cfg, &up.cfg)
                .await
                .map_err(|e| format!("promotion of {to} failed: {e}"))?;
            Ok::<_, String>(position)
        }
        .await;
        self.renew().await;
        let position = match prepared {
            Ok(p) => p,
            Err(m) => {
                self.unpause(svc, from, is_redis).await;
                let message = format!(
                    "planned switchover aborted, traffic stays on {}: {m}",
                    route.active
                );
                let back = AgreedRoute {
                    epoch: promoting.epoch + 1,
                    phase: Phase::Serving,
                    decided_by: self.me.clone(),
                    reason: message.clone(),
                    at: Utc::now(),
                    planned: false,
                    ..route.clone()
                };
                if let Ok(Some(r)) = self.cas(client, svc.name(), promoting_rev, &back).await {
                    adopt(svc, &back, r, &self.me).await;
                }
                return Err(blocked(message));
            }
        };
        // 5.
        let mut serving = AgreedRoute {
            phase: Phase::Serving,
            at: Utc::now(),
            ..promoting.clone()
        };
        if is_redis {
            // It is demoted below, and becomes a replica of the target.
            serving.fenced.retain(|f| *f != route.active);
        }
        let serving_rev = match self.cas(client, svc.name(), promoting_rev, &serving).await {
            Ok(Some(r)) => r,
            other => {
                // Another write to the route landed (or etcd failed): the
                // target is promoted; whoever wrote the route decides the
                // rest. The old primary is not left paused.
                self.unpause(svc, from, is_redis).await;
                return Err(match other {
                    Err(e) => e.into(),
                    _ => Moved::Lost.into(),
                });
            }
        };
        let pause = started.elapsed();
        adopt(svc, &serving, serving_rev, &self.me).await;
        let pause_ms = pause.as_millis() as u64;
        tracing::warn!(service = svc.name(), pause_ms, position = %position, revision = serving_rev, "cluster: planned switchover done");
        let evidence = json!({
            "planned": true,
            "requested_by": mv.actor,
            "received_by": self.me,
            "pause_ms": pause_ms,
            "position": position,
            "promoting_revision": promoting_rev,
        });
        self.host.emit(
            Some(svc.name()),
            decision_event(&self.me, serving_rev, &route.active, &serving, evidence),
        );
        // 6. Not before every engine closed its connections to the old
        // primary: a write paused there would be answered READONLY.
        if is_redis {
            self.wait_applied(client, svc, &serving, ttl / 2).await;
            switchover::relays_closed(svc, from, switchover::RELAYS_CLOSE.min(ttl / 2)).await;
            let demoted = switchover::redis_demote(svc, from, target).await;
            self.unpause(svc, from, true).await;
            if let Err(e) = demoted {
                tracing::warn!(service = svc.name(), error = %e, "cluster: could not demote the old redis primary: fencing it");
                let mut fenced = serving.clone();
                fenced.fenced.push(route.active.clone());
                fenced.at = Utc::now();
                if let Ok(Some(r)) = self.cas(client, svc.name(), serving_rev, &fenced).await {
                    adopt(svc, &fenced, r, &self.me).await;
                }
            }
        }
        Ok(Agreed {
            epoch: serving.epoch,
            pause: Some(pause),
            position: Some(position),
        })
    }

    /// Waits (at most `limit`) until the view of every live member shows
    /// `route` applied (each engine publishes its view as soon as it has).
    async fn wait_applied(
        &mut self,
        client: &mut Client,
        svc: &ServiceRt,
        route: &AgreedRoute,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        let mut behind = Vec::new();
        while Instant::now() < deadline {
            behind = match self.lagging(client, svc.name(), route).await {
                Ok(b) => b,
                Err(e) => vec![e],
            };
            if behind.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!(service = svc.name(), ?behind, "cluster: not every engine showed the new route in time; unpausing the old primary anyway");
    }

    /// The live members whose view of `service` does not show `route`.
    async fn lagging(
        &mut self,
        client: &mut Client,
        service: &str,
        route: &AgreedRoute,
    ) -> Result<Vec<String>, String> {
        let prefix = Some(GetOptions::new().with_prefix());
        let members = client
            .get(self.keys.members(), prefix.clone())
            .await
            .map_err(|e| format!("etcd read: {e}"))?;
        let views = client
            .get(self.keys.views(service), prefix)
            .await
            .map_err(|e| format!("etcd read: {e}"))?;
        let shown: Vec<String> = views
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<ViewDoc>(kv.value()).ok())
            .filter(|v| v.active == route.active && v.epoch == route.epoch)
            .map(|v| v.node_id)
            .collect();
        Ok(members
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<MemberDoc>(kv.value()).ok())
            .map(|m| m.node_id)
            .filter(|n| !shown.contains(n))
            .collect())
    }

    /// `CLIENT UNPAUSE` on the old Redis primary (a failure is logged: the
    /// pause ends by itself).
    async fn unpause(&self, svc: &ServiceRt, from: usize, is_redis: bool) {
        if !is_redis {
            return;
        }
        if let Err(e) = switchover::redis_pause(svc, from, false).await {
            tracing::warn!(service = svc.name(), error = %e, "cluster: could not unpause the old primary");
        }
    }
}
