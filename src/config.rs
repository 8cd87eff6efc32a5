//! Configuration: command-line flags and an optional TOML file, merged and validated in one
//! place ([`Config::from_cli`]). Flags win over the file; the file wins over built-in defaults.
//!
//! Every error names what was wrong: for the file, the path, the line and the key. `main` turns
//! any [`ConfigError`] into exit status 2, the status clap uses for bad flags.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::model::classify::{Network, Rule, Thresholds};
use crate::model::drain::DrainThresholds;

pub const DEFAULT_LISTEN_ADDRESS: &str = "0.0.0.0:9977";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_PORTS: usize = 32;
pub const MAX_CLASSES: usize = 16;

#[derive(Debug, Parser)]
#[command(
    name = "drainwatch",
    version,
    about = "Per-port TCP connection lifecycle exporter for draining backends",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file and exit (0 when valid, 2 when not).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Sample the kernel in-process, without serving, and print the result and timings.
    Sample(Box<SampleArgs>),
    /// Wait until ports are drained (for deploy pipelines and preStop hooks): exit 0 when
    /// drained, 1 at --timeout, 2 on bad usage. Samples the kernel itself; no daemon needed.
    Wait(Box<WaitArgs>),
    /// Print the watched ports' connections (state, class, age, idle, queues) as an ss-like
    /// table or JSON, as evidence before, during and after a drain.
    Snapshot(Box<SnapshotArgs>),
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Ask a running drainwatch instead of sampling this host's kernel: its base URL, e.g.
    /// http://10.0.0.5:9977 (GET /drain with the same thresholds). Exit 3 when it cannot be
    /// asked (unreachable, refused, not watching the port).
    #[arg(long = "url", value_name = "URL", conflicts_with = "prometheus")]
    pub url: Option<String>,
    /// Ask Prometheus instead, from the series it scraped from the drainwatch of `--instance`:
    /// its base URL, e.g. http://prometheus:9090. The verdict is computed by drainwatch's own
    /// drain model over those series, with this command's thresholds; `--sample.interval` is
    /// then the step of the series (set it to the scrape interval). Exit 3 when Prometheus
    /// cannot answer or has no such series.
    #[arg(long = "prometheus", value_name = "URL", requires = "instance")]
    pub prometheus: Option<String>,
    /// The `instance` label of the drainwatch to judge (with --prometheus).
    #[arg(long = "instance", value_name = "INSTANCE", requires = "prometheus")]
    pub instance: Option<String>,
    /// Network namespace: sample that one (local mode: NAME, PATH or pid:PID, needs
    /// CAP_SYS_ADMIN), or pick it in a drainwatch watching several (--url, --prometheus: the
    /// `netns` label).
    #[arg(long = "netns", value_name = "NETNS")]
    pub netns: Option<String>,
    /// Port to wait for (repeatable; every one must be drained).
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port, required = true)]
    pub ports: Vec<u16>,
    /// Active connections (every class but health probes) allowed when drained.
    #[arg(long = "max-active", value_name = "N", default_value_t = 0)]
    pub max_active: u64,
    /// WebSocket sessions allowed when drained.
    #[arg(long = "max-websocket", value_name = "N", default_value_t = 0)]
    pub max_websocket: u64,
    /// How long no new connection (probes excluded) may have arrived.
    #[arg(long = "quiet", value_name = "DURATION", default_value = "10s", value_parser = parse_threshold)]
    pub quiet: Duration,
    /// Consecutive samples within the thresholds.
    #[arg(long = "hold-samples", value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub hold_samples: u32,
    /// Give up after this long (exit 1); 0 waits forever.
    #[arg(long = "timeout", value_name = "DURATION", default_value = "0s", value_parser = parse_threshold)]
    pub timeout: Duration,
    /// Interval between two kernel samples.
    #[arg(long = "sample.interval", value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Progress display: a live view on a terminal, log lines otherwise.
    #[arg(long = "progress", default_value = "auto", value_parser = ["auto", "tty", "lines", "none"])]
    pub progress: String,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Local port to show (repeatable). Without any, every listening port.
    #[arg(long = "watch.port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Observe this long before printing (two samples at least), so that classes have
    /// evidence; ages are lower bounds from the first sample.
    #[arg(long = "duration", value_name = "DURATION", default_value = "2s", value_parser = parse_threshold)]
    pub duration: Duration,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Number of samples to take.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub iterations: u32,
    /// Output format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Optional TOML configuration file (see docs/configuration.md).
    #[arg(long = "config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Address to serve /metrics on [default: 0.0.0.0:9977].
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub listen_address: Option<SocketAddr>,
    /// Interval between two kernel samples, e.g. 1s, 500ms [default: 1s].
    #[arg(long = "sample.interval", value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Local port to watch (repeatable). Without any, every listening port is watched.
    #[arg(long = "watch.port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Cap on discovered ports when no port is configured [default: 32].
    #[arg(long = "watch.max-ports", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_ports: Option<u16>,
    /// Network namespace to watch instead of drainwatch's own (repeatable): a name under
    /// /run/netns, a path to a namespace file, or pid:PID. Series get a `netns` label when
    /// more than one is watched.
    #[arg(long = "netns", value_name = "NAME|PATH|pid:PID", value_parser = parse_netns)]
    pub netns: Vec<NetnsTarget>,
    /// Class of the connections of a port (repeatable), e.g. 8081=websocket.
    #[arg(long = "class.port", value_name = "PORT=CLASS", value_parser = parse_class_rule)]
    pub class_rules: Vec<(u16, String)>,
    /// Class of the connections from a peer network on a port (repeatable), e.g.
    /// 10.250.2.0/24@80=probe.
    #[arg(long = "class.peer", value_name = "CIDR@PORT=CLASS", value_parser = parse_peer_rule)]
    pub peer_rules: Vec<Rule>,
    /// Unsolicited server transmissions that make a connection `websocket` [default: 1].
    #[arg(long = "classify.push-episodes", value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub push_episodes: Option<u8>,
    /// Samples of server-only transmission after a response that make a stream [default: 5].
    #[arg(long = "classify.stream-samples", value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub stream_samples: Option<u8>,
    /// Idle time beyond which an open connection is no HTTP keep-alive [default: 80s].
    #[arg(long = "classify.http-idle-timeout", value_name = "DURATION", value_parser = parse_threshold)]
    pub http_idle_timeout: Option<Duration>,
    /// Age beyond which an open connection is no HTTP keep-alive [default: 1h].
    #[arg(long = "classify.http-max-lifetime", value_name = "DURATION", value_parser = parse_threshold)]
    pub http_max_lifetime: Option<Duration>,
    /// A connection closing within this time without payload is a probe [default: 1s].
    #[arg(long = "classify.probe-max-lifetime", value_name = "DURATION", value_parser = parse_threshold)]
    pub probe_max_lifetime: Option<Duration>,
    /// Apply the classification heuristics; false leaves rules only [default: true].
    #[arg(long = "classify.heuristics", value_name = "BOOL", action = clap::ArgAction::Set)]
    pub heuristics: Option<bool>,
    /// Payload bytes a probe may carry each way [default: 0].
    #[arg(long = "classify.probe-max-bytes", value_name = "BYTES")]
    pub probe_max_bytes: Option<u64>,
    /// Subscribe to sock_diag destroy events for exact counts [default: true].
    #[arg(long = "source.destroy-events", value_name = "BOOL", action = clap::ArgAction::Set)]
    pub destroy_events: Option<bool>,
    /// Read kernel tracepoints (ftrace instance) for per-port resets, timeouts and close
    /// reasons [default: true].
    #[arg(long = "source.tracepoints", value_name = "BOOL", action = clap::ArgAction::Set)]
    pub tracepoints: Option<bool>,
    /// Serve GET /api/v1/connections (lists peer addresses; off by default).
    #[arg(long = "web.enable-connections-api")]
    pub connections_api: bool,
    /// Root of the proc filesystem [default: /proc].
    #[arg(long = "path.procfs", value_name = "PATH")]
    pub procfs: Option<PathBuf>,
    /// Mount point of tracefs [default: /sys/kernel/tracing].
    #[arg(long = "path.tracefs", value_name = "PATH")]
    pub tracefs: Option<PathBuf>,
    /// Active connections (probes excluded) a drained port may keep [default: 0].
    #[arg(long = "drain.max-active", value_name = "N")]
    pub drain_max_active: Option<u64>,
    /// WebSocket sessions a drained port may keep [default: 0].
    #[arg(long = "drain.max-websocket", value_name = "N")]
    pub drain_max_websocket: Option<u64>,
    /// How long no new connection may have arrived on a drained port [default: 10s].
    #[arg(long = "drain.quiet", value_name = "DURATION", value_parser = parse_threshold)]
    pub drain_quiet: Option<Duration>,
    /// Consecutive samples within the thresholds before a port is drained [default: 3].
    #[arg(long = "drain.hold-samples", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub drain_hold_samples: Option<u32>,
    /// File holding the bearer token POST /drain/start requires; without one, marking drains
    /// is allowed only when --web.listen-address is a loopback address.
    #[arg(long = "web.drain-token-file", value_name = "FILE")]
    pub drain_token_file: Option<PathBuf>,
    /// TLS and basic authentication, in the Prometheus exporter-toolkit web config format
    /// (docs/security.md).
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Time a client has to send a request's headers (and an idle keep-alive connection to
    /// start its next request) [default: 10s].
    #[arg(long = "web.read-header-timeout", value_name = "DURATION", value_parser = parse_threshold)]
    pub read_header_timeout: Option<Duration>,
    /// Time one request may take [default: 30s].
    #[arg(long = "web.request-timeout", value_name = "DURATION", value_parser = parse_threshold)]
    pub request_timeout: Option<Duration>,
    /// Connections served at once; more wait in the accept queue [default: 256].
    #[arg(long = "web.max-connections", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: Option<u32>,
}

