//! The classifier on scripted snapshot sequences: each heuristic, its edge cases, rules over
//! heuristics, probes, and destroy events. `segs_in` / `segs_out` are the kernel's cumulative
//! data-segment counters (client to server, server to client).

mod common;

use common::{class_of, replay};
use drainwatch::model::classify::{Classifier, Network, Rule, Thresholds};

const ESTABLISHED: usize = 0;

fn heuristics() -> Classifier {
    Classifier::new(&[], Thresholds::default())
}

#[test]
fn server_push_upgrades_http_to_websocket() {
    // Handshake (request + 101) in the first sample, then the server pushes every 2 s while the
    // client is silent.
    let (model, _) = replay(
        r#"
        watched = [80]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "3s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 2 }]
        "#,
        heuristics(),
    );
    let http = class_of(&model, 80, "http");
    let ws = class_of(&model, 80, "websocket");
    assert_eq!(http.opened_total, 1, "the opening keeps its class");
    assert_eq!(
        ws.states[ESTABLISHED], 1,
        "the gauge shows the current class"
    );
    assert_eq!(http.states[ESTABLISHED], 0);
    assert_eq!(model.aggregates.ports[&80].upgraded_total, 1);
}

#[test]
fn a_slow_http_response_is_not_a_push() {
    // The request arrives in one sample, the response two samples later.
    let (model, _) = replay(
        r#"
        watched = [80]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 2, segs_out = 1 }]
        [[sample]]
        at = "3s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 2, segs_out = 1 }]
        [[sample]]
        at = "4s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 2, segs_out = 2 }]
        [[sample]]
        at = "5s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 3, segs_out = 3 }]
        "#,
        heuristics(),
    );
    assert_eq!(class_of(&model, 80, "http").states[ESTABLISHED], 1);
    assert_eq!(model.aggregates.ports[&80].upgraded_total, 0);
}

#[test]
fn a_long_response_spanning_samples_is_not_a_push_but_a_long_stream_is() {
    let sample = |at: u32, segs_out: u32| {
        format!(
            "[[sample]]\nat = \"{at}s\"\nlisteners = [{{ port = 80 }}]\nsockets = [{{ cookie = 1, state = \"established\", port = 80, peer = \"10.250.1.1:40001\", segs_in = 1, segs_out = {segs_out} }}]\n"
        )
    };
    // A download: the response runs over 4 more samples after the exchange.
    let mut download =
        String::from("watched = [80]\n[[sample]]\nat = \"0s\"\nlisteners = [{ port = 80 }]\n");
    for (i, out) in [1, 10, 20, 30, 40].iter().enumerate() {
        download += &sample(i as u32 + 1, *out);
    }
    let (model, _) = replay(&download, heuristics());
    assert_eq!(
        class_of(&model, 80, "http").states[ESTABLISHED],
        1,
        "4 samples < stream threshold 5"
    );

    // A server-sent-events stream: output in every sample after the exchange, for 6 samples.
    let mut sse = download.clone();
    for (i, out) in [50, 60].iter().enumerate() {
        sse += &sample(i as u32 + 6, *out);
    }
    let (model, _) = replay(&sse, heuristics());
    assert_eq!(class_of(&model, 80, "websocket").states[ESTABLISHED], 1);
}

#[test]
fn a_silent_websocket_is_recognised_once_idle_beyond_the_keepalive_timeout() {
    let (model, _) = replay(
        r#"
        watched = [80]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "60s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1, idle_ms = 59000 }]
        [[sample]]
        at = "85s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1, idle_ms = 84000 }]
        "#,
        heuristics(),
    );
    assert_eq!(class_of(&model, 80, "websocket").states[ESTABLISHED], 1);
}

#[test]
fn a_keepalive_connection_reused_after_a_long_idle_stays_http() {
    let (model, _) = replay(
        r#"
        watched = [80]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "70s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1, idle_ms = 69000 }]
        [[sample]]
        at = "71s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 2, segs_out = 2, idle_ms = 100 }]
        "#,
        heuristics(),
    );
    assert_eq!(class_of(&model, 80, "http").states[ESTABLISHED], 1);
}

