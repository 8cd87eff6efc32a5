//! The pipeline tools: `drainwatch wait` (block until ports are drained, for deploy pipelines
//! and preStop hooks) and `drainwatch snapshot` (the connections of the watched ports as
//! evidence). Both sample the kernel in-process; no daemon is needed.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::app::Pipeline;
use crate::config::{Config, SnapshotArgs, WaitArgs};
use crate::model::drain::{excess, DrainThresholds, Verdict};
use crate::model::socket::GAUGE_STATES;
use crate::model::tracker::idle_ms;

/// Exit status of `drainwatch wait`: every port drained.
pub const WAIT_DRAINED: u8 = 0;
/// Exit status of `drainwatch wait`: `--timeout` passed first.
pub const WAIT_TIMEOUT: u8 = 1;
/// Exit status of `drainwatch wait --url`: the drainwatch asked cannot answer (unreachable,
/// refused, not watching the port): distinct from "not drained in time".
pub const WAIT_UNAVAILABLE: u8 = 3;

fn tool_config(ports: &[u16], interval: Duration) -> Config {
    Config {
        ports: ports.iter().copied().collect(),
        interval,
        // Exact openings of short connections need destroy events; resets do not matter here.
        tracepoints: false,
        ..Config::default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Progress {
    Tty,
    Lines,
    None,
}

/// Runs `drainwatch wait`; progress goes to `progress` (stderr), the JSON summary to `out`.
pub fn wait(args: &WaitArgs, out: &mut dyn Write, progress: &mut dyn Write) -> u8 {
    let mode = match args.progress.as_str() {
        "tty" => Progress::Tty,
        "lines" => Progress::Lines,
        "none" => Progress::None,
        _ if std::io::stderr().is_terminal() => Progress::Tty,
        _ => Progress::Lines,
    };
    let t = DrainThresholds {
        max_active: args.max_active,
        max_websocket: args.max_websocket,
        quiet_ms: args.quiet.as_millis() as u64,
        hold_samples: args.hold_samples as usize,
    };
    let mut source = match &args.url {
        Some(url) => match Remote::new(url) {
            Ok(r) => Source::Remote(r),
            Err(e) => {
                let _ = writeln!(progress, "drainwatch wait: {e}");
                return 2;
            }
        },
        None => Source::Local(Box::new(Pipeline::new(tool_config(
            &args.ports,
            args.interval,
        )))),
    };
    let started = Instant::now();
    let mut next = started;
    let mut drawn_lines = 0usize;
    let mut peak: Vec<u64> = vec![0; args.ports.len()];
    let mut samples = 0u64;
    loop {
        let (ok, verdicts) = match source.verdicts(&args.ports, &t) {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(progress, "drainwatch wait: {e}");
                let summary = serde_json::json!({
                    "result": "unavailable",
                    "error": e.to_string(),
                    "elapsed_seconds": started.elapsed().as_secs_f64(),
                });
                let _ = writeln!(out, "{summary}");
                return WAIT_UNAVAILABLE;
            }
        };
        samples += 1;
        let elapsed = started.elapsed();
        for (i, v) in verdicts.iter().enumerate() {
            let e = excess_of(v, &t);
            peak[i] = peak[i].max(e);
        }
        let all_ready = ok && verdicts.iter().all(|v| v.ready);
        let timed_out = !args.timeout.is_zero() && elapsed >= args.timeout;
        match mode {
            Progress::Tty => {
                let text = render_tty(&verdicts, &peak, &t, elapsed, args.timeout, ok);
                if drawn_lines > 0 {
                    // Back to the top of the previous frame, and clear it.
                    let _ = write!(progress, "\x1b[{drawn_lines}F\x1b[J");
                }
                let _ = progress.write_all(text.as_bytes());
                drawn_lines = text.lines().count();
            }
            Progress::Lines => {
                for v in &verdicts {
                    let _ = writeln!(progress, "{}", render_line(v, elapsed));
                }
            }
            Progress::None => {}
        }
        let _ = progress.flush();
        if all_ready || timed_out {
            let result = if all_ready { "drained" } else { "timeout" };
            if !all_ready && mode != Progress::None {
                for v in verdicts.iter().filter(|v| !v.ready) {
                    let _ = writeln!(
                        progress,
                        "drainwatch wait: timeout after {:.0}s: port {}: {}",
                        elapsed.as_secs_f64(),
                        v.port,
                        v.reason
                    );
                }
            }
            let summary = serde_json::json!({
                "result": result,
                "elapsed_seconds": elapsed.as_secs_f64(),
                "samples": samples,
                "thresholds": {
                    "max_active": t.max_active,
                    "max_websocket": t.max_websocket,
                    "quiet_seconds": t.quiet_ms as f64 / 1000.0,
                    "hold_samples": t.hold_samples,
                },
                "ports": verdicts,
            });
            let _ = writeln!(out, "{summary}");
            return if all_ready {
                WAIT_DRAINED
            } else {
                WAIT_TIMEOUT
            };
        }
        next += args.interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        std::thread::sleep(next - now);
    }
}

/// Where `wait` gets its verdicts: its own samples of this host's kernel, or a running
/// drainwatch's `GET /drain`.
enum Source {
    Local(Box<Pipeline>),
    Remote(Remote),
}

impl Source {
    /// One verdict per port; `ok` is false when a local sample failed (the last good one holds).
    fn verdicts(
        &mut self,
        ports: &[u16],
        t: &DrainThresholds,
    ) -> Result<(bool, Vec<Verdict>), RemoteError> {
        match self {
            Source::Local(pipeline) => {
                let ok = pipeline.step();
                let v = ports
                    .iter()
                    .map(|&p| match pipeline.model().drains.ports.get(&p) {
                        Some(d) => d.verdict(p, t),
                        None => crate::model::drain::PortDrain::default().verdict(p, t),
                    })
                    .collect();
                Ok((ok, v))
            }
            Source::Remote(remote) => ports
                .iter()
                .map(|&p| remote.verdict(p, t))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| (true, v)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{url}: {message}")]
    Unavailable { url: String, message: String },
    #[error("{0}: only http:// URLs are supported")]
    Scheme(String),
}

/// A running drainwatch asked over HTTP (plain HTTP/1.0 over a std socket: one short request
/// a sample needs no client library).
struct Remote {
    base: String,
    host: String,
    addr: String,
}

const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

impl Remote {
    fn new(url: &str) -> Result<Self, RemoteError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| RemoteError::Scheme(url.to_string()))?;
        let host = rest.trim_end_matches('/').to_string();
        if host.is_empty() || host.contains('/') {
            return Err(RemoteError::Scheme(url.to_string()));
        }
        let addr = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.clone()
        } else {
            format!("{host}:80")
        };
        Ok(Remote {
            base: format!("http://{host}"),
            host,
            addr,
        })
    }

    fn fail(&self, message: impl Into<String>) -> RemoteError {
        RemoteError::Unavailable {
            url: self.base.clone(),
            message: message.into(),
        }
    }

    fn verdict(&self, port: u16, t: &DrainThresholds) -> Result<Verdict, RemoteError> {
        use std::io::Read;
        use std::net::ToSocketAddrs;
        let path = format!(
            "/drain?port={port}&max_active={}&max_websocket={}&quiet={}ms&hold_samples={}",
            t.max_active, t.max_websocket, t.quiet_ms, t.hold_samples
        );
        let addr = self
            .addr
            .to_socket_addrs()
            .map_err(|e| self.fail(format!("cannot resolve {}: {e}", self.addr)))?
            .next()
            .ok_or_else(|| self.fail(format!("{} resolves to nothing", self.addr)))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, REMOTE_TIMEOUT)
            .map_err(|e| self.fail(format!("cannot connect: {e}")))?;
        let _ = stream.set_read_timeout(Some(REMOTE_TIMEOUT));
        let _ = stream.set_write_timeout(Some(REMOTE_TIMEOUT));
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: drainwatch-wait\r\n\r\n",
            self.host
        )
        .map_err(|e| self.fail(format!("cannot send the request: {e}")))?;
        let mut reply = Vec::new();
        stream
            .take(1 << 20)
            .read_to_end(&mut reply)
            .map_err(|e| self.fail(format!("no answer: {e}")))?;
        let reply = String::from_utf8_lossy(&reply);
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .ok_or_else(|| self.fail("not an HTTP answer"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.fail("not an HTTP answer"))?;
        if status != 200 && status != 503 {
            let detail = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.trim().chars().take(200).collect());
            return Err(self.fail(format!("GET /drain?port={port}: HTTP {status}: {detail}")));
        }
        let doc: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| self.fail(format!("GET /drain?port={port}: bad JSON: {e}")))?;
        serde_json::from_value(doc["verdict"].clone())
            .map_err(|e| self.fail(format!("GET /drain?port={port}: bad verdict: {e}")))
    }
}

