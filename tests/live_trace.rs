//! The real kernel's tracepoints: resets and timeouts counted per port, joined to the watched
//! network namespace's connections, against traffic whose every RST and timeout is known.
//! Runs as root (tracefs at /sys/kernel/tracing; the test script mounts it if needed).
//! Traffic goes to loopback or to namespaces (dwt-*, 10.250.77.0/24) each test creates and
//! removes, also on failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use drainwatch::app::Pipeline;
use drainwatch::config::Config;
use drainwatch::model::aggregate::ClassAggregate;
use drainwatch::model::resets::{CloseReason, Direction};

fn pipeline(ports: &[u16]) -> Pipeline {
    let p = Pipeline::new(Config {
        ports: ports.iter().copied().collect(),
        ..Config::default()
    });
    assert!(
        p.stats().tracepoints_running,
        "tracepoints need root and tracefs at /sys/kernel/tracing"
    );
    assert!(p.stats().events_subscribed);
    p
}

fn all(p: &Pipeline, port: u16) -> ClassAggregate {
    common::all(p.model(), port)
}

fn resets(p: &Pipeline, port: u16, direction: Direction, reason: &str) -> u64 {
    p.model().aggregates.ports[&port]
        .resets
        .get(&(direction, reason))
        .copied()
        .unwrap_or(0)
}

fn closed(p: &Pipeline, port: u16, reason: CloseReason) -> u64 {
    all(p, port).closed_by_reason[reason.index()]
}

/// Steps `p` every 200 ms until `done` holds or `limit` passes; true if it held.
fn step_until(p: &mut Pipeline, limit: Duration, mut done: impl FnMut(&Pipeline) -> bool) -> bool {
    let started = Instant::now();
    loop {
        assert!(p.step());
        if done(p) {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[allow(unsafe_code)]
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a `linger` that outlives the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// `n` accepted connections to `listener`, as (client, server) pairs matched by address.
fn connect(listener: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let addr = listener.local_addr().unwrap();
    let acceptor = {
        let listener = listener.try_clone().unwrap();
        thread::spawn(move || {
            (0..n)
                .map(|_| {
                    let (s, peer) = listener.accept().unwrap();
                    (peer, s)
                })
                .collect::<HashMap<SocketAddr, TcpStream>>()
        })
    };
    let clients: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut servers = acceptor.join().unwrap();
    clients
        .into_iter()
        .map(|c| {
            let s = servers.remove(&c.local_addr().unwrap()).unwrap();
            (c, s)
        })
        .collect()
}

/// Client aborts (SO_LINGER 0 then close: one RST each) of `n` connections to `listener`.
fn client_aborts(listener: &TcpListener, n: usize) {
    for (client, server) in connect(listener, n) {
        set_linger_zero(&client);
        drop(client);
        // Read the RST (ECONNRESET) so the server socket is done with it, then close.
        let mut server = server;
        let mut b = [0u8; 1];
        let _ = server.read(&mut b);
    }
}

/// Server closes with a request unread (one RST each, abort-on-close) of `n` connections.
fn server_closes_unread(listener: &TcpListener, n: usize) {
    let pairs = connect(listener, n);
    for (client, _) in &pairs {
        (&*client).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    }
    // Let every request land in the server's receive queue before it closes.
    thread::sleep(Duration::from_millis(100));
    for (client, server) in pairs {
        drop(server);
        let mut client = client;
        let mut b = [0u8; 1];
        let _ = client.read(&mut b);
    }
}

/// A network namespace made for one test, deleted when dropped (also on panic).
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "netns", "add", name]);
        let ns = Netns(name.to_string());
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        run(&full);
    }
    /// Runs `f` on a thread that lives in this namespace (sockets it makes are in it).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed");
}

/// Moves the calling thread into the network namespace bound at `path`.
#[allow(unsafe_code)]
fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a valid namespace fd; setns changes only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

