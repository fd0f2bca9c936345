//! Many engines, one decision: failover coordinated through etcd
//! (`[cluster]`, docs/cluster.md), as Patroni does.
//!
//! Without `[cluster]` nothing here runs and each engine decides alone.
//! With it, a service with more than one upstream is *coordinated*:
//! - its automatic decision is no longer local (upstream/evaluate.rs only
//!   wakes the session); every engine publishes its view of each upstream
//!   under its lease ([`doc::ViewDoc`]);
//! - one engine per service, elected with a lease, decides on the pooled
//!   views ([`decide`]) and writes the new route with a compare-and-swap
//!   on the route key's revision, so two decisions never both land; the
//!   engine whose write landed then promotes (`REPLICAOF NO ONE`,
//!   `pg_promote()`), and only then marks the route `serving`;
//! - every engine applies the agreed route from its watch, with the same
//!   epoch: hold, swap, fence ([`adopt`]);
//! - an engine that loses etcd keeps serving its last agreed route, never
//!   decides alone, and reports `degraded` until it is back; a new
//!   session reads the whole state again before it applies anything.
//!
//! The session itself (etcd client, lease, watch) is [`session`].

pub mod decide;
pub mod doc;
mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClusterConfig;
use crate::error::CommandError;
use crate::events::{EventKind, Trigger};
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, Coordination, Route, SwitchKind};
use crate::upstream::switch;
use crate::upstream::switchover::PG_DRAIN;

pub(crate) use session::{run, Host};

use doc::{AgreedRoute, ClusterService, ClusterSnapshot, MemberDoc, Phase, ViewDoc};

/// An operator's move, made for the whole cluster.
#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub service: String,
    /// `None`: the best other upstream (trigger); `Some`: that upstream
    /// (recover: the configured primary; a planned switchover's target).
    pub to: Option<String>,
    /// A planned switchover away from this upstream: refused unless it is
    /// the agreed active one.
    pub from: Option<String>,
    /// A zero-loss planned switchover (pause, catch up, promote) rather
    /// than an immediate move.
    pub planned: bool,
    pub trigger: Trigger,
    pub actor: String,
    pub reason: String,
}

/// What an operator's move agreed on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Agreed {
    pub epoch: u64,
    /// A planned switchover: how long new clients were held.
    pub pause: Option<Duration>,
    /// A planned switchover: the replication position the target reached.
    pub position: Option<String>,
}

/// A move sent to the session, and where its answer goes.
#[derive(Debug)]
pub(crate) struct Request {
    pub mv: Move,
    /// The agreement once written, or why not.
    pub reply: oneshot::Sender<Result<Agreed, CommandError>>,
}

/// This engine's membership of a cluster: its config, what it last read
/// from etcd (for `GET /api/ops/cluster`), and the channels into its
/// session.
pub(crate) struct Cluster {
    pub cfg: ClusterConfig,
    /// Woken by coordinated services on a health change.
    pub link: Arc<Coordination>,
    connected: AtomicBool,
    state: Mutex<Known>,
    requests: mpsc::UnboundedSender<Request>,
    /// true once the first session has read the agreed routes.
    pub synced: watch::Sender<bool>,
    pub gauge: prometheus::IntGauge,
    /// `data_dir/cluster-routes.json`: the agreed routes last applied, so
    /// that an engine restarted while etcd is unreachable serves them
    /// rather than its configured ones (which may name a fenced primary).
    state_file: Option<PathBuf>,
}

/// What the session last read from etcd.
#[derive(Debug, Default, Clone)]
pub(crate) struct Known {
    pub revision: i64,
    pub members: BTreeMap<String, MemberDoc>,
    /// By service, then node.
    pub views: BTreeMap<String, BTreeMap<String, ViewDoc>>,
    pub leaders: BTreeMap<String, String>,
    /// By service: the route and its key's mod revision.
    pub routes: BTreeMap<String, (AgreedRoute, i64)>,
    /// Why this engine is not connected (None while connected).
    pub reason: Option<String>,
}

