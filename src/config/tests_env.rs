//! Environment overrides, path resolution, defaults and cross-service checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use continuity_proxy::config::{AccessLog, Redundancy, Role};

use super::env::{parse_neo4j_uri, parse_redis_url, RedisUrl};
use super::{parse_with_env, Config, ConfigErrors};

const REDIS_NEO4J: &str = r#"
[health]
failure_threshold = 4

[[service]]
name = "cache"
kind = "redis"
listen = "127.0.0.1:16379"
upstreams = [{ name = "cache-a", address = "127.0.0.1:6379", role = "primary" }]

[[service]]
name = "sessions"
kind = "redis"
failure_threshold = 2
check_interval_seconds = 2
redundancy = "cold"
upstreams = [
  { name = "sessions-a", address = "127.0.0.1:6381", role = "primary" },
  { name = "sessions-b", address = "127.0.0.1:6382", role = "secondary", password_env = "SESSIONS_PW" },
]

[[service]]
name = "graph"
kind = "neo4j"
upstreams = [{ name = "graph-a", address = "127.0.0.1:7687", role = "primary" }]
"#;

fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn ok(src: &str, env: &dyn Fn(&str) -> Option<String>) -> Config {
    parse_with_env(src, Path::new("/etc/continuity/continuity.toml"), env)
        .unwrap_or_else(|e| panic!("refused:\n{e}"))
}