#[test]
fn two_hundred_client_aborts_are_two_hundred_resets_received() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    client_aborts(&listener, 200);
    assert!(step_until(&mut p, Duration::from_secs(5), |p| {
        all(p, port).closed_total >= 200
    }));
    thread::sleep(Duration::from_millis(300));
    assert!(p.step());
    assert_eq!(resets(&p, port, Direction::Received, "none"), 200);
    let sent: u64 = p.model().aggregates.ports[&port]
        .resets
        .iter()
        .filter(|((d, _), _)| *d == Direction::Sent)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(sent, 0, "the server sent no RST");
    let agg = all(&p, port);
    assert_eq!((agg.opened_total, agg.closed_total), (200, 200));
    assert_eq!(closed(&p, port, CloseReason::Reset), 200);
    assert_eq!(p.stats().trace_lost, 0);
}

#[test]
fn two_hundred_closes_with_unread_data_are_two_hundred_resets_sent_abort_on_close() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    server_closes_unread(&listener, 200);
    assert!(step_until(&mut p, Duration::from_secs(5), |p| {
        all(p, port).closed_total >= 200
    }));
    thread::sleep(Duration::from_millis(300));
    assert!(p.step());
    assert_eq!(resets(&p, port, Direction::Sent, "abort-on-close"), 200);
    assert_eq!(resets(&p, port, Direction::Received, "none"), 0);
    assert_eq!(closed(&p, port, CloseReason::Reset), 200);
    assert_eq!(closed(&p, port, CloseReason::Fin), 0);
    assert_eq!(p.stats().trace_lost, 0);
}

#[test]
fn graceful_closes_are_fin_and_reset_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    for (client, server) in connect(&listener, 100) {
        drop(server);
        let mut client = client;
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0, "FIN");
    }
    assert!(step_until(&mut p, Duration::from_secs(5), |p| {
        all(p, port).closed_total >= 100
    }));
    thread::sleep(Duration::from_millis(300));
    assert!(p.step());
    assert_eq!(closed(&p, port, CloseReason::Fin), 100);
    assert!(p.model().aggregates.ports[&port]
        .resets
        .values()
        .all(|&n| n == 0));
}

#[test]
fn resets_in_another_namespace_on_the_same_port_are_not_counted() {
    // Ours: the pipeline and 200 aborts on 127.0.0.1:port in this namespace. Theirs: a
    // namespace with its own loopback and a listener on the same port, 150 aborts and 150
    // closes with unread data. Tracepoints see all 500 RSTs; only ours join our cookies.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    let other = Netns::new("dwt-other");
    other.run(move || {
        let theirs = TcpListener::bind(("127.0.0.1", port)).unwrap();
        client_aborts(&theirs, 150);
        server_closes_unread(&theirs, 150);
    });
    client_aborts(&listener, 200);
    assert!(step_until(&mut p, Duration::from_secs(5), |p| {
        all(p, port).closed_total >= 200
    }));
    thread::sleep(Duration::from_millis(300));
    assert!(p.step());
    assert_eq!(resets(&p, port, Direction::Received, "none"), 200);
    assert_eq!(resets(&p, port, Direction::Sent, "abort-on-close"), 0);
    let agg = all(&p, port);
    assert_eq!((agg.opened_total, agg.closed_total), (200, 200));
}

