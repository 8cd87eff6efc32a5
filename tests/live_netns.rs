//! `--netns`: one drainwatch in the root namespace watching two other network namespaces reports
//! each one's counts separately, under a `netns` label, and equal to what a drainwatch started
//! inside that namespace reports. Runs as root: the namespaces (dwn-<pid>-*) are made by the test
//! and deleted when it ends, also on failure; traffic stays on their loopback interfaces.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_drainwatch");
/// The watched port: the same in both namespaces, so only the namespace tells them apart.
const PORT: u16 = 7100;

/// A network namespace made for one test, deleted when dropped (also on panic).
struct Netns(String);

impl Netns {
    fn new(suffix: &str) -> Netns {
        let name = format!("dwn-{}-{suffix}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    /// Runs `f` on a thread inside this namespace (sockets it makes are in it).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
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

#[allow(unsafe_code)]
fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a valid namespace fd; setns changes only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A drainwatch process, stopped with SIGTERM when dropped. `ns`: the namespace its HTTP
/// server lives in (it is scraped from a thread in that namespace).
struct Exporter {
    child: Child,
    web: u16,
    ns: Option<String>,
}

impl Exporter {
    /// `prefix` runs before the binary (e.g. nsenter), `args` after it.
    fn start(prefix: &[&str], args: &[&str], web: u16, ns: Option<String>) -> Exporter {
        let (program, pre) = match prefix.split_first() {
            Some((p, rest)) => (*p, rest.to_vec()),
            None => (BIN, vec![]),
        };
        let mut cmd = Command::new(program);
        cmd.args(&pre);
        if !prefix.is_empty() {
            cmd.arg(BIN);
        }
        let child = cmd
            .args(args)
            .args([
                "--watch.port",
                &PORT.to_string(),
                "--web.listen-address",
                &format!("127.0.0.1:{web}"),
                "--sample.interval",
                "200ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Exporter { child, web, ns };
        let started = Instant::now();
        while !e
            .get("/healthz")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "exporter not up"
            );
            thread::sleep(Duration::from_millis(50));
        }
        e
    }

    /// The whole HTTP response of GET `path`, or None when nothing answers.
    fn get(&self, path: &str) -> Option<String> {
        let (web, path) = (self.web, path.to_string());
        let fetch = move || {
            let mut s = TcpStream::connect(("127.0.0.1", web)).ok()?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).ok()?;
            Some(reply)
        };
        match &self.ns {
            Some(ns) => {
                let ns = format!("/run/netns/{ns}");
                thread::spawn(move || {
                    enter(&ns);
                    fetch()
                })
                .join()
                .unwrap()
            }
            None => fetch(),
        }
    }

    /// Series of the families `names` as `series -> value`, for `netns` (its label removed)
    /// or, with `None`, series without a netns label.
    fn series(&self, names: &[&str], netns: Option<&str>) -> BTreeMap<String, String> {
        let body = self.get("/metrics").expect("scrape");
        let mut out = BTreeMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap();
            if !names.contains(&name) {
                continue;
            }
            let series = match netns {
                Some(ns) => {
                    let label = format!("netns=\"{ns}\",");
                    if !series.contains(&label) {
                        continue;
                    }
                    series.replacen(&label, "", 1)
                }
                None => {
                    assert!(!series.contains("netns="), "unexpected netns label: {line}");
                    series.to_string()
                }
            };
            out.insert(series, value.to_string());
        }
        out
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// In the calling thread's namespace: `held` connections kept open (returned), `graceful`
/// opened and closed with FIN, `aborts` closed by the client with RST (SO_LINGER 0).
fn workload(
    listener: &TcpListener,
    held: usize,
    graceful: usize,
    aborts: usize,
) -> Vec<(TcpStream, TcpStream)> {
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
        let (s, _) = listener.accept().unwrap();
        (c, s)
    };
    for _ in 0..graceful {
        let (c, s) = connect();
        drop(c);
        let mut s = s;
        let _ = s.read(&mut [0u8; 1]);
    }
    for _ in 0..aborts {
        let (c, s) = connect();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: a valid socket and a correctly sized linger struct.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(c);
        let mut s = s;
        let _ = s.read(&mut [0u8; 1]);
    }
    (0..held).map(|_| connect()).collect()
}

const FAMILIES: [&str; 5] = [
    "drainwatch_connections",
    "drainwatch_connections_opened_total",
    "drainwatch_connections_closed_total",
    "drainwatch_resets_total",
    "drainwatch_listening",
];

fn sum(series: &BTreeMap<String, String>, prefix: &str, needle: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(needle))
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

#[test]
fn one_drainwatch_watching_two_namespaces_reports_each_like_a_drainwatch_inside_it() {
    let a = Netns::new("a");
    let b = Netns::new("b");
    let listener = |ns: &Netns| ns.run(|| TcpListener::bind(("127.0.0.1", PORT)).unwrap());
    let (la, lb) = (listener(&a), listener(&b));

    let root = Exporter::start(
        &[],
        &["--netns", &a.0, "--netns", &b.path()],
        free_port(),
        None,
    );
    // The reference: one drainwatch inside each namespace (nsenter keeps the host's /sys, so
    // its tracepoints work as the root one's do).
    let inside = |ns: &Netns| {
        let enter = format!("--net={}", ns.path());
        Exporter::start(
            &["nsenter", &enter],
            &[],
            19000 + (std::process::id() % 500) as u16,
            Some(ns.0.clone()),
        )
    };
    let (ia, ib) = (inside(&a), inside(&b));

    // Different traffic in each namespace, on the same port.
    let held_a = a.run(move || (workload(&la, 3, 20, 10), la));
    let held_b = b.run(move || (workload(&lb, 5, 7, 4), lb));

    // Wait until every exporter has counted every opening and close (destroy events come
    // within a sample; a silent open connection is counted once its class is known, after the
    // probe lifetime of 1 s).
    let counted = |e: &Exporter, ns: Option<&str>, opened: f64, closed: f64| {
        let s = e.series(&FAMILIES, ns);
        sum(&s, "drainwatch_connections_opened_total", "") >= opened
            && sum(&s, "drainwatch_connections_closed_total", "") >= closed
    };
    let started = Instant::now();
    while !(counted(&root, Some(&a.0), 33.0, 30.0)
        && counted(&root, Some(&b.path()), 16.0, 11.0)
        && counted(&ia, None, 33.0, 30.0)
        && counted(&ib, None, 16.0, 11.0))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "closes not all counted"
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(600)); // a few more samples: nothing else may move

    for (label, reference, established, opened, fin, reset) in [
        (a.0.as_str(), &ia, 3.0, 33.0, 20.0, 10.0),
        (&b.path(), &ib, 5.0, 16.0, 7.0, 4.0),
    ] {
        let ours = root.series(&FAMILIES, Some(label));
        let theirs = reference.series(&FAMILIES, None);
        assert_eq!(
            ours, theirs,
            "netns {label}: root drainwatch vs the one inside"
        );
        assert_eq!(
            sum(&ours, "drainwatch_connections{", "state=\"established\""),
            established
        );
        assert_eq!(
            sum(&ours, "drainwatch_connections_opened_total", ""),
            opened
        );
        assert_eq!(
            sum(
                &ours,
                "drainwatch_connections_closed_total",
                "reason=\"fin\""
            ),
            fin
        );
        assert_eq!(
            sum(
                &ours,
                "drainwatch_connections_closed_total",
                "reason=\"reset\""
            ),
            reset
        );
        assert_eq!(
            sum(&ours, "drainwatch_resets_total", "direction=\"received\""),
            reset
        );
        assert_eq!(sum(&ours, "drainwatch_listening", ""), 1.0);
    }

    // The verdicts are per namespace too: /drain needs the name when several are watched.
    let reply = root.get(&format!("/drain?port={PORT}")).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains(&a.0), "{reply}");
    let reply = root
        .get(&format!("/drain?port={PORT}&netns={}", a.0))
        .unwrap();
    assert!(reply.contains("\"active\":3"), "{reply}");
    let reply = root
        .get(&format!("/drain?port={PORT}&netns=nosuch"))
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    drop((held_a, held_b));
}

