//! Replication positions and resynchronisation of an old primary.
//!
//! After a failover with `promote`, the old primary is *diverged*: it may
//! hold writes the new primary never saw. It stays fenced until it is a
//! caught-up replica of the **current** active upstream:
//!
//! - redis: `INFO replication` shows `role:slave`, `master_host`/`master_port`
//!   of the active, `master_link_status:up`, and a `slave_repl_offset` at
//!   least the active's `master_repl_offset` read just before. continuity
//!   can make it one ([`resync`]: `REPLICAOF <active>`).
//! - postgres: not in recovery means it needs a rebuild (`pg_rewind` or
//!   `pg_basebackup`, see docs/switchover.md). In recovery, it must stream
//!   from the active (`pg_stat_wal_receiver.status = 'streaming'` with the
//!   active's port) and have replayed the active's current WAL position.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{Kind, ServiceConfig, UpstreamConfig};
use crate::error::CommandError;
use crate::health::{postgres, redis};
use crate::upstream::service::ServiceRt;
use crate::upstream::state::lock;

/// Bound for one replication query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries at reading "replica >= primary" while writes keep coming.
const CATCH_UP_TRIES: u32 = 5;

/// What [`verify`] found about a diverged upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncState {
    /// A caught-up replica of the active upstream: `diverged` is cleared.
    Resynced,
    /// Still a primary of its own (postgres: needs `pg_rewind`/`pg_basebackup`).
    NeedsRebuild(String),
    /// A replica, but not (yet) of the active, or behind it.
    Pending(String),
}

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, crate::health::ProbeError>>,
) -> Result<T, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out after {QUERY_TIMEOUT:?}")),
    }
}

/// `host` and `port` of an upstream's `host:port` address.
pub fn host_port(up: &UpstreamConfig) -> Option<(String, u16)> {
    let target = up.target();
    let (h, p) = target.rsplit_once(':')?;
    let port = p.parse::<u16>().ok()?;
    Some((h.trim_matches(['[', ']']).to_string(), port))
}

fn same_host(a: &str, b: &str) -> bool {
    let local = |h: &str| matches!(h, "127.0.0.1" | "localhost" | "::1") || h.starts_with('/');
    a.eq_ignore_ascii_case(b) || (local(a) && local(b))
}

/// `INFO replication` as `key -> value`.
pub async fn redis_info(
    cfg: &ServiceConfig,
    up: &UpstreamConfig,
) -> Result<HashMap<String, String>, String> {
    let reply = bounded(
        "INFO replication",
        redis::command(cfg, up, &["INFO", "replication"]),
    )
    .await?;
    let text = reply.as_text().unwrap_or_default();
    Ok(parse_info(&text))
}

pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(info: &HashMap<String, String>, key: &str) -> Option<i64> {
    info.get(key).and_then(|v| v.parse().ok())
}

/// The replication offset a redis primary has produced.
pub async fn redis_master_offset(cfg: &ServiceConfig, up: &UpstreamConfig) -> Result<i64, String> {
    let info = redis_info(cfg, up).await?;
    num(&info, "master_repl_offset")
        .ok_or_else(|| format!("{}: INFO replication lacks master_repl_offset", up.name))
}

/// Whether `replica` replicates from `primary` with its link up; its
/// processed offset if so.
pub async fn redis_replica_offset(
    cfg: &ServiceConfig,
    replica: &UpstreamConfig,
    primary: &UpstreamConfig,
) -> Result<i64, String> {
    let info = redis_info(cfg, replica).await?;
    if info.get("role").map(String::as_str) != Some("slave") {
        return Err(format!("{} is not a replica", replica.name));
    }
    let (ph, pp) = host_port(primary).ok_or_else(|| format!("bad address of {}", primary.name))?;
    let host_ok = info.get("master_host").is_some_and(|h| same_host(h, &ph));
    let port_ok = num(&info, "master_port") == Some(i64::from(pp));
    if !(host_ok && port_ok) {
        return Err(format!(
            "{} replicates from {}:{}, not from {}",
            replica.name,
            info.get("master_host").map(String::as_str).unwrap_or("?"),
            info.get("master_port").map(String::as_str).unwrap_or("?"),
            primary.name
        ));
    }
    if info.get("master_link_status").map(String::as_str) != Some("up") {
        return Err(format!("{}: replication link is not up", replica.name));
    }
    num(&info, "slave_repl_offset")
        .ok_or_else(|| format!("{}: INFO replication lacks slave_repl_offset", replica.name))
}

/// A checked WAL position (`X/Y` in hex), safe to put in a query.
pub fn checked_lsn(s: &str) -> Option<&str> {
    let (a, b) = s.split_once('/')?;
    let hex = |p: &str| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_hexdigit());
    (hex(a) && hex(b)).then_some(s)
}

async fn pg_one(
    cfg: &ServiceConfig,
    up: &UpstreamConfig,
    sql: &str,
) -> Result<Vec<Option<String>>, String> {
    let rows = bounded(sql, postgres::simple_query(cfg, up, sql)).await?;
    Ok(rows.into_iter().next().unwrap_or_default())
}

