//! Zero-loss planned switchover (`POST /api/ops/redundancy/failover/{pool}`,
//! `.../failback/{pool}`, and `recover` to a caught-up replica).
//!
//! 1. Hold: a route with `switching = true` is stored, so new clients are
//!    accepted and held (their early bytes kept), never refused.
//! 2. Fence the old primary and let in-flight work finish:
//!    - redis: `CLIENT PAUSE <ms> WRITE` on it: reads are answered, writes
//!      wait; connections bound to it close when the new route is stored,
//!      so a write waiting there is never acknowledged (the client retries).
//!    - postgres: connections bound to it may finish for [`PG_DRAIN`], then
//!      they are closed (no new ones: the route holds them).
//! 3. Wait until the target has every acknowledged write: redis
//!    `slave_repl_offset >= master_repl_offset` of the old primary (read
//!    after the pause), postgres `pg_last_wal_replay_lsn() >=
//!    pg_current_wal_lsn()` of the old primary (read after the drain),
//!    bounded by [`CATCH_UP`]. On timeout everything is undone.
//! 4. Promote the target; demote the old primary (redis `REPLICAOF
//!    <target>`, then `CLIENT UNPAUSE`) or fence it (postgres: it cannot
//!    follow the new timeline without a rebuild, so it is `diverged`).
//! 5. Release: the new route (epoch + 1) is stored and held clients go to
//!    the target. The pause clients saw (step 1 to 5) is returned.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::json;

pub(crate) mod commands;

use crate::config::{Kind, OnFailover};
use crate::error::CommandError;
use crate::events::EventKind;
use crate::health::{self, redis, ObservedRole};
use crate::upstream::resync::{self, host_port};
use crate::upstream::service::ServiceRt;
use crate::upstream::state::{lock, Route, SwitchKind};
use crate::upstream::switch::{self, Switched};

/// Longest wait for the target to catch up before the switchover aborts.
pub const CATCH_UP: Duration = Duration::from_secs(10);
/// How long postgres connections on the old primary may finish.
pub const PG_DRAIN: Duration = Duration::from_secs(1);
/// Poll interval of the replication position.
const POLL: Duration = Duration::from_millis(10);

/// What a completed planned switchover reports.
#[derive(Debug, Clone, Default)]
pub struct SwitchReport {
    /// How long new clients were held.
    pub pause: Duration,
    /// The replication position the target reached (offset or LSN).
    pub position: Option<String>,
}

/// Step 3: waits until `to` has what `from` acknowledged, for at most
/// `limit` ([`CATCH_UP`] on one engine). Redis: `from` is already paused
/// for writes. Returns the position reached.
pub(crate) async fn wait_caught_up(
    svc: &ServiceRt,
    from: usize,
    to: usize,
    limit: Duration,
) -> Result<String, String> {
    let (Some(f), Some(t)) = (svc.upstreams.get(from), svc.upstreams.get(to)) else {
        return Err("no such upstream".into());
    };
    let deadline = Instant::now() + limit;
    match svc.cfg.kind {
        Kind::Redis => {
            let target = resync::redis_master_offset(&svc.cfg, &f.cfg).await?;
            loop {
                let reached = resync::redis_replica_offset(&svc.cfg, &t.cfg, &f.cfg).await;
                match reached {
                    Ok(o) if o >= target => return Ok(format!("redis offset {target}")),
                    Ok(o) if Instant::now() >= deadline => {
                        return Err(format!(
                            "{} did not catch up with {} within {limit:?} ({} bytes behind)",
                            t.cfg.name,
                            f.cfg.name,
                            target - o
                        ))
                    }
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    _ => tokio::time::sleep(POLL).await,
                }
            }
        }
        Kind::Postgres => {
            let lsn = resync::pg_current_lsn(&svc.cfg, &f.cfg).await?;
            loop {
                match resync::pg_replayed(&svc.cfg, &t.cfg, &lsn).await {
                    Ok(true) => return Ok(format!("postgres lsn {lsn}")),
                    Ok(false) if Instant::now() >= deadline => {
                        return Err(format!(
                            "{} did not replay {lsn} of {} within {limit:?}",
                            t.cfg.name, f.cfg.name
                        ))
                    }
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    _ => tokio::time::sleep(POLL).await,
                }
            }
        }
        _ => Ok(String::new()),
    }
}

/// Before holding anyone: the target must be a replica of the old primary
/// (redis, with its link up) or a standby (postgres), or there is nothing
/// to wait for and the switchover is refused at once.
pub(crate) async fn precheck(svc: &ServiceRt, from: usize, to: usize) -> Result<(), String> {
    let (Some(f), Some(t)) = (svc.upstreams.get(from), svc.upstreams.get(to)) else {
        return Err("no such upstream".into());
    };
    match svc.cfg.kind {
        Kind::Redis => resync::redis_replica_offset(&svc.cfg, &t.cfg, &f.cfg)
            .await
            .map(|_| ()),
        Kind::Postgres => match resync::pg_in_recovery(&svc.cfg, &t.cfg).await? {
            true => Ok(()),
            false => Err(format!("{} is not a standby", t.cfg.name)),
        },
        _ => Ok(()),
    }
}

