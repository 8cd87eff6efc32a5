//! The drain model on scripted sample sequences: phases, readiness, thresholds per class,
//! stalls, the ETA, drain marks and late arrivals. Pure: snapshots built here, no kernel.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use drainwatch::model::classify::Classifier;
use drainwatch::model::drain::{DrainThresholds, Verdict};
use drainwatch::model::socket::{
    Listener, Snapshot, SocketRecord, TcpInfo, TcpState, Timer, Timestamp,
};
use drainwatch::model::Model;

const HTTP_PORT: u16 = 80;
const WS_PORT: u16 = 8081;

/// A connection that carried a request and its response (http on :80, websocket by rule on
/// :8081).
fn conn(cookie: u64, port: u16, state: TcpState) -> SocketRecord {
    SocketRecord {
        cookie,
        state,
        local_port: port,
        remote_port: 30000 + (cookie % 30000) as u16,
        remote_addr: IpAddr::V4(Ipv4Addr::new(10, 250, 1, (cookie % 250) as u8 + 1)),
        rx_queue: 0,
        tx_queue: 0,
        timer: Timer::None,
        timer_retrans: 0,
        info: Some(TcpInfo {
            len: 280,
            data_segs_in: 1,
            data_segs_out: 1,
            bytes_received: 100,
            bytes_acked: 100,
            ..TcpInfo::default()
        }),
    }
}

/// A sample at `t` seconds with the given open cookies per port (ESTABLISHED) and listeners.
fn sample(t: u64, listening: &[u16], open: &[(u16, &BTreeSet<u64>)]) -> Snapshot {
    let mut s = Snapshot {
        taken_at: Timestamp {
            monotonic_ms: t * 1000,
            unix_ms: 1_800_000_000_000 + t * 1000,
        },
        watched_ports: vec![HTTP_PORT, WS_PORT],
        listeners: listening
            .iter()
            .map(|&port| Listener {
                port,
                queue_length: 0,
                queue_limit: 511,
            })
            .collect(),
        ..Snapshot::default()
    };
    for (port, cookies) in open {
        for &c in *cookies {
            s.sockets.push(conn(c, *port, TcpState::Established));
        }
    }
    s
}

fn model() -> Model {
    Model::new(Classifier::from_port_rules([(WS_PORT, "websocket")]))
}

fn verdict(m: &Model, port: u16, t: &DrainThresholds) -> Verdict {
    m.drains.ports[&port].verdict(port, t)
}

#[test]
fn phases_walk_serving_draining_drained_stopped() {
    // :80 holds 10 connections from before we looked; 1 new a second until t=5, then one closes
    // a second from t=6; the listener goes away at t=30.
    let t = DrainThresholds::default(); // 0 active, 10 s quiet, 3 samples
    let mut m = model();
    let mut open: BTreeSet<u64> = (1..=10).collect();
    let mut next_cookie = 100;
    let mut phases = Vec::new();
    let mut first_ready = None;
    for now in 0..=32u64 {
        if (1..=5).contains(&now) {
            open.insert(next_cookie);
            next_cookie += 1;
        }
        if now >= 6 {
            let first = open.iter().next().copied();
            if let Some(c) = first {
                open.remove(&c);
            }
        }
        let listening: &[u16] = if now < 30 { &[HTTP_PORT] } else { &[] };
        m.observe(&sample(now, listening, &[(HTTP_PORT, &open)]));
        let v = verdict(&m, HTTP_PORT, &t);
        if phases.last() != Some(&v.phase) {
            phases.push(v.phase.clone());
        }
        if v.ready && first_ready.is_none() {
            first_ready = Some(now);
        }
        if now < 20 {
            assert!(!v.ready, "t={now}: {v:?}");
        }
    }
    assert_eq!(phases, ["serving", "draining", "drained", "stopped"]);
    // 15 connections, the last closed at t=20; within the thresholds at t=20, 21, 22.
    assert_eq!(first_ready, Some(22));
    let v = verdict(&m, HTTP_PORT, &t);
    assert!(v.ready, "stopped and empty is ready: {v:?}");
}

#[test]
fn never_ready_while_websocket_sessions_exceed_their_threshold() {
    let mut m = model();
    let sessions: BTreeSet<u64> = (1..=3).collect();
    let none = BTreeSet::new();
    for now in 0..=40 {
        m.observe(&sample(
            now,
            &[HTTP_PORT, WS_PORT],
            &[(HTTP_PORT, &none), (WS_PORT, &sessions)],
        ));
        let strict = DrainThresholds {
            max_websocket: 2,
            max_active: 10,
            ..DrainThresholds::default()
        };
        let v = verdict(&m, WS_PORT, &strict);
        assert!(!v.ready, "t={now}: {v:?}");
    }
    let strict = DrainThresholds {
        max_websocket: 2,
        max_active: 10,
        ..DrainThresholds::default()
    };
    let v = verdict(&m, WS_PORT, &strict);
    assert_eq!((v.active, v.websocket), (3, 3));
    assert!(
        v.reason
            .contains("3 websocket connections above threshold 2, oldest 40s"),
        "{}",
        v.reason
    );
    assert!(
        !v.stalled,
        "40 s is shorter than the 60 s stall window: {v:?}"
    );
    let loose = DrainThresholds {
        max_websocket: 3,
        max_active: 3,
        ..DrainThresholds::default()
    };
    assert!(verdict(&m, WS_PORT, &loose).ready);
    // :80 is empty and quiet: ready under any thresholds.
    assert!(verdict(&m, HTTP_PORT, &DrainThresholds::default()).ready);
}