impl Cluster {
    /// The cluster handle and the receiver of operator requests its
    /// session takes.
    pub fn new(
        cfg: ClusterConfig,
        registry: &prometheus::Registry,
        state_file: Option<PathBuf>,
    ) -> Result<(Arc<Cluster>, mpsc::UnboundedReceiver<Request>), String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let gauge = prometheus::IntGauge::new(
            "continuity_cluster_connected",
            "1 while this engine holds a live etcd session of its [cluster], else 0",
        )
        .map_err(|e| format!("cluster metric: {e}"))?;
        registry
            .register(Box::new(gauge.clone()))
            .map_err(|e| format!("cluster metric: {e}"))?;
        let cluster = Cluster {
            cfg,
            link: Arc::new(Coordination::default()),
            connected: AtomicBool::new(false),
            state: Mutex::new(Known {
                reason: Some("connecting to etcd".into()),
                ..Known::default()
            }),
            requests: tx,
            synced: watch::channel(false).0,
            gauge,
            state_file,
        };
        Ok((Arc::new(cluster), rx))
    }

    /// Writes the agreed routes to the state file (temp file, then
    /// rename); a failure is logged, never fatal.
    pub(crate) fn save_routes(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let routes: BTreeMap<String, AgreedRoute> = self
            .known()
            .routes
            .iter()
            .map(|(s, (r, _))| (s.clone(), r.clone()))
            .collect();
        let write = || -> std::io::Result<()> {
            let text = serde_json::to_vec_pretty(&routes).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cluster: cannot save the agreed routes");
        }
    }

    /// The agreed routes saved by an earlier run (empty if none, or if
    /// the file cannot be read: then said in the log).
    pub(crate) fn saved_routes(&self) -> BTreeMap<String, AgreedRoute> {
        let Some(path) = &self.state_file else {
            return BTreeMap::new();
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cluster: unreadable saved routes ignored");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cluster: cannot read the saved routes");
                BTreeMap::new()
            }
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Records the link to etcd; returns whether it changed.
    pub(crate) fn set_connected(&self, up: bool, reason: Option<String>) -> bool {
        lock(&self.state).reason = if up { None } else { reason };
        self.gauge.set(i64::from(up));
        self.connected.swap(up, Ordering::SeqCst) != up
    }

    pub(crate) fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        lock(&self.state)
    }

    /// Sends an operator's move to the session; refused at once while
    /// etcd is unreachable.
    pub async fn request(&self, mv: Move) -> Result<Agreed, CommandError> {
        if !self.connected() {
            return Err(unavailable(self.known().reason.clone()));
        }
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request { mv, reply })
            .map_err(|_| unavailable(Some("the cluster session has stopped".into())))?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(unavailable(Some("etcd session lost".into()))),
            Err(_) => Err(unavailable(Some("no agreement within 30 s".into()))),
        }
    }

    /// The cluster as this engine knows it, for `GET /api/ops/cluster`.
    pub fn snapshot(&self, services: &[Arc<ServiceRt>]) -> ClusterSnapshot {
        let known = self.known().clone();
        let me = &self.cfg.node_id;
        let services = services
            .iter()
            .filter(|s| coordinated(s))
            .map(|svc| {
                let name = &svc.cfg.name;
                let route = svc.route.load();
                let agreed = known.routes.get(name).cloned();
                let views: Vec<ViewDoc> = known
                    .views
                    .get(name)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                let local_active = svc.upstream_name(route.active).unwrap_or("?").to_string();
                let agrees = agreed
                    .as_ref()
                    .is_some_and(|(r, _)| r.active == local_active && r.epoch == route.epoch);
                let mine = views.iter().find(|v| v.node_id == *me);
                let disagreement = match (&agreed, mine) {
                    (Some((r, _)), Some(v)) if v.health_of(&r.active) == Some("down") => {
                        let down = views
                            .iter()
                            .filter(|v| v.health_of(&r.active) == Some("down"))
                            .count();
                        let needed = decide::needed(self.cfg.quorum, views.len());
                        (down < needed).then(|| {
                            format!(
                                "this engine sees {} down; {down} of {} engines do, {needed} needed",
                                r.active,
                                views.len()
                            )
                        })
                    }
                    _ => None,
                };
                ClusterService {
                    service: name.clone(),
                    leader: known.leaders.get(name).cloned(),
                    route: agreed.as_ref().map(|(r, _)| r.clone()),
                    route_revision: agreed.map(|(_, rev)| rev),
                    local_active,
                    local_epoch: route.epoch,
                    agrees,
                    disagreement,
                    views,
                }
            })
            .collect();
        ClusterSnapshot {
            enabled: true,
            cluster_name: self.cfg.cluster_name.clone(),
            node_id: me.clone(),
            connected: self.connected(),
            reason: known.reason.clone(),
            revision: known.revision,
            lease_ttl_seconds: self.cfg.lease_ttl.as_secs(),
            quorum: self.cfg.quorum,
            members: known.members.values().cloned().collect(),
            services,
        }
    }
}

