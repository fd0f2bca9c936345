//! One engine's etcd session, and the loop that renews it: connect, take
//! a lease, join, read the whole cluster state (and apply the agreed
//! routes) before anything else, publish this engine's views, campaign
//! for each service's leadership, then follow the watch. Any error ends
//! the session: the engine is `degraded` (it keeps serving its last
//! agreed routes and decides nothing) until the next one has read the
//! state again. Runs on the engine's runtime.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};

use crate::cluster::doc::{AgreedRoute, Key, Keys, MemberDoc, Phase, UpstreamView, ViewDoc};
mod moves;
mod planned;

use crate::cluster::{adopt, coordinated, Cluster, Request};
use crate::error::CommandError;
use crate::events::EventKind;
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;
use crate::upstream::switchover;

/// What the session needs from the engine it belongs to.
pub(crate) trait Host: Send + Sync + 'static {
    /// The running services (the current generation).
    fn services(&self) -> Arc<Vec<Arc<ServiceRt>>>;
    /// Recomputes the engine state (the cluster link counts in it).
    fn refresh_state(&self);
    fn emit(&self, service: Option<&str>, kind: EventKind);
}

type Result<T> = std::result::Result<T, String>;

fn etcd(what: &'static str) -> impl Fn(etcd_client::Error) -> String {
    move |e| format!("etcd {what}: {e}")
}

