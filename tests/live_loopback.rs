//! The real kernel: loopback connections to a listener on an ephemeral port, sampled through
//! sock_diag with the kernel-side port filter. Counts are exact: nothing else uses these ports.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

mod common;

use drainwatch::app::Pipeline;
use drainwatch::config::Config;
use drainwatch::model::aggregate::ClassAggregate;

/// `n` connections to `listener` that each carried one request and its response (so they are
/// `http` from their first sighting), returned as (client, server) pairs.
fn connect(listener: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let mut pairs = connect_silent(listener, n);
    for (client, server) in &mut pairs {
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut request = [0u8; 18];
        server.read_exact(&mut request).unwrap();
        server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap();
        let mut response = [0u8; 27];
        client.read_exact(&mut response).unwrap();
    }
    pairs
}

/// `n` connections that carried nothing.
fn connect_silent(listener: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let addr = listener.local_addr().unwrap();
    let server = listener.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let acceptor = thread::spawn(move || {
        for _ in 0..n {
            let (s, _) = server.accept().unwrap();
            tx.send(s).unwrap();
        }
    });
    let clients: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    acceptor.join().unwrap();
    // The accept queue need not give the connections back in connect order: pair each server
    // socket with the client whose address it sees.
    let mut servers: std::collections::HashMap<SocketAddr, TcpStream> = rx
        .iter()
        .take(n)
        .map(|s| (s.peer_addr().unwrap(), s))
        .collect();
    clients
        .into_iter()
        .map(|c| {
            let server = servers.remove(&c.local_addr().unwrap()).unwrap();
            (c, server)
        })
        .collect()
}

fn pipeline(ports: &[u16]) -> Pipeline {
    Pipeline::new(Config {
        ports: ports.iter().copied().collect(),
        ..Config::default()
    })
}

fn dump_only(ports: &[u16]) -> Pipeline {
    Pipeline::new(Config {
        ports: ports.iter().copied().collect(),
        destroy_events: false,
        ..Config::default()
    })
}

fn port_class(p: &Pipeline, port: u16) -> ClassAggregate {
    common::all(p.model(), port)
}

fn class_named(p: &Pipeline, port: u16, class: &str) -> ClassAggregate {
    let model = p.model();
    if !model.aggregates.ports[&port]
        .classes
        .keys()
        .any(|id| model.classifier.table().name(*id) == class)
    {
        return ClassAggregate::default();
    }
    common::class_of(model, port, class)
}

#[test]
fn thousand_connections_counted_exactly_then_four_hundred_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step(), "first sample");
    let mut conns = connect(&listener, 1000);
    assert!(p.step());
    let agg = port_class(&p, port);
    assert_eq!(agg.states[0], 1000, "established on the server side only");
    assert_eq!(agg.opened_total, 1000);
    assert!(p.model().aggregates.ports[&port].listening);

    // Close 400: the server side first (as nginx closing keep-alive), then the client.
    for (client, server) in conns.drain(..400) {
        drop(server);
        drop(client);
    }
    thread::sleep(Duration::from_millis(100));
    assert!(p.step());
    let agg = port_class(&p, port);
    assert_eq!(agg.closed_total, 400);
    assert_eq!(agg.lifetime.count, 400);
    assert_eq!(agg.states[0], 600);
    assert_eq!(
        agg.states[4], 400,
        "the server closed first: its sockets wait in TIME_WAIT"
    );
    assert!(p.step());
    assert_eq!(
        port_class(&p, port).closed_total,
        400,
        "TIME_WAIT is not closed twice"
    );
}

#[test]
fn client_side_close_goes_through_close_wait_and_counts_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    let mut conns = connect(&listener, 20);
    assert!(p.step());
    // The clients leave; the server has not closed yet.
    let servers: Vec<TcpStream> = conns
        .drain(..)
        .map(|(c, s)| {
            drop(c);
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    assert!(p.step());
    let agg = port_class(&p, port);
    assert_eq!(
        agg.states[5], 20,
        "CLOSE_WAIT: the peer closed, the application has not"
    );
    assert_eq!(agg.closed_total, 0);
    drop(servers);
    thread::sleep(Duration::from_millis(100));
    assert!(p.step());
    let agg = port_class(&p, port);
    assert_eq!(agg.closed_total, 20);
    assert_eq!(agg.states.iter().sum::<u64>(), 0);
}

#[test]
fn ipv6_and_many_ports_pass_the_kernel_filter() {
    let v6 = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).unwrap();
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let (p6, p4) = (
        v6.local_addr().unwrap().port(),
        v4.local_addr().unwrap().port(),
    );
    // 40 ports: more than one bytecode jump of a u8 can cross.
    let mut ports: BTreeSet<u16> = (1..=38).map(|i| 65000 - i).collect();
    ports.insert(p6);
    ports.insert(p4);
    let ports: Vec<u16> = ports.into_iter().collect();
    let mut p = pipeline(&ports);
    assert!(p.step());
    let _a = connect(&v6, 7);
    let _b = connect(&v4, 5);
    assert!(p.step());
    assert_eq!(port_class(&p, p6).states[0], 7);
    assert_eq!(port_class(&p, p4).states[0], 5);
    let other: u64 = p
        .snapshot()
        .sockets
        .iter()
        .filter(|s| s.local_port != p6 && s.local_port != p4)
        .count() as u64;
    assert_eq!(
        other, 0,
        "the kernel filter returned sockets of other ports"
    );
}

