//! The broken configs of `tests/configs/bad/` (each says what it expects in
//! `# expect: KEY.PATH line N` comments), the reference config and the
//! examples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use continuity_proxy::config::{Kind, Redundancy, Role};

use super::{load_with_env, parse_with_env, Config, ConfigErrors};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// `(key path, line)` pairs from a fixture's `# expect:` comments; the path
/// `<syntax>` stands for a TOML syntax error (empty key path).
fn expectations(path: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|e| {
            let (key, line) = e.rsplit_once(" line ").expect("`# expect: PATH line N`");
            let key = if key == "<syntax>" { "" } else { key };
            (key.to_string(), line.trim().parse().expect("line number"))
        })
        .collect()
}

fn bad_fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/configs/bad"))
        .expect("tests/configs/bad")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn refused(path: &Path) -> ConfigErrors {
    match load_with_env(path, &no_env) {
        Ok(c) => panic!("{} was accepted: {c:?}", path.display()),
        Err(e) => e,
    }
}

fn accepted(path: &Path) -> Config {
    match load_with_env(path, &no_env) {
        Ok(c) => c,
        Err(e) => panic!("{} was refused:\n{e}", path.display()),
    }
}

#[test]
fn every_bad_fixture_names_the_key_path_and_line() {
    let files = bad_fixtures();
    assert!(files.len() >= 12, "only {} fixtures", files.len());
    for file in files {
        let expected = expectations(&file);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let errors = refused(&file);
        for (key, line) in expected {
            assert!(
                errors
                    .problems
                    .iter()
                    .any(|p| p.path == key && p.line == Some(line)),
                "{}: expected a problem at {key} line {line}, got:\n{errors}",
                file.display()
            );
        }
    }
}

#[test]
fn five_problems_are_all_listed_in_file_order() {
    let errors = refused(&repo().join("tests/configs/bad/five_problems.toml"));
    let got: Vec<(String, Option<usize>)> = errors
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.line))
        .collect();
    let want: Vec<(String, Option<usize>)> =
        expectations(&repo().join("tests/configs/bad/five_problems.toml"))
            .into_iter()
            .map(|(k, l)| (k, Some(l)))
            .collect();
    assert_eq!(got, want, "\n{errors}");
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 5);
    assert!(text.contains("five_problems.toml:25: service[1].upstreams[0].role: unknown value `leader`; expected one of: primary, secondary"), "{text}");
}

#[test]
fn messages_list_allowed_values_and_keys() {
    let errors = refused(&repo().join("tests/configs/bad/bad_enum.toml"));
    assert!(
        errors.problems[0].message.contains("hot, warm, cold"),
        "{errors}"
    );
    let errors = refused(&repo().join("tests/configs/bad/unknown_upstream_key.toml"));
    assert!(
        errors.problems[0].message.contains("unknown key `adress`"),
        "{errors}"
    );
    let errors = refused(&repo().join("tests/configs/bad/syntax_error.toml"));
    assert_eq!(errors.problems.len(), 1);
    assert!(
        errors.problems[0].message.contains("line 5, column 18"),
        "{errors}"
    );
}

#[test]
fn the_reference_config_loads_with_the_documented_defaults() {
    let path = repo().join("config/continuity.toml");
    let c = accepted(&path);
    let dir = repo().join("config");
    assert_eq!(c.data_dir, dir.join("data"));
    assert_eq!(c.audit.dir, dir.join("data").join("audit"));
    assert_eq!(c.audit.retention_days, 365);
    assert_eq!(
        c.audit.mask_patterns,
        vec![r"\d{3}-\d{2}-\d{4}".to_string()]
    );
    assert_eq!(c.drain_timeout, Duration::from_millis(10_000));
    assert_eq!(c.engine.drain_timeout, c.drain_timeout);
    assert_eq!(
        c.control,
        continuity_control::config::ControlConfig::default()
    );
    let names: Vec<&str> = c.engine.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["redis", "postgres", "neo4j"]);
    let neo4j = &c.engine.services[2];
    assert_eq!(neo4j.kind, Kind::Neo4j);
    assert_eq!(neo4j.health.check_interval, Duration::from_secs(10));
    assert_eq!(c.engine.services[0].health, Default::default());
    assert_eq!(c.engine.services[0].fallback_max_reply_bytes, 8 << 20);
    assert_eq!(c.engine.services[0].fallback_max_output_bytes, 8 << 20);
    assert!(c.engine.services[0].reattach_idle, "redis: on by default");
    let pg = &c.engine.services[1];
    assert_eq!(pg.slow_query, Duration::from_millis(500));
    assert!(!pg.reattach_idle, "postgres: never");
    assert_eq!(pg.upstreams[1].user.as_deref(), Some("postgres"));
    assert_eq!(pg.upstreams[1].role, Role::Secondary);
    assert!(c.cluster.is_none());
}

