//! The tracker and aggregates on scripted snapshot sequences: no kernel, no clock, no sleeps.
//! Every expectation is an exact count.

mod common;

use common::{all, class_of, replay};
use drainwatch::model::aggregate::OPEN_BOUNDS;
use drainwatch::model::classify::Classifier;
use drainwatch::source::replay::parse_scenario;

const ESTABLISHED: usize = 0;
const SYN_RECV: usize = 1;
const TIME_WAIT: usize = 4;
const CLOSE_WAIT: usize = 5;
const LAST_ACK: usize = 6;

#[test]
fn open_then_close_counts_once_with_lifetime() {
    let (model, events) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [
          { cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 },
          { cookie = 2, state = "established", port = 8080, peer = "10.250.0.1:40002", segs_in = 1, segs_out = 1 },
        ]
        [[sample]]
        at = "3500ms"
        listeners = [{ port = 8080 }]
        sockets = [
          { cookie = 2, state = "established", port = 8080, peer = "10.250.0.1:40002", segs_in = 1, segs_out = 1 },
        ]
        "#,
        Classifier::default(),
    );
    assert_eq!(events[1].len(), 2, "two openings in sample 2");
    assert_eq!(events[2].len(), 1, "one close in sample 3");
    let ca = all(&model, 8080);
    assert_eq!(ca.opened_total, 2);
    assert_eq!(ca.closed_total, 1);
    assert_eq!(ca.states[ESTABLISHED], 1);
    assert_eq!(ca.lifetime.count, 1);
    assert_eq!(ca.lifetime.sum, 2.5);
    // 2.5 s falls in the le=2.5 bucket and not in le=1.
    let cumulative = class_of(&model, 8080, "http").lifetime.cumulative();
    assert_eq!(cumulative.iter().find(|(b, _)| *b == 1.0).unwrap().1, 0);
    assert_eq!(cumulative.iter().find(|(b, _)| *b == 2.5).unwrap().1, 1);
    // Cookie 2, and cookie 1's tombstone, kept one sample for a late destroy event.
    assert_eq!(model.tracker.tracked(), 2);
}

#[test]
fn connections_open_before_the_first_sample_are_preexisting() {
    let (model, _) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 7, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "10s"
        listeners = [{ port = 8080 }]
        "#,
        Classifier::default(),
    );
    let ca = all(&model, 8080);
    assert_eq!(
        ca.opened_total, 0,
        "an opening we did not see is not counted"
    );
    assert_eq!(ca.closed_total, 1, "the close was seen");
    assert_eq!(ca.lifetime.count, 0, "its lifetime is unknown");
}

#[test]
fn state_changes_move_gauges_and_close_counts_at_disappearance() {
    let (model, events) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "close_wait", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "3s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "last_ack", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        "#,
        Classifier::default(),
    );
    assert!(
        events[2].is_empty() && events[3].is_empty(),
        "state changes are not closes"
    );
    let ca = all(&model, 8080);
    assert_eq!(ca.states[LAST_ACK], 1);
    assert_eq!(ca.states[CLOSE_WAIT], 0);
    assert_eq!(ca.states[ESTABLISHED], 0);
    assert_eq!((ca.opened_total, ca.closed_total), (1, 0));
}

#[test]
fn entering_time_wait_closes_once() {
    let (model, events) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "time_wait", port = 8080, peer = "10.250.0.1:40001" }]
        [[sample]]
        at = "3s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "time_wait", port = 8080, peer = "10.250.0.1:40001" }]
        [[sample]]
        at = "63s"
        listeners = [{ port = 8080 }]
        "#,
        Classifier::default(),
    );
    assert_eq!(events[2].len(), 1);
    assert!(events[3].is_empty() && events[4].is_empty());
    let ca = all(&model, 8080);
    assert_eq!(
        (ca.opened_total, ca.closed_total, ca.lifetime.count),
        (1, 1, 1)
    );
    assert_eq!(ca.lifetime.sum, 1.0);
    // The TIME_WAIT socket is gone; its tombstone lasts one more sample.
    assert_eq!(model.tracker.tracked(), 1);
}

#[test]
fn time_wait_never_seen_open_is_a_short_connection() {
    let (model, _) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 9, state = "time_wait", port = 8080, peer = "10.250.0.1:39999" }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [
          { cookie = 9, state = "time_wait", port = 8080, peer = "10.250.0.1:39999" },
          { cookie = 10, state = "time_wait", port = 8080, peer = "10.250.0.1:40010" },
          { cookie = 11, state = "time_wait", port = 8080, peer = "10.250.0.1:40011" },
        ]
        "#,
        Classifier::default(),
    );
    let ca = all(&model, 8080);
    // Cookie 9 predates us; 10 and 11 opened and closed between the two samples.
    assert_eq!((ca.opened_total, ca.closed_total), (2, 2));
    assert_eq!(
        ca.lifetime.count, 0,
        "lifetimes of unseen openings are unknown"
    );
    assert_eq!(ca.states[TIME_WAIT], 3);
}

