//! Reference completeness (issue 14, item 7): the references an operator
//! reads must say exactly what the code does.
//!
//! - `config/continuity.toml` documents every key the config accepts and
//!   none it refuses. The accepted keys come from the code itself, never
//!   from a list kept here: the config's structs refuse unknown keys
//!   (`deny_unknown_fields`), and serde's refusal names every field, so
//!   `continuity check` on a file with an unknown key in each table prints
//!   the accepted keys of that table; `[[alerts.rule]]` keys come from the
//!   parser's own lists (`COMMON_KEYS`, `condition_keys`).
//! - README.md's metrics list (between `<!-- metrics:begin -->` and
//!   `<!-- metrics:end -->`) and the table of docs/metrics.md (name, type,
//!   labels) equal what `/metrics` exports, scraped from the real binary
//!   running services of every kind, with traffic that makes each family
//!   appear.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::continuity::Continuity;
use support::*;

type Keys = BTreeMap<String, BTreeSet<String>>;

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ------------------------------------------------------------- config keys ---

const PROBE_KEY: &str = "zz_not_a_key";

/// Table path -> keys the config accepts there ("" is the top level), from
/// the binary's own refusal of an unknown key in every table.
fn accepted_keys() -> Keys {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("probe.toml");
    let k = PROBE_KEY;
    std::fs::write(
        &file,
        format!(
            "{k} = 1\n[control]\n{k} = 1\n[[control.token]]\n{k} = 1\n[health]\n{k} = 1\n\
             [audit]\n{k} = 1\n[alerts]\n{k} = 1\n[cluster]\n{k} = 1\n\
             [[service]]\n{k} = 1\nupstreams = [ {{ {k} = 1 }} ]\n[[service.route]]\n{k} = 1\n"
        ),
    )
    .expect("write probe config");
    let out = Command::new(env!("CARGO_BIN_EXE_continuity"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run continuity check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keys = Keys::new();
    let needle = format!(": unknown key `{PROBE_KEY}`");
    for line in text.lines() {
        let Some(at) = line.find(&needle) else {
            continue;
        };
        // "FILE:LINE: path.to.zz_not_a_key: unknown key ..., expected one of `a`, `b`"
        let head = &line[..at];
        let path = head.rsplit(": ").next().unwrap_or_default();
        let table = strip_indices(path.strip_suffix(PROBE_KEY).unwrap_or(path))
            .trim_end_matches('.')
            .to_string();
        let expected = line[at..].split_once("expected").map(|x| x.1).unwrap_or("");
        let names: BTreeSet<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        assert!(!names.is_empty(), "no accepted keys named in: {line}");
        keys.insert(table, names);
    }
    for table in [
        "",
        "control",
        "control.token",
        "health",
        "audit",
        "alerts",
        "cluster",
        "service",
        "service.upstreams",
        "service.route",
    ] {
        assert!(
            keys.contains_key(table),
            "`continuity check` did not name the keys of [{table}]; its output:\n{text}"
        );
    }
    use continuity_control::alerts::rules::{condition_keys, COMMON_KEYS};
    use continuity_control::alerts::Condition;
    let mut rule: BTreeSet<String> = COMMON_KEYS.iter().map(|s| s.to_string()).collect();
    for c in Condition::ALL {
        rule.extend(condition_keys(*c).iter().map(|s| s.to_string()));
    }
    keys.insert("alerts.rule".into(), rule);
    keys
}

/// `service[0].route[1]` -> `service.route`.
fn strip_indices(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn is_key(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A whole-line table header, commented out or not: `[a.b]`, `[[a.b]]`.
fn header(line: &str) -> Option<String> {
    let t = line.trim_start_matches('#').trim();
    let t = t.split(" #").next().unwrap_or(t).trim();
    let inner = t
        .strip_prefix("[[")
        .and_then(|x| x.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|x| x.strip_suffix(']')))?;
    inner
        .split('.')
        .all(|p| is_key(p.trim()))
        .then(|| inner.replace(' ', ""))
}

/// Keys written as `key = ...` in one line (its leading `#`s removed): a
/// key starting the line at brace depth 0 is a key of the current table;
/// `key =` inside `{ }` belongs to the inline tables of the array last
/// opened. `depth` carries over lines (an inline table over two lines).
fn assignments(body: &str, depth: &mut i32) -> (Option<String>, Vec<String>) {
    let t = body.trim();
    let top = if *depth == 0 {
        let word: String = t
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rest = t[word.len()..].trim_start();
        (is_key(&word) && rest.starts_with('=') && !rest.starts_with("==")).then_some(word)
    } else {
        None
    };
    let chars: Vec<char> = t.chars().collect();
    let mut inline = Vec::new();
    let mut quote: Option<char> = None;
    let mut word = String::new();
    // What came before, to tell an inline table (`= {`, `[ {`, `, {`, a
    // line starting with `{`) from braces in prose (`metric{label="x"}`).
    let mut prev: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        let before = prev;
        if !c.is_whitespace() {
            prev = Some(c);
        }
        if let Some(q) = quote {
            if c == '\\' && q == '"' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if *depth > 0 && is_key(&word) {
            let rest: String = chars[i - 1..].iter().collect();
            if rest.trim_start().starts_with('=') {
                inline.push(word.clone());
            }
        }
        word.clear();
        match c {
            '"' | '\'' => quote = Some(c),
            '{' if *depth > 0 || matches!(before, None | Some('=' | '[' | ',')) => *depth += 1,
            '}' if *depth > 0 => *depth -= 1,
            '#' if *depth == 0 => break,
            _ => {}
        }
    }
    (top, inline)
}

/// Table path -> keys `config/continuity.toml` documents, in any of its
/// forms: `key = value` (set or commented out), `{ key = ... }` inside an
/// array of inline tables, a `[table]` header, and the lines of its "Keys of
/// every [[service]]" / "Keys of every upstream" lists (`#   key, key   what
/// it does`, `#   the [health] keys above`).
fn documented_keys(text: &str) -> Keys {
    let mut keys = Keys::new();
    let add = |keys: &mut Keys, table: &str, key: &str| {
        keys.entry(table.to_string())
            .or_default()
            .insert(key.to_string());
    };
    let mut table = String::new();
    let mut array = String::new();
    let mut depth = 0;
    let mut list: Option<String> = None; // inside a "Keys of every ..." list
    let mut copies: Vec<(String, String)> = Vec::new(); // (to, from): "the [from] keys"
    for line in text.lines() {
        if !line.starts_with('#') {
            list = None;
        }
        if let Some(h) = header(line) {
            let mut parent = String::new();
            for part in h.split('.') {
                add(&mut keys, &parent, part);
                parent = if parent.is_empty() {
                    part.to_string()
                } else {
                    format!("{parent}.{part}")
                };
            }
            table = h;
            list = None;
            continue;
        }
        let body = line.trim_start_matches('#');
        if let Some(rest) = body.split_once("Keys of every ").map(|x| x.1) {
            list = Some(if rest.starts_with("upstream") {
                "service.upstreams".to_string()
            } else {
                let t = rest.trim_start_matches("[[");
                t.split("]]").next().unwrap_or("").to_string()
            });
            continue;
        }
        if let Some(lt) = &list {
            if let Some(item) = body.strip_prefix("   ").filter(|b| !b.starts_with(' ')) {
                if let Some(from) = item
                    .strip_prefix("the [")
                    .and_then(|x| x.split_once("] keys"))
                {
                    copies.push((lt.clone(), from.0.to_string()));
                    continue;
                }
                if item.starts_with('[') {
                    continue; // `[[service.route]] ...`: its header documents it
                }
                // "key description", "key, key2 description" or
                // "key = value description": every word up to the first
                // one not ended by a comma is a key.
                for word in item.split_whitespace() {
                    add(&mut keys, lt, word.trim_end_matches(','));
                    if !word.ends_with(',') {
                        break;
                    }
                }
            }
            continue;
        }
        let (top, inline) = assignments(body, &mut depth);
        if let Some(k) = top {
            add(&mut keys, &table, &k);
            let value = body.split_once('=').map(|x| x.1.trim()).unwrap_or("");
            if value.starts_with('[') {
                array = if table.is_empty() {
                    k.clone()
                } else {
                    format!("{table}.{k}")
                };
            }
        }
        for k in inline {
            add(&mut keys, &array, &k);
        }
    }
    for (to, from) in copies {
        let from_keys = keys.get(&from).cloned().unwrap_or_default();
        keys.entry(to).or_default().extend(from_keys);
    }
    keys
}

#[test]
fn config_reference_documents_exactly_the_accepted_keys() {
    let accepted = accepted_keys();
    let documented = documented_keys(&repo_file("config/continuity.toml"));
    let mut problems = Vec::new();
    let tables: BTreeSet<&String> = accepted.keys().chain(documented.keys()).collect();
    let empty = BTreeSet::new();
    for t in tables {
        let a = accepted.get(t).unwrap_or(&empty);
        let d = documented.get(t).unwrap_or(&empty);
        let name = if t.is_empty() { "(top level)" } else { t };
        let missing: Vec<_> = a.difference(d).collect();
        let refused: Vec<_> = d.difference(a).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "[{name}] accepts but config/continuity.toml does not document: {missing:?}"
            ));
        }
        if !refused.is_empty() {
            problems.push(format!(
                "[{name}] config/continuity.toml documents keys the config refuses: {refused:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "config/continuity.toml is not the complete reference:\n  {}\n(accepted, from the code: {accepted:#?})",
        problems.join("\n  ")
    );
    // And what it sets is valid as it stands.
    let out = Command::new(env!("CARGO_BIN_EXE_continuity"))
        .args(["check", "--config"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/continuity.toml"))
        .output()
        .expect("run continuity check");
    assert!(
        out.status.success(),
        "continuity check config/continuity.toml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_documented_key_parser_reads_every_form() {
    let doc = documented_keys(
        "top = 1\n[a]\nx = 1 # c\n# y = \"q\"   # commented out\nups = [\n  { name = \"n\", url = \"u\" },\n#   { name = \"m\",\n#     ca_file = \"f\" },\n]\n\
         # [[a.r]]\n# path_prefix = \"/\"\n# Keys of every [[svc]]:\n#   k1        what\n#   k2, k3    what\n#   k4 = \"v\"  what\n#               k5 continuation\n#   the [a] keys above\n# prose = not a key here\n[b]\nz = '\\d{3}'\n",
    );
    let get = |t: &str| -> Vec<String> {
        doc.get(t)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(get(""), ["a", "b", "top"]);
    assert_eq!(get("a"), ["r", "ups", "x", "y"]);
    assert_eq!(get("a.ups"), ["ca_file", "name", "url"]);
    assert_eq!(get("a.r"), ["path_prefix"]);
    assert_eq!(get("svc"), ["k1", "k2", "k3", "k4", "r", "ups", "x", "y"]);
    assert_eq!(get("b"), ["z"]);
}

// ----------------------------------------------------------------- metrics ---

/// Family -> (type, label names) as `/metrics` exports them.
type Families = BTreeMap<String, (String, BTreeSet<String>)>;

fn parse_exposition(text: &str) -> Families {
    let mut fams = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(ty)) = (it.next(), it.next()) {
                fams.insert(name.to_string(), (ty.to_string(), BTreeSet::new()));
            }
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = [sample, "_bucket", "_sum", "_count"]
            .iter()
            .skip(1)
            .find_map(|suffix| sample.strip_suffix(suffix))
            .filter(|f| fams.get(*f).is_some_and(|(t, _)| t == "histogram"))
            .unwrap_or(sample)
            .to_string();
        let labels = label_names(&line[name_end..]);
        if let Some((_, set)) = fams.get_mut(&family) {
            set.extend(labels.into_iter().filter(|l| l != "le"));
        }
    }
    fams
}

/// The label names of `{a="x",b="y\"z"} 1`.
fn label_names(s: &str) -> Vec<String> {
    let Some(body) = s.strip_prefix('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches(',').trim().to_string();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        names.push(name);
        if chars.next() != Some('"') {
            break;
        }
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        if chars.peek() == Some(&'}') {
            break;
        }
    }
    names
}

fn between<'a>(text: &'a str, begin: &str, end: &str, file: &str) -> &'a str {
    let start = text
        .find(begin)
        .unwrap_or_else(|| panic!("{file} has no {begin} marker"));
    let rest = &text[start + begin.len()..];
    let stop = rest
        .find(end)
        .unwrap_or_else(|| panic!("{file} has no {end} marker after {begin}"));
    &rest[..stop]
}

/// List items "- `continuity_x` (`label`, `label`)": name -> labels.
fn readme_metrics(section: &str) -> BTreeMap<String, BTreeSet<String>> {
    section
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- `"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let labels = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or("")
                .split(',')
                .map(|x| x.trim().trim_matches('`').to_string())
                .filter(|x| !x.is_empty())
                .collect();
            Some((name.to_string(), labels))
        })
        .collect()
}

/// Rows of docs/metrics.md's table: | `name` | type | `a`, `b` | meaning |.
fn docs_metrics(section: &str) -> Families {
    let mut fams = Families::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`continuity_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty() && l != "–" && l != "-")
            .collect();
        fams.insert(name, (cells[2].to_string(), labels));
    }
    fams
}

fn table_of(fams: &Families) -> String {
    fams.iter()
        .map(|(n, (t, l))| {
            let labels: Vec<String> = l.iter().map(|x| format!("`{x}`")).collect();
            let labels = if labels.is_empty() {
                "–".to_string()
            } else {
                labels.join(", ")
            };
            format!("| `{n}` | {t} | {labels} |")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn readme_and_docs_metrics_lists_equal_what_metrics_exports() {
    // Services of every proxying kind the machine can run without extra
    // servers: redis (with a standby, slow-query timing and a connection
    // cap), http with a queue route, and a heartbeat pipeline.
    let redis = RedisServer::start();
    let standby = RedisServer::replica_of(&redis);
    let mut api = support::http_upstream::HttpUpstream::start("api-a", None, None, false);
    let redis_listen = loopback(free_port());
    let api_listen = loopback(free_port());
    let engine = Continuity::builder()
        .control("metrics_public = true")
        .health("check_interval_seconds = 0.2\nfailure_threshold = 2\nrecovery_threshold = 1")
        .service(&format!(
            r#"name = "cache"
kind = "redis"
listen = "{redis_listen}"
slow_query_ms = 1
max_connections = 200
upstreams = [
  {{ name = "cache-a", address = "{}", role = "primary" }},
  {{ name = "cache-b", address = "{}", role = "secondary" }},
]"#,
            redis.addr(),
            standby.addr()
        ))
        .service(&format!(
            "name = \"api\"\nkind = \"http\"\ncategory = \"federal\"\nlisten = \"{api_listen}\"\n\
             health_path = \"/health\"\nfailure_threshold = 50\n\
             upstreams = [ {{ name = \"api-a\", url = \"{}\", role = \"primary\" }} ]\n\
             [[service.route]]\npath_prefix = \"/submissions\"\non_outage = \"queue\"",
            api.url()
        ))
        // Silent past 1 s: an `etl_stall` alert (continuity_alerts_total).
        .service("name = \"etl\"\nkind = \"heartbeat\"\nstall_after_seconds = 1")
        .start();

    // Connection use rising steadily: a `connection_exhaustion` prediction
    // (continuity_predictive_alerts_total) after 10-20 s of samples.
    let ramp_addr = redis_listen.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ramp = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && held.len() < 170 {
            if let Ok(s) = std::net::TcpStream::connect(&ramp_addr) {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // Keep them open until the test is done.
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    // Proxy traffic and slow statements (a Lua loop of some milliseconds).
    for _ in 0..5 {
        redis_cmd(&redis_listen, &["PING"]).expect("PING through the proxy");
        redis_cmd(
            &redis_listen,
            &[
                "EVAL",
                "local i = 0 while i < 2000000 do i = i + 1 end return i",
                "0",
            ],
        )
        .expect("EVAL through the proxy");
    }
    // A failed authentication.
    let (status, _) = engine.request("GET", "/api/ops/failover/status", None, Some("wrong"));
    assert_eq!(status, 401);
    // An HTTP retry: a PUT answered 503 is retried.
    let r = support::http_client::request(&api_listen, "PUT", "/status/503", &[], "{}")
        .expect("PUT through the gateway");
    assert_eq!(r.status, 503);
    // A queued request delivered: the upstream down, a POST queued, back up.
    api.kill();
    let queued = wait_until(Duration::from_secs(20), || {
        support::http_client::request(&api_listen, "POST", "/submissions/1", &[], "{}")
            .is_ok_and(|r| r.status == 202)
    });
    assert!(queued, "no 202 from the queue route with the upstream down");
    api.restart();

    // Families that need an event appear once it happened: wait (bounded)
    // until every listed family is exported, then compare.
    let readme_text = repo_file("README.md");
    let readme = readme_metrics(between(
        &readme_text,
        "<!-- metrics:begin -->",
        "<!-- metrics:end -->",
        "README.md",
    ));
    assert!(
        readme.len() > 10,
        "README.md's metrics list is too short: {readme:?}"
    );
    let mut exported = Families::new();
    wait_until(Duration::from_secs(90), || {
        exported = parse_exposition(&engine.metrics());
        readme.keys().all(|w| exported.contains_key(w))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ramp.join();
    let names: BTreeSet<String> = exported.keys().cloned().collect();
    let listed: BTreeSet<String> = readme.keys().cloned().collect();
    let docs_text = repo_file("docs/metrics.md");
    let docs = docs_metrics(between(
        &docs_text,
        "<!-- metrics:begin -->",
        "<!-- metrics:end -->",
        "docs/metrics.md",
    ));
    let derived = table_of(&exported);
    assert!(
        listed == names,
        "README.md's metrics list differs from /metrics:\n  listed, not exported: {:?}\n  exported, not listed: {:?}\n\
         exported (name | type | labels):\n{derived}",
        listed.difference(&names).collect::<Vec<_>>(),
        names.difference(&listed).collect::<Vec<_>>(),
    );
    let relabelled: Vec<String> = readme
        .iter()
        .filter(|(n, l)| exported.get(*n).is_some_and(|(_, el)| el != *l))
        .map(|(n, l)| {
            format!(
                "{n}: README.md says {l:?}, /metrics has {:?}",
                exported[n].1
            )
        })
        .collect();
    assert!(
        relabelled.is_empty(),
        "README.md's metrics list names other labels:\n  {}",
        relabelled.join("\n  ")
    );
    let mut diffs = Vec::new();
    for (name, (ty, labels)) in &exported {
        match docs.get(name) {
            None => diffs.push(format!("{name}: exported, not in docs/metrics.md")),
            Some((dt, dl)) if dt != ty || dl != labels => diffs.push(format!(
                "{name}: docs/metrics.md says {dt} {dl:?}, /metrics has {ty} {labels:?}"
            )),
            Some(_) => {}
        }
    }
    for name in docs.keys().filter(|n| !exported.contains_key(*n)) {
        diffs.push(format!("{name}: in docs/metrics.md, not exported"));
    }
    assert!(
        diffs.is_empty(),
        "docs/metrics.md differs from /metrics:\n  {}\nexported (name | type | labels):\n{derived}",
        diffs.join("\n  ")
    );
}
