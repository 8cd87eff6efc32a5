//! Golden exposition: a replayed scenario encoded as Prometheus text must equal
//! tests/golden/<scenario>.prom byte for byte, and promtool must accept it.
//! `UPDATE_GOLDEN=1 cargo test --test exposition_golden` rewrites the golden files.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use drainwatch::app::publish;
use drainwatch::exposition::metrics::{
    encode_openmetrics, openmetrics_to_prometheus_text, registry, scoped_registry, Published,
    SelfStats,
};
use drainwatch::model::classify::Classifier;
use drainwatch::model::Model;
use drainwatch::source::procfs::read_host_counters;
use drainwatch::source::replay::parse_scenario;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Replays a scenario with the fixture /proc and fixed self statistics (no clock involved).
fn render(scenario: &str) -> (String, String) {
    let registry = registry(Arc::new(ArcSwap::from_pointee(published(scenario))));
    let om = encode_openmetrics(&registry).unwrap();
    let text = openmetrics_to_prometheus_text(&om);
    (om, text)
}

/// What the sampler would publish after replaying `scenario`.
fn published(scenario: &str) -> Published {
    let text =
        std::fs::read_to_string(root().join(format!("tests/fixtures/scenarios/{scenario}.toml")))
            .unwrap();
    let snapshots = parse_scenario(&text).unwrap();
    let mut model = Model::new(Classifier::from_port_rules([(8081, "websocket")]));
    let mut stats = SelfStats::default();
    for (i, snapshot) in snapshots.iter().enumerate() {
        model.observe(snapshot);
        if i == 1 {
            // The operator marks the drain of :80 after the second sample (POST /drain/start).
            let t = snapshot.taken_at;
            model.drains.mark(80, t.monotonic_ms, t.unix_ms);
        }
        // A deterministic stand-in for the measured sample duration.
        stats.sample_duration.observe(0.002 * (i + 1) as f64);
        stats.last_sample_unix_seconds = snapshot.taken_at.unix_ms as f64 / 1000.0;
        stats.sampled_sockets = (snapshot.sockets.len() + snapshot.listeners.len()) as u64;
    }
    stats.tracked_connections = model.tracker.tracked() as u64;
    stats.source_up = [true, true, true, true];
    stats.events_subscribed = true;
    stats.destroy_events = 42;
    stats.source_errors = [1, 0, 0, 0];
    stats.tracepoints_running = true;
    stats.trace_events = 77;
    stats.trace_unattributed = model.attributor.unattributed();
    let host = read_host_counters(&root().join("tests/fixtures/proc")).unwrap();
    let mut published = publish(&model, Some(host), stats);
    published.revision = "golden";
    published
}

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the encoded output at line {}:\n  golden: {:?}\n  actual: {:?}\n(run with UPDATE_GOLDEN=1 after checking the change is intended)",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

#[test]
fn drain_scenario_matches_golden_exposition() {
    let (om, text) = render("drain");
    check_golden(&root().join("tests/golden/drain.prom"), &text);
    check_golden(&root().join("tests/golden/drain.om.txt"), &om);
    assert!(om.ends_with("# EOF\n"));
    assert!(!text.contains("# EOF"));
}

/// Every histogram series is a histogram: buckets never decrease and `+Inf` equals `_count`.
/// (The encoder once accumulated already cumulative counts: `+Inf` was 18 for a count of 1,
/// and promtool accepted it.)
#[test]
fn histograms_are_cumulative_once() {
    let (_, text) = render("drain");
    let mut last: Option<(String, u64)> = None;
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        if let Some((name, labels)) = series.split_once("_bucket{") {
            let (le, rest) = labels
                .split_once(',')
                .unwrap_or((labels.trim_end_matches('}'), ""));
            let count_labels = if rest.is_empty() {
                String::new()
            } else {
                format!("{{{rest}")
            };
            let key = format!("{name}{{{rest}");
            let n: u64 = value.parse().unwrap();
            if let Some((k, prev)) = &last {
                if *k == key {
                    assert!(n >= *prev, "{line}: bucket below the previous one ({prev})");
                }
            }
            if le == "le=\"+Inf\"" {
                let count = text
                    .lines()
                    .find_map(|l| {
                        let (s, v) = l.rsplit_once(' ')?;
                        let (n, labels) = s.split_once("_count")?;
                        (n == name && labels == count_labels).then(|| v.parse::<u64>().unwrap())
                    })
                    .unwrap_or_else(|| panic!("no _count for {line}"));
                assert_eq!(n, count, "{line}: +Inf bucket is not the count");
                checked += 1;
            }
            last = Some((key, n));
        }
    }
    assert_eq!(checked, 6, "5 lifetime histograms and the sample duration");
}