#[test]
fn an_orphan_in_fin_wait2_without_tcp_info_is_a_remnant_not_a_connection() {
    // The application closed first and the peer has not sent its FIN: the kernel turned the
    // full socket into a TIME_WAIT mini-socket in substate FIN_WAIT2, which the dump reports as
    // fin_wait2 without tcp_info and, when the full socket never had a cookie, with a cookie
    // of its own. The full socket's destroy event (cookie 20) is the connection; the
    // mini-socket (cookie 21) is not another one, neither in FIN_WAIT2 nor once in TIME_WAIT.
    let (model, _) = replay(
        r#"
        watched = [8080]
        events = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 21, state = "fin_wait2", port = 8080, peer = "10.250.0.1:40020", no_info = true }]
        destroyed = [{ cookie = 20, port = 8080, peer = "10.250.0.1:40020" }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 21, state = "time_wait", port = 8080, peer = "10.250.0.1:40020" }]
        "#,
        Classifier::default(),
    );
    let ca = all(&model, 8080);
    assert_eq!((ca.opened_total, ca.closed_total), (1, 1));
    assert_eq!(ca.states[TIME_WAIT], 1);
}

#[test]
fn a_reused_cookie_with_another_peer_is_a_new_connection() {
    let (model, events) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 5, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 5, state = "established", port = 8080, peer = "10.250.0.2:40001", segs_in = 1, segs_out = 1 }]
        "#,
        Classifier::default(),
    );
    assert_eq!(events[2].len(), 2, "one close and one opening");
    let ca = all(&model, 8080);
    assert_eq!(
        (ca.opened_total, ca.closed_total, ca.lifetime.count),
        (2, 1, 1)
    );
    assert_eq!(ca.states[ESTABLISHED], 1);
}

#[test]
fn only_the_inbound_side_counts_and_drains_continue_after_the_listener_closes() {
    let (model, events) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        # graceful shutdown: the listener is gone, the accepted connection drains on
        sockets = [
          { cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 },
          # an outbound socket that happens to use local port 8080 now that nobody holds it
          { cookie = 2, state = "established", port = 8080, peer = "10.250.0.9:443", segs_in = 1, segs_out = 1 },
        ]
        [[sample]]
        at = "3s"
        sockets = [{ cookie = 2, state = "established", port = 8080, peer = "10.250.0.9:443", segs_in = 1, segs_out = 1 }]
        "#,
        Classifier::default(),
    );
    assert!(
        events[2].is_empty(),
        "the outbound socket is not an opening"
    );
    let pa = &model.aggregates.ports[&8080];
    assert!(!pa.listening);
    let ca = all(&model, 8080);
    assert_eq!(
        ca.states[ESTABLISHED], 0,
        "the outbound socket is never counted"
    );
    assert_eq!(
        (ca.opened_total, ca.closed_total, ca.lifetime.count),
        (1, 1, 1)
    );
    assert_eq!(ca.lifetime.sum, 2.0);
}

#[test]
fn handshakes_are_counted_as_syn_recv_but_never_opened() {
    let (model, _) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 3, state = "syn_recv", port = 8080, peer = "10.250.0.1:40001" }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 8080 }]
        "#,
        Classifier::default(),
    );
    let ca = all(&model, 8080);
    assert_eq!((ca.opened_total, ca.closed_total), (0, 0));
    assert_eq!(ca.states[SYN_RECV], 0);
    assert_eq!(model.tracker.tracked(), 0);
}

