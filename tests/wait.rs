//! `drainwatch wait` and `drainwatch snapshot` as a deploy pipeline runs them: the real binary
//! against loopback listeners of the test, with exit statuses, the line-oriented progress, the
//! JSON summary, and the terminal display (in tmux).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drainwatch");

/// `n` connections to `listener` that carried a request and its response, as (client, server).
fn connect(listener: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let addr = listener.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut b = [0u8; 18];
            s.read_exact(&mut b).unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            let mut b = [0u8; 27];
            c.read_exact(&mut b).unwrap();
            (c, s)
        })
        .collect()
}

fn wait(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("wait")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The `key=value` fields of one progress line.
fn fields(line: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = line;
    while let Some((key, tail)) = rest.split_once('=') {
        let key = key.trim().to_string();
        let (value, tail) = if let Some(quoted) = tail.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (
                quoted[..end].to_string(),
                quoted.get(end + 1..).unwrap_or(""),
            )
        } else {
            let end = tail.find(' ').unwrap_or(tail.len());
            (tail[..end].to_string(), &tail[end..])
        };
        out.insert(key, value);
        rest = tail;
    }
    out
}

#[test]
fn exits_0_within_three_samples_of_the_last_connection_leaving() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let pairs = connect(&listener, 5);
    // The connections close one every 400 ms, starting after wait has looked twice.
    let closer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        for (c, s) in pairs {
            drop(s);
            drop(c);
            thread::sleep(Duration::from_millis(400));
        }
        Instant::now()
    });
    let started = Instant::now();
    let o = wait(&[
        "--port",
        &port,
        "--quiet",
        "1s",
        "--hold-samples",
        "3",
        "--sample.interval",
        "500ms",
        "--timeout",
        "30s",
        "--progress",
        "lines",
    ]);
    let ended = Instant::now();
    let last_left = closer.join().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    // Three samples of 500 ms after the last close, plus the sample in flight.
    let after = ended.duration_since(last_left);
    assert!(
        after <= Duration::from_millis(2000),
        "exited {after:?} after the last close"
    );
    assert!(ended.duration_since(started) >= Duration::from_millis(3000));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["result"], "drained");
    assert_eq!(summary["ports"][0]["ready"], true);
    // Every progress line parses; active never rises and ends at 0; ready only at the end.
    let lines: Vec<_> = stderr.lines().map(fields).collect();
    assert!(lines.len() >= 6, "{stderr}");
    let active: Vec<u64> = lines.iter().map(|f| f["active"].parse().unwrap()).collect();
    assert_eq!(active[0], 5);
    assert!(active.windows(2).all(|w| w[1] <= w[0]), "{active:?}");
    assert_eq!(*active.last().unwrap(), 0);
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|f| f["ready"] == "false"));
    assert_eq!(lines.last().unwrap()["phase"], "drained");
}

#[test]
fn exits_1_at_the_timeout_saying_why() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let _held = connect(&listener, 3);
    let o = wait(&[
        "--port",
        &port,
        "--max-active",
        "1",
        "--quiet",
        "1s",
        "--sample.interval",
        "500ms",
        "--timeout",
        "3s",
        "--progress",
        "lines",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "timeout after 3s: port {port}: 3 active connections above threshold 1"
        )),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["result"], "timeout");
    assert_eq!(summary["ports"][0]["active"], 3);
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(wait(&[]).status.code(), Some(2), "--port is required");
    assert_eq!(
        wait(&["--port", "80", "--timeout", "soon"]).status.code(),
        Some(2)
    );
    assert_eq!(wait(&["--port", "0"]).status.code(), Some(2));
    assert_eq!(
        wait(&["--port", "80", "--progress", "fancy"]).status.code(),
        Some(2)
    );
}

#[test]
fn on_a_terminal_it_draws_the_progress_display() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let _held = connect(&listener, 2);
    let session = format!("dwt-wait-{}", std::process::id());
    let command = format!("{BIN} wait --port {port} --timeout 4s --quiet 1s; sleep 10");
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "20",
            &command,
        ])
        .status()
        .expect("tmux is installed (scripts/test.sh installs it)");
    assert!(status.success());
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _kill = Kill(session.clone());
    thread::sleep(Duration::from_millis(2500));
    let capture = |_: ()| {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-J", "-t", &session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let screen = capture(());
    assert!(screen.contains("drainwatch wait"), "{screen}");
    assert!(screen.contains(&format!("port {port}")), "{screen}");
    assert!(
        screen.contains("active 2 (websocket 0, other 2)"),
        "{screen}"
    );
    assert!(
        screen.contains("[------------------------------]"),
        "{screen}"
    );
    assert!(
        screen.contains("waiting: 2 active connections above threshold 0"),
        "{screen}"
    );
    // Redrawn in place: one header however many samples were drawn.
    assert_eq!(screen.matches("drainwatch wait ").count(), 1, "{screen}");
    thread::sleep(Duration::from_millis(2500));
    let screen = capture(());
    assert!(screen.contains("timeout after 4s"), "{screen}");
    assert!(screen.contains("\"result\":\"timeout\""), "{screen}");
}

