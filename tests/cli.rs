//! The binary as a user runs it: bad input exits 2 naming the problem; with no configuration
//! it serves every listening port within 2 s, promtool accepts a live scrape, SIGTERM stops it.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drainwatch");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drainwatch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unknown_flag_exits_2_naming_it() {
    let o = run(&["--watch.prot", "80"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--watch.prot"), "{}", stderr(&o));
}

#[test]
fn port_out_of_range_exits_2() {
    let o = run(&["--watch.port", "70000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("70000"), "{}", stderr(&o));
}

#[test]
fn bad_interval_exits_2() {
    let o = run(&["--sample.interval", "fast"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("\"fast\" is not a duration"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_file_errors_name_file_line_and_key() {
    let cases = [
        (
            "unknown.toml",
            "[watch]\nports = [80]\n\n[sample]\nintervall = \"1s\"\n",
            ":5: key `intervall`",
            "unknown field",
        ),
        (
            "port.toml",
            "[watch]\nports = [80, 70000]\n",
            ":2: key `ports`",
            "70000",
        ),
        (
            "interval.toml",
            "# comment\n[sample]\ninterval = \"fast\"\n",
            ":3: key `interval`",
            "\"fast\"",
        ),
        (
            "class.toml",
            "[[class]]\nport = 8081\nclass = \"Web Socket\"\n",
            ":3: key `class`",
            "a-z",
        ),
        (
            // Found by fuzzing: a comment after the value once made the line 0.
            "class-comment.toml",
            "[[class]]\nport = 80\nclass = \"pr.o;\"# probes\n",
            ":3: key `class`",
            "a-z",
        ),
        (
            "class-twice.toml",
            "[[class]]\nport = 80\nclass = \"web\"\n\n[[class]]\nport = 80\nclass = \"ws\"\n",
            ":5: key `port`",
            "more than one class rule",
        ),
    ];
    for (name, text, location, detail) in cases {
        let path = config_file(name, text);
        for args in [
            vec!["--config.file", path.to_str().unwrap()],
            vec!["check-config", path.to_str().unwrap()],
        ] {
            let o = run(&args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{name} {args:?}: {err}");
            assert!(
                err.contains(&format!("{}{location}", path.display())),
                "{name}: {err}"
            );
            assert!(err.contains(detail), "{name}: {err}");
        }
    }
}

#[test]
fn check_config_accepts_a_valid_file() {
    let path = config_file(
        "valid.toml",
        "[web]\nlisten_address = \"127.0.0.1:9977\"\n[sample]\ninterval = \"500ms\"\n[watch]\nports = [80, 8081]\n[[class]]\nport = 8081\nclass = \"websocket\"\n",
    );
    let o = run(&["check-config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

/// LISTEN ports of TCP sockets in this network namespace, from /proc/net/tcp{,6}.
fn listening_ports() -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[3] == "0A" {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// A drainwatch process stopped when dropped: SIGTERM (so it removes its tracefs instance),
/// SIGKILL if it has not exited within 5 s.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops a server with SIGKILL, as an OOM kill would.
fn kill9(mut server: Server) {
    let _ = server.0.kill();
    let _ = server.0.wait();
}

#[test]
fn default_run_serves_every_listening_port_within_two_seconds() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let before = listening_ports();
    let started = Instant::now();
    let mut server = Server(
        Command::new(BIN)
            .args(["--web.listen-address", &listen, "--watch.max-ports", "4096"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let body = loop {
        if let Some(body) = http_get(port, "/metrics") {
            if body.contains("drainwatch_listening{") {
                break body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no sample within 2 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = listening_ports();
    for p in before.intersection(&after).chain(std::iter::once(&port)) {
        assert!(
            body.contains(&format!("drainwatch_listening{{port=\"{p}\"}} 1")),
            "port {p} missing from /metrics"
        );
    }

    // promtool lints a live scrape.
    common::promtool_check_metrics(&body);

    // SIGTERM: graceful shutdown, exit 0.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failing_source_is_counted_and_the_exporter_keeps_serving() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(BIN)
            .args([
                "--web.listen-address",
                &listen,
                "--watch.port",
                &port.to_string(),
                "--path.procfs",
                "/nonexistent-proc",
                "--sample.interval",
                "100ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let value = |body: &str, series: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
    };
    loop {
        if let Some(body) = http_get(port, "/metrics") {
            let errors = value(&body, r#"drainwatch_source_errors_total{source="procfs"}"#);
            if errors.is_some_and(|e| e >= 3.0) {
                assert_eq!(
                    value(&body, r#"drainwatch_source_up{source="procfs"}"#),
                    Some(0.0)
                );
                assert_eq!(
                    value(&body, r#"drainwatch_source_up{source="sock_diag"}"#),
                    Some(1.0)
                );
                assert_eq!(
                    value(&body, &format!("drainwatch_listening{{port=\"{port}\"}}")),
                    Some(1.0)
                );
                assert!(
                    !body.contains("drainwatch_host_tcp_passive_opens_total"),
                    "no invented host counters"
                );
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "procfs errors not counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the exporter (as `user`, when given) and returns its first /metrics page that has
/// sampled `port`.
fn first_page(port: u16, user: Option<&str>, extra: &[&str]) -> String {
    let listen = format!("127.0.0.1:{port}");
    let mut command = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ]);
            c.arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    command
        .args([
            "--web.listen-address",
            &listen,
            "--watch.port",
            &port.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Server(command.spawn().expect("setpriv (util-linux) is installed"));
    let started = Instant::now();
    loop {
        if let Some(body) = http_get(port, "/metrics") {
            if body.contains(&format!("drainwatch_listening{{port=\"{port}\"}} 1")) {
                return body;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no sample");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn as_an_unprivileged_user_dumps_and_destroy_events_both_work() {
    // sock_diag dumps and destroy-event subscriptions are open to any user
    // (NL_CFG_F_NONROOT_RECV); only SO_RCVBUFFORCE needs CAP_NET_ADMIN.
    let body = first_page(free_port(), Some("65534"), &[]);
    assert!(body.contains("drainwatch_source_up{source=\"sock_diag\"} 1"));
    assert!(body.contains("drainwatch_source_up{source=\"destroy_events\"} 1"));
    assert!(
        body.contains("drainwatch_source_info{source=\"destroy_events\",precision=\"exact\"} 1")
    );
    // Tracepoints need root (tracefs): without them drainwatch says so and invents no reset,
    // timeout or close reason.
    assert!(body.contains("drainwatch_source_up{source=\"tracepoints\"} 0"));
    assert!(body.contains("drainwatch_source_errors_total{source=\"tracepoints\"} 1"));
    assert!(
        body.contains("drainwatch_source_info{source=\"tracepoints\",precision=\"unavailable\"} 1")
    );
    assert!(!body.contains("drainwatch_resets_total"));
    assert!(!body.contains("drainwatch_connection_timeouts_total"));
    assert!(!body.contains("reason=\"fin\"} 0") || !body.contains("reason=\"fin\"} 1"));
}

/// The tracefs instance of drainwatch process `pid`.
fn instance_of(pid: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/sys/kernel/tracing/instances/drainwatch-{pid}"))
}

#[test]
fn as_root_tracepoints_run_in_an_instance_of_their_own_removed_at_exit() {
    let spawn = |port: u16| {
        let child = Command::new(BIN)
            .args([
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
                "--watch.port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::wait_for("no sample", Duration::from_secs(5), || {
            http_get(port, "/metrics").is_some_and(|b| b.contains("drainwatch_listening{"))
        });
        Server(child)
    };
    // Stopped with SIGTERM: the instance goes with the process.
    let port = free_port();
    let server = spawn(port);
    let pid = server.0.id();
    let body = http_get(port, "/metrics").unwrap();
    assert!(body.contains("drainwatch_source_up{source=\"tracepoints\"} 1"));
    assert!(body.contains("drainwatch_source_info{source=\"tracepoints\",precision=\"exact\"} 1"));
    assert!(body.contains(&format!(
        "drainwatch_resets_total{{port=\"{port}\",direction=\"received\",reason=\"none\"}} 0"
    )));
    assert!(instance_of(pid).is_dir(), "no instance while it runs");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    common::wait_for(
        "instance left behind after SIGTERM",
        Duration::from_secs(5),
        || !instance_of(pid).exists(),
    );
    drop(server);

    // Killed with SIGKILL: the instance stays until the next drainwatch starts.
    let killed = spawn(free_port());
    let pid = killed.0.id();
    kill9(killed);
    assert!(instance_of(pid).is_dir());
    let _next = spawn(free_port());
    assert!(
        !instance_of(pid).exists(),
        "stale instance not removed at start"
    );
}

#[test]
fn without_destroy_events_it_counts_from_dumps_and_says_so() {
    let body = first_page(free_port(), None, &["--source.destroy-events=false"]);
    assert!(body
        .contains("drainwatch_source_info{source=\"destroy_events\",precision=\"unavailable\"} 1"));
    assert!(!body.contains("drainwatch_events_received_total{source=\"destroy_events\"}"));
}
