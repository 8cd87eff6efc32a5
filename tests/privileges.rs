//! Least privilege, on the real binary started as root: after start-up every thread keeps only
//! what the running sources need (CAP_DAC_OVERRIDE and CAP_SYS_PTRACE with tracepoints, nothing
//! without), the bounding set holds nothing beyond the start-up needs, and every source still
//! runs. The set per source is documented in src/source/privileges.rs and docs/install.md.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use drainwatch::source::privileges::{
    CapSet, Needs, CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
};

const BIN: &str = env!("CARGO_BIN_EXE_drainwatch");

struct Exporter(Child, u16);

impl Exporter {
    fn start(args: &[&str]) -> Exporter {
        let web = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(BIN)
            .args(args)
            .args(["--web.listen-address", &format!("127.0.0.1:{web}")])
            .args(["--sample.interval", "200ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Exporter(child, web);
        let started = Instant::now();
        while !e.get("/healthz").starts_with("HTTP/1.1 200") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "exporter not up"
            );
            thread::sleep(Duration::from_millis(50));
        }
        e
    }
    fn get(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.1)) else {
            return String::new();
        };
        let _ = s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }
    /// (thread name, effective, permitted) of every thread, and the bounding set.
    fn caps(&self) -> (Vec<(String, CapSet, CapSet)>, CapSet) {
        let pid = self.0.id();
        let field = |status: &str, name: &str| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim();
            CapSet(u64::from_str_radix(hex, 16).unwrap())
        };
        let mut threads = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let t = t.unwrap().path();
            let status = std::fs::read_to_string(t.join("status")).unwrap();
            let comm = std::fs::read_to_string(t.join("comm")).unwrap();
            threads.push((
                comm.trim().to_string(),
                field(&status, "CapEff:"),
                field(&status, "CapPrm:"),
            ));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        (threads, field(&status, "CapBnd:"))
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn the_needs_follow_the_sources() {
    let all = Needs::of(true, true, true);
    assert_eq!(
        all.running,
        CapSet::default()
            .with(CAP_DAC_OVERRIDE)
            .with(CAP_SYS_PTRACE)
    );
    assert_eq!(
        all.startup,
        all.running.with(CAP_NET_ADMIN).with(CAP_SYS_ADMIN)
    );
    let dumps_only = Needs::of(false, false, false);
    assert_eq!(
        (dumps_only.startup, dumps_only.running),
        (CapSet(0), CapSet(0))
    );
    assert_eq!(Needs::of(true, false, false).running, CapSet(0));
}

#[test]
fn every_thread_keeps_only_what_the_running_sources_need() {
    assert!(running_as_root(), "run as root (scripts/test.sh does)");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let e = Exporter::start(&["--watch.port", &port]);
    let (threads, bounding) = e.caps();
    let running = CapSet::default()
        .with(CAP_DAC_OVERRIDE)
        .with(CAP_SYS_PTRACE);
    assert!(threads.len() >= 4, "{threads:?}");
    for (name, effective, permitted) in &threads {
        assert_eq!(*effective, running, "thread {name}");
        assert_eq!(*permitted, running, "thread {name}");
    }
    // Nothing beyond the start-up set can come back.
    assert_eq!(bounding, running.with(CAP_NET_ADMIN), "bounding set");
    // And every source runs with that.
    let metrics = e.get("/metrics");
    for source in ["sock_diag", "procfs", "destroy_events", "tracepoints"] {
        assert!(
            metrics.contains(&format!("drainwatch_source_up{{source=\"{source}\"}} 1.0")),
            "{source} not running:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("drainwatch_source_info{source=\"tracepoints\",precision=\"exact\"} 1.0")
    );
}

#[test]
fn without_tracepoints_no_capability_is_kept_and_netns_gives_up_sys_admin() {
    assert!(running_as_root(), "run as root (scripts/test.sh does)");
    let e = Exporter::start(&["--source.tracepoints=false", "--watch.port", "9"]);
    let (threads, bounding) = e.caps();
    for (name, effective, permitted) in &threads {
        assert_eq!(
            (*effective, *permitted),
            (CapSet(0), CapSet(0)),
            "thread {name}"
        );
    }
    assert_eq!(bounding, CapSet::default().with(CAP_NET_ADMIN));
    drop(e);

    // --netns needs CAP_SYS_ADMIN to enter, and no thread keeps it afterwards.
    let ns = format!("dwp-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "add", &ns]).status();
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(ns.clone());
    let e = Exporter::start(&["--netns", &ns, "--watch.port", "9"]);
    let (threads, bounding) = e.caps();
    for (name, effective, _) in &threads {
        assert!(
            !effective.has(CAP_SYS_ADMIN),
            "thread {name} kept sys_admin"
        );
        assert!(
            !effective.has(CAP_NET_ADMIN),
            "thread {name} kept net_admin"
        );
    }
    assert!(bounding.has(CAP_SYS_ADMIN));
    assert!(e
        .get("/metrics")
        .contains("drainwatch_source_up{source=\"sock_diag\"} 1.0"));
}