fn err(src: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigErrors {
    match parse_with_env(src, Path::new("/etc/continuity/continuity.toml"), env) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn env_sets_globals_and_per_service_keys_still_win() {
    let env = with(&[
        ("OPS_HEALTH_CHECK_INTERVAL", "0.5"),
        ("OPS_FAILOVER_THRESHOLD", "5"),
        ("OPS_REDUNDANCY_MODE", "warm"),
        ("SESSIONS_PW", "pw"),
    ]);
    let c = ok(REDIS_NEO4J, &env);
    let [cache, sessions, graph] = &c.engine.services[..] else {
        panic!("3 services")
    };
    assert_eq!(cache.health.check_interval, Duration::from_millis(500));
    assert_eq!(
        cache.health.failure_threshold, 5,
        "env beats the file's [health]"
    );
    assert_eq!(cache.redundancy, Redundancy::Warm);
    assert_eq!(
        sessions.health.failure_threshold, 2,
        "a per-service key beats the global"
    );
    assert_eq!(sessions.health.check_interval, Duration::from_secs(2));
    assert_eq!(sessions.redundancy, Redundancy::Cold);
    assert_eq!(sessions.upstreams[1].password.as_deref(), Some("pw"));
    assert_eq!(graph.redundancy, Redundancy::Warm);
}

#[test]
fn without_env_the_file_and_defaults_apply() {
    let c = ok(REDIS_NEO4J, &with(&[("SESSIONS_PW", "pw")]));
    let cache = &c.engine.services[0];
    assert_eq!(cache.health.failure_threshold, 4);
    assert_eq!(cache.health.check_interval, Duration::from_secs(30));
    assert_eq!(cache.redundancy, Redundancy::Hot);
    assert_eq!(cache.buffer_timeout, Duration::from_millis(5000));
    assert_eq!(cache.warm_connections, 2);
    assert_eq!(cache.slow_query, Duration::from_millis(100));
    assert_eq!(c.alerts.webhook_url, None);
    assert_eq!(c.control.listen, SocketAddr::from(([127, 0, 0, 1], 8000)));
    assert_eq!(c.data_dir, PathBuf::from("/etc/continuity/data"));
}

#[test]
fn secondary_urls_replace_or_add_the_secondary() {
    let env = with(&[
        ("REDIS_SECONDARY_URL", "redis://:s3cr%40t@10.0.0.2:6390"),
        ("NEO4J_SECONDARY_URI", "bolt://10.0.0.3:7688"),
        ("SESSIONS_PW", "file-pw"),
    ]);
    let c = ok(REDIS_NEO4J, &env);
    let [cache, sessions, graph] = &c.engine.services[..] else {
        panic!("3 services")
    };
    let added = &cache.upstreams[1];
    assert_eq!(added.name, "cache-secondary");
    assert_eq!(added.role, Role::Secondary);
    assert_eq!(added.address.as_deref(), Some("10.0.0.2:6390"));
    assert_eq!(added.password.as_deref(), Some("s3cr@t"));
    assert_eq!(sessions.upstreams.len(), 2);
    assert_eq!(sessions.upstreams[1].name, "sessions-b");
    assert_eq!(
        sessions.upstreams[1].address.as_deref(),
        Some("10.0.0.2:6390")
    );
    assert_eq!(
        sessions.upstreams[1].password.as_deref(),
        Some("s3cr@t"),
        "env beats password_env"
    );
    assert_eq!(graph.upstreams[1].name, "graph-secondary");
    assert_eq!(graph.upstreams[1].address.as_deref(), Some("10.0.0.3:7688"));
}

#[test]
fn alert_webhook_from_env_beats_the_file() {
    let src = "[alerts]\nwebhook_url = \"https://file.example/hook\"\n";
    let c = ok(
        src,
        &with(&[("OPS_ALERT_WEBHOOK_URL", "https://env.example/hook")]),
    );
    assert_eq!(
        c.alerts.webhook_url.as_deref(),
        Some("https://env.example/hook")
    );
    let c = ok(src, &with(&[("OPS_ALERT_WEBHOOK_URL", "")]));
    assert_eq!(
        c.alerts.webhook_url.as_deref(),
        Some("https://file.example/hook"),
        "empty = unset"
    );
}

#[test]
fn bad_env_values_are_problems_named_after_the_variable() {
    let env = with(&[
        ("OPS_HEALTH_CHECK_INTERVAL", "fast"),
        ("OPS_FAILOVER_THRESHOLD", "0"),
        ("OPS_REDUNDANCY_MODE", "tepid"),
        ("OPS_ALERT_WEBHOOK_URL", "ftp://x"),
        ("REDIS_SECONDARY_URL", "http://10.0.0.2:6379"),
        ("NEO4J_SECONDARY_URI", "bolt://10.0.0.3:99999"),
        ("SESSIONS_PW", "pw"),
    ]);
    let e = err(REDIS_NEO4J, &env);
    let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
    for var in [
        "OPS_HEALTH_CHECK_INTERVAL",
        "OPS_FAILOVER_THRESHOLD",
        "OPS_REDUNDANCY_MODE",
        "OPS_ALERT_WEBHOOK_URL",
        "REDIS_SECONDARY_URL",
        "NEO4J_SECONDARY_URI",
    ] {
        assert!(
            paths.contains(&format!("env {var}").as_str()),
            "{var} missing in {paths:?}"
        );
    }
    assert!(e.problems.iter().all(|p| p.line.is_none()));
    assert!(e.to_string().contains("continuity.toml: env OPS_REDUNDANCY_MODE: unknown value `tepid`; expected one of: hot, warm, cold"), "{e}");
}

#[test]
fn secondary_url_forms() {
    assert_eq!(
        parse_neo4j_uri("10.0.0.3:7687"),
        Ok("10.0.0.3:7687".to_string())
    );
    assert_eq!(
        parse_neo4j_uri("neo4j://db.local"),
        Ok("db.local:7687".to_string())
    );
    assert!(parse_neo4j_uri("http://db:7474").is_err());
    assert_eq!(
        parse_redis_url("redis://10.0.0.2:6380/0"),
        Ok(RedisUrl {
            address: "10.0.0.2:6380".into(),
            user: None,
            password: None
        })
    );
    assert_eq!(
        parse_redis_url("redis://app:pw@[::1]"),
        Ok(RedisUrl {
            address: "[::1]:6379".into(),
            user: Some("app".into()),
            password: Some("pw".into())
        })
    );
    assert!(parse_redis_url("10.0.0.2:6380").is_err());
    assert!(parse_redis_url("redis://h:0").is_err());
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in [
        "certs/control.pem",
        "certs/control.key",
        "keys/audit.pem",
        "certs/ca.pem",
    ] {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "x").expect("write");
    }
    let src = r#"
data_dir = "state"
[control]
tls_cert = "certs/control.pem"
tls_key = "certs/control.key"
[audit]
signing_key = "keys/audit.pem"
[[service]]
name = "api"
kind = "http"
upstreams = [{ name = "api-a", url = "https://api.example", role = "primary", ca_file = "certs/ca.pem" }]
"#;
    let path = dir.path().join("continuity.toml");
    let c = parse_with_env(src, &path, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.data_dir, dir.path().join("state"));
    assert_eq!(c.audit.dir, dir.path().join("state/audit"));
    assert_eq!(
        c.control.tls_cert,
        Some(dir.path().join("certs/control.pem"))
    );
    assert_eq!(
        c.control.tls_key,
        Some(dir.path().join("certs/control.key"))
    );
    assert_eq!(c.audit.signing_key, Some(dir.path().join("keys/audit.pem")));
    assert_eq!(
        c.extra["api"].upstream_tls["api-a"].ca_file,
        Some(dir.path().join("certs/ca.pem"))
    );

    let abs = "[audit]\ndir = \"/var/log/continuity-audit\"\n";
    let c = parse_with_env(abs, &path, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.audit.dir, PathBuf::from("/var/log/continuity-audit"));
    let c = parse_with_env("", Path::new("continuity.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.data_dir, PathBuf::from("./data"));
}

#[test]
fn missing_files_are_problems() {
    let e = err("[audit]\nsigning_key = \"keys/nope.pem\"\n", &|_| None);
    assert_eq!(e.problems[0].path, "audit.signing_key");
    assert_eq!(e.problems[0].line, Some(2));
    assert!(e.problems[0].message.contains("does not exist"), "{e}");
}

#[test]
fn tokens_are_decoded_case_insensitively() {
    let src = r#"
[[control.token]]
name = "ops"
role = "viewer"
sha256 = "5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8"
"#;
    let c = ok(src, &|_| None);
    assert_eq!(c.control.tokens[0].sha256[0], 0x5e);
    assert_eq!(
        c.control.tokens[0].role,
        continuity_control::config::TokenRole::Viewer
    );
}

#[test]
fn wildcard_and_specific_listeners_on_one_port_clash() {
    let src = r#"
[[service]]
name = "a"
kind = "tcp"
listen = "0.0.0.0:19000"
upstreams = [{ name = "a1", address = "127.0.0.1:9000", role = "primary" }]
[[service]]
name = "b"
kind = "tcp"
listen = "127.0.0.1:19000"
upstreams = [{ name = "b1", address = "127.0.0.1:9001", role = "primary" }]
[[service]]
name = "c"
kind = "tcp"
listen = "127.0.0.1:0"
upstreams = [{ name = "c1", address = "127.0.0.1:9002", role = "primary" }]
[[service]]
name = "d"
kind = "tcp"
listen = "127.0.0.1:0"
upstreams = [{ name = "d1", address = "127.0.0.1:9003", role = "primary" }]
"#;
    let e = err(src, &|_| None);
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].path, "service[1].listen");
    assert_eq!(e.problems[0].line, Some(10));
}

#[test]
fn access_log_is_an_http_key_with_three_values() {
    let http = |v: &str| {
        format!(
            r#"
[[service]]
name = "lpr"
kind = "http"
listen = "127.0.0.1:18081"
{v}
upstreams = [{{ name = "lpr-a", url = "http://127.0.0.1:9", role = "primary" }}]
"#
        )
    };
    let none = |_: &str| None;
    for (line, want) in [
        ("", AccessLog::All),
        ("access_log = \"all\"", AccessLog::All),
        ("access_log = \"errors\"", AccessLog::Errors),
        ("access_log = \"off\"", AccessLog::Off),
    ] {
        let c = ok(&http(line), &none);
        assert_eq!(c.engine.services[0].http.access_log, want, "{line}");
    }
    let e = err(&http("access_log = \"some\""), &none);
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].path, "service[0].access_log");
    assert!(
        e.to_string()
            .contains("unknown value `some`; expected one of: all, errors, off"),
        "{e}"
    );
    let e = err(
        r#"
[[service]]
name = "r"
kind = "redis"
access_log = "off"
upstreams = [{ name = "r1", address = "127.0.0.1:6379", role = "primary" }]
"#,
        &none,
    );
    assert_eq!(e.problems[0].path, "service[0].access_log", "{e}");
}

