//! Alert rules, their runbook, the Alertmanager example and the Grafana dashboards: promtool's
//! and amtool's own checks, the rules' unit tests, and what no tool checks: every metric a
//! panel or rule queries exists in the exporter's output, every alert carries severity,
//! summary, description and a runbook section, every dashboard has its variables and no
//! hard-coded data source.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric families of the golden exposition (the sample names, `_total` included).
fn exported() -> BTreeSet<String> {
    read("tests/golden/drain.prom")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| n.to_string())
        .collect()
}

/// The `drainwatch_...` and `drainwatch:...` names in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("drainwatch") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        if before_ok && end > start + "drainwatch".len() {
            out.push(expr[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn rules() -> serde_norway::Value {
    serde_norway::from_str(&read("alerts/drainwatch.yml")).unwrap()
}

fn rule_list(v: &serde_norway::Value) -> Vec<&serde_norway::Value> {
    v["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .collect()
}

fn recorded() -> BTreeSet<String> {
    let v = rules();
    rule_list(&v)
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_string))
        .collect()
}

/// Checks every name of `expr` (from `what`) against the exporter's metrics and the recording
/// rules.
fn check_names(what: &str, expr: &str, exported: &BTreeSet<String>, recorded: &BTreeSet<String>) {
    for name in names_in(expr) {
        if name.contains(':') {
            assert!(recorded.contains(&name), "{what}: no recording rule {name}");
            continue;
        }
        // The golden file holds sample names: histograms' _bucket, _sum and _count included.
        assert!(
            exported.contains(&name),
            "{what}: {name} is not in the exporter's output (tests/golden/drain.prom)"
        );
    }
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    run_ok("promtool", &["check", "rules", "alerts/drainwatch.yml"]);
    run_ok(
        "promtool",
        &["test", "rules", "alerts/tests/drainwatch_test.yml"],
    );
}

#[test]
fn amtool_accepts_the_example_alertmanager_config() {
    run_ok(
        "amtool",
        &["check-config", "deploy/alertmanager/alertmanager.yml"],
    );
}

#[test]
fn every_alert_has_severity_summary_description_a_runbook_section_and_a_unit_test() {
    let runbook = read("docs/runbook.md");
    let tests = read("alerts/tests/drainwatch_test.yml");
    let v = rules();
    let alerts: Vec<_> = rule_list(&v)
        .into_iter()
        .filter(|r| r["alert"].as_str().is_some())
        .collect();
    assert!(alerts.len() >= 9, "{} alerts", alerts.len());
    for r in alerts {
        let name = r["alert"].as_str().unwrap();
        let severity = r["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let summary = r["annotations"]["summary"].as_str().unwrap_or("");
        assert!(
            !summary.is_empty() && !summary.contains("{{"),
            "{name}: the summary must be static"
        );
        let description = r["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains("{{"),
            "{name}: the description must be templated"
        );
        let url = r["annotations"]["runbook_url"].as_str().unwrap_or("");
        let anchor = url
            .split_once("docs/runbook.md#")
            .map(|(_, a)| a)
            .unwrap_or_else(|| {
                panic!("{name}: runbook_url {url:?} does not point into docs/runbook.md")
            });
        assert_eq!(anchor, name.to_lowercase(), "{name}: anchor");
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "{name}: no section in docs/runbook.md"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name}: no promtool unit test"
        );
    }
}

#[test]
fn rules_query_only_metrics_the_exporter_has() {
    let exported = exported();
    let recorded = recorded();
    let v = rules();
    for r in rule_list(&v) {
        let what = r["alert"].as_str().or(r["record"].as_str()).unwrap();
        check_names(what, r["expr"].as_str().unwrap(), &exported, &recorded);
    }
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_three_dashboards_parse_with_their_variables_and_no_hard_coded_data_source() {
    let boards = dashboards();
    let names: Vec<_> = boards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "drain-overview.json",
            "fleet-deploy.json",
            "session-lifetimes.json"
        ]
    );
    let doc = read("docs/dashboards.md");
    for (name, d) in &boards {
        let vars: BTreeSet<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for required in ["datasource", "job", "instance"] {
            assert!(vars.contains(required), "{name}: no {required} variable");
        }
        if name != "fleet-deploy.json" {
            assert!(vars.contains("port"), "{name}: no port variable");
        }
        let text = d.to_string();
        for uid in text.split("\"uid\":").skip(1) {
            let value = uid.trim_start().trim_start_matches('"');
            assert!(
                value.starts_with("${datasource}")
                    || value.starts_with("-- Grafana --")
                    || value.starts_with("drainwatch-"),
                "{name}: hard-coded uid {}",
                &value[..value.len().min(40)]
            );
        }
        let panels = d["panels"].as_array().unwrap();
        assert!(panels.len() >= 6, "{name}: {} panels", panels.len());
        let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "{name}: duplicate panel ids");
        for p in panels {
            let title = p["title"].as_str().unwrap();
            let description = p["description"].as_str().unwrap_or("");
            assert!(
                description.len() > 20,
                "{name}: panel {title:?} has no description"
            );
            assert!(
                doc.contains(&format!("| {title} |")),
                "{name}: panel {title:?} is not in docs/dashboards.md"
            );
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{name}: panel {title:?} has no query"
            );
        }
    }
}

#[test]
fn dashboards_query_only_metrics_the_exporter_has() {
    let exported = exported();
    let recorded = recorded();
    for (name, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let what = format!("{name} / {}", p["title"]);
                check_names(&what, t["expr"].as_str().unwrap(), &exported, &recorded);
            }
        }
        for a in d["annotations"]["list"].as_array().unwrap() {
            if let Some(expr) = a["expr"].as_str() {
                check_names(
                    &format!("{name} / annotation {}", a["name"]),
                    expr,
                    &exported,
                    &recorded,
                );
            }
        }
    }
}

#[test]
fn the_dashboards_are_what_build_py_writes() {
    run_ok("python3", &["dashboards/build.py", "--check"]);
}

#[test]
fn a_metric_that_does_not_exist_is_caught() {
    // The name check itself can fail.
    let result = std::panic::catch_unwind(|| {
        check_names(
            "test",
            "rate(drainwatch_no_such_metric_total[1m])",
            &exported(),
            &recorded(),
        )
    });
    assert!(result.is_err());
    assert_eq!(
        names_in(
            r#"sum by (le) (rate(drainwatch_connection_duration_seconds_bucket{port="80"}[5m])) / drainwatch:resets:rate1m"#
        ),
        [
            "drainwatch_connection_duration_seconds_bucket",
            "drainwatch:resets:rate1m"
        ]
    );
}