pub(crate) async fn redis_pause(svc: &ServiceRt, idx: usize, pause: bool) -> Result<(), String> {
    let Some(u) = svc.upstreams.get(idx) else {
        return Err("no such upstream".into());
    };
    let ms = (CATCH_UP.as_millis() as u64 + 20_000).to_string();
    let args: &[&str] = if pause {
        &["CLIENT", "PAUSE", &ms, "WRITE"]
    } else {
        &["CLIENT", "UNPAUSE"]
    };
    match tokio::time::timeout(
        Duration::from_secs(3),
        redis::command(&svc.cfg, &u.cfg, args),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{} on {}: {e}", args.join(" "), u.cfg.name)),
        Err(_) => Err(format!("{} on {}: timed out", args.join(" "), u.cfg.name)),
    }
}

/// Longest wait for the relays bound to the old primary to close before
/// it is unpaused.
pub const RELAYS_CLOSE: Duration = Duration::from_secs(2);

/// Waits (at most `limit`) until no relay of this engine is bound to
/// upstream `idx`. After a switch its relays close on their own threads;
/// until they have, a paused write there could still be answered to a
/// client (READONLY, once the old primary is unpaused as a replica).
/// `false` (and a warning) if some were still open at `limit`.
pub(crate) async fn relays_closed(svc: &ServiceRt, idx: usize, limit: Duration) -> bool {
    let Some(u) = svc.upstreams.get(idx) else {
        return true;
    };
    let deadline = Instant::now() + limit;
    loop {
        let open = u.active_conns.load(Ordering::Acquire);
        if open == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                service = svc.name(),
                upstream = %u.cfg.name,
                open,
                "relays to the old primary still open after {limit:?}; unpausing it anyway"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Redis: makes the old primary a replica of the new one.
pub(crate) async fn redis_demote(svc: &ServiceRt, from: usize, to: usize) -> Result<(), String> {
    let (Some(f), Some(t)) = (svc.upstreams.get(from), svc.upstreams.get(to)) else {
        return Err("no such upstream".into());
    };
    let (host, port) = host_port(&t.cfg).ok_or_else(|| format!("bad address of {}", t.cfg.name))?;
    match tokio::time::timeout(
        Duration::from_secs(3),
        redis::replicate_from(&svc.cfg, &f.cfg, &host, port),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("REPLICAOF on {}: {e}", f.cfg.name)),
        Err(_) => Err(format!("REPLICAOF on {}: timed out", f.cfg.name)),
    }
}

/// The zero-loss planned switch to `to` (see the module docs). Caller
/// holds `switch_lock`. A switch to the active upstream is a no-op.
pub(crate) async fn planned_switch(
    svc: &ServiceRt,
    to: usize,
    mut kind: SwitchKind,
) -> Result<SwitchReport, CommandError> {
    let old = svc.route.load_full();
    let from = old.active;
    if svc.upstreams.get(to).is_none() {
        return Err(CommandError::NotFound(format!("no upstream #{to}")));
    }
    if from == to && !old.fenced.get(to).copied().unwrap_or(false) {
        return Ok(SwitchReport::default());
    }
    let promote = svc.cfg.on_failover == OnFailover::Promote
        && matches!(svc.cfg.kind, Kind::Redis | Kind::Postgres)
        && from != to;
    let is_pg = svc.cfg.kind == Kind::Postgres;
    let closed = svc
        .upstreams
        .get(from)
        .map(|u| u.active_conns.load(Ordering::Relaxed))
        .unwrap_or(0);
    if promote {
        if let Err(m) = precheck(svc, from, to).await {
            let message = format!("planned switchover refused: {m}");
            svc.emit(EventKind::FailoverBlocked {
                reason: message.clone(),
            });
            return Err(CommandError::Conflict(message));
        }
    }
    let started = Instant::now();
    // 1. Hold new clients. Postgres: the old primary's connections may
    //    finish for PG_DRAIN (fenced + new epoch + drain), then close.
    let new_epoch = old.epoch + 1;
    let holding = if is_pg && promote {
        let mut fenced = old.fenced.clone();
        if let Some(f) = fenced.get_mut(from) {
            *f = true;
        }
        Route {
            epoch: new_epoch,
            fenced,
            switching: true,
            drain: Some((from, std::time::Instant::now() + PG_DRAIN)),
            ..(*old).clone()
        }
    } else {
        Route {
            switching: true,
            ..(*old).clone()
        }
    };
    svc.set_route(holding);
    let mut paused = false;
    // Phase timings (drained, caught up, promoted), for the log.
    let mut phases = [Duration::ZERO; 3];
    let prepared = async {
        if is_pg && promote {
            let until = Instant::now() + PG_DRAIN + Duration::from_millis(200);
            while svc
                .upstreams
                .get(from)
                .is_some_and(|u| u.active_conns.load(Ordering::Relaxed) > 0)
                && Instant::now() < until
            {
                tokio::time::sleep(POLL).await;
            }
        }
        let mut position = None;
        if promote {
            // 2. Fence writes on the old primary (redis), 3. wait.
            if svc.cfg.kind == Kind::Redis {
                redis_pause(svc, from, true).await?;
                paused = true;
            }
            phases[0] = started.elapsed();
            position = Some(wait_caught_up(svc, from, to, CATCH_UP).await?);
            phases[1] = started.elapsed();
            // 4a. Promote the target.
            let up = svc
                .upstreams
                .get(to)
                .ok_or_else(|| "no such upstream".to_string())?;
            health::promote(&svc.cfg, &up.cfg)
                .await
                .map_err(|e| format!("promotion of {} failed: {e}", up.cfg.name))?;
            lock(&up.health).observed = Some(ObservedRole::Primary);
            phases[2] = started.elapsed();
        }
        Ok::<_, String>(position)
    }
    .await;
    let position = match prepared {
        Ok(p) => p,
        Err(message) => {
            if paused {
                if let Err(e) = redis_pause(svc, from, false).await {
                    tracing::warn!(service = svc.name(), error = %e, "could not unpause");
                }
            }
            // Traffic stays where it was (relays already closed stay closed).
            let epoch = if is_pg && promote {
                new_epoch
            } else {
                old.epoch
            };
            svc.set_route(Route {
                epoch,
                switching: false,
                drain: None,
                ..(*old).clone()
            });
            let message = format!(
                "planned switchover aborted, traffic stays on {}: {message}",
                svc.upstream_name(from).unwrap_or("?")
            );
            svc.emit(EventKind::FailoverBlocked {
                reason: message.clone(),
            });
            return Err(CommandError::Conflict(message));
        }
    };
    // 5. Release held clients to the target; bound old connections close.
    let is_failover = matches!(kind, SwitchKind::Failover { .. });
    let mut fenced = old.fenced.clone();
    if let Some(f) = fenced.get_mut(to) {
        *f = false;
    }
    let fence_old = if promote { is_pg } else { is_failover };
    if let Some(f) = fenced.get_mut(from) {
        *f = fence_old;
    }
    svc.set_route(Route {
        active: to,
        epoch: new_epoch,
        fenced,
        switching: false,
        drain: None,
    });
    let pause = started.elapsed();
    if promote {
        demote_planned(svc, from, to, paused).await;
    }
    let pause_ms = pause.as_millis() as u64;
    match &mut kind {
        SwitchKind::Failover { evidence, .. } => {
            evidence["planned"] = json!(true);
            evidence["pause_ms"] = json!(pause_ms);
            evidence["position"] = json!(position);
        }
        SwitchKind::Recover { reason, .. } => {
            reason.push_str(&format!(
                " (planned switchover: clients held {pause_ms} ms{})",
                position
                    .as_deref()
                    .map(|p| format!(", {p}"))
                    .unwrap_or_default()
            ));
        }
    }
    tracing::warn!(service = svc.name(), pause_ms, position = ?position, ?phases, "planned switchover done");
    switch::finish(
        svc,
        Switched {
            old: &old,
            to,
            new_epoch,
            kind,
            promoted: promote,
            closed,
            started,
        },
    );
    Ok(SwitchReport { pause, position })
}

/// Step 4b after the new route is stored: redis replicates from the new
/// primary and is unpaused; postgres stays fenced and diverged (it needs
/// a rebuild). A failed redis demotion fences it too.
async fn demote_planned(svc: &ServiceRt, from: usize, to: usize, paused: bool) {
    let Some(f) = svc.upstreams.get(from) else {
        return;
    };
    let demoted = match svc.cfg.kind {
        Kind::Redis => {
            if paused {
                relays_closed(svc, from, RELAYS_CLOSE).await;
            }
            let r = redis_demote(svc, from, to).await;
            if paused {
                if let Err(e) = redis_pause(svc, from, false).await {
                    tracing::warn!(service = svc.name(), error = %e, "could not unpause the old primary");
                }
            }
            match r {
                Ok(()) => {
                    lock(&f.health).observed = Some(ObservedRole::Replica);
                    true
                }
                Err(e) => {
                    tracing::warn!(service = svc.name(), error = %e, "could not demote the old redis primary: fencing it");
                    false
                }
            }
        }
        _ => false,
    };
    if !demoted {
        lock(&f.health).diverged = true;
        switch::fence(svc, from);
    }
}