#[test]
fn a_pipelining_client_stays_http() {
    // Three requests in one sample, their responses over the next two.
    let (model, _) = replay(
        r#"
        watched = [80]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 3, segs_out = 0 }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 3, segs_out = 2 }]
        [[sample]]
        at = "3s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 3, segs_out = 3 }]
        [[sample]]
        at = "4s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 6, segs_out = 6 }]
        "#,
        heuristics(),
    );
    assert_eq!(class_of(&model, 80, "http").states[ESTABLISHED], 1);
}

#[test]
fn a_connection_alive_beyond_any_keepalive_lifetime_is_websocket() {
    let (model, _) = replay(
        r#"
        watched = [80]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "3601s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 900, segs_out = 900 }]
        "#,
        heuristics(),
    );
    assert_eq!(class_of(&model, 80, "websocket").states[ESTABLISHED], 1);
}

#[test]
fn health_probes_seen_only_in_destroy_events_are_probes_and_requests_are_http() {
    let (model, events) = replay(
        r#"
        watched = [80]
        events = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        destroyed = [
          { cookie = 10, port = 80, peer = "10.250.1.1:41000" },
          { cookie = 11, port = 80, peer = "10.250.1.1:41001" },
          { cookie = 12, port = 80, peer = "10.250.1.1:41002", segs_in = 1, segs_out = 1, bytes_received = 80, bytes_acked = 200 },
          # a client socket of the same host, not ours: local port 50000 has no listener
          { cookie = 13, port = 50000, peer = "10.250.1.9:80" },
        ]
        "#,
        heuristics(),
    );
    assert_eq!(events[1].len(), 6, "three openings and three closes");
    let probe = class_of(&model, 80, "probe");
    assert_eq!((probe.opened_total, probe.closed_total), (2, 2));
    let http = class_of(&model, 80, "http");
    assert_eq!((http.opened_total, http.closed_total), (1, 1));
    assert_eq!(
        probe.lifetime.count, 0,
        "lifetimes of unseen openings are unknown"
    );
}

#[test]
fn a_silent_connection_waits_to_be_counted_and_closes_as_a_probe() {
    let (model, events) = replay(
        r#"
        watched = [80]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001" },
          { cookie = 2, state = "established", port = 80, peer = "10.250.1.1:40002" },
        ]
        [[sample]]
        at = "1500ms"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 2, state = "established", port = 80, peer = "10.250.1.1:40002" }]
        [[sample]]
        at = "2500ms"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 2, state = "established", port = 80, peer = "10.250.1.1:40002" }]
        "#,
        heuristics(),
    );
    assert!(
        events[1].is_empty(),
        "silent new connections are not counted yet"
    );
    let probe = class_of(&model, 80, "probe");
    assert_eq!(
        (probe.opened_total, probe.closed_total),
        (1, 1),
        "cookie 1: 0.5 s, no payload"
    );
    let unclassified = class_of(&model, 80, "unclassified");
    assert_eq!(
        unclassified.opened_total, 1,
        "cookie 2: silent past the probe lifetime"
    );
    assert_eq!(unclassified.states[ESTABLISHED], 1);
}

#[test]
fn rules_override_heuristics_and_classify_at_first_sight() {
    let rules = [
        Rule {
            port: 8081,
            peer: None,
            class: "websocket".into(),
        },
        Rule {
            port: 80,
            peer: Some(Network::parse("10.250.9.0/24").unwrap()),
            class: "probe".into(),
        },
        Rule {
            port: 80,
            peer: None,
            class: "api".into(),
        },
    ];
    let (model, events) = replay(
        r#"
        watched = [80, 8081]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }, { port = 8081 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }, { port = 8081 }]
        sockets = [
          # no payload yet: the rule still classifies at first sight
          { cookie = 1, state = "established", port = 8081, peer = "10.250.1.1:40001" },
          { cookie = 2, state = "established", port = 80, peer = "10.250.9.7:40002" },
          { cookie = 3, state = "established", port = 80, peer = "10.250.1.1:40003", segs_in = 1 },
        ]
        [[sample]]
        at = "2s"
        listeners = [{ port = 80 }, { port = 8081 }]
        sockets = [
          # request/response on a websocket port stays websocket
          { cookie = 1, state = "established", port = 8081, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 },
          # server push on a port ruled "api" stays api
          { cookie = 3, state = "established", port = 80, peer = "10.250.1.1:40003", segs_in = 1, segs_out = 5 },
        ]
        "#,
        Classifier::new(&rules, Thresholds::default()),
    );
    assert_eq!(
        events[1].len(),
        3,
        "every rule-classified connection counted at first sight"
    );
    assert_eq!(class_of(&model, 8081, "websocket").states[ESTABLISHED], 1);
    assert_eq!(class_of(&model, 80, "api").states[ESTABLISHED], 1);
    assert_eq!(
        class_of(&model, 80, "probe").opened_total,
        1,
        "the peer rule beats the port rule"
    );
    assert_eq!(model.aggregates.ports[&80].upgraded_total, 0);
}