#[test]
fn twenty_connections_whose_peer_vanishes_are_twenty_timeouts() {
    // Server namespace dwt-to-s (10.250.77.1) with tcp_retries2 = 3; client namespace
    // dwt-to-c (10.250.77.2). The client drops everything once connected; the server's
    // response is retransmitted into the drop until the kernel gives up (ETIMEDOUT, ~3-6 s).
    // Five more connections retransmit too, but the server aborts them (SO_LINGER 0) first:
    // their final tcp_info looks like the timeouts' (retransmits > 0), which is why timeouts
    // are taken from the kernel's ETIMEDOUT report and not inferred from tcp_info.
    let server_ns = Netns::new("dwt-to-s");
    let client_ns = Netns::new("dwt-to-c");
    // Both ends created inside the namespaces: nothing is left in the root namespace if the
    // test fails, since deleting the namespaces deletes the pair.
    run(&[
        "ip", "link", "add", "dwt-to0", "netns", "dwt-to-s", "type", "veth", "peer", "name",
        "dwt-to1", "netns", "dwt-to-c",
    ]);
    server_ns.exec(&["ip", "addr", "add", "10.250.77.1/24", "dev", "dwt-to0"]);
    client_ns.exec(&["ip", "addr", "add", "10.250.77.2/24", "dev", "dwt-to1"]);
    server_ns.exec(&["ip", "link", "set", "dwt-to0", "up"]);
    client_ns.exec(&["ip", "link", "set", "dwt-to1", "up"]);
    server_ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_retries2=3"]);
    let port = 7780;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let client_path = "/run/netns/dwt-to-c".to_string();
    let client = thread::spawn(move || {
        enter(&client_path);
        // Once the server watches, connect 20 times and keep the sockets.
        wait.recv().unwrap();
        // Blocking connects, no retry: a connect given up early (the machine is busy with
        // the other tests) could still complete on the server and make a 26th connection.
        let conns: Vec<TcpStream> = (0..25)
            .map(|_| TcpStream::connect("10.250.77.1:7780").unwrap())
            .collect();
        rx.recv().unwrap();
        conns
    });
    let result = server_ns.run(move || {
        let listener = TcpListener::bind(("10.250.77.1", port)).unwrap();
        let mut p = pipeline(&[port]);
        assert!(p.step());
        go.send(()).unwrap();
        let mut servers: Vec<TcpStream> =
            (0..25).map(|_| listener.accept().unwrap().0).collect();
        let aborted: Vec<TcpStream> = servers.drain(20..).collect();
        assert!(p.step());
        // The cookies of our 25 sockets, from the dump (an aborted socket's destroy event has
        // its peer port zeroed: only the cookie names it).
        let peers: std::collections::HashSet<SocketAddr> = servers
            .iter()
            .chain(&aborted)
            .map(|s| s.peer_addr().unwrap())
            .collect();
        let ours: std::collections::HashSet<u64> = p
            .snapshot()
            .sockets
            .iter()
            .filter(|r| r.local_port == port && peers.contains(&SocketAddr::new(r.remote_addr, r.remote_port)))
            .map(|r| r.cookie)
            .collect();
        assert_eq!(ours.len(), 25);
        run(&["ip", "netns", "exec", "dwt-to-c", "nft", "add table inet dwt; add chain inet dwt in { type filter hook input priority 0; policy drop; }"]);
        for mut s in servers.iter().chain(&aborted) {
            s.write_all(&[b'x'; 100]).unwrap();
        }
        // Final tcp_info `retransmits` of each of our 25 connections, by cookie.
        let mut final_retransmits = HashMap::new();
        let mut keep = |p: &Pipeline| {
            for r in &p.snapshot().destroyed {
                if let (true, Some(info)) = (ours.contains(&r.cookie), r.info) {
                    final_retransmits.insert(r.cookie, info.retransmits);
                }
            }
        };
        thread::sleep(Duration::from_millis(1500));
        for s in aborted {
            set_linger_zero(&s);
        }
        let started = Instant::now();
        let done = loop {
            assert!(p.step());
            keep(&p);
            let agg = all(&p, port);
            if agg.timeouts_total >= 20 && agg.closed_total >= 25 {
                break true;
            }
            if started.elapsed() > Duration::from_secs(30) {
                break false;
            }
            thread::sleep(Duration::from_millis(200));
        };
        drop(servers);
        thread::sleep(Duration::from_millis(300));
        assert!(p.step());
        keep(&p);
        let agg = all(&p, port);
        let sent: u64 = p.model().aggregates.ports[&port]
            .resets
            .iter()
            .filter(|((d, _), _)| *d == Direction::Sent)
            .map(|(_, n)| n)
            .sum();
        (done, agg.timeouts_total, agg.closed_by_reason, agg.opened_total, sent, final_retransmits)
    });
    tx.send(()).unwrap();
    drop(client.join().unwrap());
    let (done, timeouts, by_reason, opened, sent, final_retransmits) = result;
    assert!(done, "timeouts {timeouts}, closes by reason {by_reason:?}");
    assert_eq!(timeouts, 20);
    assert_eq!(opened, 25);
    assert_eq!(by_reason[CloseReason::Timeout.index()], 20, "{by_reason:?}");
    assert_eq!(by_reason[CloseReason::Reset.index()], 5, "{by_reason:?}");
    assert_eq!(sent, 5, "the five abortive closes");
    assert_eq!(final_retransmits.len(), 25, "{final_retransmits:?}");
    assert!(
        final_retransmits.values().all(|&r| r > 0),
        "tcp_info cannot tell the aborted from the timed out: {final_retransmits:?}"
    );
}