fn excess_of(v: &Verdict, t: &DrainThresholds) -> u64 {
    excess(v.active, v.websocket, t)
}

fn eta_text(v: &Verdict) -> String {
    match v.eta_seconds {
        Some(0.0) => "0s".into(),
        Some(s) => format!("{:.0}s", s.ceil()),
        None => "unknown".into(),
    }
}

/// One key=value line per port and sample (the non-terminal progress).
pub fn render_line(v: &Verdict, elapsed: Duration) -> String {
    format!(
        "elapsed={:.1} port={} phase={} ready={} active={} websocket={} new_in_quiet={} trend={} eta={} stalled={} reason={:?}",
        elapsed.as_secs_f64(),
        v.port,
        v.phase,
        v.ready,
        v.active,
        v.websocket,
        v.new_in_quiet_window,
        v.trend_per_second
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "unknown".into()),
        eta_text(v),
        v.stalled,
        v.reason
    )
}

fn render_tty(
    verdicts: &[Verdict],
    peak: &[u64],
    t: &DrainThresholds,
    elapsed: Duration,
    timeout: Duration,
    ok: bool,
) -> String {
    const WIDTH: usize = 30;
    let mut s = format!(
        "drainwatch wait  {:.0}s elapsed{}{}\n",
        elapsed.as_secs_f64(),
        if timeout.is_zero() {
            String::new()
        } else {
            format!(" / timeout {:.0}s", timeout.as_secs_f64())
        },
        if ok { "" } else { "  (last sample failed)" }
    );
    for (v, &peak) in verdicts.iter().zip(peak) {
        let e = excess_of(v, t);
        let done = if peak == 0 {
            1.0
        } else {
            (peak - e) as f64 / peak as f64
        };
        let filled = (done * WIDTH as f64).round() as usize;
        s += &format!(
            "port {:<5} {:<9} active {} (websocket {}, other {})  new {} in {:.0}s  trend {}/s  ETA {}{}\n",
            v.port,
            v.phase.to_uppercase(),
            v.active,
            v.websocket,
            v.active - v.websocket.min(v.active),
            v.new_in_quiet_window,
            t.quiet_ms as f64 / 1000.0,
            v.trend_per_second
                .map(|x| format!("{x:+.2}"))
                .unwrap_or_else(|| "?".into()),
            eta_text(v),
            if v.stalled { "  STALLED" } else { "" }
        );
        s += &format!(
            "  [{}{}] {:>3.0}%  {}\n",
            "#".repeat(filled.min(WIDTH)),
            "-".repeat(WIDTH - filled.min(WIDTH)),
            done * 100.0,
            if v.ready {
                "ready".to_string()
            } else {
                format!("waiting: {}", v.reason)
            }
        );
    }
    s
}