fn unavailable(reason: Option<String>) -> CommandError {
    CommandError::Conflict(format!(
        "the cluster cannot agree now ({}); retry, or act on this engine alone with force=true (docs/cluster.md)",
        reason.unwrap_or_else(|| "etcd unreachable".into())
    ))
}

/// Whether the cluster decides for `svc`: a service with more than one
/// upstream (others have nothing to fail over to).
pub(crate) fn coordinated(svc: &ServiceRt) -> bool {
    svc.upstreams.len() > 1
}

/// Applies an agreed route to `svc` (every engine, from its watch): a
/// `promoting` route holds new clients; a `serving` one swaps to its
/// active upstream with its epoch and fencing, without promoting (the
/// engine that decided did). Returns whether the route changed.
pub(crate) async fn adopt(svc: &ServiceRt, agreed: &AgreedRoute, revision: i64, me: &str) -> bool {
    let Some(to) = svc
        .upstreams
        .iter()
        .position(|u| u.cfg.name == agreed.active)
    else {
        tracing::error!(
            service = svc.name(),
            upstream = %agreed.active,
            "the agreed route names an upstream this engine does not have; check that every engine has the same [[service]]"
        );
        return false;
    };
    let fenced: Vec<bool> = svc
        .upstreams
        .iter()
        .map(|u| agreed.fenced.contains(&u.cfg.name))
        .collect();
    let _guard = svc.switch_lock.lock().await;
    let old = svc.route.load_full();
    if agreed.phase == Phase::Promoting {
        if old.active != to && !old.switching {
            let drain_pg = agreed.planned && svc.cfg.kind == crate::config::Kind::Postgres;
            let held = if drain_pg {
                // A planned switchover: the old primary's connections may
                // finish for PG_DRAIN, then close (its epoch moved and it
                // is fenced), so that no write lands there after the
                // deciding engine reads its last LSN.
                Route {
                    epoch: agreed.epoch,
                    fenced,
                    switching: true,
                    drain: Some((old.active, std::time::Instant::now() + PG_DRAIN)),
                    ..(*old).clone()
                }
            } else {
                Route {
                    switching: true,
                    ..(*old).clone()
                }
            };
            svc.set_route(held);
        }
        return false;
    }
    if old.active == to && old.epoch == agreed.epoch && old.fenced == fenced && !old.switching {
        return false;
    }
    let trigger = if agreed.trigger == "manual" {
        Trigger::Manual
    } else {
        Trigger::Auto
    };
    let actor = format!("cluster:{}", agreed.decided_by);
    let kind = if to == svc.cfg.configured_primary() && agreed.fenced.is_empty() {
        SwitchKind::Recover {
            trigger,
            actor,
            reason: agreed.reason.clone(),
        }
    } else {
        SwitchKind::Failover {
            trigger,
            actor,
            reason: agreed.reason.clone(),
            evidence: serde_json::json!({
                "cluster": {
                    "node_id": me,
                    "decided_by": agreed.decided_by,
                    "revision": revision,
                    "epoch": agreed.epoch,
                }
            }),
        }
    };
    switch::adopt(svc, to, agreed.epoch, fenced, kind)
}

/// The event a decision is audited with, on the engine that made it.
pub(crate) fn decision_event(
    me: &str,
    revision: i64,
    from: &str,
    route: &AgreedRoute,
    evidence: serde_json::Value,
) -> EventKind {
    EventKind::ClusterDecision {
        node_id: me.to_string(),
        revision,
        from: from.to_string(),
        to: route.active.clone(),
        epoch: route.epoch,
        trigger: route.trigger.clone(),
        actor: route.actor.clone(),
        reason: route.reason.clone(),
        evidence,
    }
}