/// The validated configuration the program runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen_address: SocketAddr,
    pub interval: Duration,
    /// Empty: discover listening ports.
    pub ports: BTreeSet<u16>,
    pub max_ports: usize,
    /// Namespaces to watch; empty: drainwatch's own.
    pub netns: Vec<NetnsTarget>,
    /// Class rules, port rules and peer rules.
    pub class_rules: Vec<Rule>,
    pub thresholds: Thresholds,
    pub connections_api: bool,
    pub destroy_events: bool,
    pub tracepoints: bool,
    pub procfs: PathBuf,
    pub tracefs: PathBuf,
    pub drain: DrainThresholds,
    /// Bearer token for POST /drain/start (read from --web.drain-token-file).
    pub drain_token: Option<String>,
    /// The web config file (TLS, basic auth), validated.
    pub web_config_file: Option<PathBuf>,
    pub web_limits: crate::exposition::server::Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_address: DEFAULT_LISTEN_ADDRESS.parse().expect("valid default"),
            interval: DEFAULT_INTERVAL,
            ports: BTreeSet::new(),
            max_ports: DEFAULT_MAX_PORTS,
            netns: Vec::new(),
            class_rules: Vec::new(),
            thresholds: Thresholds::default(),
            connections_api: false,
            destroy_events: true,
            tracepoints: true,
            procfs: PathBuf::from("/proc"),
            tracefs: PathBuf::from("/sys/kernel/tracing"),
            drain: DrainThresholds::default(),
            drain_token: None,
            web_config_file: None,
            web_limits: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}: key `{key}`: {message}")]
    File {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The configuration file, as written. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    web: FileWeb,
    #[serde(default)]
    sample: FileSample,
    #[serde(default)]
    watch: FileWatch,
    #[serde(default)]
    path: FilePath,
    /// Spanned: a rule that repeats another's port and peers is reported at its own line.
    #[serde(default, rename = "class")]
    classes: Vec<toml::Spanned<FileClassRule>>,
    #[serde(default)]
    classify: FileClassify,
    #[serde(default)]
    drain: FileDrain,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDrain {
    max_active: Option<u64>,
    max_websocket: Option<u64>,
    #[serde(default, deserialize_with = "de_threshold")]
    quiet: Option<Duration>,
    hold_samples: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClassify {
    push_episodes: Option<u8>,
    stream_samples: Option<u8>,
    #[serde(default, deserialize_with = "de_threshold")]
    http_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_threshold")]
    http_max_lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "de_threshold")]
    probe_max_lifetime: Option<Duration>,
    probe_max_bytes: Option<u64>,
    heuristics: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWeb {
    listen_address: Option<SocketAddr>,
    enable_connections_api: Option<bool>,
    drain_token_file: Option<PathBuf>,
    config_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_threshold")]
    read_header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_threshold")]
    request_timeout: Option<Duration>,
    max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSample {
    #[serde(default, deserialize_with = "de_interval")]
    interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWatch {
    #[serde(default, deserialize_with = "de_ports")]
    ports: Vec<u16>,
    max_ports: Option<u16>,
    #[serde(default, deserialize_with = "de_netns")]
    netns: Vec<NetnsTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePath {
    procfs: Option<PathBuf>,
    tracefs: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClassRule {
    #[serde(deserialize_with = "de_port")]
    port: u16,
    #[serde(default, deserialize_with = "de_network")]
    peer: Option<Network>,
    #[serde(deserialize_with = "de_class_name")]
    class: String,
}

/// A network namespace to watch: where its namespace file is and what its series are labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsTarget {
    /// The `netns` label: the name, path or `pid:PID` as given.
    pub label: String,
    pub path: PathBuf,
}

/// Parses `NAME` (a namespace of `ip netns`, /run/netns/NAME), an absolute `PATH` to a
/// namespace file, or `pid:PID` (the namespace of that process, /proc/PID/ns/net).
pub fn parse_netns(s: &str) -> Result<NetnsTarget, String> {
    let path = if let Some(pid) = s.strip_prefix("pid:") {
        match pid.parse::<u32>() {
            Ok(n) if n > 0 => PathBuf::from(format!("/proc/{n}/ns/net")),
            _ => return Err(format!("{s:?}: pid:PID needs a process id")),
        }
    } else if s.starts_with('/') {
        PathBuf::from(s)
    } else if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && s != "."
        && s != ".."
    {
        Path::new("/run/netns").join(s)
    } else {
        return Err(format!(
            "{s:?} is not a namespace name (letters, digits, . _ -), an absolute path or pid:PID"
        ));
    };
    Ok(NetnsTarget {
        label: s.to_string(),
        path,
    })
}

fn de_netns<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<NetnsTarget>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_netns(s))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// Parses a port number, 1 to 65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a port number (1-65535)"))?;
    port_from(n)
}

fn port_from(n: u64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {n} is out of range (1-65535)")),
    }
}

/// Parses a sample interval such as `1s` or `500ms`: from 10ms to 1h.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (e.g. 1s, 500ms): {e}"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("interval {s:?} is out of range (10ms to 1h)"));
    }
    Ok(d)
}

