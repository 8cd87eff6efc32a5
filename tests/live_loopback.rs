//! The real kernel: loopback connections to a listener on an ephemeral port, sampled through
//! sock_diag with the kernel-side port filter. Counts are exact: nothing else uses these ports.

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use drainwatch::app::Pipeline;
use drainwatch::config::Config;
use drainwatch::model::aggregate::ClassAggregate;

/// `n` connections to `listener`, returned as (client, server) pairs.
fn connect(listener: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
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
    clients.into_iter().zip(rx.iter().take(n)).collect()
}

fn pipeline(ports: &[u16]) -> Pipeline {
    Pipeline::new(Config {
        ports: ports.iter().copied().collect(),
        ..Config::default()
    })
}

fn port_class(p: &Pipeline, port: u16) -> ClassAggregate {
    p.model().aggregates.ports[&port]
        .classes
        .values()
        .next()
        .cloned()
        .unwrap()
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
