//! `--web.config.file` and the server limits, on the real binary, with real TLS (a certificate
//! made by openssl for the test) and real curl: plain HTTP refused when TLS is configured, 401
//! without or with wrong credentials, 200 with them; a client sending a byte a second cut off by
//! the header read timeout while others are served; oversized requests refused; the connection
//! cap holding a new connection until a slot frees.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drainwatch");
const USER: &str = "prometheus";
const PASSWORD: &str = "s3cret-scrape";

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("dw-web-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for 127.0.0.1 (EC P-256, one day).
fn certificate(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=drainwatch-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Exporter(Child, u16);

impl Exporter {
    fn start(web_config: &Path, extra: &[&str], scheme: &str, ready: &[&str]) -> Exporter {
        let port = free_port();
        let child = Command::new(BIN)
            .arg("--web.config.file")
            .arg(web_config)
            .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
            .args(["--source.tracepoints=false", "--watch.port", "9"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Exporter(child, port);
        let started = Instant::now();
        loop {
            let out = curl(ready, &format!("{scheme}://{}", e.url("/healthz")));
            if String::from_utf8_lossy(&out.stdout).ends_with("200") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "exporter not up"
            );
            thread::sleep(Duration::from_millis(100));
        }
        e
    }
    fn url(&self, path: &str) -> String {
        format!("127.0.0.1:{}{path}", self.1)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl with `args` on `url` (scheme added by the caller in `args` order: the last argument),
/// printing the body then the status code.
fn curl(args: &[&str], url: &str) -> Output {
    Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl")
}

fn status(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text[text.len().saturating_sub(3)..].to_string()
}

fn web_config(dir: &Path, tls: bool) -> PathBuf {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let mut text = format!(
        "basic_auth_users:\n  {USER}: {hash}\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    );
    if tls {
        certificate(dir);
        text.push_str("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  min_version: TLS12\n");
    }
    let path = dir.join("web.yml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn tls_and_basic_auth_refuse_what_they_should_and_serve_the_rest() {
    let dir = Dir::new("tls");
    let config = web_config(&dir.0, true);
    let cacert = dir.0.join("cert.pem");
    let ca = cacert.to_str().unwrap();
    let creds = format!("{USER}:{PASSWORD}");
    let e = Exporter::start(
        &config,
        &[],
        "https",
        &["--cacert", ca, "-u", &creds, "-o", "/dev/null"],
    );
    let https = |p: &str| format!("https://{}", e.url(p));

    // Plain HTTP to a TLS listener gets no HTTP answer.
    let out = curl(
        &["-o", "/dev/null"],
        &format!("http://{}", e.url("/metrics")),
    );
    assert_eq!(status(&out), "000", "plain HTTP was answered");
    // No credentials, wrong ones, an unknown user: 401 with a challenge; every path.
    for path in ["/metrics", "/healthz", "/drain?port=9", "/"] {
        let out = curl(
            &["--cacert", ca, "-D", "-", "-o", "/dev/null"],
            &https(path),
        );
        assert_eq!(status(&out), "401", "{path}");
        assert!(String::from_utf8_lossy(&out.stdout)
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"drainwatch\""));
    }
    for bad in [
        format!("{USER}:wrong"),
        format!("nobody:{PASSWORD}"),
        format!("{USER}:"),
    ] {
        let out = curl(
            &["--cacert", ca, "-u", &bad, "-o", "/dev/null"],
            &https("/metrics"),
        );
        assert_eq!(status(&out), "401", "{bad}");
    }
    // The right ones: 200, the metrics, the configured header; twice (the second from the
    // verification cache).
    for _ in 0..2 {
        let out = curl(
            &["--cacert", ca, "-u", &creds, "-D", "-"],
            &https("/metrics"),
        );
        assert_eq!(status(&out), "200");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("drainwatch_build_info"));
        assert!(text
            .to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"));
    }
    // TLS 1.0 and 1.1 are refused.
    let out = curl(
        &[
            "--cacert",
            ca,
            "-u",
            &creds,
            "--tls-max",
            "1.1",
            "-o",
            "/dev/null",
        ],
        &https("/metrics"),
    );
    assert_eq!(status(&out), "000");
    // A client that opens a TLS connection and says nothing is cut off at the timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", e.1)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t = Instant::now();
    let n = idle.read(&mut [0u8; 64]).unwrap_or(0);
    assert_eq!(n, 0, "the server wrote to a silent client");
    assert!(
        t.elapsed() < Duration::from_secs(13),
        "held {:?}",
        t.elapsed()
    );
}

#[test]
fn slow_greedy_and_excess_clients_are_cut_off_while_others_are_served() {
    let dir = Dir::new("limits");
    let config = web_config(&dir.0, false);
    let creds = format!("{USER}:{PASSWORD}");
    let ok = ["-u", creds.as_str(), "-o", "/dev/null"];
    let e = Exporter::start(
        &config,
        &[
            "--web.read-header-timeout",
            "3s",
            "--web.max-connections",
            "3",
        ],
        "http",
        &ok,
    );
    let http = |p: &str| format!("http://{}", e.url(p));

    // One byte a second: cut off by the 3 s header timeout, long before its request is done;
    // meanwhile another client is served.
    let slow = thread::spawn({
        let port = e.1;
        move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic x\r\n\r\n";
            let t = Instant::now();
            for b in request {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_secs(1));
                // Cut off: the server closed (EOF, or a 408 then EOF).
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 256];
                match s.read(&mut buf) {
                    Ok(0) => return (t.elapsed(), true),
                    Ok(_) => return (t.elapsed(), true),
                    Err(_) => {}
                }
                s.set_nonblocking(false).unwrap();
            }
            (t.elapsed(), false)
        }
    });
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(&curl(&ok, &http("/metrics"))), "200");
    let (after, cut) = slow.join().unwrap();
    assert!(cut, "the slow client was never cut off");
    assert!(
        after < Duration::from_secs(6),
        "cut off only after {after:?}"
    );

    // Oversized requests: a body over 64 KiB (413), headers over 16 KiB (431).
    let body = dir.0.join("body");
    std::fs::write(&body, vec![b'x'; 70 * 1024]).unwrap();
    let data = format!("@{}", body.display());
    let post = [
        "-u",
        creds.as_str(),
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "--data-binary",
        &data,
    ];
    assert_eq!(status(&curl(&post, &http("/drain/start?port=9"))), "413");
    let big = format!("X-Big: {}", "y".repeat(20 * 1024));
    let out = curl(
        &["-u", &creds, "-o", "/dev/null", "-H", &big],
        &http("/metrics"),
    );
    assert_eq!(status(&out), "431");

    // Three connections held by silent clients take every slot: a fourth waits (curl gives up
    // after 1 s) until the timeout frees them; then it is served.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", e.1)).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(300));
    let waiting = curl(
        &["-u", &creds, "-o", "/dev/null", "--max-time", "1"],
        &http("/metrics"),
    );
    assert_eq!(status(&waiting), "000", "served beyond the connection cap");
    thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&curl(&ok, &http("/metrics"))), "200");
    drop(held);
}