#[test]
fn discovery_watches_listening_ports_and_follows_them_after_the_listener_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = Pipeline::new(Config {
        max_ports: 4096,
        ..Config::default()
    });
    assert!(p.step());
    assert!(p.snapshot().watched_ports.contains(&port));
    let conns = connect(&listener, 3);
    assert!(p.step());
    assert_eq!(port_class(&p, port).opened_total, 3);
    drop(listener);
    assert!(p.step());
    assert!(
        p.snapshot().watched_ports.contains(&port),
        "draining port stays watched"
    );
    assert!(!p.model().aggregates.ports[&port].listening);
    assert_eq!(port_class(&p, port).states[0], 3);
    drop(conns);
    thread::sleep(Duration::from_millis(100));
    assert!(p.step());
    assert!(p.step());
    assert!(
        !p.snapshot().watched_ports.contains(&port),
        "gone once drained"
    );
}

#[test]
fn counts_are_the_same_without_destroy_events_for_connections_that_live_across_samples() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = dump_only(&[port]);
    assert!(p.step());
    let mut conns = connect(&listener, 300);
    assert!(p.step());
    assert_eq!(class_named(&p, port, "http").opened_total, 300);
    for (client, server) in conns.drain(..100) {
        drop(client);
        drop(server);
    }
    thread::sleep(Duration::from_millis(100));
    assert!(p.step());
    let agg = port_class(&p, port);
    assert_eq!(
        (agg.closed_total, agg.lifetime.count, agg.states[0]),
        (100, 100, 200)
    );
}

#[test]
fn five_thousand_connections_within_one_second_are_all_counted_by_destroy_events() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    assert!(
        p.stats().events_subscribed,
        "destroy events need CAP_NET_ADMIN (tests run as root)"
    );
    let server = listener.try_clone().unwrap();
    let acceptor = thread::spawn(move || {
        for _ in 0..5000 {
            let (mut s, _) = server.accept().unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            s.write_all(b"pong").unwrap();
        }
    });
    let started = std::time::Instant::now();
    for _ in 0..5000 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
    }
    acceptor.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    thread::sleep(Duration::from_millis(200));
    assert!(p.step());
    let agg = port_class(&p, port);
    assert_eq!(agg.opened_total, 5000);
    assert_eq!(agg.closed_total, 5000);
    assert_eq!(
        class_named(&p, port, "http").closed_total,
        5000,
        "each carried a request"
    );
    assert_eq!(p.stats().events_overflows, 0);
}

#[test]
fn silent_connections_closed_quickly_are_probes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    for (client, server) in connect_silent(&listener, 50) {
        drop(client);
        drop(server);
    }
    thread::sleep(Duration::from_millis(200));
    assert!(p.step());
    let probe = class_named(&p, port, "probe");
    assert_eq!((probe.opened_total, probe.closed_total), (50, 50));
    assert_eq!(
        port_class(&p, port).opened_total,
        50,
        "nothing else was counted"
    );
}

#[test]
fn one_dump_for_both_families_returns_what_one_dump_per_family_returns() {
    use drainwatch::source::netlink::SockDiag;
    use drainwatch::source::request::{DumpSpec, Family};
    let v6 = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).unwrap();
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = vec![
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    ];
    let _a = connect(&v6, 30);
    let _b = connect(&v4, 20);
    let spec = |family| DumpSpec {
        family,
        listeners: true,
        connections: true,
        local_ports: Some({
            let mut p = ports.clone();
            p.sort_unstable();
            p
        }),
    };
    let mut diag = SockDiag::new();
    let mut both = Vec::new();
    diag.dump(&spec(Family::Any), &mut both).unwrap();
    let mut each = Vec::new();
    diag.dump(&spec(Family::V4), &mut each).unwrap();
    diag.dump(&spec(Family::V6), &mut each).unwrap();
    let cookies = |v: &[drainwatch::model::socket::SocketRecord]| {
        v.iter().map(|r| r.cookie).collect::<BTreeSet<u64>>()
    };
    assert_eq!(both.len(), 52, "50 server sockets and 2 listeners");
    assert_eq!(cookies(&both), cookies(&each));
}