#[test]
fn stalled_only_after_a_full_window_without_decrease() {
    let mut m = model();
    let stuck: BTreeSet<u64> = (1..=5).collect();
    let t = DrainThresholds::default();
    for now in 0..=70 {
        m.observe(&sample(now, &[HTTP_PORT], &[(HTTP_PORT, &stuck)]));
        let v = verdict(&m, HTTP_PORT, &t);
        assert_eq!(v.stalled, now >= 60, "t={now}: {v:?}");
        assert_eq!(v.eta_seconds, None, "not decreasing: no ETA");
    }
}

#[test]
fn eta_at_half_way_of_a_steady_decay_is_within_30_percent() {
    // 200 connections, 2 close a second: at half-way (t=50, 100 left) 50 s remain.
    let mut m = model();
    let mut open: BTreeSet<u64> = (1..=200).collect();
    let t = DrainThresholds::default();
    let mut eta_at_half = None;
    for now in 0..=100u64 {
        if now > 0 {
            for _ in 0..2 {
                let c = *open.iter().next().unwrap();
                open.remove(&c);
            }
        }
        m.observe(&sample(now, &[HTTP_PORT], &[(HTTP_PORT, &open)]));
        if open.len() == 100 {
            eta_at_half = verdict(&m, HTTP_PORT, &t).eta_seconds;
        }
    }
    let eta = eta_at_half.expect("an ETA at half-way");
    assert!(
        (eta - 50.0).abs() <= 0.3 * 50.0,
        "ETA {eta:.1} s, 50 s remained"
    );
    let v = verdict(&m, HTTP_PORT, &t);
    assert_eq!(v.eta_seconds, Some(0.0));
}

#[test]
fn late_arrivals_after_a_drain_mark_are_counted() {
    let mut m = model();
    let mut open: BTreeSet<u64> = (1..=4).collect();
    m.observe(&sample(0, &[HTTP_PORT], &[(HTTP_PORT, &open)]));
    open.insert(10); // before the mark: not late
    m.observe(&sample(1, &[HTTP_PORT], &[(HTTP_PORT, &open)]));
    m.drains.mark(HTTP_PORT, 1000, 1_800_000_001_000);
    for (now, arrivals) in [(2u64, 3u64), (3, 2), (4, 0)] {
        for i in 0..arrivals {
            open.insert(100 + now * 10 + i);
        }
        m.observe(&sample(now, &[HTTP_PORT], &[(HTTP_PORT, &open)]));
    }
    let mark = m.drains.ports[&HTTP_PORT].mark.unwrap();
    assert_eq!(mark.opened_after, 5);
    assert_eq!(mark.unix_ms, 1_800_000_001_000);
}

#[test]
fn probes_are_neither_arrivals_nor_active() {
    // A connection that carries nothing and closes within a second, every second: a load
    // balancer's health check. The port drains regardless.
    let mut m = model();
    let t = DrainThresholds::default();
    let none = BTreeSet::new();
    for now in 0..=15u64 {
        let mut s = sample(now, &[HTTP_PORT], &[(HTTP_PORT, &none)]);
        let mut probe = conn(1000 + now, HTTP_PORT, TcpState::Close);
        probe.info = Some(TcpInfo {
            len: 280,
            ..TcpInfo::default()
        });
        s.destroyed.push(probe);
        s.events_complete = true;
        m.observe(&s);
    }
    let v = verdict(&m, HTTP_PORT, &t);
    assert!(v.ready, "{v:?}");
    assert_eq!(v.new_in_quiet_window, 0);
}

#[test]
fn a_listener_back_after_a_restart_forgets_the_drain_mark() {
    let mut m = model();
    let open: BTreeSet<u64> = (1..=2).collect();
    m.observe(&sample(0, &[HTTP_PORT], &[(HTTP_PORT, &open)]));
    m.drains.mark(HTTP_PORT, 0, 1_800_000_000_000);
    m.observe(&sample(1, &[], &[]));
    assert!(
        m.drains.ports[&HTTP_PORT].mark.is_some(),
        "kept while stopped"
    );
    m.observe(&sample(2, &[HTTP_PORT], &[]));
    assert!(
        m.drains.ports[&HTTP_PORT].mark.is_none(),
        "a new process serves the port"
    );
}

#[test]
fn the_quiet_window_holds_the_same_samples_whatever_their_millisecond_jitter() {
    use drainwatch::model::drain::{DrainSample, PortDrain};
    // Found by the e2e comparison of `GET /drain` with `drainwatch wait`: with 1 s samples and a
    // 3 s quiet window, a sample 2,998 ms old was in the window and one 3,001 ms old was not,
    // so one sampler left `serving` a whole sample after the other.
    let t = DrainThresholds {
        quiet_ms: 3_000,
        ..DrainThresholds::default()
    };
    for early in [0u64, 2, 400] {
        let mut drain = PortDrain::default();
        // Openings in the first two samples, then none.
        for (i, new) in [(0u64, 5u64), (1, 2), (2, 0), (3, 0), (4, 0), (5, 0)] {
            // Sample 4 comes a little early (a slow sample before it, a busy CPU).
            let at_ms = 10_000 + i * 1_000 - if i == 4 { early } else { 0 };
            drain.push(DrainSample {
                at_ms,
                listening: true,
                new,
                active: 10,
                websocket: 0,
                oldest_ms: 0,
            });
            let v = drain.verdict(HTTP_PORT, &t);
            let expected = match i {
                0..=2 => "serving",
                3 => "serving", // the opening of sample 1 arrived within the last 3 s
                _ => "draining",
            };
            assert_eq!(v.phase, expected, "sample {i}, {early} ms early: {v:?}");
        }
    }
}