#[test]
fn a_bad_web_config_stops_the_start_naming_the_line_and_key() {
    let dir = Dir::new("bad");
    let path = dir.0.join("web.yml");
    std::fs::write(&path, "basic_auth_users:\n  alice: plaintext\n").unwrap();
    let out = Command::new(BIN)
        .arg("--web.config.file")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2: basic_auth_users.alice: not a bcrypt hash",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn the_example_web_config_is_valid_and_its_password_is_the_documented_one() {
    let dir = Dir::new("example");
    certificate(&dir.0);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/web-config.example.yml"),
    )
    .unwrap()
    .replace("/etc/drainwatch/tls.crt", "cert.pem")
    .replace("/etc/drainwatch/tls.key", "key.pem");
    let c =
        drainwatch::exposition::webconfig::WebConfig::parse(&dir.0.join("web.yml"), &text).unwrap();
    assert!(c.tls.is_some());
    assert!(bcrypt::verify("change-me", &c.users["prometheus"]).unwrap());
}

#[test]
fn wait_url_without_credentials_is_unauthorised_exit_3_and_with_them_gets_verdicts() {
    let dir = Dir::new("wait");
    let config = web_config(&dir.0, false);
    let creds = format!("{USER}:{PASSWORD}");
    let e = Exporter::start(&config, &[], "http", &["-u", &creds, "-o", "/dev/null"]);
    let wait = |url: String| {
        Command::new(BIN)
            .args(["wait", "--url", &url, "--port", "9", "--quiet", "1s"])
            .args(["--timeout", "3s", "--progress", "lines"])
            .output()
            .unwrap()
    };
    let out = wait(format!("http://{}", e.url("")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    let out = wait(format!("http://{creds}@{}", e.url("")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{err}");
    assert!(err.contains("phase="), "{err}");
    assert!(!err.contains(PASSWORD), "the password was printed: {err}");
}
