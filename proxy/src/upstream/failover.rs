//! The failover state machine, as pure functions over plain values so it
//! is tested without sockets or clocks (linkerd `consecutive_failures`,
//! pingora `failover.md`).
//!
//! Per upstream: `Unknown -> Up` on the first good probe, `Up -> Down` after
//! `failure_threshold` consecutive failures (or at once on passive evidence
//! of a refused/reset connect), `Down -> Up` after `recovery_threshold`
//! consecutive successes. Per service: [`decide`] says whether to stay, fail
//! over, follow a role change, or fail back.

use crate::config::{Failback, FailoverMode, OnFailover, Redundancy, Role};
use crate::health::ObservedRole;
use crate::snapshot::{ServiceStatus, UpstreamHealth};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub failure: u32,
    pub recovery: u32,
}

/// Consecutive counters and the judged health of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub health: UpstreamHealth,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            health: UpstreamHealth::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
        }
    }
}

pub type Transition = (UpstreamHealth, UpstreamHealth);

/// Applies one probe result; returns the transition if health changed.
pub fn on_probe(c: &mut Counters, ok: bool, t: Thresholds) -> Option<Transition> {
    let old = c.health;
    if ok {
        c.consecutive_successes = c.consecutive_successes.saturating_add(1);
        c.consecutive_failures = 0;
        let up = match old {
            UpstreamHealth::Unknown => true,
            UpstreamHealth::Down => c.consecutive_successes >= t.recovery.max(1),
            UpstreamHealth::Up => false,
        };
        if up {
            c.health = UpstreamHealth::Up;
        }
    } else {
        c.consecutive_failures = c.consecutive_failures.saturating_add(1);
        c.consecutive_successes = 0;
        if old != UpstreamHealth::Down && c.consecutive_failures >= t.failure.max(1) {
            c.health = UpstreamHealth::Down;
        }
    }
    (c.health != old).then_some((old, c.health))
}

/// Certain evidence (connect refused or reset): down at once.
pub fn on_refused(c: &mut Counters, t: Thresholds) -> Option<Transition> {
    let old = c.health;
    c.consecutive_failures = c.consecutive_failures.max(t.failure.max(1));
    c.consecutive_successes = 0;
    c.health = UpstreamHealth::Down;
    (old != UpstreamHealth::Down).then_some((old, UpstreamHealth::Down))
}

/// An unanswered probe (the upstream accepts connections, answers
/// nothing) `silent_for` after the first of them in a row: nothing counts
/// while that is under `grace` (busy is not dead); from then on it is down
/// at once, as on a refused connect. With no grace it is an ordinary
/// failure.
pub fn on_unanswered(
    c: &mut Counters,
    silent_for: std::time::Duration,
    grace: std::time::Duration,
    t: Thresholds,
) -> Option<Transition> {
    if grace.is_zero() {
        return on_probe(c, false, t);
    }
    if silent_for < grace {
        return None;
    }
    on_refused(c, t)
}

/// What one service looks like to the decision.
#[derive(Debug, Clone)]
pub struct View {
    pub active: usize,
    pub configured_primary: usize,
    pub failover: FailoverMode,
    pub failback: Failback,
    pub on_failover: OnFailover,
    /// `cold`: the secondary is never probed, so only an operator switches.
    pub redundancy: Redundancy,
    pub in_hold_down: bool,
    pub upstreams: Vec<UpView>,
}

#[derive(Debug, Clone, Copy)]
pub struct UpView {
    pub health: UpstreamHealth,
    pub fenced: bool,
    pub role: Role,
    pub observed: Option<ObservedRole>,
    pub consecutive_successes: u32,
}