#[test]
fn the_reference_config_documents_every_key() {
    let text = std::fs::read_to_string(repo().join("config/continuity.toml")).expect("reference");
    let keys = [
        "data_dir",
        "drain_timeout_ms",
        "listen",
        "tls_cert",
        "tls_key",
        "metrics_public",
        "cors_origins",
        "auth_failures_per_minute",
        "header_read_timeout_ms",
        "idle_timeout_ms",
        "max_client_connections",
        "control.token",
        "sha256",
        "check_interval_seconds",
        "timeout_ms",
        "connect_timeout_ms",
        "latency_threshold_ms",
        "failure_threshold",
        "recovery_threshold",
        "hold_down_seconds",
        "busy_grace_ms",
        "snapshot_retention_hours",
        "dir",
        "retention_days",
        "mask_patterns",
        "signing_key",
        "webhook_url",
        "liaison_webhook_url",
        "alerts.rule",
        "etcd_endpoints",
        "cluster_name",
        "node_id",
        "lease_ttl_seconds",
        "quorum",
        "kind",
        "category",
        "redundancy",
        "failover",
        "failback",
        "on_failover",
        "buffer_timeout_ms",
        "warm_connections",
        "slow_query_ms",
        "fallback",
        "fallback_max_bytes",
        "fallback_max_reply_bytes",
        "fallback_max_output_bytes",
        "reattach_idle",
        "multiplex",
        "multiplex_connections",
        "max_connecting",
        "max_connections",
        "max_body_bytes",
        "queue_max_depth",
        "queue_max_bytes",
        "max_retry_after_seconds",
        "access_log",
        "health_path",
        "on_outage",
        "service.route",
        "path_prefix",
        "stall_after_seconds",
        "address",
        "url",
        "role",
        "user",
        "database",
        "password_env",
        "ca_file",
        "client_cert",
        "client_key",
        "OPS_HEALTH_CHECK_INTERVAL",
        "OPS_FAILOVER_THRESHOLD",
        "OPS_REDUNDANCY_MODE",
        "OPS_ALERT_WEBHOOK_URL",
        "NEO4J_SECONDARY_URI",
        "REDIS_SECONDARY_URL",
    ];
    for key in keys {
        assert!(
            text.contains(key),
            "config/continuity.toml does not mention `{key}`"
        );
    }
}

#[test]
fn the_examples_load() {
    let minimal = accepted(&repo().join("config/examples/minimal.toml"));
    assert_eq!(minimal.engine.services.len(), 1);
    assert_eq!(minimal.engine.services[0].redundancy, Redundancy::Hot);

    let pr = accepted(&repo().join("config/examples/postgres-redis.toml"));
    let redis = &pr.engine.services[1];
    assert_eq!(redis.health.check_interval, Duration::from_millis(500));
    assert_eq!(redis.health.failure_threshold, 3);
    assert_eq!(
        pr.engine.services[0].health.check_interval,
        Duration::from_secs(5)
    );
    assert_eq!(
        pr.extra["redis"].fallback,
        Some(super::service::Fallback::Memory)
    );

    let gw = accepted(&repo().join("config/examples/gateway.toml"));
    let kinds: Vec<Kind> = gw.engine.services.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Http,
            Kind::Elasticsearch,
            Kind::Websocket,
            Kind::Tcp,
            Kind::Heartbeat
        ]
    );
    let ndex = &gw.extra["ndex"];
    assert_eq!(ndex.routes.len(), 1);
    assert_eq!(ndex.routes[0].on_outage, super::service::OnOutage::Queue);
    assert_eq!(ndex.on_outage, super::service::OnOutage::Hold);
    assert_eq!(
        gw.engine.services[1].health_path.as_deref(),
        Some("/_cluster/health")
    );
    assert_eq!(
        gw.engine.services[4].stall_after,
        Some(Duration::from_secs(300))
    );
    let cluster = gw.cluster.expect("cluster");
    assert_eq!(cluster.node_id, "engine-a");
    assert_eq!(cluster.quorum, None);
    assert_eq!(gw.engine.cluster.as_ref(), Some(&cluster));
}

#[test]
fn an_unreadable_file_is_one_problem() {
    let errors = refused(Path::new("/nonexistent/continuity.toml"));
    assert_eq!(errors.problems.len(), 1);
    assert!(
        errors.problems[0].message.contains("cannot read"),
        "{errors}"
    );
}

#[test]
fn a_wrong_array_element_is_reported_once() {
    let src = "[[service]]\nname = \"r\"\nkind = \"redis\"\nupstreams = [\"127.0.0.1:6379\"]\n";
    let errors = parse_with_env(src, Path::new("c.toml"), &no_env).expect_err("refused");
    assert_eq!(errors.problems.len(), 1, "{errors}");
    assert_eq!(errors.problems[0].path, "service[0].upstreams[0]");
    assert_eq!(errors.problems[0].line, Some(4));
}