#[test]
fn a_burst_of_twenty_thousand_closes_a_second_for_five_seconds_loses_nothing() {
    // Client threads connect at a paced 20,000 a second in all, to eight loopback addresses;
    // two acceptors close what they accept at once (so TIME_WAIT stays on the server side and
    // the clients' ephemeral ports free up), and each client closes at the server's FIN. The pipeline samples every second meanwhile, as
    // the exporter does. Every connection must be counted opened and closed, with no event
    // lost by either source (or, if the kernel dropped some, every loss counted).
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const RATE: u64 = 20_000;
    const SECONDS: u64 = 5;
    const CLIENTS: u64 = 4;
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = pipeline(&[port]);
    assert!(p.step());
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let acceptors: Vec<_> = (0..2)
        .map(|_| {
            let (listener, stop, accepted) = (
                listener.try_clone().unwrap(),
                stop.clone(),
                accepted.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if listener.accept().is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let per_client = RATE / CLIENTS;
                let mut made = 0u64;
                let mut failed = 0u64;
                let t0 = Instant::now();
                while made + failed < per_client * SECONDS {
                    // Pace: no more than `per_client` a second since t0.
                    let due = (t0.elapsed().as_secs_f64() * per_client as f64) as u64;
                    if made + failed >= due {
                        thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    let addr = format!("127.0.0.{}:{port}", 1 + (made + c) % 8);
                    match TcpStream::connect(addr) {
                        Ok(mut s) => {
                            let mut b = [0u8; 1];
                            let _ = s.read(&mut b);
                            made += 1;
                        }
                        Err(_) => failed += 1,
                    }
                }
                (made, failed)
            })
        })
        .collect();
    let mut next = Instant::now();
    let mut opened_cookies = std::collections::HashMap::new();
    let mut destroyed_cookies = std::collections::HashSet::new();
    let mut last_seen = std::collections::HashMap::new();
    let mut collect = |p: &Pipeline, opened_cookies: &mut std::collections::HashMap<u64, usize>| {
        for e in p.model().last_events() {
            if let drainwatch::model::tracker::LifecycleEvent::Opened { cookie, .. } = e {
                *opened_cookies.entry(*cookie).or_insert(0) += 1;
            }
        }
        for r in &p.snapshot().destroyed {
            if r.local_port == port {
                destroyed_cookies.insert(r.cookie);
            }
        }
        for r in &p.snapshot().sockets {
            last_seen.insert(r.cookie, (r.state, r.remote_port));
        }
    };
    while clients.iter().any(|c| !c.is_finished()) {
        next += Duration::from_secs(1);
        thread::sleep(next.saturating_duration_since(Instant::now()));
        assert!(p.step());
        collect(&p, &mut opened_cookies);
    }
    let (made, failed) = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .fold((0, 0), |(m, f), (a, b)| (m + a, f + b));
    let elapsed = started.elapsed().as_secs_f64();
    // Wake the acceptors once everything was accepted.
    let wait = Instant::now();
    while accepted.load(Ordering::Relaxed) < made && wait.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for _ in 0..2 {
        let _ = TcpStream::connect(("127.0.0.1", port));
    }
    for a in acceptors {
        a.join().unwrap();
    }
    let extra = accepted.load(Ordering::Relaxed) - made;
    thread::sleep(Duration::from_millis(500));
    assert!(p.step());
    collect(&p, &mut opened_cookies);
    thread::sleep(Duration::from_millis(500));
    assert!(p.step());
    collect(&p, &mut opened_cookies);
    for (c, n) in &opened_cookies {
        if *n > 1 || !destroyed_cookies.contains(c) {
            eprintln!(
                "odd cookie {c}: opened {n} destroyed {} dumped {:?}",
                destroyed_cookies.contains(c),
                last_seen.get(c)
            );
        }
    }
    let agg = all(&p, port);
    let stats = p.stats();
    eprintln!(
        "burst: {made} connections in {elapsed:.2} s ({:.0}/s), {failed} failed, {extra} extra; opened {} closed {}; \
         destroy events received {} overflows {} missed {}; tracepoint records {} lost {}",
        made as f64 / elapsed,
        agg.opened_total,
        agg.closed_total,
        stats.destroy_events,
        stats.events_overflows,
        stats.events_missed,
        stats.trace_events,
        stats.trace_lost,
    );
    assert_eq!(failed, 0);
    assert!(
        made as f64 / elapsed >= 0.9 * RATE as f64,
        "the machine made only {:.0} connections a second",
        made as f64 / elapsed
    );
    let total = made + extra;
    if stats.events_overflows == 0 && stats.trace_lost == 0 {
        assert_eq!((agg.opened_total, agg.closed_total), (total, total));
        assert_eq!(agg.closed_by_reason[CloseReason::Fin.index()], total);
    } else {
        // Lost events are counted, and the counts never exceed the truth.
        assert!(agg.opened_total <= total && agg.closed_total <= total);
    }
    assert_eq!(stats.events_overflows, 0, "destroy events lost");
    assert_eq!(stats.trace_lost, 0, "tracepoint records lost");
}