#[test]
fn a_port_watched_later_starts_with_preexisting_connections() {
    let (model, _) = replay(
        r#"
        [[sample]]
        at = "0s"
        watched = [8080]
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        watched = [8080, 9090]
        listeners = [{ port = 8080 }, { port = 9090 }]
        sockets = [{ cookie = 4, state = "established", port = 9090, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        watched = [8080, 9090]
        listeners = [{ port = 8080 }, { port = 9090 }]
        sockets = [
          { cookie = 4, state = "established", port = 9090, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 },
          { cookie = 5, state = "established", port = 9090, peer = "10.250.0.1:40002", segs_in = 1, segs_out = 1 },
        ]
        "#,
        Classifier::default(),
    );
    let ca = all(&model, 9090);
    assert_eq!(ca.opened_total, 1, "only cookie 5 was seen opening");
    assert_eq!(ca.states[ESTABLISHED], 2);
}

#[test]
fn sockets_of_ports_not_watched_are_ignored() {
    let (model, _) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "established", port = 22, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        "#,
        Classifier::default(),
    );
    assert!(!model.aggregates.ports.contains_key(&22));
    assert_eq!(model.tracker.tracked(), 0);
}

#[test]
fn class_rules_label_connections_and_every_configured_series_starts_at_zero() {
    let classifier = Classifier::from_port_rules([(8081, "websocket")]);
    let (model, _) = replay(
        r#"
        watched = [8080, 8081]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }, { port = 8081 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }, { port = 8081 }]
        sockets = [{ cookie = 1, state = "established", port = 8081, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        "#,
        classifier,
    );
    let ws = class_of(&model, 8081, "websocket");
    assert_eq!((ws.opened_total, ws.states[ESTABLISHED]), (1, 1));
    let http = class_of(&model, 8080, "unclassified");
    assert_eq!((http.opened_total, http.states[ESTABLISHED]), (0, 0));
    assert_eq!(model.aggregates.ports[&8081].classes.len(), 1);
}

#[test]
fn age_idle_and_retransmitting_distributions_of_open_connections() {
    let (model, _) = replay(
        r#"
        watched = [8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "71s"
        listeners = [{ port = 8080 }]
        sockets = [
          { cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", idle_ms = 45000, segs_in = 1, segs_out = 1 },
          { cookie = 2, state = "established", port = 8080, peer = "10.250.0.1:40002", idle_ms = 900000, retransmits = 3, segs_in = 1, segs_out = 1 },
        ]
        "#,
        Classifier::default(),
    );
    let ca = all(&model, 8080);
    let at = |bound: u64| OPEN_BOUNDS.iter().position(|&b| b == bound).unwrap();
    // Cookie 1 is 70 s old, cookie 2 was first seen now (age 0).
    assert_eq!(ca.age_over[at(0)], 2);
    assert_eq!(ca.age_over[at(1)], 1);
    assert_eq!(ca.age_over[at(60)], 1);
    assert_eq!(ca.age_over[at(120)], 0);
    assert_eq!(ca.oldest_age_seconds, 70.0);
    // Cookie 1 idle 45 s; cookie 2's kernel idle time is capped by its known age (0 s).
    assert_eq!(ca.idle_over[at(0)], 2);
    assert_eq!(ca.idle_over[at(30)], 1);
    assert_eq!(ca.idle_over[at(60)], 0);
    assert_eq!(ca.retransmitting, 1);
}

#[test]
fn connections_of_a_port_that_stops_being_watched_are_not_closes() {
    let (model, events) = replay(
        r#"
        [[sample]]
        at = "0s"
        watched = [8080, 9090]
        listeners = [{ port = 8080 }, { port = 9090 }]
        [[sample]]
        at = "1s"
        watched = [8080, 9090]
        listeners = [{ port = 8080 }, { port = 9090 }]
        sockets = [{ cookie = 1, state = "established", port = 9090, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "2s"
        watched = [8080]
        listeners = [{ port = 8080 }]
        "#,
        Classifier::default(),
    );
    assert!(events[2].is_empty());
    assert_eq!(all(&model, 9090).closed_total, 0);
    assert_eq!(model.tracker.tracked(), 0);
}

#[test]
fn every_scenario_fixture_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let snapshots = parse_scenario(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!snapshots.is_empty(), "{}", path.display());
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn a_socket_the_kernel_closed_but_the_application_holds_counts_once() {
    // Reset or timed out: the kernel unhashes the socket (it leaves the dump) but frees it,
    // and sends its destroy event, only when the application closes it, seconds later.
    let mut scenario = String::from(
        r#"
        watched = [8080]
        events = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 8080 }]
        sockets = [{ cookie = 40, state = "established", port = 8080, peer = "10.250.0.1:40040", segs_in = 1, segs_out = 1 }]
        "#,
    );
    for t in 2..12 {
        scenario += &format!("[[sample]]\nat = \"{t}s\"\nlisteners = [{{ port = 8080 }}]\n");
    }
    scenario += r#"
        [[sample]]
        at = "12s"
        listeners = [{ port = 8080 }]
        destroyed = [{ cookie = 40, port = 8080, peer = "10.250.0.1:40040" }]
        "#;
    let (model, _) = replay(&scenario, Classifier::default());
    let ca = all(&model, 8080);
    assert_eq!((ca.opened_total, ca.closed_total), (1, 1));
    // Counted as a missing event when the socket left the dump (a counter never goes back).
    assert_eq!(model.tracker.missed_events(), 1);
}

#[test]
fn a_scenario_whose_clock_goes_back_is_refused() {
    // The model's clock is monotonic (the sampler's is): a script cannot break that contract.
    let e = parse_scenario(
        r#"
        [[sample]]
        at = "2s"
        [[sample]]
        at = "1s"
        "#,
    )
    .unwrap_err();
    assert_eq!(e, "sample 2: at = \"1s\" is before the previous sample");
}
