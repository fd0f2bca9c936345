//! What the engines of one cluster keep in etcd, as JSON under
//! `/continuity/{cluster_name}/` (docs/cluster.md):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `members/{node_id}` | [`MemberDoc`] | the engine's |
//! | `views/{service}/{node_id}` | [`ViewDoc`]: how that engine sees each upstream | the engine's |
//! | `leader/{service}` | the leader's `node_id` | the leader's |
//! | `route/{service}` | [`AgreedRoute`]: the one route every engine serves | none |
//!
//! A lease ends when its engine stops renewing it, and etcd then deletes
//! its keys: a dead engine leaves the membership, its views stop counting
//! and its leaderships are free. The route key has no lease: it outlives
//! every engine, and only a compare-and-swap on its revision changes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

/// What a key under the cluster's prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Member(String),
    View { service: String, node: String },
    Leader(String),
    Route(String),
}

impl Keys {
    pub fn new(cluster_name: &str) -> Keys {
        Keys {
            root: format!("/continuity/{cluster_name}/"),
        }
    }

    /// The prefix every key of the cluster starts with.
    pub fn prefix(&self) -> &str {
        &self.root
    }

    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.root)
    }

    pub fn view(&self, service: &str, node: &str) -> String {
        format!("{}views/{service}/{node}", self.root)
    }

    /// The prefix of every engine's view of `service`.
    pub fn views(&self, service: &str) -> String {
        format!("{}views/{service}/", self.root)
    }

    /// The prefix of the membership keys.
    pub fn members(&self) -> String {
        format!("{}members/", self.root)
    }

    pub fn leader(&self, service: &str) -> String {
        format!("{}leader/{service}", self.root)
    }

    pub fn route(&self, service: &str) -> String {
        format!("{}route/{service}", self.root)
    }

    /// What `key` names; `None` for a key outside this layout.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix(&self.root)?;
        let (kind, rest) = key.split_once('/')?;
        match kind {
            "members" => Some(Key::Member(rest.to_string())),
            "leader" => Some(Key::Leader(rest.to_string())),
            "route" => Some(Key::Route(rest.to_string())),
            "views" => {
                let (service, node) = rest.split_once('/')?;
                Some(Key::View {
                    service: service.to_string(),
                    node: node.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// One engine's membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberDoc {
    pub node_id: String,
    /// When this engine's current etcd session began.
    pub joined_at: DateTime<Utc>,
    pub version: String,
}

/// How one engine sees one upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpstreamView {
    pub name: String,
    /// `up`, `down` or `unknown`, as this engine's thresholds judge it.
    pub health: String,
    /// `primary` or `replica` when a probe saw the role.
    pub observed_role: Option<String>,
    pub consecutive_failures: u32,
    /// The last error this engine saw (probe or passive).
    pub last_error: Option<String>,
}

/// One engine's view of one service, published under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewDoc {
    pub node_id: String,
    pub at: DateTime<Utc>,
    /// The upstream this engine serves from, and its epoch.
    pub active: String,
    pub epoch: u64,
    pub upstreams: Vec<UpstreamView>,
}

impl ViewDoc {
    /// This engine's judgement of upstream `name`.
    pub fn health_of(&self, name: &str) -> Option<&str> {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.health.as_str())
    }
}

/// Where a decided route stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Decided; the deciding engine is promoting `active`. Engines hold
    /// new clients until the route is `serving`.
    Promoting,
    /// Every engine serves from `active`.
    Serving,
}

/// The route every engine of the cluster serves a service from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgreedRoute {
    /// The active upstream's name.
    pub active: String,
    pub epoch: u64,
    /// Upstreams fenced by a failover: no engine sends them traffic.
    #[serde(default)]
    pub fenced: Vec<String>,
    pub phase: Phase,
    /// The engine whose compare-and-swap wrote this route.
    pub decided_by: String,
    /// `auto`, `manual`, or `initial` (the first engine's own route).
    pub trigger: String,
    pub actor: String,
    pub reason: String,
    pub at: DateTime<Utc>,
    /// A planned switchover (zero-loss: the old primary paused for writes,
    /// the target caught up before it is promoted). While it is
    /// `promoting`, PostgreSQL connections to the old primary drain and
    /// close on every engine, as on one engine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub planned: bool,
}