#[test]
fn a_single_netns_by_pid_has_no_label() {
    let a = Netns::new("p");
    let held = a.run(|| {
        let l = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        (workload(&l, 2, 0, 0), l)
    });
    let mut sleeper = Command::new("nsenter")
        .args([&format!("--net={}", a.path()), "sleep", "30"])
        .spawn()
        .unwrap();
    // nsenter enters the namespace after the spawn returns: until then the pid is in ours.
    let want = std::fs::metadata(a.path()).unwrap().ino();
    let proc_ns = format!("/proc/{}/ns/net", sleeper.id());
    wait_for(
        &format!("nsenter did not enter {} within 2 s", a.path()),
        Duration::from_secs(2),
        || std::fs::metadata(&proc_ns).is_ok_and(|m| m.ino() == want),
    );
    let pid = format!("pid:{}", sleeper.id());
    let e = Exporter::start(&[], &["--netns", &pid], free_port(), None);
    // series() asserts that no series carries a netns label.
    let s = e.series(&FAMILIES, None);
    assert_eq!(
        sum(&s, "drainwatch_connections{", "state=\"established\""),
        2.0
    );
    let reply = e.get(&format!("/drain?port={PORT}&netns={pid}")).unwrap();
    assert!(reply.contains("\"active\":2"), "{reply}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop(held);
}

#[test]
fn a_namespace_that_cannot_be_entered_is_a_clear_error() {
    let out = Command::new(BIN)
        .args([
            "--netns",
            "dwn-does-not-exist",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "cannot enter network namespace dwn-does-not-exist (/run/netns/dwn-does-not-exist)"
        ),
        "{err}"
    );
    // A file that is not a namespace.
    let out = Command::new(BIN)
        .args([
            "--netns",
            "/etc/hostname",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a network namespace"));
    // Not a name, path or pid: a usage error.
    for bad in ["../x", "pid:x", "pid:0", ""] {
        let out = Command::new(BIN).args(["--netns", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--netns {bad:?}");
    }
}