/// Renews the session until `stop`.
pub(crate) async fn run(
    host: Arc<dyn Host>,
    cluster: Arc<Cluster>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let endpoints = endpoints(&cluster.cfg.etcd_endpoints);
    let mut next = 0usize;
    let mut failed_in_a_row = 0usize;
    loop {
        // One endpoint per session, the next one after a failure: with all
        // of them in one client, every request the client's balancer sent
        // to a dead member failed, so one etcd member down kept every
        // engine from holding a session (etcd-client issue #39).
        let endpoint = endpoints
            .get(next % endpoints.len().max(1))
            .cloned()
            .unwrap_or_default();
        next = next.wrapping_add(1);
        let mut s = Session::new(host.clone(), cluster.clone(), endpoint);
        let ended = tokio::select! {
            r = s.run(&mut requests) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let reason = match ended {
            Ok(()) => "the etcd session ended".to_string(),
            Err(e) => e,
        };
        if s.was_connected {
            backoff = Duration::from_millis(100);
            failed_in_a_row = 0;
        }
        failed_in_a_row += 1;
        if cluster.set_connected(false, Some(reason.clone())) || !s.was_connected {
            tracing::warn!(node = %cluster.cfg.node_id, reason = %reason, "cluster: not connected to etcd; serving the last agreed routes, deciding nothing");
        }
        if s.was_connected {
            host.emit(
                None,
                EventKind::ClusterConnection {
                    node_id: cluster.cfg.node_id.clone(),
                    connected: false,
                    reason: Some(reason.clone()),
                },
            );
        }
        host.refresh_state();
        // Operator moves queued meanwhile are refused, not left waiting.
        while let Ok(r) = requests.try_recv() {
            let _ = r.reply.send(Err(CommandError::Conflict(format!(
                "the cluster cannot agree now ({reason}); retry, or act on this engine alone with force=true"
            ))));
        }
        // The other endpoints at once; after a whole round, back off.
        let pause = if !failed_in_a_row.is_multiple_of(endpoints.len().max(1)) {
            Duration::from_millis(20)
        } else {
            let b = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            b
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `host:port` endpoints as the client wants them (`http://host:port`).
fn endpoints(cfg: &[String]) -> Vec<String> {
    cfg.iter()
        .map(|e| {
            if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("http://{e}")
            }
        })
        .collect()
}

struct Session {
    host: Arc<dyn Host>,
    cluster: Arc<Cluster>,
    /// The one etcd endpoint this session talks to.
    endpoint: String,
    keys: Keys,
    me: String,
    lease: i64,
    /// Renews `lease` (also between the steps of a planned switchover).
    keeper: Option<LeaseKeeper>,
    was_connected: bool,
}

impl Session {
    fn new(host: Arc<dyn Host>, cluster: Arc<Cluster>, endpoint: String) -> Session {
        Session {
            endpoint,
            keys: Keys::new(&cluster.cfg.cluster_name),
            me: cluster.cfg.node_id.clone(),
            host,
            cluster,
            lease: 0,
            keeper: None,
            was_connected: false,
        }
    }

    /// Sends one lease renewal; a failure ends the session at the next
    /// watchdog tick, not here.
    async fn renew(&mut self) {
        if let Some(k) = self.keeper.as_mut() {
            if let Err(e) = k.keep_alive().await {
                tracing::warn!(error = %e, "cluster: lease renewal failed");
            }
        }
    }

    fn coordinated(&self) -> Vec<Arc<ServiceRt>> {
        self.host
            .services()
            .iter()
            .filter(|s| coordinated(s))
            .cloned()
            .collect()
    }

    async fn run(&mut self, requests: &mut mpsc::UnboundedReceiver<Request>) -> Result<()> {
        let ttl = self.cluster.cfg.lease_ttl.max(Duration::from_secs(1));
        // No HTTP/2 pings: etcd answers pings more often than its
        // --grpc-keepalive-min-time (5 s by default) with a GOAWAY
        // ("too_many_pings"). A dead or cut-off etcd is seen by the
        // request timeout and by the lease watchdog below instead.
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(ttl.min(Duration::from_secs(2)));
        let mut client = Client::connect([self.endpoint.as_str()], Some(opts))
            .await
            .map_err(|e| format!("etcd connect to {}: {e}", self.endpoint))?;
        self.lease = client
            .lease_grant(ttl.as_secs() as i64, None)
            .await
            .map_err(etcd("lease grant"))?
            .id();
        let (keeper, mut kept) = client
            .lease_keep_alive(self.lease)
            .await
            .map_err(etcd("lease keep-alive"))?;
        self.keeper = Some(keeper);
        let member = MemberDoc {
            node_id: self.me.clone(),
            joined_at: Utc::now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        client
            .put(
                self.keys.member(&self.me),
                json(&member)?,
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .map_err(etcd("join"))?;

        // The whole state first; routes applied before this engine decides
        // or publishes anything.
        let revision = self.read_all(&mut client).await?;
        for svc in self.coordinated() {
            self.ensure_route(&mut client, &svc).await?;
        }
        let routes = self.cluster.known().routes.clone();
        for svc in self.coordinated() {
            let Some((route, rev)) = routes.get(svc.name()) else {
                continue;
            };
            let local = svc.route.load_full();
            if route.phase == Phase::Promoting && route.decided_by == self.me {
                // This engine decided it in a session that ended before
                // the route was `serving`: finish it now.
                self.finish_promotion(&mut client, &svc, route.clone(), *rev)
                    .await?;
                continue;
            }
            if local.epoch > route.epoch && !local.switching {
                // Moved by hand (force=true) while etcd was unreachable:
                // that move becomes the agreed route, unless another write
                // landed first (then the watch brings it here).
                self.publish_forced(&mut client, &svc, route, *rev).await?;
            } else {
                adopt(&svc, route, *rev, &self.me).await;
            }
        }
        self.cluster.synced.send_replace(true);
        self.cluster.save_routes();
        // Views read back may be under a lease of an earlier session:
        // publish all of this engine's again, under this one.
        for views in self.cluster.known().views.values_mut() {
            views.remove(&self.me);
        }
        self.publish_views(&mut client).await?;
        for svc in self.coordinated() {
            self.campaign(&mut client, svc.name()).await?;
        }
        let mut watch = client
            .watch(
                self.keys.prefix(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(etcd("watch"))?;
        self.was_connected = true;
        if self.cluster.set_connected(true, None) {
            tracing::info!(node = %self.me, cluster = %self.cluster.cfg.cluster_name, "cluster: connected to etcd");
            self.host.emit(
                None,
                EventKind::ClusterConnection {
                    node_id: self.me.clone(),
                    connected: true,
                    reason: None,
                },
            );
            self.host.refresh_state();
        }
        self.decide_all(&mut client).await?;

        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let resp = msg.map_err(etcd("watch"))?.ok_or("the etcd watch ended")?;
                    if resp.canceled() {
                        return Err(format!("the etcd watch was cancelled: {}", resp.cancel_reason()));
                    }
                    self.on_events(&mut client, &resp).await?;
                }
                _ = self.cluster.link.changed.notified() => {
                    self.publish_views(&mut client).await?;
                }
                _ = tick.tick() => {
                    // The watchdog: no answer to the lease renewals for a
                    // whole TTL means the lease may be gone.
                    if last_answer.elapsed() > ttl {
                        return Err(format!("no answer from etcd at {} to the lease renewals for {} s", self.endpoint, ttl.as_secs()));
                    }
                    if let Some(k) = self.keeper.as_mut() {
                        k.keep_alive().await.map_err(etcd("lease keep-alive"))?;
                    }
                    self.decide_all(&mut client).await?;
                }
                kept_msg = kept.message() => {
                    let r = kept_msg.map_err(etcd("lease keep-alive"))?.ok_or("the lease keep-alive stream ended")?;
                    if r.ttl() <= 0 {
                        return Err("this engine's etcd lease expired".into());
                    }
                    last_answer = tokio::time::Instant::now();
                }
                req = requests.recv() => {
                    let Some(req) = req else { return Ok(()) };
                    let answer = self.operator_move(&mut client, &req.mv).await;
                    if answer.is_ok() {
                        // It wrote to etcd (a planned switchover takes
                        // seconds, the renewals' answers wait in `kept`).
                        last_answer = tokio::time::Instant::now();
                    }
                    let _ = req.reply.send(answer);
                }
            }
        }
    }

    /// Reads every key of the cluster into `Known`; returns the revision.
    async fn read_all(&mut self, client: &mut Client) -> Result<i64> {
        let resp = client
            .get(self.keys.prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd("read"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut known = self.cluster.known();
        known.revision = revision;
        known.members.clear();
        known.views.clear();
        known.leaders.clear();
        known.routes.clear();
        drop(known);
        for kv in resp.kvs() {
            self.ingest_put(kv);
        }
        Ok(revision)
    }

    /// Records one key's new value.
    fn ingest_put(&self, kv: &KeyValue) {
        let Some(key) = self.keys.parse(kv.key()) else {
            return;
        };
        let mut known = self.cluster.known();
        known.revision = known.revision.max(kv.mod_revision());
        let value = kv.value();
        match key {
            Key::Member(node) => {
                if let Ok(m) = serde_json::from_slice::<MemberDoc>(value) {
                    known.members.insert(node, m);
                }
            }
            Key::View { service, node } => {
                if let Ok(v) = serde_json::from_slice::<ViewDoc>(value) {
                    known.views.entry(service).or_default().insert(node, v);
                }
            }
            Key::Leader(service) => {
                let leader = String::from_utf8_lossy(value).into_owned();
                known.leaders.insert(service, leader);
            }
            Key::Route(service) => match serde_json::from_slice::<AgreedRoute>(value) {
                // Never older than what this engine already knows: its own
                // compare-and-swap records the route before the watch
                // delivers the writes leading up to it.
                Ok(r) => {
                    let newer = known
                        .routes
                        .get(&service)
                        .is_none_or(|(_, rev)| kv.mod_revision() >= *rev);
                    if newer {
                        known.routes.insert(service, (r, kv.mod_revision()));
                    }
                }
                Err(e) => {
                    tracing::error!(%service, error = %e, "cluster: unreadable route key ignored")
                }
            },
        }
    }

    fn ingest_delete(&self, kv: &KeyValue) {
        let Some(key) = self.keys.parse(kv.key()) else {
            return;
        };
        let mut known = self.cluster.known();
        known.revision = known.revision.max(kv.mod_revision());
        match key {
            Key::Member(node) => {
                known.members.remove(&node);
            }
            Key::View { service, node } => {
                if let Some(v) = known.views.get_mut(&service) {
                    v.remove(&node);
                }
            }
            Key::Leader(service) => {
                known.leaders.remove(&service);
            }
            Key::Route(service) => {
                known.routes.remove(&service);
            }
        }
    }

    /// Handles one watch response: records it, applies changed routes,
    /// campaigns for freed leaderships, re-decides.
    async fn on_events(
        &mut self,
        client: &mut Client,
        resp: &etcd_client::WatchResponse,
    ) -> Result<()> {
        let mut routes_changed = Vec::new();
        let mut leaders_freed = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = self.keys.parse(kv.key());
            match ev.event_type() {
                EventType::Put => self.ingest_put(kv),
                EventType::Delete => self.ingest_delete(kv),
            }
            match key {
                Some(Key::Route(s)) => routes_changed.push(s),
                Some(Key::Leader(s)) if ev.event_type() == EventType::Delete => {
                    leaders_freed.push(s)
                }
                _ => {}
            }
        }
        if let Some(h) = resp.header() {
            let mut known = self.cluster.known();
            known.revision = known.revision.max(h.revision());
        }
        for service in routes_changed {
            let route = self.cluster.known().routes.get(&service).cloned();
            let svc = self
                .host
                .services()
                .iter()
                .find(|s| s.cfg.name == service)
                .cloned();
            match (route, svc) {
                (Some((route, rev)), Some(svc)) => {
                    let was = svc.route.load().active;
                    if adopt(&svc, &route, rev, &self.me).await {
                        tracing::info!(service = %service, active = %route.active, epoch = route.epoch, revision = rev, decided_by = %route.decided_by, "cluster: applied the agreed route");
                        // At once, not at the next probe: the engine that
                        // runs a planned switchover waits for every view
                        // to show it before it unpauses the old primary,
                        // so the relays bound there close first.
                        if route.planned && svc.route.load().active != was {
                            switchover::relays_closed(&svc, was, Duration::from_millis(500)).await;
                        }
                        self.publish_views(client).await?;
                    }
                    self.cluster.save_routes();
                    self.host.refresh_state();
                }
                (None, Some(svc)) => {
                    // Deleted by hand: write this engine's route again.
                    self.ensure_route(client, &svc).await?;
                }
                _ => {}
            }
        }
        for service in leaders_freed {
            if self.coordinated().iter().any(|s| s.cfg.name == service) {
                self.campaign(client, &service).await?;
            }
        }
        self.decide_all(client).await
    }

    /// Creates `svc`'s route key from this engine's route if there is
    /// none yet (the first engine of the cluster; a create-only txn).
    async fn ensure_route(&mut self, client: &mut Client, svc: &ServiceRt) -> Result<()> {
        if self.cluster.known().routes.contains_key(svc.name()) {
            return Ok(());
        }
        let route = svc.route.load();
        let initial = AgreedRoute {
            active: svc.upstream_name(route.active).unwrap_or("?").to_string(),
            epoch: route.epoch,
            fenced: svc
                .upstreams
                .iter()
                .zip(route.fenced.iter())
                .filter(|(_, f)| **f)
                .map(|(u, _)| u.cfg.name.clone())
                .collect(),
            phase: Phase::Serving,
            decided_by: self.me.clone(),
            trigger: "initial".into(),
            actor: "system".into(),
            reason: "the first engine's route".into(),
            at: Utc::now(),
            planned: false,
        };
        let key = self.keys.route(svc.name());
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), json(&initial)?, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = client.txn(txn).await.map_err(etcd("create route"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            self.cluster
                .known()
                .routes
                .insert(svc.name().to_string(), (initial, revision));
        } else {
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    for kv in g.kvs() {
                        self.ingest_put(kv);
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes this engine's view of every coordinated service whose
    /// judgement changed since it last did (the active upstream, the epoch,
    /// an upstream's health or role): one etcd write per change, not per
    /// probe. The key lives as long as the lease; `at` is when it changed.
    async fn publish_views(&mut self, client: &mut Client) -> Result<()> {
        for svc in self.coordinated() {
            let view = view_of(&svc, &self.me);
            let unchanged = self
                .cluster
                .known()
                .views
                .get(svc.name())
                .and_then(|m| m.get(&self.me))
                .is_some_and(|old| same_judgement(old, &view));
            if unchanged {
                continue;
            }
            client
                .put(
                    self.keys.view(svc.name(), &self.me),
                    json(&view)?,
                    Some(PutOptions::new().with_lease(self.lease)),
                )
                .await
                .map_err(etcd("publish view"))?;
            self.cluster
                .known()
                .views
                .entry(svc.name().to_string())
                .or_default()
                .insert(self.me.clone(), view);
        }
        Ok(())
    }

    /// Takes `service`'s leadership if it is free (a create-only txn
    /// under this engine's lease).
    async fn campaign(&mut self, client: &mut Client, service: &str) -> Result<()> {
        let key = self.keys.leader(service);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.me.clone(),
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = client.txn(txn).await.map_err(etcd("campaign"))?;
        if resp.succeeded() {
            tracing::info!(service, node = %self.me, "cluster: this engine leads the service");
            self.cluster
                .known()
                .leaders
                .insert(service.to_string(), self.me.clone());
        } else {
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    for kv in g.kvs() {
                        self.ingest_put(kv);
                    }
                }
            }
        }
        Ok(())
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| format!("cannot encode: {e}"))
}

/// Whether two views say the same thing to the decision.
fn same_judgement(a: &ViewDoc, b: &ViewDoc) -> bool {
    a.active == b.active
        && a.epoch == b.epoch
        && a.upstreams.len() == b.upstreams.len()
        && a.upstreams.iter().zip(&b.upstreams).all(|(x, y)| {
            x.name == y.name && x.health == y.health && x.observed_role == y.observed_role
        })
}

/// This engine's view of `svc` now.
fn view_of(svc: &ServiceRt, me: &str) -> ViewDoc {
    let route = svc.route.load();
    let upstreams = svc
        .upstreams
        .iter()
        .map(|u| {
            let h = lock(&u.health);
            UpstreamView {
                name: u.cfg.name.clone(),
                health: health_name(h.counters.health),
                observed_role: h.observed.map(|r| format!("{r:?}").to_lowercase()),
                consecutive_failures: h.counters.consecutive_failures,
                last_error: h.last_error.clone(),
            }
        })
        .collect();
    ViewDoc {
        node_id: me.to_string(),
        at: Utc::now(),
        active: svc.upstream_name(route.active).unwrap_or("?").to_string(),
        epoch: route.epoch,
        upstreams,
    }
}

fn health_name(h: crate::snapshot::UpstreamHealth) -> String {
    use crate::snapshot::UpstreamHealth::*;
    match h {
        Up => "up",
        Down => "down",
        Unknown => "unknown",
    }
    .to_string()
}
