//! Helpers shared by the scripted-scenario tests.
#![allow(dead_code)]

use drainwatch::model::aggregate::ClassAggregate;
use drainwatch::model::classify::Classifier;
use drainwatch::model::tracker::LifecycleEvent;
use drainwatch::model::Model;
use drainwatch::source::replay::parse_scenario;

/// Replays `scenario` and returns the model and every sample's events.
pub fn replay(scenario: &str, classifier: Classifier) -> (Model, Vec<Vec<LifecycleEvent>>) {
    let snapshots = parse_scenario(scenario).expect("scenario parses");
    let mut model = Model::new(classifier);
    let events = snapshots
        .iter()
        .map(|s| model.observe(s).to_vec())
        .collect();
    (model, events)
}

pub fn class_of(model: &Model, port: u16, class: &str) -> ClassAggregate {
    let pa = &model.aggregates.ports[&port];
    pa.classes
        .iter()
        .find(|(id, _)| model.classifier.table().name(**id) == class)
        .map(|(_, ca)| ca.clone())
        .unwrap_or_else(|| panic!("no class {class} on port {port}"))
}

/// Every class of `port` added up: the lifecycle rules do not depend on the class.
pub fn all(model: &Model, port: u16) -> ClassAggregate {
    let mut sum = ClassAggregate::default();
    for ca in model.aggregates.ports[&port].classes.values() {
        for (s, v) in sum.states.iter_mut().zip(ca.states) {
            *s += v;
        }
        for (s, v) in sum.age_over.iter_mut().zip(ca.age_over) {
            *s += v;
        }
        for (s, v) in sum.idle_over.iter_mut().zip(ca.idle_over) {
            *s += v;
        }
        sum.opened_total += ca.opened_total;
        sum.closed_total += ca.closed_total;
        for (s, v) in sum.closed_by_reason.iter_mut().zip(ca.closed_by_reason) {
            *s += v;
        }
        sum.timeouts_total += ca.timeouts_total;
        sum.lifetime.count += ca.lifetime.count;
        sum.lifetime.sum += ca.lifetime.sum;
        sum.retransmitting += ca.retransmitting;
        sum.oldest_age_seconds = sum.oldest_age_seconds.max(ca.oldest_age_seconds);
    }
    sum
}

/// Runs `promtool check metrics` on `text` and fails with its report unless it is silent.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is required (the README's test command installs Debian's prometheus package)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

/// Polls `done` every 50 ms until it holds; fails the test with `what` after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
