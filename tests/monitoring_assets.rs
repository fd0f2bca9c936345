//! The monitoring assets against the real engine: every metric and label
//! that `docker/prometheus/alerts.yml` and `docker/grafana/continuity.json`
//! name must be one that a running engine's `/metrics` exports, and the
//! rules pass `promtool check rules` and their unit tests
//! (`docker/prometheus/tests/alerts_test.yml`).
//!
//! The PromQL is read with a small lexer (strings, `[...]` ranges and
//! Grafana `$variables` skipped; an identifier followed by `(` is a function,
//! one after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` a
//! label list, one before `=`/`!=`/`=~`/`!~` inside `{}` a matcher label,
//! any other one a metric). `X_bucket`, `X_sum` and `X_count` are accepted
//! only when `X` is exported as a histogram (or summary) and the sample is
//! there; a bare histogram name is refused, as Prometheus has no such series.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::continuity::Continuity;
use support::http_upstream::HttpUpstream;
use support::*;

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];
/// Series Prometheus makes itself per target, and their labels.
const SYNTHETIC: &[(&str, &[&str])] = &[("up", &["instance", "job"])];

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// PromQL references

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `=`, `!=`, `=~`, `!~`, `==`.
    Op,
    Punct(char),
    /// A string, a number, a duration or a Grafana variable.
    Other,
}

fn lex(expr: &str) -> Vec<Tok> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if matches!(ch, '"' | '\'' | '`') {
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' && ch != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Other);
        } else if ch == '[' {
            // A range or subquery: durations and Grafana variables only.
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch == '$' {
            i += 1;
            if c.get(i) == Some(&'{') {
                while i < c.len() && c[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
            out.push(Tok::Other);
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
            out.push(Tok::Other);
        } else if ident_char(ch) {
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if matches!(ch, '=' | '!') && matches!(c.get(i + 1), Some('~') | Some('=')) {
            out.push(Tok::Op);
            i += 2;
        } else if ch == '=' {
            out.push(Tok::Op);
            i += 1;
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// One vector selector: its metric and the labels its matchers name.
#[derive(Debug, Default, PartialEq)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

#[derive(Debug, Default, PartialEq)]
struct Refs {
    selectors: Vec<Selector>,
    /// Labels of by/without/on/ignoring/group_left/group_right clauses.
    grouping: Vec<String>,
}

/// Reads the label names of a `{...}` matcher list starting after `{`;
/// returns the index after its `}`.
fn matchers(toks: &[Tok], mut i: usize, labels: &mut Vec<String>) -> usize {
    while i < toks.len() && toks[i] != Tok::Punct('}') {
        if let (Tok::Ident(l), Some(Tok::Op)) = (&toks[i], toks.get(i + 1)) {
            labels.push(l.clone());
        }
        i += 1;
    }
    i + 1
}

fn promql_refs(expr: &str) -> Refs {
    let toks = lex(expr);
    let mut refs = Refs::default();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(w) => {
                let call = toks.get(i + 1) == Some(&Tok::Punct('('));
                if GROUPING.contains(&w.as_str()) {
                    i += 1;
                    if call {
                        i += 1;
                        while i < toks.len() && toks[i] != Tok::Punct(')') {
                            if let Tok::Ident(l) = &toks[i] {
                                refs.grouping.push(l.clone());
                            }
                            i += 1;
                        }
                        i += 1;
                    }
                } else if call
                    || AGGREGATIONS.contains(&w.as_str())
                    || KEYWORDS.contains(&w.as_str())
                {
                    i += 1;
                } else {
                    let mut sel = Selector {
                        metric: w.clone(),
                        labels: Vec::new(),
                    };
                    i += 1;
                    if toks.get(i) == Some(&Tok::Punct('{')) {
                        i = matchers(&toks, i + 1, &mut sel.labels);
                    }
                    refs.selectors.push(sel);
                }
            }
            Tok::Punct('{') => {
                // A selector without a metric name (`{__name__=~"..."}`):
                // recorded with an empty name, which the check refuses.
                let mut sel = Selector::default();
                i = matchers(&toks, i + 1, &mut sel.labels);
                refs.selectors.push(sel);
            }
            _ => i += 1,
        }
    }
    refs
}

/// `{{label}}` placeholders of a Grafana legend.
fn legend_labels(legend: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = legend;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    out
}

// ---------------------------------------------------------------------------
// The exposition

#[derive(Debug, Default)]
struct Exposition {
    /// Sample name (`X_bucket` for a histogram's buckets) -> its label names.
    samples: BTreeMap<String, BTreeSet<String>>,
    /// Family name -> `# TYPE`.
    types: BTreeMap<String, String>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                e.types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = e.samples.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            // name="value" pairs; values are quoted with \ escapes.
            let c: Vec<char> = line[end + 1..].chars().collect();
            let mut i = 0;
            while i < c.len() && c[i] != '}' {
                let start = i;
                while i < c.len() && c[i] != '=' {
                    i += 1;
                }
                labels.insert(c[start..i].iter().collect::<String>().trim().to_string());
                i += 2; // `="`
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1; // closing quote
                if c.get(i) == Some(&',') {
                    i += 1;
                }
            }
        }
    }
    e
}

/// Labels of `metric` if it is a series one can query, else why not.
fn exported_labels(
    e: &Exposition,
    recorded: &BTreeMap<String, BTreeSet<String>>,
    metric: &str,
) -> Result<BTreeSet<String>, String> {
    if let Some(l) = recorded.get(metric) {
        return Ok(l.clone());
    }
    if let Some((_, l)) = SYNTHETIC.iter().find(|(n, _)| *n == metric) {
        return Ok(l.iter().map(|s| s.to_string()).collect());
    }
    if metric.is_empty() {
        return Err("a selector without a metric name".to_string());
    }
    let Some(labels) = e.samples.get(metric) else {
        if e.types.get(metric).is_some_and(|t| t == "histogram") {
            return Err(format!(
                "{metric} is a histogram: query {metric}_bucket, _sum or _count"
            ));
        }
        return Err(format!("{metric} is not exported by /metrics"));
    };
    if e.types.contains_key(metric) {
        return Ok(labels.clone());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = metric.strip_suffix(suffix) {
            if e.types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return Ok(labels.clone());
            }
        }
    }
    Err(format!("{metric} is a sample without a # TYPE"))
}

