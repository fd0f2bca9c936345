//! Escalation rules (SPEC 9): the design's table as [`default_rules`], and
//! `[[alerts.rule]]` tables parsed by [`parse_rules`] (which replace the
//! defaults as a whole). See `docs/alerting.md` for the format.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

macro_rules! wire_enum {
    ($(#[$m:meta])* $ty:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub enum $ty { $(#[serde(rename = $s)] $v),+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Option<$ty> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == s)
            }
            fn names() -> String {
                $ty::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// What a rule watches.
    Condition {
        ServiceUnresponsive => "service_unresponsive",
        DependenciesFailed => "dependencies_failed",
        FederalOffline => "federal_offline",
        Neo4jWriteFailure => "neo4j_write_failure",
        EtlStall => "etl_stall",
        WebsocketDrop => "websocket_drop",
    }
);

wire_enum!(
    /// The design's severities, most severe first.
    AlertSeverity {
        Emergency => "emergency",
        Priority1 => "priority_1",
        Critical => "critical",
        High => "high",
        Degraded => "degraded",
        Warning => "warning",
        Info => "info",
    }
);

wire_enum!(
    /// Where an alert is shown or sent. The four dashboards follow the
    /// tier; `federal_liaison` is the liaison webhook.
    Route {
        RtccLiveDashboard => "rtcc_live_dashboard",
        OpsCenter => "ops_center",
        TacticalDashboard => "tactical_dashboard",
        CommandCenter => "command_center",
        FederalLiaison => "federal_liaison",
    }
);

impl AlertSeverity {
    /// SPEC 9: 1 emergency and priority 1, 2 critical, 3 degraded or high,
    /// 4 informational.
    pub fn default_tier(self) -> u8 {
        match self {
            AlertSeverity::Emergency | AlertSeverity::Priority1 => 1,
            AlertSeverity::Critical => 2,
            AlertSeverity::High | AlertSeverity::Degraded | AlertSeverity::Warning => 3,
            AlertSeverity::Info => 4,
        }
    }
}

/// The dashboards, in display order.
pub const DASHBOARDS: [Route; 4] = [
    Route::RtccLiveDashboard,
    Route::OpsCenter,
    Route::TacticalDashboard,
    Route::CommandCenter,
];

/// SPEC 9 routing: RTCC live dashboard and ops center get every tier,
/// the tactical dashboard tiers 1-2, the command center tier 1 only.
pub fn tier_routes(tier: u8) -> Vec<Route> {
    let mut r = vec![Route::RtccLiveDashboard, Route::OpsCenter];
    if tier <= 2 {
        r.push(Route::TacticalDashboard);
    }
    if tier <= 1 {
        r.push(Route::CommandCenter);
    }
    r
}

/// A rule's routes before its extra `routes`: the tier's dashboards, and
/// for federal_offline the federal liaison (the design's federal endpoint
/// recovery: "notify federal liaison (if > 5min)").
fn base_routes(condition: Condition, tier: u8) -> Vec<Route> {
    let mut r = tier_routes(tier);
    if condition == Condition::FederalOffline {
        r.push(Route::FederalLiaison);
    }
    r
}

/// The colour the operations page shows (SPEC 8).
pub fn tier_color(tier: u8) -> &'static str {
    match tier {
        1 | 2 => "red",
        3 => "yellow",
        _ => "green",
    }
}

/// One escalation rule, resolved (every default filled in).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub name: String,
    pub condition: Condition,
    pub severity: AlertSeverity,
    pub tier: u8,
    /// The tier's dashboards plus any extra routes the rule names.
    pub routes: Vec<Route>,
    /// service_unresponsive / federal_offline: how long the condition must
    /// hold; neo4j_write_failure: how long after the last reported failure
    /// the alert stays open; websocket_drop: how long a reported ratio counts.
    pub threshold: Duration,
    /// dependencies_failed: how many services must be down.
    pub count: u32,
    /// websocket_drop: the drop ratio (0-1) that must be exceeded.
    pub ratio: f64,
    /// Only these services (empty: all).
    pub services: Vec<String>,
}

impl Rule {
    fn new(name: &str, condition: Condition) -> Rule {
        let severity = default_severity(condition);
        let tier = severity.default_tier();
        Rule {
            name: name.to_string(),
            condition,
            severity,
            tier,
            routes: base_routes(condition, tier),
            threshold: default_threshold(condition),
            count: 2,
            ratio: 0.20,
            services: Vec::new(),
        }
    }

    /// Whether the rule applies to `service` (a rule without `services`
    /// applies to all).
    pub fn covers(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }
}

fn default_severity(c: Condition) -> AlertSeverity {
    match c {
        Condition::ServiceUnresponsive | Condition::WebsocketDrop => AlertSeverity::Degraded,
        Condition::DependenciesFailed => AlertSeverity::Critical,
        Condition::FederalOffline => AlertSeverity::Priority1,
        Condition::Neo4jWriteFailure => AlertSeverity::Emergency,
        Condition::EtlStall => AlertSeverity::High,
    }
}

fn default_threshold(c: Condition) -> Duration {
    match c {
        Condition::ServiceUnresponsive => Duration::from_secs(10),
        Condition::FederalOffline | Condition::Neo4jWriteFailure => Duration::from_secs(300),
        Condition::WebsocketDrop => Duration::from_secs(60),
        Condition::DependenciesFailed | Condition::EtlStall => Duration::ZERO,
    }
}