/// Parses a class name: lowercase letters, digits and `_`, starting with a letter, at most 32.
pub fn parse_class_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "class {s:?} must be 1-32 characters of a-z, 0-9 and _, starting with a letter"
        ))
    }
}

fn parse_class_rule(s: &str) -> Result<(u16, String), String> {
    let (port, class) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PORT=CLASS"))?;
    Ok((parse_port(port)?, parse_class_name(class.trim())?))
}

/// Parses a classifier threshold duration: from 0 to 30 days.
pub fn parse_threshold(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (e.g. 75s, 1h): {e}"))?;
    if d > Duration::from_secs(30 * 86400) {
        return Err(format!("{s:?} is longer than 30 days"));
    }
    Ok(d)
}

fn parse_peer_rule(s: &str) -> Result<Rule, String> {
    let (target, class) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not CIDR@PORT=CLASS"))?;
    let (net, port) = target
        .rsplit_once('@')
        .ok_or_else(|| format!("{s:?} is not CIDR@PORT=CLASS"))?;
    Ok(Rule {
        port: parse_port(port)?,
        peer: Some(Network::parse(net)?),
        class: parse_class_name(class.trim())?,
    })
}

fn de_threshold<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_threshold(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_class_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    parse_class_name(&s).map_err(serde::de::Error::custom)
}