/// `pg_current_wal_lsn()` of a primary.
pub async fn pg_current_lsn(cfg: &ServiceConfig, up: &UpstreamConfig) -> Result<String, String> {
    let row = pg_one(cfg, up, "SELECT pg_current_wal_lsn()::text").await?;
    let lsn = row.into_iter().next().flatten().unwrap_or_default();
    checked_lsn(&lsn)
        .map(str::to_string)
        .ok_or_else(|| format!("{}: unexpected WAL position {lsn:?}", up.name))
}

/// `pg_is_in_recovery()`: a standby.
pub async fn pg_in_recovery(cfg: &ServiceConfig, up: &UpstreamConfig) -> Result<bool, String> {
    let row = pg_one(cfg, up, "SELECT pg_is_in_recovery()::text").await?;
    Ok(row.first().cloned().flatten().as_deref() == Some("true"))
}

/// Whether a standby has replayed at least `lsn`.
pub async fn pg_replayed(
    cfg: &ServiceConfig,
    up: &UpstreamConfig,
    lsn: &str,
) -> Result<bool, String> {
    let lsn = checked_lsn(lsn).ok_or_else(|| format!("bad WAL position {lsn:?}"))?;
    let sql =
        format!("SELECT coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '{lsn}') >= 0, false)");
    let row = pg_one(cfg, up, &sql).await?;
    Ok(row.first().cloned().flatten().as_deref() == Some("t"))
}

/// Checks a diverged upstream against the current active one, and clears
/// `diverged` when it is a caught-up replica of it.
pub async fn verify(svc: &ServiceRt, idx: usize) -> ResyncState {
    let active = svc.route.load().active;
    let (Some(up), Some(act)) = (svc.upstreams.get(idx), svc.upstreams.get(active)) else {
        return ResyncState::Pending("no such upstream".into());
    };
    if idx == active {
        return ResyncState::Pending(format!("{} is the active upstream", up.cfg.name));
    }
    let state = match svc.cfg.kind {
        Kind::Redis => redis_state(&svc.cfg, &up.cfg, &act.cfg).await,
        Kind::Postgres => pg_state(&svc.cfg, &up.cfg, &act.cfg).await,
        _ => ResyncState::Resynced,
    };
    if state == ResyncState::Resynced {
        let mut h = lock(&up.health);
        if h.diverged {
            tracing::info!(service = svc.name(), upstream = %up.cfg.name, "old primary resynchronised");
        }
        h.diverged = false;
    }
    state
}

