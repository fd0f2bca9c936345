//! The leader's decision on pooled evidence, as a pure function of the
//! agreed route and the views of the live engines (tested without etcd).
//!
//! The active upstream is failed over only when at least `quorum` engines
//! see it down (default: a majority of the engines publishing a view of
//! the service). The target is the unfenced upstream the most engines see
//! up; ties go to the configured order. An engine alone, cut off from the
//! primary, is one vote: it cannot move the service.

use serde_json::json;

use crate::cluster::doc::{AgreedRoute, ViewDoc};

/// What the views say about a service's agreed route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody sees the active upstream down.
    Stay,
    /// Some engines see it down, fewer than the quorum.
    NoQuorum {
        down: Vec<String>,
        needed: usize,
        voters: usize,
    },
    /// A quorum sees it down, but no other upstream is seen up.
    NoTarget { down: Vec<String> },
    /// A quorum sees it down: move to `to`.
    Failover {
        to: String,
        down: Vec<String>,
        saw_up: Vec<String>,
        needed: usize,
        voters: usize,
    },
}

/// Engines needed to fail over: `quorum`, else a majority of `voters`.
pub fn needed(quorum: Option<u32>, voters: usize) -> usize {
    match quorum {
        Some(q) => q.max(1) as usize,
        None => voters / 2 + 1,
    }
}

/// The decision for `route`, given the configured upstream names (in
/// configured order) and the views of the live engines.
pub fn verdict(
    route: &AgreedRoute,
    upstreams: &[String],
    views: &[&ViewDoc],
    quorum: Option<u32>,
) -> Verdict {
    let voters = views.len();
    let needed = needed(quorum, voters);
    let down: Vec<String> = views
        .iter()
        .filter(|v| v.health_of(&route.active) == Some("down"))
        .map(|v| v.node_id.clone())
        .collect();
    if down.is_empty() {
        return Verdict::Stay;
    }
    if down.len() < needed {
        return Verdict::NoQuorum {
            down,
            needed,
            voters,
        };
    }
    let mut best: Option<(&String, Vec<String>)> = None;
    for name in upstreams {
        if *name == route.active || route.fenced.contains(name) {
            continue;
        }
        let up: Vec<String> = views
            .iter()
            .filter(|v| v.health_of(name) == Some("up"))
            .map(|v| v.node_id.clone())
            .collect();
        if !up.is_empty() && best.as_ref().is_none_or(|(_, b)| up.len() > b.len()) {
            best = Some((name, up));
        }
    }
    match best {
        Some((to, saw_up)) => Verdict::Failover {
            to: to.clone(),
            down,
            saw_up,
            needed,
            voters,
        },
        None => Verdict::NoTarget { down },
    }
}

/// The evidence of a decision, for its audit entry: which engines saw
/// what, and the quorum.
pub fn evidence(views: &[&ViewDoc], needed: usize) -> serde_json::Value {
    let seen: Vec<_> = views
        .iter()
        .map(|v| {
            json!({
                "node_id": v.node_id,
                "at": v.at,
                "upstreams": v.upstreams,
            })
        })
        .collect();
    json!({ "quorum": needed, "voters": views.len(), "views": seen })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::doc::{Phase, UpstreamView};
    use chrono::Utc;

    fn route(active: &str, fenced: &[&str]) -> AgreedRoute {
        AgreedRoute {
            active: active.into(),
            epoch: 1,
            fenced: fenced.iter().map(|s| s.to_string()).collect(),
            phase: Phase::Serving,
            decided_by: "n1".into(),
            trigger: "initial".into(),
            actor: "system".into(),
            reason: String::new(),
            at: Utc::now(),
            planned: false,
        }
    }

    /// A view from `node`: (upstream, health) pairs.
    fn view(node: &str, seen: &[(&str, &str)]) -> ViewDoc {
        ViewDoc {
            node_id: node.into(),
            at: Utc::now(),
            active: "a".into(),
            epoch: 1,
            upstreams: seen
                .iter()
                .map(|(n, h)| UpstreamView {
                    name: n.to_string(),
                    health: h.to_string(),
                    observed_role: None,
                    consecutive_failures: 0,
                    last_error: None,
                })
                .collect(),
        }
    }

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn one_engine_alone_cannot_move_the_service() {
        let v = [
            view("n1", &[("a", "down"), ("b", "up")]),
            view("n2", &[("a", "up"), ("b", "up")]),
            view("n3", &[("a", "up"), ("b", "up")]),
        ];
        let views: Vec<&ViewDoc> = v.iter().collect();
        assert_eq!(
            verdict(&route("a", &[]), &names(), &views, None),
            Verdict::NoQuorum {
                down: vec!["n1".into()],
                needed: 2,
                voters: 3
            }
        );
    }

    #[test]
    fn a_majority_moves_it_to_the_upstream_most_see_up() {
        let v = [
            view("n1", &[("a", "down"), ("b", "up"), ("c", "up")]),
            view("n2", &[("a", "down"), ("b", "down"), ("c", "up")]),
            view("n3", &[("a", "up"), ("b", "unknown"), ("c", "up")]),
        ];
        let views: Vec<&ViewDoc> = v.iter().collect();
        match verdict(&route("a", &[]), &names(), &views, None) {
            Verdict::Failover {
                to,
                down,
                saw_up,
                needed,
                voters,
            } => {
                assert_eq!(to, "c");
                assert_eq!(down, vec!["n1".to_string(), "n2".to_string()]);
                assert_eq!(saw_up.len(), 3);
                assert_eq!((needed, voters), (2, 3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ties_go_to_the_configured_order_and_fenced_upstreams_are_skipped() {
        let v = [view("n1", &[("a", "down"), ("b", "up"), ("c", "up")])];
        let views: Vec<&ViewDoc> = v.iter().collect();
        let to = |r: &AgreedRoute| match verdict(r, &names(), &views, None) {
            Verdict::Failover { to, .. } => to,
            other => panic!("{other:?}"),
        };
        assert_eq!(to(&route("a", &[])), "b");
        assert_eq!(to(&route("a", &["b"])), "c");
    }

    #[test]
    fn an_explicit_quorum_counts_and_no_target_is_said() {
        let v = [
            view("n1", &[("a", "down"), ("b", "down")]),
            view("n2", &[("a", "down"), ("b", "down")]),
        ];
        let views: Vec<&ViewDoc> = v.iter().collect();
        assert!(matches!(
            verdict(&route("a", &[]), &names(), &views, Some(3)),
            Verdict::NoQuorum { needed: 3, .. }
        ));
        assert!(matches!(
            verdict(&route("a", &[]), &names(), &views, Some(2)),
            Verdict::NoTarget { .. }
        ));
        let healthy = [view("n1", &[("a", "up")])];
        let views: Vec<&ViewDoc> = healthy.iter().collect();
        assert_eq!(
            verdict(&route("a", &[]), &names(), &views, None),
            Verdict::Stay
        );
    }

    #[test]
    fn quorum_defaults_to_a_majority() {
        assert_eq!(needed(None, 1), 1);
        assert_eq!(needed(None, 2), 2);
        assert_eq!(needed(None, 3), 2);
        assert_eq!(needed(None, 5), 3);
        assert_eq!(needed(Some(0), 5), 1);
        assert_eq!(needed(Some(4), 3), 4);
    }
}