#[test]
fn a_close_without_its_destroy_event_waits_one_sample_and_counts_as_a_lost_event() {
    let (model, events) = replay(
        r#"
        watched = [80]
        events = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1 },
          { cookie = 2, state = "established", port = 80, peer = "10.250.1.1:40002", segs_in = 1, segs_out = 1 },
        ]
        [[sample]]
        at = "2s"
        listeners = [{ port = 80 }]
        # both left the table; only cookie 1's event has arrived
        destroyed = [{ cookie = 1, port = 80, peer = "10.250.1.1:40001", segs_in = 3, segs_out = 3 }]
        [[sample]]
        at = "3s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "4s"
        listeners = [{ port = 80 }]
        # cookie 2's event arrives late: not counted twice
        destroyed = [{ cookie = 2, port = 80, peer = "10.250.1.1:40002", segs_in = 1, segs_out = 1 }]
        "#,
        heuristics(),
    );
    assert_eq!(events[2].len(), 1, "cookie 1 closed by its event");
    assert_eq!(
        events[3].len(),
        1,
        "cookie 2 closed by the dump one sample later"
    );
    assert!(events[4].is_empty(), "the late event changes nothing");
    let http = class_of(&model, 80, "http");
    assert_eq!((http.opened_total, http.closed_total), (2, 2));
    assert_eq!(model.tracker.missed_events(), 1);
}

#[test]
fn without_heuristics_only_rules_classify_and_everything_counts_at_first_sight() {
    let thresholds = Thresholds {
        heuristics: false,
        ..Thresholds::default()
    };
    let rules = [Rule {
        port: 8081,
        peer: None,
        class: "websocket".into(),
    }];
    let (model, events) = replay(
        r#"
        watched = [80, 8081]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }, { port = 8081 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }, { port = 8081 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001" },
          { cookie = 2, state = "established", port = 8081, peer = "10.250.1.1:40002" },
        ]
        [[sample]]
        at = "3s"
        listeners = [{ port = 80 }, { port = 8081 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 9 },
          { cookie = 2, state = "established", port = 8081, peer = "10.250.1.1:40002" },
        ]
        "#,
        Classifier::new(&rules, thresholds),
    );
    assert_eq!(events[1].len(), 2);
    assert_eq!(class_of(&model, 80, "unclassified").states[ESTABLISHED], 1);
    assert_eq!(class_of(&model, 8081, "websocket").states[ESTABLISHED], 1);
    assert_eq!(model.aggregates.ports[&80].upgraded_total, 0);
}

#[test]
fn a_connection_dumped_before_its_request_and_gone_a_sample_later_is_http() {
    // Found by the e2e netns comparison: two drainwatches sampling the same backend at other
    // moments. One dumped this connection in the microseconds before its request arrived and
    // processed its destroy event 1.03 s later (past the probe lifetime); the final tcp_info
    // shows the request and response. It is `http` for both, not `unclassified` for one.
    let (model, _) = replay(
        r#"
        watched = [80]
        events = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.1.1:40001" },
          { cookie = 2, state = "established", port = 80, peer = "10.250.1.1:40002" },
        ]
        [[sample]]
        at = "2030ms"
        listeners = [{ port = 80 }]
        destroyed = [
          { cookie = 1, port = 80, peer = "10.250.1.1:40001", segs_in = 1, segs_out = 1, bytes_received = 80, bytes_acked = 200 },
          { cookie = 2, port = 80, peer = "10.250.1.1:40002" },
        ]
        "#,
        heuristics(),
    );
    let http = class_of(&model, 80, "http");
    assert_eq!(
        (http.opened_total, http.closed_total),
        (1, 1),
        "cookie 1 carried a request"
    );
    let unclassified = class_of(&model, 80, "unclassified");
    assert_eq!(
        (unclassified.opened_total, unclassified.closed_total),
        (1, 1),
        "cookie 2 carried nothing and lived past the probe lifetime"
    );
}