async fn redis_state(
    cfg: &ServiceConfig,
    up: &UpstreamConfig,
    act: &UpstreamConfig,
) -> ResyncState {
    let mut last = String::new();
    for _ in 0..CATCH_UP_TRIES {
        let primary = match redis_master_offset(cfg, act).await {
            Ok(o) => o,
            Err(e) => return ResyncState::Pending(e),
        };
        match redis_info(cfg, up).await {
            Ok(info) if info.get("role").map(String::as_str) == Some("master") => {
                return ResyncState::NeedsRebuild(format!(
                    "{} is a primary of its own: resync it (REPLICAOF {})",
                    up.name,
                    act.target()
                ));
            }
            Ok(_) => {}
            Err(e) => return ResyncState::Pending(e),
        }
        match redis_replica_offset(cfg, up, act).await {
            Ok(o) if o >= primary => return ResyncState::Resynced,
            Ok(o) => last = format!("{} is {} bytes behind {}", up.name, primary - o, act.name),
            Err(e) => return ResyncState::Pending(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ResyncState::Pending(last)
}

async fn pg_state(cfg: &ServiceConfig, up: &UpstreamConfig, act: &UpstreamConfig) -> ResyncState {
    let row = match pg_one(
        cfg,
        up,
        "SELECT pg_is_in_recovery()::text, (SELECT status || ' ' || coalesce(sender_host, '') || ' ' || coalesce(sender_port::text, '') FROM pg_stat_wal_receiver LIMIT 1)",
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return ResyncState::Pending(e),
    };
    if row.first().cloned().flatten().as_deref() != Some("true") {
        return ResyncState::NeedsRebuild(format!(
            "{} is not in recovery: rebuild it as a standby of {} (pg_rewind or pg_basebackup)",
            up.name, act.name
        ));
    }
    let receiver = row.get(1).cloned().flatten().unwrap_or_default();
    let mut parts = receiver.split(' ');
    let (status, host, port) = (parts.next(), parts.next(), parts.next());
    let Some((ah, ap)) = host_port(act) else {
        return ResyncState::Pending(format!("bad address of {}", act.name));
    };
    let from_active = status == Some("streaming")
        && port.and_then(|p| p.parse::<u16>().ok()) == Some(ap)
        && host.is_none_or(|h| h.is_empty() || same_host(h, &ah));
    if !from_active {
        return ResyncState::Pending(format!(
            "{} is in recovery but not streaming from {} (wal receiver: {receiver:?})",
            up.name, act.name
        ));
    }
    let mut last = String::new();
    for _ in 0..CATCH_UP_TRIES {
        let lsn = match pg_current_lsn(cfg, act).await {
            Ok(l) => l,
            Err(e) => return ResyncState::Pending(e),
        };
        match pg_replayed(cfg, up, &lsn).await {
            Ok(true) => return ResyncState::Resynced,
            Ok(false) => last = format!("{} has not replayed {lsn} of {} yet", up.name, act.name),
            Err(e) => return ResyncState::Pending(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ResyncState::Pending(last)
}

/// Makes a diverged redis old primary a replica of the active upstream
/// (`REPLICAOF <active>`). Postgres cannot be resynchronised online: the
/// answer says what to run.
pub async fn resync(svc: &ServiceRt, idx: usize) -> Result<(), String> {
    let active = svc.route.load().active;
    let (Some(up), Some(act)) = (svc.upstreams.get(idx), svc.upstreams.get(active)) else {
        return Err("no such upstream".into());
    };
    if idx == active {
        return Err(format!("{} is the active upstream", up.cfg.name));
    }
    match svc.cfg.kind {
        Kind::Redis => {
            let (host, port) =
                host_port(&act.cfg).ok_or_else(|| format!("bad address of {}", act.cfg.name))?;
            bounded(
                "REPLICAOF",
                redis::replicate_from(&svc.cfg, &up.cfg, &host, port),
            )
            .await
        }
        Kind::Postgres => match verify(svc, idx).await {
            ResyncState::Resynced => Ok(()),
            ResyncState::NeedsRebuild(m) | ResyncState::Pending(m) => Err(format!(
                "{m}; postgres cannot be resynchronised online, see docs/switchover.md"
            )),
        },
        _ => Ok(()),
    }
}

/// `Command::Resync`: resynchronises every diverged upstream of `svc`
/// from the active one and waits (up to 10 s) until each is a caught-up
/// replica; it is then unfenced, the service's new secondary.
///
/// A fenced upstream that is no longer `diverged` (a probe already saw it
/// as a caught-up replica: a PostgreSQL old primary rebuilt with
/// `pg_basebackup`/`pg_rewind`, a redis one given `REPLICAOF` by hand) is
/// checked the same way, without being touched, and unfenced too; without
/// this it stayed fenced until an engine restart and could never take a
/// failover again. Only redis and postgres upstreams, whose replication
/// `verify` can see, are unfenced this way.
pub(crate) async fn resync_service(svc: &ServiceRt) -> Result<Vec<String>, CommandError> {
    let _guard = svc.switch_lock.lock().await;
    let route = svc.route.load_full();
    let active = route.active;
    let replicated = matches!(svc.cfg.kind, Kind::Redis | Kind::Postgres);
    // (index, diverged) of every upstream to resync or to check.
    let targets: Vec<(usize, bool)> = (0..svc.upstreams.len())
        .filter(|&i| i != active)
        .filter_map(|i| {
            let diverged = lock(&svc.upstreams.get(i)?.health).diverged;
            let fenced = route.fenced.get(i).copied().unwrap_or(false);
            (diverged || (fenced && replicated)).then_some((i, diverged))
        })
        .collect();
    let mut done = Vec::new();
    for (idx, diverged) in targets {
        let name = svc.upstream_name(idx).unwrap_or("?").to_string();
        if diverged {
            resync(svc, idx).await.map_err(CommandError::NotResynced)?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match verify(svc, idx).await {
                ResyncState::Resynced => break,
                ResyncState::NeedsRebuild(m) | ResyncState::Pending(m) => {
                    if std::time::Instant::now() >= deadline {
                        let what = if diverged {
                            "did not catch up within 10 s"
                        } else {
                            "is fenced and not a caught-up replica of the active upstream (checked for 10 s)"
                        };
                        return Err(CommandError::NotResynced(format!("{name} {what}: {m}")));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if crate::upstream::switch::unfence(svc, idx) {
            tracing::warn!(
                service = svc.name(),
                upstream = %name,
                "resync: unfenced, a caught-up replica of the active upstream"
            );
        }
        done.push(name);
    }
    svc.refresh_status();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_and_lsn_parsing() {
        let info = parse_info(
            "# Replication\r\nrole:slave\r\nmaster_port:6380\r\nslave_repl_offset:42\r\n",
        );
        assert_eq!(info.get("role").map(String::as_str), Some("slave"));
        assert_eq!(num(&info, "master_port"), Some(6380));
        assert_eq!(num(&info, "slave_repl_offset"), Some(42));
        assert_eq!(checked_lsn("0/3000060"), Some("0/3000060"));
        assert_eq!(checked_lsn("0/30'; DROP"), None);
        assert_eq!(checked_lsn("03000060"), None);
        assert!(same_host("localhost", "127.0.0.1"));
        assert!(!same_host("10.0.0.1", "127.0.0.1"));
    }
}