/// Runs `drainwatch snapshot`: samples for `--duration`, then prints the watched ports'
/// connections to `out`.
pub fn snapshot(args: &SnapshotArgs, out: &mut dyn Write) -> u8 {
    let interval = Duration::from_millis(500).min(args.duration.max(Duration::from_millis(10)));
    let mut pipeline = Pipeline::new(tool_config(&args.ports, interval));
    let started = Instant::now();
    let mut ok = pipeline.step();
    while started.elapsed() < args.duration {
        std::thread::sleep(interval);
        ok = pipeline.step();
    }
    if !ok {
        let _ = writeln!(out, "drainwatch snapshot: the last sample failed");
        return 1;
    }
    let snap = pipeline.snapshot();
    let model = pipeline.model();
    let now = snap.taken_at.monotonic_ms;
    let rows: Vec<serde_json::Value> = snap
        .sockets
        .iter()
        .zip(model.views())
        .filter(|(_, v)| v.counted)
        .map(|(r, v)| {
            let age_ms = v.first_seen_ms.map(|f| now.saturating_sub(f));
            serde_json::json!({
                "port": r.local_port,
                "peer": std::net::SocketAddr::new(r.remote_addr, r.remote_port).to_string(),
                "state": r.state.gauge_index().map(|i| GAUGE_STATES[i]).unwrap_or("other"),
                "class": model.classifier.table().name(v.class),
                "age_seconds": age_ms.map(|a| a as f64 / 1000.0),
                "age_is_lower_bound": v.preexisting,
                "idle_seconds": r.info.as_ref().zip(age_ms).map(|(i, a)| idle_ms(i, a, v.preexisting) as f64 / 1000.0),
                "recv_q": r.rx_queue,
                "send_q": r.tx_queue,
                "retransmitting": r.is_retransmitting(),
            })
        })
        .collect();
    let listeners: Vec<serde_json::Value> = snap
        .listeners
        .iter()
        .map(|l| serde_json::json!({"port": l.port, "recv_q": l.queue_length, "send_q": l.queue_limit}))
        .collect();
    if args.format == "json" {
        let doc = serde_json::json!({
            "taken_at_unix_seconds": snap.taken_at.unix_ms as f64 / 1000.0,
            "observed_seconds": started.elapsed().as_secs_f64(),
            "watched_ports": snap.watched_ports,
            "listeners": listeners,
            "connections": rows,
        });
        let _ = writeln!(out, "{doc}");
        return 0;
    }
    let _ = writeln!(
        out,
        "{:<11} {:>6} {:>6} {:>6}  {:<40} {:<12} {:>9} {:>8}",
        "State", "Recv-Q", "Send-Q", "Port", "Peer", "Class", "Age", "Idle"
    );
    for l in &listeners {
        let _ = writeln!(
            out,
            "{:<11} {:>6} {:>6} {:>6}  {:<40} {:<12} {:>9} {:>8}",
            "listen", l["recv_q"], l["send_q"], l["port"], "*", "", "", ""
        );
    }
    let secs = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.1}s"))
            .unwrap_or_else(|| "-".into())
    };
    for r in &rows {
        let age = secs(&r["age_seconds"]);
        let age = if r["age_is_lower_bound"] == true {
            format!(">={age}")
        } else {
            age
        };
        let _ = writeln!(
            out,
            "{:<11} {:>6} {:>6} {:>6}  {:<40} {:<12} {:>9} {:>8}",
            r["state"].as_str().unwrap_or(""),
            r["recv_q"],
            r["send_q"],
            r["port"],
            r["peer"].as_str().unwrap_or(""),
            r["class"].as_str().unwrap_or(""),
            age,
            secs(&r["idle_seconds"]),
        );
    }
    0
}