#[test]
fn snapshot_lists_the_connections_as_a_table_and_as_json() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pairs = connect(&listener, 3);
    let run = |format: &str| {
        let o = Command::new(BIN)
            .args([
                "snapshot",
                "--watch.port",
                &port.to_string(),
                "--format",
                format,
                "--duration",
                "1s",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let table = run("table");
    assert!(table.starts_with("State"), "{table}");
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("established"))
            .count(),
        3,
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("listen")).count(),
        1,
        "{table}"
    );
    let doc: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    let conns = doc["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3);
    let peers: std::collections::BTreeSet<String> = pairs
        .iter()
        .map(|(c, _)| c.local_addr().unwrap().to_string())
        .collect();
    let seen: std::collections::BTreeSet<String> = conns
        .iter()
        .map(|c| c["peer"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, peers);
    assert!(conns
        .iter()
        .all(|c| c["class"] == "http" && c["state"] == "established"));
    assert!(conns.iter().all(|c| c["age_is_lower_bound"] == true));
}

/// A drainwatch exporter watching `port`, serving on `web`, stopped with SIGTERM when dropped.
struct Exporter(std::process::Child);

impl Exporter {
    fn start(port: u16, web: u16) -> Exporter {
        let child = Command::new(BIN)
            .args([
                "--watch.port",
                &port.to_string(),
                "--web.listen-address",
                &format!("127.0.0.1:{web}"),
                "--sample.interval",
                "500ms",
                "--source.tracepoints=false",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        // Ready once /healthz answers 200: after its first sample (before it, /drain knows
        // no port yet).
        let healthy = || -> bool {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", web)) else {
                return false;
            };
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
        };
        while !healthy() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "exporter not up"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Exporter(child)
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn remote_wait_asks_a_running_drainwatch_and_exits_0_when_drained() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let web = free_port();
    let _exporter = Exporter::start(port, web);
    let pairs = connect(&listener, 3);
    let closer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        drop(pairs);
        Instant::now()
    });
    let url = format!("http://127.0.0.1:{web}");
    let o = wait(&[
        "--url",
        &url,
        "--port",
        &port.to_string(),
        "--quiet",
        "1s",
        "--sample.interval",
        "500ms",
        "--timeout",
        "30s",
        "--progress",
        "lines",
    ]);
    let ended = Instant::now();
    let last_left = closer.join().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        ended.duration_since(last_left) <= Duration::from_millis(3000),
        "{stderr}"
    );
    let lines: Vec<_> = stderr.lines().map(fields).collect();
    assert!(lines.iter().any(|f| f["active"] == "3"), "{stderr}");
    assert_eq!(lines.last().unwrap()["ready"], "true");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["result"], "drained");
}

#[test]
fn remote_wait_that_cannot_ask_exits_3_not_1() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Nobody listens there.
    let closed = free_port();
    let o = wait(&[
        "--url",
        &format!("http://127.0.0.1:{closed}"),
        "--port",
        "80",
        "--timeout",
        "5s",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["result"], "unavailable");
    // A drainwatch that does not watch the port.
    let web = free_port();
    let _exporter = Exporter::start(port, web);
    let o = wait(&[
        "--url",
        &format!("http://127.0.0.1:{web}"),
        "--port",
        "9",
        "--timeout",
        "5s",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("HTTP 404: port not watched"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Not an http:// URL: bad usage.
    assert_eq!(
        wait(&["--url", "https://example.invalid", "--port", "80"])
            .status
            .code(),
        Some(2)
    );
}

/// A real Prometheus scraping the drainwatch at `web` every second, stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    fn start(web: u16) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("dw-wait-prom-{}-{web}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 900ms}}\n\
                 scrape_configs:\n  - job_name: drainwatch\n    static_configs:\n      - targets: [\"127.0.0.1:{web}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        while !p.get("/api/v1/query?query=up").contains("\"1\"]") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "prometheus did not scrape drainwatch"
            );
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn get(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_wait_judges_drainwatchs_series_like_the_exporter_does() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let web = free_port();
    let _exporter = Exporter::start(port, web);
    let pairs = connect(&listener, 2);
    let prom = Prometheus::start(web);
    let url = format!("http://127.0.0.1:{}", prom.port);
    let instance = format!("127.0.0.1:{web}");
    let args = |timeout: &str| -> Vec<String> {
        [
            "--prometheus",
            &url,
            "--instance",
            &instance,
            "--port",
            &port.to_string(),
            "--quiet",
            "2s",
            "--hold-samples",
            "2",
            "--sample.interval",
            "1s",
            "--timeout",
            timeout,
            "--progress",
            "lines",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: &[String]| wait(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // Two connections stay open: not drained, exit 1 at the timeout, saying why, and the
    // exporter's own /drain agrees.
    let o = run(&args("4s"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2 active connections above threshold 0"),
        "{stderr}"
    );
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("ready="))
        .map(fields)
        .collect();
    // (The first lines may see less history than the quiet window: Prometheus just started.)
    assert_eq!(lines.last().unwrap()["active"], "2", "{stderr}");
    let remote = wait(&[
        "--url",
        &format!("http://{instance}"),
        "--port",
        &port.to_string(),
        "--quiet",
        "2s",
        "--hold-samples",
        "2",
        "--timeout",
        "1s",
        "--progress",
        "lines",
    ]);
    assert_eq!(remote.status.code(), Some(1));

    // They close: drained, exit 0, within the quiet window, the hold samples and a scrape or
    // two of the close.
    let closed = Instant::now();
    drop(pairs);
    let o = run(&args("30s"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(closed.elapsed() < Duration::from_secs(15), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["result"], "drained");
    assert_eq!(summary["ports"][0]["active"], 0);

    // A drainwatch Prometheus has no series of: exit 3, not 1.
    let mut other = args("5s");
    other[3] = "127.0.0.1:1".to_string();
    let o = run(&other);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no drainwatch_listening series"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // No Prometheus there: exit 3.
    let mut nowhere = args("5s");
    nowhere[1] = format!("http://127.0.0.1:{}", free_port());
    let o = run(&nowhere);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));
}
