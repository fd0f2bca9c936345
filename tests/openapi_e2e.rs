//! The real binary serves `GET /api/ops/openapi.json` (viewers, not
//! anonymous clients), and every operation it documents is served by the
//! same binary over real HTTP: none ends in the "no such route" fallback or
//! a 405. Bodies are empty and path parameters name nothing, so no
//! operation changes anything. (control/tests/openapi.rs checks the other
//! direction against the router's route table, and the schemas.)

mod support;

use support::continuity::{Continuity, OPERATOR_TOKEN, VIEWER_TOKEN};
use support::*;

#[test]
fn the_binary_serves_every_documented_operation() {
    let redis = RedisServer::start();
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .service(&format!(
            r#"name = "redis"
kind = "redis"
listen = "{listen}"
upstreams = [ {{ name = "r", address = "{}", role = "primary" }} ]"#,
            redis.addr()
        ))
        .start();

    let (status, body) = engine.request("GET", "/api/ops/openapi.json", None, None);
    assert_eq!(status, 401, "the document needs a token: {body}");
    let (status, doc) = engine.request("GET", "/api/ops/openapi.json", None, Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 30, "{} paths", paths.len());

    let mut probed = 0;
    let mut unserved = Vec::new();
    for (path, item) in paths {
        let concrete = sample_path(path);
        for method in item.as_object().expect("path item").keys() {
            let method = method.to_ascii_uppercase();
            let (status, text) = engine
                .try_request(&method, &concrete, None, Some(OPERATOR_TOKEN))
                .unwrap_or_else(|e| panic!("{method} {concrete}: {e}"));
            probed += 1;
            let fallback = status == 404
                && serde_json::from_str::<serde_json::Value>(&text)
                    .is_ok_and(|v| v["error"]["message"] == "no such route");
            if fallback || status == 405 {
                unserved.push(format!("{method} {path}: {status} {text}"));
            }
            // The role the document states is what the binary enforces:
            // a viewer token is refused (403) exactly where an operator or
            // reporter one is required.
            let role = item[method.to_ascii_lowercase()]["x-required-role"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (as_viewer, _) = engine
                .try_request(&method, &concrete, None, Some(VIEWER_TOKEN))
                .unwrap_or_else(|e| panic!("{method} {concrete}: {e}"));
            assert_eq!(
                as_viewer == 403,
                role == "operator" || role == "reporter",
                "{method} {path}: documented role {role}, a viewer got {as_viewer}"
            );
        }
    }
    assert!(probed >= 35, "{probed} operations probed");
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:#?}"
    );
}

/// `/a/{x}/b` -> `/a/sample/b`.
fn sample_path(template: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { "sample" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}