fn de_network<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Network>, D::Error> {
    let s = String::deserialize(d)?;
    Network::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_interval(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n)
        .map_err(|_| format!("port {n} is out of range (1-65535)"))
        .and_then(port_from)
        .map_err(serde::de::Error::custom)
}

fn de_ports<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let ns = Vec::<i64>::deserialize(d)?;
    ns.into_iter()
        .map(|n| {
            u64::try_from(n)
                .map_err(|_| format!("port {n} is out of range (1-65535)"))
                .and_then(port_from)
        })
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key a TOML error points at: a `key = value` on that line, or a `[table]` header.
fn key_at(text: &str, line: usize, message: &str) -> String {
    // serde names unknown and missing fields itself: "unknown field `x`".
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(key) = rest.split('`').next() {
                return if key.is_empty() { "(empty key)" } else { key }.to_string();
            }
        }
    }
    let text_line = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .trim();
    if let Some((key, _)) = text_line.split_once('=') {
        if !key.trim().is_empty() {
            return key.trim().to_string();
        }
    }
    let table = text_line.trim_matches(|c| c == '[' || c == ']').trim();
    // An empty name (`[]`, `= 1`) or a blank line: the line itself says most.
    match (table.is_empty(), text_line.is_empty()) {
        (false, _) => table.to_string(),
        (true, false) => text_line.to_string(),
        (true, true) => "(blank line)".to_string(),
    }
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => {
                let line = line_of(text, span.start);
                ConfigError::File {
                    path: shown.clone(),
                    line,
                    key: key_at(text, line, &message),
                    message,
                }
            }
            None => ConfigError::Read {
                path: shown.clone(),
                message,
            },
        }
    })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    file_from_text(path, &text)
}