/// Every problem of `expr` (where: the rule or panel, for the message);
/// returns the labels its result can carry.
fn check_expr(
    e: &Exposition,
    recorded: &BTreeMap<String, BTreeSet<String>>,
    where_: &str,
    expr: &str,
    legend: Option<&str>,
    problems: &mut Vec<String>,
) -> BTreeSet<String> {
    let refs = promql_refs(expr);
    let mut all: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    if refs.selectors.is_empty() {
        problems.push(format!("{where_}: no metric found in `{expr}`"));
    }
    for sel in &refs.selectors {
        match exported_labels(e, recorded, &sel.metric) {
            Ok(labels) => {
                for l in &sel.labels {
                    if !labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                        problems.push(format!(
                            "{where_}: {} has no label `{l}` (it has {labels:?})",
                            sel.metric
                        ));
                    }
                }
                all.extend(labels);
            }
            Err(why) => problems.push(format!("{where_}: {why}")),
        }
    }
    for l in refs
        .grouping
        .iter()
        .chain(legend.map(legend_labels).unwrap_or_default().iter())
    {
        if !all.contains(l) {
            problems.push(format!(
                "{where_}: label `{l}` is on none of the metrics of `{expr}`"
            ));
        }
    }
    all
}

// ---------------------------------------------------------------------------
// The assets

/// (record, alert, expr) of every rule of alerts.yml, in file order (a
/// recording rule comes before the rules that use it).
fn rules(path: &Path) -> Vec<(Option<String>, Option<String>, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups: a list") {
        for rule in group["rules"].as_sequence().expect("rules: a list") {
            let s = |k: &str| rule[k].as_str().map(str::to_string);
            out.push((
                s("record"),
                s("alert"),
                s("expr").expect("every rule has an expr"),
            ));
        }
    }
    out
}