/// `GET /api/ops/cluster`: the members, each service's leader, agreed
/// route and every engine's view, as this engine last read them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterSnapshot {
    /// false: no `[cluster]`; this engine decides alone.
    pub enabled: bool,
    pub cluster_name: String,
    pub node_id: String,
    /// Whether this engine holds a live etcd session.
    pub connected: bool,
    /// Why not, while not connected.
    pub reason: Option<String>,
    /// The etcd revision this engine last saw.
    pub revision: i64,
    pub lease_ttl_seconds: u64,
    /// Configured quorum; null: a majority of the engines publishing.
    pub quorum: Option<u32>,
    pub members: Vec<MemberDoc>,
    pub services: Vec<ClusterService>,
}

impl ClusterSnapshot {
    /// What `GET /api/ops/cluster` answers without `[cluster]`.
    pub fn disabled() -> ClusterSnapshot {
        ClusterSnapshot {
            enabled: false,
            cluster_name: String::new(),
            node_id: String::new(),
            connected: false,
            reason: None,
            revision: 0,
            lease_ttl_seconds: 0,
            quorum: None,
            members: Vec::new(),
            services: Vec::new(),
        }
    }
}

/// One coordinated service in [`ClusterSnapshot`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterService {
    pub service: String,
    /// The elected leader's node_id.
    pub leader: Option<String>,
    /// The agreed route, and its key's etcd revision.
    pub route: Option<AgreedRoute>,
    pub route_revision: Option<i64>,
    /// What this engine serves from now, and its epoch.
    pub local_active: String,
    pub local_epoch: u64,
    /// Whether that is the agreed route.
    pub agrees: bool,
    /// Set while this engine sees the agreed active upstream down and the
    /// cluster does not (too few engines agree to fail over).
    pub disagreement: Option<String>,
    pub views: Vec<ViewDoc>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        let k = Keys::new("rtcc");
        assert_eq!(
            k.parse(k.member("a").as_bytes()),
            Some(Key::Member("a".into()))
        );
        assert_eq!(
            k.parse(k.view("redis", "b").as_bytes()),
            Some(Key::View {
                service: "redis".into(),
                node: "b".into()
            })
        );
        assert_eq!(
            k.parse(k.leader("pg").as_bytes()),
            Some(Key::Leader("pg".into()))
        );
        assert_eq!(
            k.parse(k.route("pg").as_bytes()),
            Some(Key::Route("pg".into()))
        );
        assert_eq!(k.parse(b"/continuity/other/route/pg"), None);
        assert_eq!(k.parse(b"/continuity/rtcc/views/no-node"), None);
        assert_eq!(k.parse(b"/continuity/rtcc/unknown/x"), None);
        assert_eq!(k.parse(&[0xff, 0xfe]), None);
    }

    #[test]
    fn a_route_reads_back() {
        let r = AgreedRoute {
            active: "b".into(),
            epoch: 3,
            fenced: vec!["a".into()],
            phase: Phase::Promoting,
            decided_by: "n1".into(),
            trigger: "auto".into(),
            actor: "system".into(),
            reason: "a is down".into(),
            at: Utc::now(),
            planned: false,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""phase":"promoting""#), "{text}");
        assert!(!text.contains("planned"), "{text}");
        assert_eq!(serde_json::from_str::<AgreedRoute>(&text).unwrap(), r);
        let planned = AgreedRoute { planned: true, ..r };
        let text = serde_json::to_string(&planned).unwrap();
        assert!(text.contains(r#""planned":true"#), "{text}");
        assert_eq!(serde_json::from_str::<AgreedRoute>(&text).unwrap(), planned);
    }
}