/// An instance whose drainwatch is alive in another PID namespace (its PID looks dead from
/// here) keeps its events on: a new drainwatch only rmdirs stale instances, which the kernel
/// refuses while a pipe is open. Once nothing holds it, the next start removes it.
#[test]
fn a_live_instance_from_another_pid_namespace_is_left_alone_and_a_dead_one_removed() {
    use drainwatch::source::tracepoints::Tracepoints;
    let tracefs = std::path::Path::new("/sys/kernel/tracing");
    // Above the largest pid_max (2^22): no process here can have it.
    let other = tracefs.join("instances/drainwatch-4000000000");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("events/enable"), "0");
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _ = std::fs::remove_dir(&other);
    std::fs::create_dir(&other).unwrap();
    let _cleanup = Cleanup(other.clone());
    let enable = other.join("events/tcp/tcp_send_reset/enable");
    std::fs::write(&enable, "1").unwrap();
    // What the other drainwatch's reader holds open.
    let pipe = std::fs::File::open(other.join("per_cpu/cpu0/trace_pipe_raw")).unwrap();
    let ours = Tracepoints::start(tracefs).unwrap();
    assert!(other.is_dir(), "a live instance was removed");
    assert_eq!(std::fs::read_to_string(&enable).unwrap().trim(), "1");
    drop(ours);
    drop(pipe);
    let ours = Tracepoints::start(tracefs).unwrap();
    assert!(!other.exists(), "a dead instance was left");
    drop(ours);
}