#[test]
fn multiplex_is_a_redis_and_postgres_key_without_the_memory_fallback_or_reattach() {
    let redis = |extra: &str| {
        format!(
            "[[service]]\nname = \"r\"\nkind = \"redis\"\n{extra}\n\
             upstreams = [{{ name = \"a\", address = \"127.0.0.1:6379\", role = \"primary\" }}]\n"
        )
    };
    let ok =
        parse_with_env(&redis("multiplex = true"), Path::new("c.toml"), &no_env).expect("accepted");
    let svc = &ok.engine.services[0];
    assert!(svc.multiplex);
    assert!(!svc.reattach_idle, "multiplex implies no re-attach");
    let off = parse_with_env(&redis(""), Path::new("c.toml"), &no_env).expect("accepted");
    assert!(!off.engine.services[0].multiplex, "off by default");
    for (extra, says) in [
        ("multiplex = true\nfallback = \"memory\"", "fallback"),
        ("multiplex = true\nreattach_idle = true", "reattach_idle"),
    ] {
        let errors =
            parse_with_env(&redis(extra), Path::new("c.toml"), &no_env).expect_err("refused");
        assert_eq!(errors.problems.len(), 1, "{errors}");
        assert_eq!(errors.problems[0].path, "service[0].multiplex");
        assert!(errors.problems[0].message.contains(says), "{errors}");
    }
    let pg = "[[service]]\nname = \"p\"\nkind = \"postgres\"\nmultiplex = true\n\
              upstreams = [{ name = \"a\", address = \"127.0.0.1:5432\", role = \"primary\" }]\n";
    let ok = parse_with_env(pg, Path::new("c.toml"), &no_env).expect("postgres accepted");
    assert!(ok.engine.services[0].multiplex);
    let bolt = pg.replace("postgres", "neo4j").replace("5432", "7687");
    let errors = parse_with_env(&bolt, Path::new("c.toml"), &no_env).expect_err("refused");
    assert!(
        errors.problems[0]
            .message
            .contains("applies only to kinds redis, postgres"),
        "{errors}"
    );
}

#[test]
fn multiplex_connections_defaults_by_kind_and_needs_multiplex() {
    let svc = |kind: &str, port: u16, extra: &str| {
        format!(
            "[[service]]\nname = \"s\"\nkind = \"{kind}\"\n{extra}\n\
             upstreams = [{{ name = \"a\", address = \"127.0.0.1:{port}\", role = \"primary\" }}]\n"
        )
    };
    let get = |text: String| {
        parse_with_env(&text, Path::new("c.toml"), &no_env)
            .map(|c| c.engine.services[0].multiplex_connections)
    };
    assert_eq!(
        get(svc("postgres", 5432, "multiplex = true")).expect("ok"),
        4
    );
    assert_eq!(get(svc("redis", 6379, "multiplex = true")).expect("ok"), 1);
    assert_eq!(
        get(svc(
            "postgres",
            5432,
            "multiplex = true\nmultiplex_connections = 8"
        ))
        .expect("ok"),
        8
    );
    for (extra, says) in [
        ("multiplex_connections = 2", "only with multiplex = true"),
        (
            "multiplex = true\nmultiplex_connections = 0",
            "from 1 to 64",
        ),
        (
            "multiplex = true\nmultiplex_connections = 65",
            "from 1 to 64",
        ),
    ] {
        let errors = get(svc("postgres", 5432, extra)).expect_err("refused");
        assert_eq!(
            errors.problems[0].path, "service[0].multiplex_connections",
            "{errors}"
        );
        assert!(errors.problems[0].message.contains(says), "{errors}");
    }
}

#[test]
fn max_connecting_defaults_to_64_for_l4_kinds_and_is_bounded() {
    let svc = |kind: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"s\"\nkind = \"{kind}\"\n{extra}\n\
             upstreams = [{{ name = \"a\", address = \"127.0.0.1:6379\", role = \"primary\" }}]\n"
        )
    };
    let get = |text: String| {
        parse_with_env(&text, Path::new("c.toml"), &no_env)
            .map(|c| c.engine.services[0].max_connecting)
    };
    assert_eq!(get(svc("redis", "")).expect("ok"), 64);
    assert_eq!(get(svc("tcp", "max_connecting = 1")).expect("ok"), 1);
    assert_eq!(
        get(svc("postgres", "max_connecting = 65535")).expect("ok"),
        65535
    );
    for (kind, extra, says) in [
        ("redis", "max_connecting = 0", "from 1 to 65535"),
        ("redis", "max_connecting = 65536", "from 1 to 65535"),
        ("heartbeat", "max_connecting = 8", "applies only to"),
    ] {
        let errors = get(svc(kind, extra)).expect_err("refused");
        let problem = errors
            .problems
            .iter()
            .find(|p| p.path == "service[0].max_connecting");
        assert!(
            problem.is_some_and(|p| p.message.contains(says)),
            "{errors}"
        );
    }
}