/// Parses and checks a configuration file's text; `path` only names it in errors.
fn file_from_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let file = parse_file(path, text)?;
    let mut seen = BTreeSet::new();
    for spanned in &file.classes {
        let rule = spanned.get_ref();
        if !seen.insert((rule.port, rule.peer.map(|n| (n.addr, n.prefix)))) {
            let line = line_of(text, spanned.span().start);
            return Err(ConfigError::File {
                path: path.display().to_string(),
                line,
                key: "port".to_string(),
                message: format!(
                    "port {} has more than one class rule for the same peers",
                    rule.port
                ),
            });
        }
    }
    Ok(file)
}

impl Config {
    /// Validates a file without running anything (`drainwatch check-config`).
    pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
        Config::from_cli(&RunArgs {
            config_file: Some(path.to_path_buf()),
            ..RunArgs::default()
        })
    }

    /// Validates a configuration file's text as `check-config` would the file; `path` only
    /// names it in errors. Pure: reads nothing.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::merge(&RunArgs::default(), file_from_text(path, text)?)
    }

    /// Merges flags over the file (if any) over the defaults, and validates the result.
    pub fn from_cli(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(args, file)
    }

    fn merge(args: &RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(a) = args.listen_address.or(file.web.listen_address) {
            config.listen_address = a;
        }
        if let Some(i) = args.interval.or(file.sample.interval) {
            config.interval = i;
        }
        let ports = if args.ports.is_empty() {
            file.watch.ports
        } else {
            args.ports.clone()
        };
        config.ports = ports.into_iter().collect();
        if let Some(m) = args.max_ports.or(file.watch.max_ports) {
            if m == 0 {
                return Err(ConfigError::Invalid(
                    "watch.max-ports must be at least 1".to_string(),
                ));
            }
            config.max_ports = usize::from(m);
        }
        config.netns = if args.netns.is_empty() {
            file.watch.netns
        } else {
            args.netns.clone()
        };
        let mut labels = BTreeSet::new();
        for t in &config.netns {
            if !labels.insert(t.label.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "network namespace {:?} is given twice",
                    t.label
                )));
            }
        }
        if config.ports.len() > crate::source::request::MAX_FILTER_PORTS {
            return Err(ConfigError::Invalid(format!(
                "{} watched ports exceed the limit of {}",
                config.ports.len(),
                crate::source::request::MAX_FILTER_PORTS
            )));
        }
        for rule in file.classes.into_iter().map(toml::Spanned::into_inner) {
            config.class_rules.push(Rule {
                port: rule.port,
                peer: rule.peer,
                class: rule.class,
            });
        }
        for (port, class) in &args.class_rules {
            config
                .class_rules
                .retain(|r| !(r.port == *port && r.peer.is_none()));
            config.class_rules.push(Rule {
                port: *port,
                peer: None,
                class: class.clone(),
            });
        }
        config.class_rules.extend(args.peer_rules.iter().cloned());
        let classes: BTreeSet<&String> = config.class_rules.iter().map(|r| &r.class).collect();
        if classes.len() > MAX_CLASSES {
            return Err(ConfigError::Invalid(format!(
                "{} classes configured; at most {MAX_CLASSES} keep the label set bounded",
                classes.len()
            )));
        }
        let c = &file.classify;
        let t = &mut config.thresholds;
        let ms = |d: Duration| d.as_millis() as u64;
        if let Some(v) = args.push_episodes.or(c.push_episodes) {
            t.push_episodes = v.max(1);
        }
        if let Some(v) = args.stream_samples.or(c.stream_samples) {
            t.stream_samples = v.max(1);
        }
        if let Some(v) = args.http_idle_timeout.or(c.http_idle_timeout) {
            t.http_idle_timeout_ms = ms(v);
        }
        if let Some(v) = args.http_max_lifetime.or(c.http_max_lifetime) {
            t.http_max_lifetime_ms = ms(v);
        }
        if let Some(v) = args.probe_max_lifetime.or(c.probe_max_lifetime) {
            t.probe_max_lifetime_ms = ms(v);
        }
        if let Some(v) = args.probe_max_bytes.or(c.probe_max_bytes) {
            t.probe_max_bytes = v;
        }
        if let Some(v) = args.heuristics.or(c.heuristics) {
            t.heuristics = v;
        }
        if let Some(v) = args.destroy_events {
            config.destroy_events = v;
        }
        if let Some(v) = args.tracepoints {
            config.tracepoints = v;
        }
        config.connections_api =
            args.connections_api || file.web.enable_connections_api.unwrap_or(false);
        if let Some(p) = args.procfs.clone().or(file.path.procfs) {
            config.procfs = p;
        }
        if let Some(p) = args.tracefs.clone().or(file.path.tracefs) {
            config.tracefs = p;
        }
        let d = &mut config.drain;
        if let Some(v) = args.drain_max_active.or(file.drain.max_active) {
            d.max_active = v;
        }
        if let Some(v) = args.drain_max_websocket.or(file.drain.max_websocket) {
            d.max_websocket = v;
        }
        if let Some(v) = args.drain_quiet.or(file.drain.quiet) {
            d.quiet_ms = v.as_millis() as u64;
        }
        if let Some(v) = args.drain_hold_samples.or(file.drain.hold_samples) {
            if v == 0 {
                return Err(ConfigError::Invalid(
                    "drain hold_samples must be at least 1".into(),
                ));
            }
            d.hold_samples = v as usize;
        }
        if let Some(path) = args.drain_token_file.clone().or(file.web.drain_token_file) {
            let token = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let token = token.trim().to_string();
            if token.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "{}: the drain token must be at least 16 characters",
                    path.display()
                )));
            }
            config.drain_token = Some(token);
        }
        if let Some(path) = args.web_config_file.clone().or(file.web.config_file) {
            crate::exposition::webconfig::WebConfig::load(&path)
                .map_err(|e| ConfigError::Invalid(format!("web config: {e}")))?;
            config.web_config_file = Some(path);
        }
        let limits = &mut config.web_limits;
        if let Some(t) = args.read_header_timeout.or(file.web.read_header_timeout) {
            limits.read_header_timeout = t;
        }
        if let Some(t) = args.request_timeout.or(file.web.request_timeout) {
            limits.request_timeout = t;
        }
        if let Some(n) = args.max_connections.or(file.web.max_connections) {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "web.max-connections must be at least 1".into(),
                ));
            }
            limits.max_connections = n as usize;
        }
        if limits.read_header_timeout.is_zero() || limits.request_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "web timeouts must be longer than 0s".into(),
            ));
        }
        Ok(config)
    }
}
