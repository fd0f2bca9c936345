use super::*;

fn parse(src: &str) -> Result<Vec<Rule>, Vec<String>> {
    let v: toml::Table = toml::from_str(src).expect("toml");
    let rules = v
        .get("rule")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    parse_rules(&rules)
}

#[test]
fn defaults_are_the_design_table() {
    let r = default_rules();
    let row = |name: &str| r.iter().find(|x| x.name == name).expect(name).clone();
    let u = row("service_unresponsive");
    assert_eq!((u.severity, u.tier), (AlertSeverity::Degraded, 3));
    assert_eq!(u.threshold, Duration::from_secs(10));
    assert_eq!(u.routes, [Route::RtccLiveDashboard, Route::OpsCenter]);
    let d = row("dependencies_failed");
    assert_eq!(
        (d.severity, d.tier, d.count),
        (AlertSeverity::Critical, 2, 2)
    );
    assert!(d.routes.contains(&Route::TacticalDashboard));
    assert!(!d.routes.contains(&Route::CommandCenter));
    let f = row("federal_offline");
    assert_eq!((f.severity, f.tier), (AlertSeverity::Priority1, 1));
    assert_eq!(f.threshold, Duration::from_secs(300));
    assert!(f.routes.contains(&Route::CommandCenter));
    assert!(f.routes.contains(&Route::FederalLiaison));
    let n = row("neo4j_write_failure");
    assert_eq!((n.severity, n.tier), (AlertSeverity::Emergency, 1));
    assert_eq!(n.routes.len(), 4, "all dashboards");
    let e = row("etl_stall");
    assert_eq!((e.severity, e.tier), (AlertSeverity::High, 3));
    assert!(e.routes.contains(&Route::OpsCenter));
    let w = row("websocket_drop");
    assert_eq!((w.severity, w.tier), (AlertSeverity::Degraded, 3));
    assert!((w.ratio - 0.2).abs() < 1e-9);
    assert_eq!(w.threshold, Duration::from_secs(60));
}

#[test]
fn custom_rules_parse_with_defaults_filled() {
    let rules = parse(
        r#"
        [[rule]]
        name = "fast-unresponsive"
        condition = "service_unresponsive"
        threshold_seconds = 0.5
        services = ["redis"]
        [[rule]]
        name = "three-down"
        condition = "dependencies_failed"
        count = 3
        severity = "emergency"
        routes = ["federal_liaison"]
        [[rule]]
        name = "ws"
        condition = "websocket_drop"
        percent = 35
        tier = 2
        "#,
    )
    .expect("valid");
    assert_eq!(rules[0].threshold, Duration::from_millis(500));
    assert!(rules[0].covers("redis") && !rules[0].covers("pg"));
    assert_eq!((rules[1].count, rules[1].tier), (3, 1));
    assert_eq!(rules[1].routes.len(), 5);
    assert!((rules[2].ratio - 0.35).abs() < 1e-9);
    assert_eq!(rules[2].tier, 2);
    assert_eq!(rules[2].severity, AlertSeverity::Degraded);
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let errs = parse(
        r#"
        [[rule]]
        condition = "nope"
        [[rule]]
        name = "a"
        condition = "etl_stall"
        count = 2
        [[rule]]
        name = "b"
        condition = "service_unresponsive"
        threshold_seconds = -1
        tier = 7
        severity = "loud"
        routes = ["pager"]
        [[rule]]
        name = "a"
        condition = "dependencies_failed"
        count = 0
        "#,
    )
    .expect_err("invalid");
    let all = errs.join("\n");
    for needle in [
        "alerts.rule[0].name: missing",
        "alerts.rule[0].condition: unknown condition `nope`",
        "alerts.rule[1].count: not a key of condition etl_stall",
        "alerts.rule[2].threshold_seconds",
        "alerts.rule[2].tier",
        "alerts.rule[2].severity: unknown severity `loud`",
        "alerts.rule[2].routes: unknown route `pager`",
        "alerts.rule[3].count",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in\n{all}");
    }
    let dup = parse(
        "[[rule]]\nname='x'\ncondition='etl_stall'\n[[rule]]\nname='x'\ncondition='etl_stall'\n",
    )
    .expect_err("dup");
    assert!(dup[0].contains("duplicate rule name `x`"), "{dup:?}");
}
