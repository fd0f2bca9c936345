//! `GET /api/ops/openapi.json`: the document and the router agree both
//! ways, and the document is valid OpenAPI 3.1.
//!
//! The router's paths are read from axum's own route table (the router's
//! `Debug` lists every registered path), not from a list kept by hand; the
//! methods a path serves are found by asking the router (anything but 405
//! is served). The other way, every documented operation is sent to the
//! router and must not end in the "no such route" fallback or a 405.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use continuity_control::openapi::{document, openapi_path};
use continuity_control::router;
use continuity_proxy::config::Role;
use support::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// Every path in the router's route table (axum's `Debug` prints them as
/// `RouteId(n): "/path"`), without axum's internal fallback paths.
fn routed_paths(api: &Api) -> BTreeSet<String> {
    let table = format!("{:?}", router(api.state.clone()));
    // Only the path router: the fallback router has routes of its own
    // (`/` and a catch-all) that serve the 404 fallback.
    let table = table
        .split("fallback_router")
        .next()
        .unwrap_or_default()
        .to_string();
    let re = regex::Regex::new(r#"RouteId\(\d+\): "([^"]*)""#).expect("regex");
    let paths: BTreeSet<String> = re
        .captures_iter(&table)
        .map(|c| c[1].to_string())
        .filter(|p| !p.contains("__private__"))
        .collect();
    // If axum's Debug output ever changes shape, fail loudly rather than
    // compare two empty sets.
    for known in [
        "/api/ops/health",
        "/metrics",
        "/ws/ops/health",
        "/api/ops/openapi.json",
    ] {
        assert!(
            paths.contains(known),
            "{known} not found in the route table: {table}"
        );
    }
    paths
}

/// A concrete path for a template: every `{param}` / `{*param}` becomes a
/// sample value (no such service, pool, alert...: the handler's 404).
fn concrete(template: &str) -> String {
    let re = regex::Regex::new(r"\{\*?[^}]+\}").expect("regex");
    re.replace_all(template, "sample").into_owned()
}

/// The documented operations: path -> methods (upper case).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = serde_json::to_value(document()).expect("document serialises");
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.iter().any(|m| m.eq_ignore_ascii_case(k)))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

async fn api_with_a_service() -> Api {
    let a = tcp_server().await;
    Api::start(
        vec![tcp_service(
            "cache",
            vec![upstream("cache-primary", &a, Role::Primary)],
        )],
        control_config(),
    )
    .await
}

/// An operator token may do everything, so a 403 cannot hide a route;
/// bodies are empty, so no command can succeed.
async fn probe(api: &Api, method: &str, path: &str) -> Resp {
    api.call(method, &concrete(path), Some(OPERATOR), None)
        .await
}

fn is_route_fallback(r: &Resp) -> bool {
    r.status == StatusCode::NOT_FOUND
        && serde_json::from_str::<Value>(&r.text)
            .is_ok_and(|v| v["error"]["message"] == "no such route")
}

#[tokio::test]
async fn every_routed_path_and_method_is_documented() {
    let api = api_with_a_service().await;
    let docs = documented();
    let routed = routed_paths(&api);
    let mut missing = Vec::new();
    for path in &routed {
        let Some(methods) = docs.get(&openapi_path(path)) else {
            missing.push(format!("{path} (every method)"));
            continue;
        };
        for method in METHODS {
            let r = probe(&api, method, path).await;
            assert!(
                !is_route_fallback(&r),
                "{method} {path} fell through: {}",
                r.text
            );
            if r.status != StatusCode::METHOD_NOT_ALLOWED && !methods.contains(method) {
                missing.push(format!("{method} {path} (answered {})", r.status));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "served but not documented: {missing:#?}"
    );
    assert_eq!(
        routed.len(),
        docs.len(),
        "routed {routed:#?}\ndocumented {:#?}",
        docs.keys()
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let api = api_with_a_service().await;
    let mut unrouted = Vec::new();
    for (path, methods) in documented() {
        assert!(!methods.is_empty(), "{path} documents no operation");
        for method in methods {
            let r = probe(&api, &method, &path).await;
            if is_route_fallback(&r) || r.status == StatusCode::METHOD_NOT_ALLOWED {
                unrouted.push(format!("{method} {path}: {} {}", r.status, r.text));
            }
        }
    }
    assert!(
        unrouted.is_empty(),
        "documented but not served: {unrouted:#?}"
    );
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_served_to_viewers_and_is_valid_openapi() {
    let api = Api::empty().await;
    let anonymous = api.call("GET", "/api/ops/openapi.json", None, None).await;
    anonymous.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let r = api.get("/api/ops/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["content-type"], "application/json");
    let doc = r.json();
    assert_eq!(doc, serde_json::to_value(document()).expect("serialises"));
    if let Some(dump) = std::env::var_os("OPENAPI_DUMP") {
        std::fs::write(dump, &r.text).expect("OPENAPI_DUMP is writable");
    }

    // What an OpenAPI 3.1 reader needs, checked here so that it holds
    // without Python too.
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut all = Vec::new();
    refs(&doc, &mut all);
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "dangling $ref {r}");
    }
    let param = regex::Regex::new(r"\{([^}]+)\}").expect("regex");
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(operation_ids.insert(id.clone()), "operationId {id} twice");
            for c in param.captures_iter(path) {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == c[1] && p["in"] == "path" && p["required"] == true)
                });
                assert!(
                    declared,
                    "{method} {path}: path parameter {} undeclared",
                    &c[1]
                );
            }
            for (code, resp) in op["responses"].as_object().expect("responses") {
                assert!(resp["description"].is_string(), "{method} {path} {code}");
            }
        }
    }

    // The reference validator, where it is installed (scripts/install-deps
    // installs it; CI must have it).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &r.text).expect("write");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n\
             print('valid')",
        ])
        .arg(&file)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "valid");
        }
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            assert!(
                std::env::var_os("CI").is_none(),
                "openapi-spec-validator is not installed (pip install openapi-spec-validator)"
            );
            eprintln!("skipped: openapi-spec-validator is not installed");
        }
        Ok(o) => panic!(
            "openapi-spec-validator refused the document:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "python3: {e}");
            eprintln!("skipped: no python3 ({e})");
        }
    }
}

