//! The diagnostics vocabulary (the design's categories and severities),
//! the records the API serves, and the query filters.

use chrono::{DateTime, Utc};
use serde::Serialize;

macro_rules! names {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
            pub(crate) fn index(self) -> usize {
                self as usize
            }
        }
    };
}

names!(
    /// Whose trouble it is (PHASE14-DESIGN "Diagnostic Categories").
    DiagCategory {
        Network => "network",
        Database => "database",
        Federal => "federal",
        Vendor => "vendor",
        Internal => "internal",
    }
);

names!(
    /// How urgent (PHASE14-DESIGN "Severity Levels"), in increasing order.
    DiagSeverity {
        Info => "info",
        Warning => "warning",
        Error => "error",
        Critical => "critical",
    }
);

/// What the rule table says about one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub category: DiagCategory,
    pub severity: DiagSeverity,
    /// A stable, machine-readable name: `connection_refused`, `timeout`,
    /// `auth_failed`, `sqlstate_57P01`, `redis_readonly`, ...
    pub class: String,
    pub upstream: Option<String>,
    /// For operators; may quote the upstream's own error.
    pub message: String,
}

/// One diagnostic event as the API and the bus show it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DiagnosticEvent {
    pub id: u64,
    pub at: DateTime<Utc>,
    pub category: DiagCategory,
    pub severity: DiagSeverity,
    pub service: Option<String>,
    pub upstream: Option<String>,
    pub class: String,
    pub message: String,
}

/// One slow statement (SPEC 4 `slow_queries[]`).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SlowQuery {
    pub service: String,
    pub upstream: String,
    /// Normalized: literals replaced by `?`.
    pub statement: String,
    pub duration_ms: f64,
    pub at: DateTime<Utc>,
    /// `simple_query`, `extended_query`, `function_call`, `command`, `run`.
    pub command_kind: String,
}

/// Query filters of `GET /api/ops/diagnostics/events` and `/slow-queries`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub category: Option<DiagCategory>,
    pub severity: Option<DiagSeverity>,
    pub service: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<usize>,
}

impl Filter {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 10_000;

    /// From query-string values; `Err` is the message of a 400.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Filter, String> {
        let category = get("category")
            .map(|c| {
                DiagCategory::parse(&c).ok_or_else(|| {
                    format!("`category` must be one of network, database, federal, vendor, internal, not `{c}`")
                })
            })
            .transpose()?;
        let severity = get("severity")
            .map(|s| {
                DiagSeverity::parse(&s).ok_or_else(|| {
                    format!("`severity` must be one of info, warning, error, critical, not `{s}`")
                })
            })
            .transpose()?;
        let since = get("since")
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("`since` is not an RFC 3339 timestamp: {e}"))
            })
            .transpose()?;
        let limit = get("limit")
            .map(|l| {
                l.parse::<usize>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("`limit` must be a positive integer, not `{l}`"))
            })
            .transpose()?;
        let service = get("service").filter(|s| !s.is_empty());
        Ok(Filter {
            category,
            severity,
            service,
            since,
            limit,
        })
    }

    pub fn effective_limit(&self) -> usize {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT)
    }

    pub fn matches(&self, e: &DiagnosticEvent) -> bool {
        self.category.is_none_or(|c| c == e.category)
            && self.severity.is_none_or(|s| s == e.severity)
            && self
                .service
                .as_deref()
                .is_none_or(|s| e.service.as_deref() == Some(s))
            && self.since.is_none_or(|t| e.at >= t)
    }

    pub fn matches_slow(&self, q: &SlowQuery) -> bool {
        self.service.as_deref().is_none_or(|s| q.service == s)
            && self.since.is_none_or(|t| q.at >= t)
    }
}
