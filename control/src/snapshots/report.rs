//! The two answers: uptime windows (`/api/ops/health/snapshots`) and the
//! monthly SLA (`/api/ops/sla`), computed from the bucket history.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use continuity_proxy::config::Category;
use continuity_proxy::snapshot::EngineSnapshot;
use serde::Serialize;

use super::bucket::{floor_to, Bucket, BucketStatus, HOUR, MINUTE};
use super::history::ServiceHistory;

/// `?window=`: 1h and 24h from minute buckets, 30d from hour buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    H1,
    H24,
    D30,
}

impl Window {
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "1h" => Some(Window::H1),
            "24h" => Some(Window::H24),
            "30d" => Some(Window::D30),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::H1 => "1h",
            Window::H24 => "24h",
            Window::D30 => "30d",
        }
    }

    /// Bucket width in seconds and how many buckets the window spans.
    fn layout(self) -> (i64, i64) {
        match self {
            Window::H1 => (MINUTE, 60),
            Window::H24 => (MINUTE, 24 * 60),
            Window::D30 => (HOUR, 30 * 24),
        }
    }
}

/// `?month=YYYY-MM` (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !(y.chars().chain(m.chars())).all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let month = Month {
            year: y.parse().ok()?,
            month: m.parse().ok()?,
        };
        month.bounds().map(|_| month)
    }

    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    /// `[first second, first second of the next month)` as unix seconds.
    pub fn bounds(self) -> Option<(i64, i64)> {
        let start = NaiveDate::from_ymd_opt(self.year, self.month, 1)?;
        let (ny, nm) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        let end = NaiveDate::from_ymd_opt(ny, nm, 1)?;
        let ts = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
        Some((ts(start)?, ts(end)?))
    }

    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WindowReport {
    #[schema(value_type = crate::openapi::WindowName)]
    pub window: &'static str,
    pub generated_at: DateTime<Utc>,
    pub services: Vec<ServiceWindow>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceWindow {
    pub name: String,
    pub category: Option<Category>,
    /// Seconds not `down` over seconds observed (unknown excluded); 100
    /// when nothing was observed yet.
    pub uptime_percent: f64,
    pub observed_seconds: f64,
    pub down_seconds: f64,
    pub buckets: Vec<BucketView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BucketView {
    pub start: DateTime<Utc>,
    pub checks: u64,
    pub failures: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub status: BucketStatus,
    /// The bucket in progress.
    pub partial: bool,
    pub observed_seconds: f64,
    pub down_seconds: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SlaReport {
    pub month: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub month_seconds: f64,
    pub generated_at: DateTime<Utc>,
    pub categories: Vec<SlaEntry>,
    pub services: Vec<SlaEntry>,
}

/// One category or one service. `achieved_percent` counts only
/// client-visible downtime; `uptime_percent` counts all of it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SlaEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub category: Category,
    /// Number of services (category entries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<usize>,
    pub target_percent: f64,
    pub achieved_percent: f64,
    pub uptime_percent: f64,
    /// The error budget is not exhausted.
    pub met: bool,
    pub observed_seconds: f64,
    pub downtime_seconds: f64,
    pub client_visible_seconds: f64,
    pub absorbed_seconds: f64,
    pub hold_timeouts: u64,
    pub error_budget_seconds: f64,
    /// Negative once the budget is overspent.
    pub error_budget_left_seconds: f64,
    pub error_budget_left_percent: f64,
}

/// Monthly targets (SPEC 10).
pub fn target_percent(c: Category) -> f64 {
    match c {
        Category::Core => 99.99,
        Category::Federal => 99.5,
        Category::Vendor => 99.0,
        Category::Internal => 99.9,
    }
}

const CATEGORIES: [Category; 4] = [
    Category::Core,
    Category::Federal,
    Category::Vendor,
    Category::Internal,
];

fn round(x: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (x * k).round() / k
}

fn percent_up(observed: f64, lost: f64) -> f64 {
    if observed > 0.0 {
        round(((observed - lost) / observed * 100.0).clamp(0.0, 100.0), 6)
    } else {
        100.0
    }
}

/// Live services first (engine order), then stored ones that left the config.
fn ordered<'a>(
    services: &'a [(String, ServiceHistory)],
    live: &'a EngineSnapshot,
) -> Vec<(&'a str, Option<Category>, Option<&'a ServiceHistory>)> {
    let find = |n: &str| services.iter().find(|(s, _)| s == n).map(|(_, h)| h);
    let mut out: Vec<_> = live
        .services
        .iter()
        .map(|s| (s.name.as_str(), Some(s.category), find(&s.name)))
        .collect();
    for (n, h) in services {
        if live.service(n).is_none() {
            out.push((n.as_str(), h.category, Some(h)));
        }
    }
    out
}

/// Closed buckets of `map` in `[from, to)` except `skip`, plus the one in
/// progress if it falls in the range.
fn collect(
    map: &std::collections::BTreeMap<i64, Bucket>,
    current: Option<(i64, Bucket)>,
    from: i64,
    to: i64,
) -> Vec<(i64, Bucket, bool)> {
    let skip = current.as_ref().map(|(s, _)| *s);
    let mut out: Vec<(i64, Bucket, bool)> = map
        .range(from..to)
        .filter(|(s, _)| Some(**s) != skip)
        .map(|(s, b)| (*s, b.clone(), false))
        .collect();
    if let Some((s, b)) = current.filter(|(s, _)| (from..to).contains(s)) {
        out.push((s, b, true));
    }
    out.sort_by_key(|(s, _, _)| *s);
    out
}

pub fn window(
    services: &[(String, ServiceHistory)],
    now: DateTime<Utc>,
    w: Window,
    live: &EngineSnapshot,
) -> WindowReport {
    let (width, count) = w.layout();
    let to = floor_to(now.timestamp(), width) + width;
    let from = to - count * width;
    let mut out = Vec::new();
    for (name, category, h) in ordered(services, live) {
        let buckets = match h {
            Some(h) if width == MINUTE => collect(&h.minutes, h.current_minute(), from, to),
            Some(h) => collect(&h.hours, h.current_hour(), from, to),
            None => Vec::new(),
        };
        if buckets.is_empty() && live.service(name).is_none() {
            continue;
        }
        let observed: f64 = buckets.iter().map(|(_, b, _)| b.observed_seconds()).sum();
        let down: f64 = buckets.iter().map(|(_, b, _)| b.down_seconds).sum();
        out.push(ServiceWindow {
            name: name.to_string(),
            category,
            uptime_percent: percent_up(observed, down),
            observed_seconds: round(observed, 3),
            down_seconds: round(down, 3),
            buckets: buckets
                .into_iter()
                .map(|(s, b, partial)| BucketView {
                    start: DateTime::from_timestamp(s, 0).unwrap_or_default(),
                    checks: b.checks,
                    failures: b.failures,
                    latency_p50_ms: b.latency_p50_ms.map(|x| round(x, 3)),
                    latency_p99_ms: b.latency_p99_ms.map(|x| round(x, 3)),
                    status: b.status,
                    partial,
                    observed_seconds: round(b.observed_seconds(), 3),
                    down_seconds: round(b.down_seconds, 3),
                })
                .collect(),
        });
    }
    WindowReport {
        window: w.as_str(),
        generated_at: now,
        services: out,
    }
}

fn entry(
    name: Option<String>,
    category: Category,
    services: Option<usize>,
    total: &Bucket,
    budget: f64,
) -> SlaEntry {
    let target = target_percent(category);
    let observed = total.observed_seconds();
    let visible = total.client_visible_seconds;
    let left = budget - visible;
    SlaEntry {
        name,
        category,
        services,
        target_percent: target,
        achieved_percent: percent_up(observed, visible),
        uptime_percent: percent_up(observed, total.down_seconds),
        met: left >= 0.0,
        observed_seconds: round(observed, 3),
        downtime_seconds: round(total.down_seconds, 3),
        client_visible_seconds: round(visible, 3),
        absorbed_seconds: round(total.absorbed_seconds, 3),
        hold_timeouts: total.hold_timeouts,
        error_budget_seconds: round(budget, 3),
        error_budget_left_seconds: round(left, 3),
        error_budget_left_percent: if budget > 0.0 {
            round(left / budget * 100.0, 3)
        } else {
            0.0
        },
    }
}

pub fn sla(
    services: &[(String, ServiceHistory)],
    now: DateTime<Utc>,
    month: Month,
    live: &EngineSnapshot,
) -> SlaReport {
    let (from, to) = month.bounds().unwrap_or((0, 0));
    let month_seconds = (to - from) as f64;
    let budget_of = |c: Category| (100.0 - target_percent(c)) / 100.0 * month_seconds;
    let mut per_service = Vec::new();
    for (name, category, h) in ordered(services, live) {
        let category = category.unwrap_or(Category::Core);
        let buckets = h
            .map(|h| collect(&h.hours, h.current_hour(), from, to))
            .unwrap_or_default();
        if buckets.is_empty() && live.service(name).is_none() {
            continue;
        }
        let mut total = Bucket::default();
        for (_, b, _) in &buckets {
            total.merge(b);
        }
        per_service.push((name.to_string(), category, total));
    }
    let categories = CATEGORIES
        .iter()
        .map(|&c| {
            let mut total = Bucket::default();
            let mut n = 0;
            for (_, _, b) in per_service.iter().filter(|(_, sc, _)| *sc == c) {
                total.merge(b);
                n += 1;
            }
            entry(None, c, Some(n), &total, budget_of(c) * n as f64)
        })
        .collect();
    let services = per_service
        .into_iter()
        .map(|(name, c, total)| entry(Some(name), c, None, &total, budget_of(c)))
        .collect();
    SlaReport {
        month: month.label(),
        from: DateTime::from_timestamp(from, 0).unwrap_or_default(),
        to: DateTime::from_timestamp(to, 0).unwrap_or_default(),
        month_seconds,
        generated_at: now,
        categories,
        services,
    }
}