/// Strict-mode JSON Schema validation of real answers against the
/// documented schemas: an object may carry no member its schema does not
/// list (`unevaluatedProperties: false` on every object schema), so a
/// member added to an answer and not to its schema fails here, as does a
/// wrong type or a missing required member.
const VALIDATE_ANSWERS: &str = include_str!("openapi_answers.py");

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    use continuity_control::alerts::{AlertSettings, Alerts};
    use continuity_control::audit::{AuditLog, AuditSettings};
    use continuity_proxy::config::{Kind, ServiceConfig};
    use continuity_proxy::snapshot::ServiceStatus;

    let (a, b) = (tcp_server().await, tcp_server().await);
    let mut etl = ServiceConfig::new("etl", Kind::Heartbeat, vec![]);
    etl.stall_after = Some(std::time::Duration::from_secs(600));
    let cache = tcp_service(
        "cache",
        vec![
            upstream("cache-primary", &a, Role::Primary),
            upstream("cache-secondary", &b, Role::Secondary),
        ],
    );
    let settings = AlertSettings::default().with_services(std::slice::from_ref(&etl));
    let mut api = Api::start(vec![cache, etl], control_config()).await;
    api.state.alerts = Alerts::new(settings, &api.state.registry).expect("alerts");
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = AuditSettings {
        dir: dir.path().to_path_buf(),
        ..AuditSettings::default()
    };
    let (log, _) = AuditLog::open(audit, &api.state.registry)
        .await
        .expect("audit log");
    api.state = api.state.clone().with_audit(log);
    api.wait_status("cache", ServiceStatus::Healthy).await;

    let reason = Some(r#"{"reason":"openapi drill"}"#);
    let (v, o, none) = (Some(VIEWER), Some(OPERATOR), None);
    // An open escalation, so that alert answers carry a real alert.
    api.state
        .alerts
        .neo4j_write_failure("cache", "write refused");
    api.state.alerts.evaluate(&api.state).await;
    let alert = api.state.alerts.open_alerts()[0]["id"]
        .as_str()
        .expect("alert id")
        .to_string();
    let ack = format!("POST /api/ops/alerts/{alert}/ack");
    // ("METHOD path", token, body): every route, and its errors where they are cheap to get.
    let calls: Vec<(&str, Option<&str>, Option<&str>)> = vec![
        ("GET /api/ops/health", none, None),
        ("GET /api/ops/ready", none, None),
        ("GET /api/ops/health/deep", v, None),
        ("GET /api/ops/health/service/cache", v, None),
        ("GET /api/ops/health/service/nope", v, None),
        ("GET /api/ops/health/snapshots?window=1h", v, None),
        ("GET /api/ops/health/snapshots?window=2h", v, None),
        ("GET /api/ops/sla", v, None),
        ("GET /api/ops/failover/status", none, None),
        ("GET /api/ops/failover/status", v, None),
        ("POST /api/ops/failover/trigger/cache", v, reason),
        ("POST /api/ops/failover/trigger/cache", o, None),
        ("POST /api/ops/failover/trigger/cache", o, Some("[]")),
        ("POST /api/ops/failover/trigger/cache", o, reason),
        ("GET /api/ops/failover/status", v, None),
        ("POST /api/ops/failover/recover/cache", o, reason),
        ("GET /api/ops/redundancy/status", v, None),
        ("GET /api/ops/redundancy/pool/cache-primary", v, None),
        ("POST /api/ops/redundancy/failover/cache-primary", o, reason),
        ("POST /api/ops/redundancy/failback/cache-primary", o, reason),
        ("POST /api/ops/redundancy/resync/cache-primary", o, reason),
        (
            "POST /api/ops/emergency",
            o,
            Some(r#"{"enabled":true,"reason":"openapi drill"}"#),
        ),
        ("GET /api/ops/diagnostics/alerts", v, None),
        ("GET /api/ops/diagnostics/alerts?open=maybe", v, None),
        (
            "POST /api/ops/emergency",
            o,
            Some(r#"{"enabled":false,"reason":"openapi drill"}"#),
        ),
        ("POST /api/ops/emergency", o, reason),
        ("POST /api/ops/alerts/nope/ack", o, reason),
        ("GET /api/ops/diagnostics/alerts?open=true", v, None),
        ("GET /api/ops/diagnostics/report", v, None),
        (&ack, o, reason),
        (&ack, o, reason),
        (
            "POST /api/ops/heartbeat/etl",
            Some(REPORTER),
            Some(r#"{"processed":5,"checkpoint":"batch 7"}"#),
        ),
        (
            "POST /api/ops/heartbeat/etl",
            Some(REPORTER),
            Some(r#"{"processed":-1}"#),
        ),
        ("GET /api/ops/diagnostics/report", v, None),
        ("GET /api/ops/diagnostics/events", v, None),
        ("GET /api/ops/diagnostics/events?severity=loud", v, None),
        ("GET /api/ops/diagnostics/slow-queries", v, None),
        ("GET /api/ops/audit/logs", v, None),
        ("GET /api/ops/audit/logs?limit=x", v, None),
        ("GET /api/ops/audit/status", v, None),
        ("GET /api/ops/audit/verify", v, None),
        ("GET /api/ops/audit/report", v, None),
        ("GET /api/ops/queue", v, None),
        ("GET /api/ops/queue/nope", v, None),
        ("POST /api/ops/config/reload", o, reason),
        ("GET /api/ops/whoami", v, None),
        ("GET /ws/ops/health", v, None),
        ("GET /operations-center/assets/nope.js", none, None),
    ];
    let doc = serde_json::to_value(document()).expect("document");
    let mut cases = Vec::new();
    let mut undocumented = Vec::new();
    // Literal paths first, so that a template never shadows one.
    let mut templates: Vec<(regex::Regex, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| {
            let segments: Vec<String> = p
                .split('/')
                .map(|seg| match seg.starts_with('{') {
                    true => "[^/]+".to_string(),
                    false => regex::escape(seg),
                })
                .collect();
            let re = regex::Regex::new(&format!("^{}$", segments.join("/"))).expect("template");
            (re, p.clone())
        })
        .collect();
    templates.sort_by_key(|(_, p)| p.contains('{'));
    for (call, token, body) in calls {
        let (method, sent) = call.split_once(' ').expect("METHOD path");
        let bare = sent.split('?').next().unwrap_or_default();
        let path = templates
            .iter()
            .find(|(re, _)| re.is_match(bare))
            .map(|(_, p)| p.as_str())
            .unwrap_or_else(|| panic!("{sent} matches no documented path"));
        let r = api.call(method, sent, token, body).await;
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        let answer = &op["responses"][r.status.as_str()];
        if !answer.is_object() {
            undocumented.push(format!("{method} {sent}: {} {}", r.status, r.text));
            continue;
        }
        if let Some(schema) = answer["content"]["application/json"].get("schema") {
            cases.push(serde_json::json!({
                "name": format!("{method} {sent} -> {}", r.status),
                "schema": schema,
                "instance": r.json(),
            }));
        }
    }
    assert!(
        undocumented.is_empty(),
        "status codes not documented: {undocumented:#?}"
    );
    assert!(cases.len() > 30, "{} answers checked", cases.len());

    let file = dir.path().join("answers.json");
    let data = serde_json::json!({ "components": doc["components"], "cases": cases });
    std::fs::write(&file, data.to_string()).expect("write");
    match std::process::Command::new("python3")
        .args(["-c", VALIDATE_ANSWERS])
        .arg(&file)
        .output()
    {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.starts_with("ok "), "{out}");
        }
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            assert!(
                std::env::var_os("CI").is_none(),
                "openapi-schema-validator is not installed (pip install openapi-spec-validator)"
            );
            eprintln!("skipped: openapi-schema-validator is not installed");
        }
        Ok(o) => panic!(
            "answers that do not match their documented schemas:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "python3: {e}");
            eprintln!("skipped: no python3 ({e})");
        }
    }
}
