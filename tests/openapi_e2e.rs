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

/// The HTTP gateway's queue answers (a queued request, then delivered, and
/// the summary) and the audit report of the real binary match the
/// document's schemas, in the strict mode of control/tests/openapi.rs.
#[test]
fn the_binary_s_queue_and_audit_answers_match_their_schemas() {
    use support::http_upstream::HttpUpstream;
    let mut upstream = HttpUpstream::start("api-a", None, None, false);
    let listen = loopback(free_port());
    let engine = Continuity::builder()
        .health("check_interval_seconds = 0.2")
        .service(&format!(
            "name = \"api\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n\
             upstreams = [ {{ name = \"api-a\", url = \"{}\", role = \"primary\" }} ]\n\
             [[service.route]]\npath_prefix = \"/submissions\"\non_outage = \"queue\"",
            upstream.url()
        ))
        .start();
    let (_, doc) = engine.request("GET", "/api/ops/openapi.json", None, Some(VIEWER_TOKEN));
    upstream.kill();
    let down = wait_until(std::time::Duration::from_secs(15), || {
        engine.get("/api/ops/health/service/api").1["status"] == "down"
    });
    assert!(down, "api never went down\n{}", engine.log_text());
    let r = support::http_client::request(
        &listen,
        "POST",
        "/submissions/1?api_key=K1",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
        "{\"n\":1}",
    )
    .expect("queued POST");
    assert_eq!(r.status, 202, "{r:?}\n{}", engine.log_text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let entry = format!("/api/ops/queue/{id}");

    let mut cases = Vec::new();
    let mut answer = |path: &str, template: &str| {
        let (status, body) = engine.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        let schema = &doc["paths"][template]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"];
        assert!(schema.is_object(), "{template} documents no JSON answer");
        cases.push(serde_json::json!({"name": path, "schema": schema, "instance": body}));
        body
    };
    assert_eq!(answer(&entry, "/api/ops/queue/{id}")["state"], "queued");
    let summary = answer("/api/ops/queue", "/api/ops/queue");
    assert_eq!(summary["services"][0]["depth"], 1, "{summary}");
    upstream.restart();
    let delivered = wait_until(std::time::Duration::from_secs(60), || {
        engine.get(&entry).1["state"] == "delivered"
    });
    assert!(delivered, "never delivered\n{}", engine.log_text());
    let done = answer(&entry, "/api/ops/queue/{id}");
    assert!(done["result"]["status"].is_u64(), "{done}");
    answer("/api/ops/audit/report", "/api/ops/audit/report");
    answer("/api/ops/audit/logs", "/api/ops/audit/logs");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("answers.json");
    let data = serde_json::json!({ "components": doc["components"], "cases": cases });
    std::fs::write(&file, data.to_string()).expect("write");
    let out = std::process::Command::new("python3")
        .args(["-c", include_str!("../control/tests/openapi_answers.py")])
        .arg(&file)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            assert!(
                std::env::var_os("CI").is_none(),
                "openapi-spec-validator is not installed (scripts/install-deps)"
            );
            eprintln!("SKIPPED: openapi-spec-validator is not installed");
        }
        Ok(o) => panic!(
            "answers that do not match their documented schemas:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "python3: {e}");
            eprintln!("SKIPPED: no python3 ({e})");
        }
    }
}