/// (where, expr, legend) of every query of the dashboard, templating included.
fn dashboard_queries(path: &Path) -> Vec<(String, String, Option<String>)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String, Option<String>)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m
                    .get("title")
                    .and_then(|t| t.as_str())
                    .unwrap_or(title)
                    .to_string();
                if let Some(expr) = m.get("expr").and_then(|e| e.as_str()) {
                    let legend = m
                        .get("legendFormat")
                        .and_then(|l| l.as_str())
                        .map(str::to_string);
                    out.push((format!("panel {title:?}"), expr.to_string(), legend));
                }
                for (k, child) in m {
                    if k != "templating" {
                        walk(child, &title, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&doc, "", &mut out);
    for var in doc["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_default();
        let name = var["name"].as_str().unwrap_or_default();
        // label_values(<selector>, <label>): the label must be on the selector.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: only label_values() is checked: {q}"));
        let (sel, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        out.push((
            format!("variable {name}"),
            sel.trim().to_string(),
            Some(format!("{{{{{}}}}}", label.trim())),
        ));
    }
    out
}

/// Every problem of the rules and the dashboard against `e`.
fn check_assets(e: &Exposition, rules_path: &Path, dashboard_path: &Path) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut recorded: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut checked = 0;
    for (record, alert, expr) in rules(rules_path) {
        let where_ = format!(
            "alerts.yml {}",
            record.clone().or(alert).unwrap_or_default()
        );
        let labels = check_expr(e, &recorded, &where_, &expr, None, &mut problems);
        if let Some(r) = record {
            recorded.entry(r).or_default().extend(labels);
        }
        checked += 1;
    }
    for (where_, expr, legend) in dashboard_queries(dashboard_path) {
        let where_ = format!("continuity.json {where_}");
        check_expr(
            e,
            &recorded,
            &where_,
            &expr,
            legend.as_deref(),
            &mut problems,
        );
        checked += 1;
    }
    (checked, problems)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn the_promql_reader_finds_metrics_and_labels() {
    let r = promql_refs(
        r#"histogram_quantile(0.99, sum by (service, le) (rate(continuity_x_bucket{instance=~"$instance",phase!="connect"}[$__rate_interval])))
           > ignoring (kind) group_left (category) (14.4 * continuity:budget:ratio) and on() vector(1)
           or absent(up{job="continuity"} offset 5m) # by (not_a_label)"#,
    );
    assert_eq!(
        r.selectors,
        vec![
            Selector {
                metric: "continuity_x_bucket".into(),
                labels: vec!["instance".into(), "phase".into()]
            },
            Selector {
                metric: "continuity:budget:ratio".into(),
                labels: vec![]
            },
            Selector {
                metric: "up".into(),
                labels: vec!["job".into()]
            },
        ]
    );
    assert_eq!(r.grouping, vec!["service", "le", "kind", "category"]);
    assert_eq!(
        legend_labels("{{service}} / {{ upstream }} p99"),
        vec!["service", "upstream"]
    );
}

#[test]
fn the_check_refuses_unknown_metrics_labels_and_bare_histograms() {
    let e = parse_exposition(
        "# TYPE m_seconds histogram\n\
         m_seconds_bucket{service=\"a,b\",le=\"0.1\"} 1\n\
         m_seconds_sum{service=\"a\"} 1\n\
         m_seconds_count{service=\"a\"} 1\n\
         # TYPE g gauge\n\
         g{service=\"a\",kind=\"x\"} 1\n",
    );
    let rec = BTreeMap::new();
    let run = |expr: &str, legend: Option<&str>| {
        let mut p = Vec::new();
        check_expr(&e, &rec, "t", expr, legend, &mut p);
        p
    };
    assert!(run(
        r#"histogram_quantile(0.5, sum by (service, le) (rate(m_seconds_bucket{service="a"}[5m])))"#,
        Some("{{service}}")
    )
    .is_empty());
    assert!(run("g * on (service) group_left (kind) g", None).is_empty());
    assert_eq!(run("bogus_total", None).len(), 1);
    assert!(run("rate(m_seconds[5m])", None)[0].contains("is a histogram"));
    assert_eq!(run(r#"g{category="core"}"#, None).len(), 1);
    assert_eq!(run("sum by (category) (g)", None).len(), 1);
    assert_eq!(run("sum by (service) (g)", Some("{{category}}")).len(), 1);
    // `le` is a label of the buckets only.
    assert_eq!(run("sum by (le) (m_seconds_count)", None).len(), 1);
}

/// Skips (None) when `promtool` is missing outside CI; fails in CI.
fn promtool() -> Option<Command> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !ArcadeDb::in_ci(),
            "promtool must be installed in CI (scripts/install-deps: Debian's prometheus package)"
        );
        eprintln!("SKIPPED: promtool is not installed (scripts/install-deps installs it)");
        return None;
    }
    let mut cmd = Command::new("promtool");
    cmd.current_dir(repo());
    Some(cmd)
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Some(mut check) = promtool() else { return };
    let out = check
        .args(["check", "rules", "docker/prometheus/alerts.yml"])
        .output()
        .expect("promtool check rules");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(mut test) = promtool() else { return };
    let out = test
        .args(["test", "rules", "docker/prometheus/tests/alerts_test.yml"])
        .output()
        .expect("promtool test rules");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every alert rule of alerts.yml has a firing and a not-firing case in the
/// promtool tests.
#[test]
fn every_alert_rule_has_a_firing_and_a_quiet_unit_test() {
    let rules_path = repo().join("docker/prometheus/alerts.yml");
    let tests_path = repo().join("docker/prometheus/tests/alerts_test.yml");
    let text = std::fs::read_to_string(&tests_path).expect("alerts_test.yml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts_test.yml parses");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in doc["tests"].as_sequence().expect("tests") {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            if fires {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let alerts: Vec<String> = rules(&rules_path)
        .into_iter()
        .filter_map(|(_, alert, _)| alert)
        .collect();
    assert!(alerts.len() >= 10, "alerts.yml has {} alerts", alerts.len());
    for a in &alerts {
        assert!(firing.contains(a), "{a}: no promtool test sees it fire");
        assert!(quiet.contains(a), "{a}: no promtool test sees it quiet");
    }
}

#[test]
fn rules_and_dashboard_name_only_what_the_engine_exports() {
    let redis = RedisServer::start();
    let api = HttpUpstream::start("api-a", None, None, false);
    let redis_listen = loopback(free_port());
    let api_listen = loopback(free_port());
    let dead_listen = loopback(free_port());
    // Nothing listens there: the `dead` service is down from the start,
    // so its held clients time out and the engine's own escalation opens
    // an alert.
    let nowhere = loopback(free_port());
    let engine = Continuity::builder()
        .control("metrics_public = true")
        .health("check_interval_seconds = 0.2\nfailure_threshold = 2")
        .service(&format!(
            "name = \"redis\"\nkind = \"redis\"\ncategory = \"core\"\nlisten = \"{redis_listen}\"\n\
             upstreams = [ {{ name = \"redis-a\", address = \"{}\", role = \"primary\" }} ]",
            redis.addr()
        ))
        .service(&format!(
            "name = \"api\"\nkind = \"http\"\ncategory = \"federal\"\nlisten = \"{api_listen}\"\n\
             health_path = \"/health\"\n\
             upstreams = [ {{ name = \"api-a\", url = \"{}\", role = \"primary\" }} ]\n\
             [[service.route]]\npath_prefix = \"/submissions\"\non_outage = \"queue\"",
            api.url()
        ))
        .service(&format!(
            "name = \"dead\"\nkind = \"redis\"\ncategory = \"vendor\"\nlisten = \"{dead_listen}\"\n\
             buffer_timeout_ms = 200\n\
             upstreams = [ {{ name = \"dead-a\", address = \"{nowhere}\", role = \"primary\" }} ]"
        ))
        .start();

    // Traffic, so that the request histograms have series.
    for path in ["/x", "/submissions/1"] {
        let ok = wait_until(Duration::from_secs(20), || {
            support::http_client::get(&api_listen, path).is_ok_and(|r| r.status < 500)
        });
        assert!(ok, "GET {path} through the gateway:\n{}", engine.log_text());
    }
    let ok = wait_until(Duration::from_secs(20), || {
        redis_cmd(&redis_listen, &["PING"]).is_ok()
    });
    assert!(ok, "PING through the proxy:\n{}", engine.log_text());

    let mut text = String::new();
    let ready = wait_until(Duration::from_secs(90), || {
        text = engine.metrics();
        text.contains("continuity_alerts_total{")
            && text.contains("continuity_http_request_duration_seconds_bucket{")
    });
    assert!(
        ready,
        "the engine never exported its alerts and HTTP request series:\n{text}\n{}",
        engine.log_text()
    );
    let e = parse_exposition(&text);
    assert!(e.samples.len() > 30, "{} samples:\n{text}", e.samples.len());

    let (checked, problems) = check_assets(
        &e,
        &repo().join("docker/prometheus/alerts.yml"),
        &repo().join("docker/grafana/continuity.json"),
    );
    assert!(checked >= 40, "only {checked} expressions were checked");
    assert!(
        problems.is_empty(),
        "the monitoring assets name series the engine does not export:\n{}\n\nexported: {:?}",
        problems.join("\n"),
        e.samples.keys().collect::<Vec<_>>()
    );
}