#[test]
fn kind_specific_keys_are_refused_elsewhere() {
    let src = r#"
[[service]]
name = "r"
kind = "redis"
on_outage = "queue"
stall_after_seconds = 5
upstreams = [{ name = "r1", address = "127.0.0.1:6379", role = "primary", database = "x" },
             { name = "r2", address = "127.0.0.1:6380", role = "primary" }]
"#;
    let e = err(src, &|_| None);
    let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "service[0].on_outage",
            "service[0].stall_after_seconds",
            "service[0].upstreams[0].database",
            "service[0].upstreams[1].role",
        ],
        "{e}"
    );
}

const TOKEN_FROM_ENV: &str = r#"
[[control.token]]
name = "ops"
role = "operator"
sha256_env = "OPS_TOKEN_SHA256"
"#;

#[test]
fn token_digest_from_the_environment() {
    let digest = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    let c = ok(TOKEN_FROM_ENV, &with(&[("OPS_TOKEN_SHA256", digest)]));
    assert_eq!(c.control.tokens.len(), 1);
    assert_eq!(hex::encode(c.control.tokens[0].sha256), digest);
    assert_eq!(c.control.tokens[0].name, "ops");

    // Unset (or empty, as compose's ${VAR:-} passes it): a problem at the key
    // that names the variable.
    for env in [with(&[]), with(&[("OPS_TOKEN_SHA256", " ")])] {
        let e = err(TOKEN_FROM_ENV, &env);
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].path, "control.token[0].sha256_env");
        assert_eq!(e.problems[0].line, Some(5));
        assert!(e.problems[0].message.contains("OPS_TOKEN_SHA256"), "{e}");
    }

    // Not a digest: the same message as for `sha256`, at sha256_env.
    let e = err(TOKEN_FROM_ENV, &with(&[("OPS_TOKEN_SHA256", "not-hex")]));
    assert_eq!(e.problems[0].path, "control.token[0].sha256_env");
    assert!(e.problems[0].message.contains("64 hex"), "{e}");

    // Exactly one of the two.
    let both = format!("{TOKEN_FROM_ENV}sha256 = \"{digest}\"\n");
    let e = err(&both, &with(&[("OPS_TOKEN_SHA256", digest)]));
    assert!(e.problems[0].message.contains("not both"), "{e}");
    let neither = "[[control.token]]\nname = \"ops\"\nrole = \"viewer\"\n";
    let e = err(neither, &with(&[]));
    assert_eq!(e.problems[0].path, "control.token[0].sha256", "{e}");
}
