//! The pipeline tools: `drainwatch wait` (block until ports are drained, for deploy pipelines
//! and preStop hooks) and `drainwatch snapshot` (the connections of the watched ports as
//! evidence). Both sample the kernel in-process; no daemon is needed.

use std::collections::BTreeMap;
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
    let usage = |progress: &mut dyn Write, e: &dyn std::fmt::Display| {
        let _ = writeln!(progress, "drainwatch wait: {e}");
        2
    };
    let mut source = if let Some(url) = &args.url {
        match Remote::new(url, args.netns.clone()) {
            Ok(r) => Source::Remote(r),
            Err(e) => return usage(progress, &e),
        }
    } else if let Some(url) = &args.prometheus {
        match Remote::new(url, None) {
            Ok(http) => Source::Prometheus(PrometheusSource {
                http,
                instance: args.instance.clone().unwrap_or_default(),
                netns: args.netns.clone(),
                step: args.interval,
            }),
            Err(e) => return usage(progress, &e),
        }
    } else {
        if let Some(ns) = &args.netns {
            // Local mode: this (main) thread enters the namespace before any socket exists.
            let target = match crate::config::parse_netns(ns) {
                Ok(t) => t,
                Err(e) => return usage(progress, &e),
            };
            if let Err(e) = crate::source::netns::enter(&target.path) {
                let _ = writeln!(
                    progress,
                    "drainwatch wait: cannot enter network namespace {ns}: {e}"
                );
                return WAIT_UNAVAILABLE;
            }
        }
        Source::Local(Box::new(Pipeline::new(tool_config(
            &args.ports,
            args.interval,
        ))))
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

/// Where `wait` gets its verdicts: its own samples of this host's kernel, a running
/// drainwatch's `GET /drain`, or the series Prometheus scraped from one.
enum Source {
    Local(Box<Pipeline>),
    Remote(Remote),
    Prometheus(PrometheusSource),
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
            Source::Prometheus(prom) => ports
                .iter()
                .map(|&p| prom.verdict(p, t))
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
    /// `netns=` for a drainwatch watching several namespaces.
    netns: Option<String>,
    /// `Authorization` header value, from the URL's user information.
    authorization: Option<String>,
}

const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

impl Remote {
    fn new(url: &str, netns: Option<String>) -> Result<Self, RemoteError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| RemoteError::Scheme(redact(url)))?;
        let rest = rest.trim_end_matches('/');
        // http://user:password@host:port: basic authentication (a drainwatch with a web
        // config); the credentials never appear in messages.
        let (authorization, host) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => (
                Some(format!("Basic {}", base64_encode(userinfo.as_bytes()))),
                host.to_string(),
            ),
            None => (None, rest.to_string()),
        };
        if host.is_empty() || host.contains('/') {
            return Err(RemoteError::Scheme(redact(url)));
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
            netns,
            authorization,
        })
    }

    fn fail(&self, message: impl Into<String>) -> RemoteError {
        RemoteError::Unavailable {
            url: self.base.clone(),
            message: message.into(),
        }
    }

    /// GET `path`: the status and the body (at most 1 MiB).
    fn get(&self, path: &str, accept: &str) -> Result<(u16, String), RemoteError> {
        use std::io::Read;
        use std::net::ToSocketAddrs;
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
        let auth = self
            .authorization
            .as_ref()
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: {accept}\r\nUser-Agent: drainwatch-wait\r\n{auth}\r\n",
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
        Ok((status, body.to_string()))
    }

    fn verdict(&self, port: u16, t: &DrainThresholds) -> Result<Verdict, RemoteError> {
        let mut path = format!(
            "/drain?port={port}&max_active={}&max_websocket={}&quiet={}ms&hold_samples={}",
            t.max_active, t.max_websocket, t.quiet_ms, t.hold_samples
        );
        if let Some(ns) = &self.netns {
            path.push_str(&format!("&netns={}", url_encode(ns)));
        }
        let (status, body) = self.get(&path, "application/json")?;
        let body = body.as_str();
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

/// `url` with any user information replaced by `***`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes `s` for a query string (everything but RFC 3986's unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A PromQL string literal.
fn promql_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `drainwatch wait --prometheus`: the verdict of drainwatch's own drain model over the series
/// Prometheus scraped from the drainwatch of `instance`, one sample per `step`.
struct PrometheusSource {
    http: Remote,
    instance: String,
    netns: Option<String>,
    step: Duration,
}

impl PrometheusSource {
    fn selector(&self, port: u16, extra: &str) -> String {
        let mut s = format!("instance={},port=\"{port}\"", promql_string(&self.instance));
        if let Some(ns) = &self.netns {
            s.push_str(&format!(",netns={}", promql_string(ns)));
        }
        s.push_str(extra);
        s
    }

    /// `GET /api/v1/<endpoint>`, the `data.result` array.
    fn api(
        &self,
        endpoint: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<serde_json::Value>, RemoteError> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        let path = format!("/api/v1/{endpoint}?{}", query.join("&"));
        let (status, body) = self.http.get(&path, "application/json")?;
        let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            self.http.fail(format!(
                "{endpoint}: HTTP {status}, not Prometheus JSON: {e}"
            ))
        })?;
        if status != 200 || doc["status"] != "success" {
            return Err(self.http.fail(format!(
                "{endpoint}: HTTP {status}: {}",
                doc["error"].as_str().unwrap_or("no error given")
            )));
        }
        Ok(doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// One series over `[start, end]`: unix ms -> value (empty when Prometheus has none).
    fn range(&self, expr: &str, start: f64, end: f64) -> Result<BTreeMap<u64, f64>, RemoteError> {
        let step = self.step.as_secs_f64().max(0.001);
        let result = self.api(
            "query_range",
            &[
                ("query", expr.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{step}")),
            ],
        )?;
        let mut out = BTreeMap::new();
        if let Some(values) = result.first().and_then(|r| r["values"].as_array()) {
            for pair in values {
                let t = pair[0].as_f64();
                let v = pair[1].as_str().and_then(|v| v.parse::<f64>().ok());
                if let (Some(t), Some(v)) = (t, v) {
                    out.insert((t * 1000.0).round() as u64, v);
                }
            }
        }
        Ok(out)
    }

    fn verdict(&self, port: u16, t: &DrainThresholds) -> Result<Verdict, RemoteError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // Enough history for the quiet window, the hold samples and the 60 s stall and ETA
        // windows of the model.
        let step = self.step.as_secs_f64();
        let lookback = (t.quiet_ms as f64 / 1000.0 + (t.hold_samples as f64 + 2.0) * step)
            .max(crate::model::drain::STALL_WINDOW_MS as f64 / 1000.0 + 2.0 * step);
        let start = now - lookback;
        let sel = |extra: &str| self.selector(port, extra);
        let active_states = ",state=~\"established|close_wait\"";
        let listening = self.range(
            &format!("max(drainwatch_listening{{{}}})", sel("")),
            start,
            now,
        )?;
        if listening.is_empty() {
            return Err(self.http.fail(format!(
                "no drainwatch_listening series for {{{}}} in the last {lookback:.0}s",
                sel("")
            )));
        }
        // How old the last scrape is: a verdict from a drainwatch Prometheus no longer reaches
        // would be stale.
        let age = self.api(
            "query",
            &[(
                "query",
                format!(
                    "time() - max(timestamp(drainwatch_listening{{{}}}))",
                    sel("")
                ),
            )],
        )?;
        let age = age
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::INFINITY);
        let stale_after = (3.0 * step).max(15.0);
        if age > stale_after {
            return Err(self.http.fail(format!(
                "the last scrape of {} is {age:.0}s old (more than {stale_after:.0}s): Prometheus no longer reaches it",
                self.instance
            )));
        }
        let active = self.range(
            &format!(
                "sum(drainwatch_connections{{{}}})",
                sel(&format!(",class!=\"probe\"{active_states}"))
            ),
            start,
            now,
        )?;
        let websocket = self.range(
            &format!(
                "sum(drainwatch_connections{{{}}})",
                sel(&format!(",class=\"websocket\"{active_states}"))
            ),
            start,
            now,
        )?;
        let opened = self.range(
            &format!(
                "sum(drainwatch_connections_opened_total{{{}}})",
                sel(",class!=\"probe\"")
            ),
            start,
            now,
        )?;
        let oldest = self.range(
            &format!(
                "max(drainwatch_oldest_connection_age_seconds{{{}}})",
                sel(",class!=\"probe\"")
            ),
            start,
            now,
        )?;
        let mut drain = crate::model::drain::PortDrain::default();
        let mut last_opened: Option<f64> = None;
        for (&at_ms, &l) in &listening {
            let Some(&o) = opened.get(&at_ms) else {
                continue;
            };
            // The first point has no predecessor: its openings are unknown, not zero, so it
            // only sets the base.
            let new = match last_opened {
                Some(prev) if o >= prev => (o - prev).round() as u64,
                Some(_) => o.round() as u64, // counter reset: drainwatch restarted
                None => {
                    last_opened = Some(o);
                    continue;
                }
            };
            last_opened = Some(o);
            drain.push(crate::model::drain::DrainSample {
                at_ms,
                listening: l > 0.0,
                new,
                active: active.get(&at_ms).copied().unwrap_or(0.0).round() as u64,
                websocket: websocket.get(&at_ms).copied().unwrap_or(0.0).round() as u64,
                oldest_ms: (oldest.get(&at_ms).copied().unwrap_or(0.0) * 1000.0) as u64,
            });
        }
        Ok(drain.verdict(port, t))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_redaction() {
        assert_eq!(base64_encode(b"alice:s3cret"), "YWxpY2U6czNjcmV0");
        assert_eq!(base64_encode(b"a"), "YQ==");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b""), "");
        assert_eq!(redact("http://u:p@h:1"), "http://***@h:1");
        let r = Remote::new("http://u:p@10.0.0.5:9977/", None).unwrap();
        assert_eq!(r.base, "http://10.0.0.5:9977");
        assert_eq!(r.authorization.as_deref(), Some("Basic dTpw"));
        assert!(!Remote::new("https://u:p@h", None)
            .err()
            .unwrap()
            .to_string()
            .contains("u:p"));
    }
}
