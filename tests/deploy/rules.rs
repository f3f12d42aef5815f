//! `deploy/prometheus/`: the rules pass `promtool check rules`, every alert's unit tests pass
//! `promtool test rules`, and the PrometheusRule carries the same groups as the rule file.

use std::process::Command;

use crate::tools::{deploy_dir, run_ok, tool};

const RULES: &str = "switchyard.rules.yaml";
const RULE_TESTS: &str = "switchyard.rules.test.yaml";

fn yaml(path: &std::path::Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let dir = deploy_dir().join("prometheus");
    let out = run_ok(
        Command::new(tool("promtool"))
            .args(["check", "rules", RULES])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        Command::new(tool("promtool"))
            .args(["test", "rules", RULE_TESTS])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every alert has at least one unit test that expects it to fire, so a broken expression
/// cannot pass as "never fires".
#[test]
fn every_alert_has_a_unit_test_that_fires_it() {
    let dir = deploy_dir().join("prometheus");
    let rules = yaml(&dir.join(RULES));
    let tests = yaml(&dir.join(RULE_TESTS));
    let alerts: Vec<&str> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    let fired: Vec<&str> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .filter(|a| a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()))
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    for alert in alerts {
        assert!(fired.contains(&alert), "no unit test fires {alert}");
    }
}

#[test]
fn the_prometheus_rule_resource_has_the_rule_files_groups() {
    let dir = deploy_dir().join("prometheus");
    let file = yaml(&dir.join(RULES));
    let resource = yaml(&dir.join("prometheusrule.yaml"));
    assert_eq!(resource["kind"], "PrometheusRule");
    assert!(
        resource["spec"]["groups"] == file["groups"],
        "prometheusrule.yaml and {RULES} differ: edit both"
    );
}