/// The design's escalation table (PHASE14-DESIGN.md, "Escalation Thresholds").
pub fn default_rules() -> Vec<Rule> {
    vec![
        Rule::new("service_unresponsive", Condition::ServiceUnresponsive),
        Rule::new("dependencies_failed", Condition::DependenciesFailed),
        Rule::new("federal_offline", Condition::FederalOffline),
        Rule::new("neo4j_write_failure", Condition::Neo4jWriteFailure),
        Rule::new("etl_stall", Condition::EtlStall),
        Rule::new("websocket_drop", Condition::WebsocketDrop),
    ]
}

/// The keys a condition takes besides [`COMMON_KEYS`]. Public so that the
/// reference-completeness test reads the accepted keys from here.
pub fn condition_keys(c: Condition) -> &'static [&'static str] {
    match c {
        Condition::ServiceUnresponsive | Condition::FederalOffline => &["threshold_seconds"],
        Condition::DependenciesFailed => &["count"],
        Condition::Neo4jWriteFailure => &["clear_after_seconds"],
        Condition::WebsocketDrop => &["percent", "window_seconds"],
        Condition::EtlStall => &[],
    }
}

/// The keys every `[[alerts.rule]]` takes.
pub const COMMON_KEYS: [&str; 6] = [
    "name",
    "condition",
    "severity",
    "tier",
    "routes",
    "services",
];

/// Parses `[[alerts.rule]]` tables. Every problem is reported, each as
/// `alerts.rule[i].key: what is wrong`.
pub fn parse_rules(raw: &[toml::Value]) -> Result<Vec<Rule>, Vec<String>> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    for (i, v) in raw.iter().enumerate() {
        let at = format!("alerts.rule[{i}]");
        match parse_one(&at, v) {
            Ok(rule) => {
                if !names.insert(rule.name.clone()) {
                    errors.push(format!(
                        "{at}.name: duplicate rule name `{}`; names must be unique",
                        rule.name
                    ));
                }
                rules.push(rule);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

fn parse_one(at: &str, v: &toml::Value) -> Result<Rule, Vec<String>> {
    let Some(t) = v.as_table() else {
        return Err(vec![format!("{at}: must be a table")]);
    };
    let mut errs = Vec::new();
    let text = |key: &str, errs: &mut Vec<String>| match t.get(key) {
        None => None,
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(_) => {
            errs.push(format!("{at}.{key}: must be a non-empty string"));
            None
        }
    };
    let name = text("name", &mut errs);
    if name.is_none() && !t.contains_key("name") {
        errs.push(format!(
            "{at}.name: missing; every rule needs a unique name"
        ));
    }
    let condition = match text("condition", &mut errs) {
        Some(c) => Condition::parse(&c).or_else(|| {
            errs.push(format!(
                "{at}.condition: unknown condition `{c}`; one of {}",
                Condition::names()
            ));
            None
        }),
        None => {
            if !t.contains_key("condition") {
                errs.push(format!(
                    "{at}.condition: missing; one of {}",
                    Condition::names()
                ));
            }
            None
        }
    };
    let (Some(name), Some(condition)) = (name, condition) else {
        return Err(errs);
    };
    let mut rule = Rule::new(&name, condition);
    let allowed = condition_keys(condition);
    for key in t.keys() {
        if !COMMON_KEYS.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
            let takes = if allowed.is_empty() {
                "no other keys".to_string()
            } else {
                allowed.join(", ")
            };
            errs.push(format!(
                "{at}.{key}: not a key of condition {condition} (it takes {takes})"
            ));
        }
    }
    if let Some(s) = text("severity", &mut errs) {
        match AlertSeverity::parse(&s) {
            Some(sev) => rule.severity = sev,
            None => errs.push(format!(
                "{at}.severity: unknown severity `{s}`; one of {}",
                AlertSeverity::names()
            )),
        }
    }
    rule.tier = rule.severity.default_tier();
    if let Some(v) = t.get("tier") {
        match v.as_integer() {
            Some(n @ 1..=4) => rule.tier = n as u8,
            _ => errs.push(format!("{at}.tier: must be an integer from 1 to 4")),
        }
    }
    rule.routes = base_routes(condition, rule.tier);
    if let Some(v) = t.get("routes") {
        for r in strings(at, "routes", v, &mut errs) {
            match Route::parse(&r) {
                Some(r) if !rule.routes.contains(&r) => rule.routes.push(r),
                Some(_) => {}
                None => errs.push(format!(
                    "{at}.routes: unknown route `{r}`; one of {}",
                    Route::names()
                )),
            }
        }
    }
    if let Some(v) = t.get("services") {
        rule.services = strings(at, "services", v, &mut errs);
    }
    for key in ["threshold_seconds", "clear_after_seconds", "window_seconds"] {
        if let Some(v) = t.get(key) {
            match number(v) {
                Some(s) if (0.0..=31_536_000.0).contains(&s) => {
                    rule.threshold = Duration::from_secs_f64(s);
                }
                _ => errs.push(format!(
                    "{at}.{key}: must be a number of seconds, 0 or more"
                )),
            }
        }
    }
    if let Some(v) = t.get("count") {
        match v.as_integer() {
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => rule.count = n as u32,
            _ => errs.push(format!("{at}.count: must be an integer, 1 or more")),
        }
    }
    if let Some(v) = t.get("percent") {
        match number(v) {
            Some(p) if p > 0.0 && p <= 100.0 => rule.ratio = p / 100.0,
            _ => errs.push(format!(
                "{at}.percent: must be a number above 0 and at most 100"
            )),
        }
    }
    if errs.is_empty() {
        Ok(rule)
    } else {
        Err(errs)
    }
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

fn strings(at: &str, key: &str, v: &toml::Value, errs: &mut Vec<String>) -> Vec<String> {
    let items = v.as_array().map(|a| {
        a.iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
    });
    match items {
        Some(Some(list)) => list,
        _ => {
            errs.push(format!("{at}.{key}: must be an array of strings"));
            Vec::new()
        }
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