impl UpView {
    /// May carry traffic now.
    pub fn usable(&self) -> bool {
        !self.fenced && self.health == UpstreamHealth::Up
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Stay,
    /// The active upstream is down: move to `to`.
    Failover {
        to: usize,
    },
    /// Something outside promoted `to` while the active is a replica.
    FollowRole {
        to: usize,
    },
    /// `failback = "auto"`: the configured primary is back.
    Failback {
        to: usize,
    },
    /// A switch is needed but cannot happen; the reason says why.
    Blocked(&'static str),
}

/// The best usable upstream other than `exclude`: an observed primary
/// first, then a configured primary, then configuration order.
pub fn best_other(v: &View, exclude: usize) -> Option<usize> {
    let rank = |u: &UpView| {
        let observed = u.observed == Some(ObservedRole::Primary);
        let configured = u.role == Role::Primary;
        (!observed, !configured)
    };
    v.upstreams
        .iter()
        .enumerate()
        .filter(|(i, u)| *i != exclude && u.usable())
        .min_by_key(|(i, u)| (rank(u), *i))
        .map(|(i, _)| i)
}

/// The automatic decision after any probe or passive signal.
pub fn decide(v: &View, t: Thresholds) -> Decision {
    let Some(active) = v.upstreams.get(v.active) else {
        return Decision::Stay;
    };
    if active.health == UpstreamHealth::Down || active.fenced {
        if v.failover == FailoverMode::Manual {
            return Decision::Blocked("failover = manual");
        }
        if v.redundancy == Redundancy::Cold {
            return Decision::Blocked("redundancy = cold: failover by hand only");
        }
        if v.in_hold_down {
            return Decision::Blocked("within hold_down_seconds of the last switch");
        }
        return match best_other(v, v.active) {
            Some(to) => Decision::Failover { to },
            None => Decision::Blocked("no usable upstream"),
        };
    }
    if v.in_hold_down || v.failover == FailoverMode::Manual || v.redundancy == Redundancy::Cold {
        return Decision::Stay;
    }
    if active.observed == Some(ObservedRole::Replica) {
        let promoted = v.upstreams.iter().enumerate().find(|(i, u)| {
            *i != v.active && u.usable() && u.observed == Some(ObservedRole::Primary)
        });
        if let Some((to, _)) = promoted {
            return Decision::FollowRole { to };
        }
    }
    if v.failback == Failback::Auto
        && v.on_failover == OnFailover::Route
        && v.active != v.configured_primary
    {
        if let Some(p) = v.upstreams.get(v.configured_primary) {
            if p.health == UpstreamHealth::Up && p.consecutive_successes >= t.recovery.max(1) {
                return Decision::Failback {
                    to: v.configured_primary,
                };
            }
        }
    }
    Decision::Stay
}

/// SPEC 3 service status from the active upstream and the others.
pub fn service_status(v: &View, active_slow: bool) -> ServiceStatus {
    let Some(active) = v.upstreams.get(v.active) else {
        return ServiceStatus::Down;
    };
    match active.health {
        UpstreamHealth::Unknown => return ServiceStatus::Unknown,
        UpstreamHealth::Down => return ServiceStatus::Down,
        UpstreamHealth::Up if active.fenced => return ServiceStatus::Down,
        UpstreamHealth::Up => {}
    }
    let other_down = v
        .upstreams
        .iter()
        .enumerate()
        .any(|(i, u)| i != v.active && u.health == UpstreamHealth::Down);
    if v.active != v.configured_primary || active_slow || other_down {
        ServiceStatus::Degraded
    } else {
        ServiceStatus::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        failure: 3,
        recovery: 2,
    };

    fn up(role: Role) -> UpView {
        UpView {
            health: UpstreamHealth::Up,
            fenced: false,
            role,
            observed: None,
            consecutive_successes: 5,
        }
    }

    fn view(ups: Vec<UpView>) -> View {
        View {
            active: 0,
            configured_primary: 0,
            failover: FailoverMode::Auto,
            failback: Failback::Manual,
            on_failover: OnFailover::Route,
            redundancy: Redundancy::Hot,
            in_hold_down: false,
            upstreams: ups,
        }
    }

    #[test]
    fn down_after_threshold_and_up_after_recovery() {
        let mut c = Counters::default();
        assert_eq!(
            on_probe(&mut c, true, T),
            Some((UpstreamHealth::Unknown, UpstreamHealth::Up))
        );
        assert_eq!(on_probe(&mut c, false, T), None);
        assert_eq!(on_probe(&mut c, false, T), None);
        assert_eq!(
            on_probe(&mut c, false, T),
            Some((UpstreamHealth::Up, UpstreamHealth::Down))
        );
        assert_eq!(on_probe(&mut c, true, T), None);
        assert_eq!(
            on_probe(&mut c, true, T),
            Some((UpstreamHealth::Down, UpstreamHealth::Up))
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut c = Counters::default();
        on_probe(&mut c, true, T);
        on_probe(&mut c, false, T);
        on_probe(&mut c, false, T);
        on_probe(&mut c, true, T);
        on_probe(&mut c, false, T);
        assert_eq!(c.health, UpstreamHealth::Up);
    }

    #[test]
    fn refusal_is_down_at_once() {
        let mut c = Counters::default();
        on_probe(&mut c, true, T);
        assert_eq!(
            on_refused(&mut c, T),
            Some((UpstreamHealth::Up, UpstreamHealth::Down))
        );
        assert_eq!(on_refused(&mut c, T), None);
    }

    #[test]
    fn fails_over_to_the_usable_secondary() {
        let mut v = view(vec![up(Role::Primary), up(Role::Secondary)]);
        assert_eq!(decide(&v, T), Decision::Stay);
        v.upstreams[0].health = UpstreamHealth::Down;
        assert_eq!(decide(&v, T), Decision::Failover { to: 1 });
        v.in_hold_down = true;
        assert!(matches!(decide(&v, T), Decision::Blocked(_)));
        v.in_hold_down = false;
        v.failover = FailoverMode::Manual;
        assert!(matches!(decide(&v, T), Decision::Blocked(_)));
        v.failover = FailoverMode::Auto;
        v.redundancy = Redundancy::Cold;
        assert!(matches!(decide(&v, T), Decision::Blocked(_)));
    }

    #[test]
    fn never_to_a_fenced_or_down_upstream() {
        let mut v = view(vec![
            up(Role::Primary),
            up(Role::Secondary),
            up(Role::Secondary),
        ]);
        v.upstreams[0].health = UpstreamHealth::Down;
        v.upstreams[1].fenced = true;
        assert_eq!(decide(&v, T), Decision::Failover { to: 2 });
        v.upstreams[2].health = UpstreamHealth::Down;
        assert_eq!(decide(&v, T), Decision::Blocked("no usable upstream"));
    }

    #[test]
    fn prefers_an_observed_primary() {
        let mut v = view(vec![
            up(Role::Primary),
            up(Role::Secondary),
            up(Role::Secondary),
        ]);
        v.upstreams[0].health = UpstreamHealth::Down;
        v.upstreams[2].observed = Some(ObservedRole::Primary);
        assert_eq!(decide(&v, T), Decision::Failover { to: 2 });
    }

    #[test]
    fn follows_an_external_promotion() {
        let mut v = view(vec![up(Role::Primary), up(Role::Secondary)]);
        v.upstreams[0].observed = Some(ObservedRole::Replica);
        v.upstreams[1].observed = Some(ObservedRole::Primary);
        assert_eq!(decide(&v, T), Decision::FollowRole { to: 1 });
        // A fenced primary elsewhere is never followed.
        v.upstreams[1].fenced = true;
        assert_eq!(decide(&v, T), Decision::Stay);
    }

    #[test]
    fn auto_failback_only_in_route_mode() {
        let mut v = view(vec![up(Role::Primary), up(Role::Secondary)]);
        v.active = 1;
        v.upstreams[0].fenced = true;
        assert_eq!(decide(&v, T), Decision::Stay);
        v.failback = Failback::Auto;
        assert_eq!(decide(&v, T), Decision::Failback { to: 0 });
        v.on_failover = OnFailover::Promote;
        assert_eq!(decide(&v, T), Decision::Stay);
    }

    #[test]
    fn status_rules() {
        let mut v = view(vec![up(Role::Primary), up(Role::Secondary)]);
        assert_eq!(service_status(&v, false), ServiceStatus::Healthy);
        assert_eq!(service_status(&v, true), ServiceStatus::Degraded);
        v.upstreams[1].health = UpstreamHealth::Down;
        assert_eq!(service_status(&v, false), ServiceStatus::Degraded);
        v.upstreams[0].health = UpstreamHealth::Down;
        assert_eq!(service_status(&v, false), ServiceStatus::Down);
        v.upstreams[0].health = UpstreamHealth::Unknown;
        assert_eq!(service_status(&v, false), ServiceStatus::Unknown);
    }
}
