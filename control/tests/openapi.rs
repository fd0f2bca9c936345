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
