//! Attribution of tracepoint hits to the watched namespace's connections, on scripted
//! snapshot sequences (replay): what counts, what is left unattributed, and close reasons.

mod common;

use drainwatch::model::classify::Classifier;
use drainwatch::model::resets::{CloseReason, Direction};
use drainwatch::model::Model;

fn resets(model: &Model, port: u16, direction: Direction, reason: &str) -> u64 {
    model.aggregates.ports[&port]
        .resets
        .get(&(direction, reason))
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_reset_of_a_socket_the_application_never_accepted_counts_when_its_destroy_event_is_ours() {
    // nginx was killed: a connection still in the accept queue is reset when the listener
    // closes. No listener is left to tell the socket inbound, so the tracker does not count
    // it; its destroy event (cookie 77, this namespace's) still proves the reset ours.
    let (model, _) = common::replay(
        r#"
        watched = [80]
        events = true
        tracepoints = true
        local_addrs = ["10.250.1.2"]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        destroyed = [{ cookie = 77, port = 80, peer = "10.250.1.10:40077" }]
        trace = [
          { event = "reset_sent", skaddr = 0xc000, state = "close", reason = "not-specified", local = "10.250.1.2:80", remote = "10.250.1.10:40077" },
          { event = "destroyed", skaddr = 0xc000, cookie = 77, local = "10.250.1.2:80", remote = "10.250.1.10:40077" },
        ]
        "#,
        Classifier::default(),
    );
    assert_eq!(resets(&model, 80, Direction::Sent, "not-specified"), 1);
    assert_eq!(common::all(&model, 80).opened_total, 0);
    assert_eq!(model.attributor.unattributed(), 0);
}

#[test]
fn a_socketless_reset_from_loopback_counts_only_when_no_other_namespace_exists() {
    let scenario = |sole: bool| {
        format!(
            r#"
            watched = [8080]
            tracepoints = true
            sole_netns = {sole}
            local_addrs = ["127.0.0.1", "10.250.1.2"]
            [[sample]]
            at = "0s"
            listeners = [{{ port = 8080 }}]
            [[sample]]
            at = "1s"
            listeners = [{{ port = 8080 }}]
            trace = [
              {{ event = "reset_sent", reason = "no-socket", local = "127.0.0.1:8080", remote = "127.0.0.1:45000" }},
              {{ event = "reset_sent", reason = "no-socket", local = "10.250.1.2:8080", remote = "10.250.1.10:45001" }},
              {{ event = "reset_sent", reason = "no-socket", local = "10.250.9.9:8080", remote = "10.250.1.10:45002" }},
            ]
            "#
        )
    };
    let (alone, _) = common::replay(&scenario(true), Classifier::default());
    assert_eq!(resets(&alone, 8080, Direction::Sent, "no-socket"), 3);
    let (shared, _) = common::replay(&scenario(false), Classifier::default());
    // Loopback exists in every namespace, 10.250.9.9 is not an address of ours.
    assert_eq!(resets(&shared, 8080, Direction::Sent, "no-socket"), 1);
    assert_eq!(shared.attributor.unattributed(), 2);
}

#[test]
fn a_hit_no_connection_of_ours_claims_is_dropped_after_a_minute() {
    let (model, _) = common::replay(
        r#"
        watched = [80]
        events = true
        tracepoints = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        trace = [{ event = "reset_received", skaddr = 0xd000, cookie = 4242, local = "127.0.0.1:80", remote = "127.0.0.1:41000" }]
        [[sample]]
        at = "59s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "61s"
        listeners = [{ port = 80 }]
        "#,
        Classifier::default(),
    );
    assert_eq!(resets(&model, 80, Direction::Received, "none"), 0);
    assert_eq!(model.attributor.unattributed(), 1);
    assert_eq!(model.attributor.pending(), 0);
}

#[test]
fn close_reasons_are_unknown_without_tracepoints() {
    let (model, _) = common::replay(
        r#"
        watched = [80]
        events = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        destroyed = [{ cookie = 5, port = 80, peer = "10.250.1.10:40005", segs_in = 1, segs_out = 1 }]
        "#,
        Classifier::default(),
    );
    let ca = common::all(&model, 80);
    assert_eq!(ca.closed_total, 1);
    assert_eq!(ca.closed_by_reason[CloseReason::Unknown.index()], 1);
    assert!(
        model.aggregates.ports[&80].resets.is_empty(),
        "no reset series without tracepoints"
    );
}

#[test]
fn a_reset_read_one_drain_after_its_sockets_destroy_still_joins_it() {
    // The reset was recorded on one CPU, the socket's destroy on another whose buffer was read
    // first: the destroy comes in the earlier sample.
    let (model, _) = common::replay(
        r#"
        watched = [80]
        events = true
        tracepoints = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        sockets = [{ cookie = 9, state = "established", port = 80, peer = "10.250.1.10:40009", segs_in = 1, segs_out = 1 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }]
        destroyed = [{ cookie = 9, port = 80, peer = "10.250.1.10:40009" }]
        trace = [{ event = "destroyed", skaddr = 0xe000, cookie = 9, local = "10.250.1.2:80", remote = "10.250.1.10:40009" }]
        [[sample]]
        at = "2s"
        listeners = [{ port = 80 }]
        trace = [{ event = "reset_sent", skaddr = 0xe000, state = "close", reason = "abort-on-close", local = "10.250.1.2:80", remote = "10.250.1.10:40009" }]
        [[sample]]
        at = "5s"
        listeners = [{ port = 80 }]
        trace = [{ event = "reset_sent", skaddr = 0xe000, state = "close", reason = "abort-on-close", local = "10.250.1.2:80", remote = "10.250.1.10:40010" }]
        "#,
        Classifier::default(),
    );
    // The late one joins; a reset of a later socket at the same address (3 s on) does not.
    assert_eq!(resets(&model, 80, Direction::Sent, "abort-on-close"), 1);
}

#[test]
fn an_abort_on_data_after_the_sockets_destroy_event_counts() {
    // kill -9: the socket's destroy event (sample 1, no listener left: the tracker does not
    // follow it), then data arrives and the kernel answers with an RST from the freed socket,
    // read in the next sample.
    let (model, _) = common::replay(
        r#"
        watched = [80]
        events = true
        tracepoints = true
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }]
        [[sample]]
        at = "1s"
        destroyed = [{ cookie = 31, port = 80, peer = "10.250.1.10:40031" }]
        trace = [{ event = "destroyed", skaddr = 0xf000, cookie = 31, local = "10.250.1.2:80", remote = "10.250.1.10:40031" }]
        [[sample]]
        at = "2s"
        trace = [{ event = "reset_sent", skaddr = 0xf000, state = "close", reason = "abort-on-data", local = "10.250.1.2:80", remote = "10.250.1.10:40031" }]
        "#,
        Classifier::default(),
    );
    assert_eq!(resets(&model, 80, Direction::Sent, "abort-on-data"), 1);
    assert_eq!(model.attributor.unattributed(), 0);
}