#[test]
fn drain_scenario_numbers() {
    let (_, text) = render("drain");
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no series {series}"))
            .parse()
            .unwrap()
    };
    let port80 =
        |metric: &str, class: &str| value(&format!("{metric}{{port=\"80\",class=\"{class}\"}}"));
    let closed = |port: u16, class: &str, reason: &str| {
        value(&format!(
            "drainwatch_connections_closed_total{{port=\"{port}\",class=\"{class}\",reason=\"{reason}\"}}"
        ))
    };
    // Port 80: keep-alives 1, 2 and 5 opened as http, and a short request seen only in its
    // destroy event (its TIME_WAIT socket is not counted again); cookie 5 became a websocket
    // when the server pushed; the two load balancer probes were seen only in destroy events.
    assert_eq!(port80("drainwatch_connections_opened_total", "http"), 4.0);
    assert_eq!(port80("drainwatch_connections_opened_total", "probe"), 2.0);
    assert_eq!(
        port80("drainwatch_connections_opened_total", "unclassified"),
        0.0
    );
    assert_eq!(
        port80("drainwatch_connections_opened_total", "websocket"),
        0.0
    );
    assert_eq!(
        value(r#"drainwatch_connections_upgraded_total{port="80"}"#),
        1.0
    );
    // Close reasons from the tracepoint hits: keep-alives 1 and 4000 ended with a FIN, the
    // websocket (cookie 5) with the app's abort-on-close RST, one probe with the load
    // balancer's RST.
    assert_eq!(closed(80, "http", "fin"), 2.0);
    assert_eq!(closed(80, "websocket", "reset"), 1.0);
    assert_eq!(closed(80, "websocket", "fin"), 0.0);
    assert_eq!(closed(80, "probe", "fin"), 1.0);
    assert_eq!(closed(80, "probe", "reset"), 1.0);
    for class in ["http", "websocket", "probe"] {
        assert_eq!(closed(80, class, "unknown"), 0.0);
        assert_eq!(closed(80, class, "timeout"), 0.0);
    }
    // Resets on :80: the probe's received one, the abort-on-close, and the no-socket answer
    // from this host's address; the loopback no-socket RST and the other namespace's cookie
    // are not ours.
    let resets = |direction: &str, reason: &str| {
        value(&format!(
            "drainwatch_resets_total{{port=\"80\",direction=\"{direction}\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(resets("received", "none"), 1.0);
    assert_eq!(resets("sent", "abort-on-close"), 1.0);
    assert_eq!(resets("sent", "no-socket"), 1.0);
    assert_eq!(resets("sent", "abort-on-data"), 0.0);
    assert_eq!(value("drainwatch_trace_unattributed_total"), 2.0);
    assert_eq!(
        port80("drainwatch_connection_duration_seconds_count", "websocket"),
        1.0
    );
    assert_eq!(
        port80("drainwatch_connection_duration_seconds_sum", "websocket"),
        74.0
    );
    // Cookie 2 is still draining, in LAST_ACK, after the listener went away.
    assert_eq!(
        value(r#"drainwatch_connections{port="80",class="http",state="last_ack"}"#),
        1.0
    );
    assert_eq!(
        port80("drainwatch_oldest_connection_age_seconds", "http"),
        74.0
    );
    assert_eq!(value(r#"drainwatch_listening{port="80"}"#), 0.0);
    // Port 8081 (ruled websocket): cookie 100 predates us (closed, no lifetime), 101 opened
    // and closed.
    assert_eq!(
        value(r#"drainwatch_connections_opened_total{port="8081",class="websocket"}"#),
        1.0
    );
    // Cookie 101's client vanished: the kernel timed it out.
    assert_eq!(closed(8081, "websocket", "fin"), 1.0);
    assert_eq!(closed(8081, "websocket", "timeout"), 1.0);
    assert_eq!(
        value(r#"drainwatch_connection_timeouts_total{port="8081",class="websocket"}"#),
        1.0
    );
    assert_eq!(
        value(r#"drainwatch_resets_total{port="8081",direction="received",reason="none"}"#),
        0.0
    );
    assert_eq!(
        value(r#"drainwatch_connection_duration_seconds_sum{port="8081",class="websocket"}"#),
        74.0
    );
    assert_eq!(value("drainwatch_sampled_sockets"), 2.0);
    // Drain: marked after the 1 s sample; the Connection: close request of the 2 s sample
    // (cookie 4000) is a late arrival, the probes are not. At 75 s :80 has no listener (its
    // last connection is in LAST_ACK: not active) and 8081 has no session left.
    assert_eq!(
        value(r#"drainwatch_connections_opened_after_drain_total{port="80"}"#),
        1.0
    );
    assert_eq!(
        value(r#"drainwatch_drain_phase{port="80",phase="stopped"}"#),
        1.0
    );
    assert_eq!(
        value(r#"drainwatch_drain_phase{port="8081",phase="draining"}"#),
        1.0
    );
}

#[test]
fn promtool_accepts_the_golden_exposition() {
    let (_, text) = render("drain");
    common::promtool_check_metrics(&text);
}

#[test]
fn several_namespaces_label_every_series_but_the_build() {
    let (_, single) = render("drain");
    let state = || Arc::new(ArcSwap::from_pointee(published("drain")));
    let registry = scoped_registry(vec![
        (Some("backend-1".to_string()), state()),
        (Some("pid:42".to_string()), state()),
    ]);
    let text = openmetrics_to_prometheus_text(&encode_openmetrics(&registry).unwrap());
    common::promtool_check_metrics(&text);
    let samples = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let (one, both) = (samples(&single), samples(&text));
    // Every series of the single namespace appears once per namespace, labelled; the build
    // info once, unlabelled.
    assert_eq!(both.len(), 2 * one.len() - 1);
    for ns in ["backend-1", "pid:42"] {
        let label = format!("netns=\"{ns}\"");
        let mine: Vec<String> = both
            .iter()
            .filter(|l| l.contains(&label))
            .map(|l| {
                l.replacen(&format!("{{{label},"), "{", 1)
                    .replacen(&format!(",{label}"), "", 1)
                    .replacen(&format!("{{{label}}}"), "", 1)
            })
            .collect();
        let expected: Vec<&String> = one
            .iter()
            .filter(|l| !l.starts_with("drainwatch_build_info"))
            .collect();
        assert_eq!(mine.iter().collect::<Vec<_>>(), expected, "{ns}");
    }
    assert_eq!(
        both.iter()
            .filter(|l| l.starts_with("drainwatch_build_info"))
            .collect::<Vec<_>>(),
        vec!["drainwatch_build_info{version=\"0.1.0\",revision=\"golden\"} 1.0"]
    );
}
