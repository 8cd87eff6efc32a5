//! The metric catalogue: encodes the last [`Published`] state with prometheus-client.
//!
//! Everything is encoded from one immutable snapshot of the model's output, so a scrape sees a
//! consistent sample and never touches the kernel. Names and labels are documented in
//! docs/metrics.md; a test checks that every name encoded here is documented there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::model::aggregate::{Aggregates, ClassAggregate, Histogram, OPEN_BOUNDS};
use crate::model::classify::ClassTable;
use crate::model::drain::{DrainThresholds, PortDrain, Verdict, PHASES};
use crate::model::resets::CLOSE_REASONS;
use crate::model::socket::GAUGE_STATES;
use crate::source::procfs::{HostCounters, ABORT_REASONS};

/// Bounds (seconds) of `drainwatch_sample_duration_seconds`.
pub const SAMPLE_DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Sources whose failures are counted in `drainwatch_source_errors_total{source}`.
pub const SOURCES: [&str; 4] = ["sock_diag", "procfs", "destroy_events", "tracepoints"];

/// The exporter's own health.
#[derive(Debug, Clone)]
pub struct SelfStats {
    pub sample_duration: Histogram,
    /// Wall-clock time of the last successful sample, seconds since the epoch (0 before one).
    pub last_sample_unix_seconds: f64,
    pub sampled_sockets: u64,
    pub tracked_connections: u64,
    /// Failures per source, in the order of [`SOURCES`].
    pub source_errors: [u64; SOURCES.len()],
    /// Whether the last attempt of each source succeeded, in the order of [`SOURCES`].
    pub source_up: [bool; SOURCES.len()],
    /// Destroy events are subscribed.
    pub events_subscribed: bool,
    /// Destroy events received (any port, any side).
    pub destroy_events: u64,
    /// Times the destroy event buffer overflowed (ENOBUFS).
    pub events_overflows: u64,
    /// Closes the dump found whose destroy event never came.
    pub events_missed: u64,
    /// Tracepoints run (resets, timeouts and close reasons are counted).
    pub tracepoints_running: bool,
    /// Tracepoint records read (the four events, any port, any namespace).
    pub trace_events: u64,
    /// Tracepoint records the kernel dropped (buffer full) or the reader could not keep.
    pub trace_lost: u64,
    /// Samples in which tracepoint records were lost.
    pub trace_overflows: u64,
    /// Tracepoint hits no connection of the watched namespace claimed.
    pub trace_unattributed: u64,
}

impl Default for SelfStats {
    fn default() -> Self {
        SelfStats {
            sample_duration: Histogram::new(&SAMPLE_DURATION_BUCKETS),
            last_sample_unix_seconds: 0.0,
            sampled_sockets: 0,
            tracked_connections: 0,
            source_errors: [0; SOURCES.len()],
            source_up: [false; SOURCES.len()],
            events_subscribed: false,
            destroy_events: 0,
            events_overflows: 0,
            events_missed: 0,
            tracepoints_running: false,
            trace_events: 0,
            trace_lost: 0,
            trace_overflows: 0,
            trace_unattributed: 0,
        }
    }
}

/// One open connection, as `GET /api/v1/connections` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnectionInfo {
    pub port: u16,
    pub peer: std::net::SocketAddr,
    pub state: &'static str,
    pub class: String,
    /// Why it has that class.
    pub reason: &'static str,
    /// Unsolicited server transmissions seen (server push evidence).
    pub server_pushes: u8,
    /// Samples of server-only transmission continuing a response (stream evidence).
    pub stream_samples: u8,
    pub age_seconds: f64,
    /// True when the connection predates drainwatch: its age is a lower bound.
    pub age_is_lower_bound: bool,
    pub idle_seconds: f64,
    pub retransmitting: bool,
}

/// Everything a scrape shows, published by the sampler after each sample.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Open connections, only when the connections API is enabled.
    pub connections: Option<Arc<Vec<ConnectionInfo>>>,
    pub aggregates: Aggregates,
    pub classes: ClassTable,
    pub host: Option<HostCounters>,
    pub stats: SelfStats,
    /// Drain history of every watched port, and the thresholds the metrics use.
    pub drains: BTreeMap<u16, PortDrain>,
    pub drain_thresholds: DrainThresholds,
    /// `--sample.interval` (0: unknown), for the health check's staleness.
    pub sample_interval_ms: u64,
    pub version: &'static str,
    pub revision: &'static str,
}

/// Shared handle the sampler stores into and scrapes load from.
pub type SharedState = Arc<ArcSwap<Published>>;

/// Encodes the state published for each watched network namespace: `(netns label, state)`,
/// the label `None` when a single namespace is watched.
#[derive(Debug)]
struct PublishedCollector(Vec<(Option<String>, SharedState)>);

/// A registry that encodes whatever is published in `state` at scrape time.
pub fn registry(state: SharedState) -> Registry {
    scoped_registry(vec![(None, state)])
}

/// A registry over several namespaces' states, their series told apart by a `netns` label.
pub fn scoped_registry(scopes: Vec<(Option<String>, SharedState)>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PublishedCollector(scopes)));
    registry
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn family<'a>(
    enc: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, None, kind)
}

// Series without labels are encoded without a family, so that no empty `{}` is written.

fn gauge(m: &mut MetricEncoder, labels: &Labels, v: f64) -> std::fmt::Result {
    if labels.is_empty() {
        return m.encode_gauge(&v);
    }
    m.encode_family(labels)?.encode_gauge(&v)
}

fn counter(m: &mut MetricEncoder, labels: &Labels, v: u64) -> std::fmt::Result {
    if labels.is_empty() {
        return m.encode_counter::<NoLabelSet, _, u64>(&v, None);
    }
    m.encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn histogram(m: &mut MetricEncoder, labels: &Labels, h: &Histogram) -> std::fmt::Result {
    if labels.is_empty() {
        return m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets(), None);
    }
    m.encode_family(labels)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets(), None)
}

impl Collector for PublishedCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let loaded: Vec<_> = self
            .0
            .iter()
            .map(|(ns, s)| (ns.as_deref(), s.load()))
            .collect();
        let scopes: Vec<(Option<&str>, &Published)> =
            loaded.iter().map(|(ns, p)| (*ns, &***p)).collect();
        encode_scopes(&scopes, &mut enc)
    }
}

/// One watched network namespace's published state, as the encoder walks it.
struct View<'a> {
    /// The `netns` label, only when several namespaces are watched.
    netns: Option<&'a str>,
    p: &'a Published,
    ports: &'a BTreeMap<u16, String>,
    /// (port label, class label, aggregate) for every {port, class}.
    classes: Vec<(&'a str, &'a str, &'a ClassAggregate)>,
    /// (port label, history, verdict at the configured thresholds) for every port.
    verdicts: Vec<(&'a str, &'a PortDrain, Verdict)>,
}

impl<'a> View<'a> {
    fn new(netns: Option<&'a str>, p: &'a Published, ports: &'a BTreeMap<u16, String>) -> Self {
        let classes = p
            .aggregates
            .ports
            .iter()
            .flat_map(|(port, pa)| pa.classes.iter().map(move |(class, ca)| (port, *class, ca)))
            .map(|(port, class, ca)| (ports[port].as_str(), p.classes.name(class), ca))
            .collect();
        let verdicts = p
            .drains
            .iter()
            .filter_map(|(port, d)| {
                Some((
                    ports.get(port)?.as_str(),
                    d,
                    d.verdict(*port, &p.drain_thresholds),
                ))
            })
            .collect();
        View {
            netns,
            p,
            ports,
            classes,
            verdicts,
        }
    }

    /// `rest`, preceded by the `netns` label when there is one.
    fn l(&self, rest: &[(&'static str, &'a str)]) -> Labels<'a> {
        let mut labels = Vec::with_capacity(rest.len() + 1);
        if let Some(ns) = self.netns {
            labels.push(("netns", ns));
        }
        labels.extend_from_slice(rest);
        labels
    }

    fn port(&self, port: &u16) -> &'a str {
        self.ports[port].as_str()
    }
}

/// Encodes every scope's series, family by family: a family holds the series of every watched
/// namespace (told apart by `netns` when there are several), and a family shown only when a
/// source runs (tracepoints) or a drain was marked appears if any namespace has it.
fn encode_scopes(
    scopes: &[(Option<&str>, &Published)],
    enc: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let port_labels: Vec<BTreeMap<u16, String>> = scopes
        .iter()
        .map(|(_, p)| {
            p.aggregates
                .ports
                .keys()
                .map(|&k| (k, k.to_string()))
                .collect()
        })
        .collect();
    let views: Vec<View> = scopes
        .iter()
        .zip(&port_labels)
        .map(|(&(netns, p), ports)| View::new(netns, p, ports))
        .collect();
    let Some(first) = views.first() else {
        return Ok(());
    };

    let mut m = family(
        enc,
        "drainwatch_connections",
        "Inbound sockets of the watched port per TCP state in the last sample.",
        MetricType::Gauge,
    )?;
    for v in &views {
        for (port, class, ca) in &v.classes {
            for (state, n) in GAUGE_STATES.iter().zip(ca.states) {
                gauge(
                    &mut m,
                    &v.l(&[("port", port), ("class", class), ("state", state)]),
                    n as f64,
                )?;
            }
        }
    }

    let mut m = family(
        enc,
        "drainwatch_connections_opened",
        "Inbound connections observed opening (first sighting, or a TIME_WAIT socket never seen open).",
        MetricType::Counter,
    )?;
    for v in &views {
        for (port, class, ca) in &v.classes {
            counter(
                &mut m,
                &v.l(&[("port", port), ("class", class)]),
                ca.opened_total,
            )?;
        }
    }

    let mut m = family(
        enc,
        "drainwatch_connections_closed",
        "Inbound connections observed closing, by how they ended: fin, reset, timeout, or unknown without tracepoints.",
        MetricType::Counter,
    )?;
    for v in &views {
        for (port, class, ca) in &v.classes {
            for (reason, n) in CLOSE_REASONS.iter().zip(ca.closed_by_reason) {
                counter(
                    &mut m,
                    &v.l(&[("port", port), ("class", class), ("reason", reason)]),
                    n,
                )?;
            }
        }
    }

    let traced: Vec<&View> = views
        .iter()
        .filter(|v| v.p.stats.tracepoints_running)
        .collect();
    if !traced.is_empty() {
        let mut m = family(
            enc,
            "drainwatch_resets",
            "RST segments sent and received on the watched port's inbound connections, with the kernel's reason for those sent.",
            MetricType::Counter,
        )?;
        for v in &traced {
            for (port, pa) in &v.p.aggregates.ports {
                for ((direction, reason), n) in &pa.resets {
                    counter(
                        &mut m,
                        &v.l(&[
                            ("port", v.port(port)),
                            ("direction", direction.label()),
                            ("reason", reason),
                        ]),
                        *n,
                    )?;
                }
            }
        }
        let mut m = family(
            enc,
            "drainwatch_connection_timeouts",
            "Inbound connections the kernel gave up on (ETIMEDOUT: retransmissions, keepalive or zero-window probes unanswered).",
            MetricType::Counter,
        )?;
        for v in &traced {
            for (port, class, ca) in &v.classes {
                counter(
                    &mut m,
                    &v.l(&[("port", port), ("class", class)]),
                    ca.timeouts_total,
                )?;
            }
        }
    }

    let mut m = family(
        enc,
        "drainwatch_connection_duration_seconds",
        "Lifetime of closed connections whose opening was observed (first sighting to close).",
        MetricType::Histogram,
    )?;
    for v in &views {
        for (port, class, ca) in &v.classes {
            histogram(
                &mut m,
                &v.l(&[("port", port), ("class", class)]),
                &ca.lifetime,
            )?;
        }
    }

    let bounds: Vec<String> = OPEN_BOUNDS.iter().map(|b| b.to_string()).collect();
    let mut m = family(
        enc,
        "drainwatch_open_connections_by_age",
        "Open connections at least older_than seconds old (a lower bound for connections open before drainwatch started).",
        MetricType::Gauge,
    )?;
    for v in &views {
        for (port, class, ca) in &v.classes {
            for (bound, n) in bounds.iter().zip(ca.age_over) {
                gauge(
                    &mut m,
                    &v.l(&[("port", port), ("class", class), ("older_than", bound)]),
                    n as f64,
                )?;
            }
        }
    }

    let mut m = family(
        enc,
        "drainwatch_open_connections_by_idle",
        "Open connections with no data sent or received for at least idle_over seconds.",
        MetricType::Gauge,
    )?;
    for v in &views {
        for (port, class, ca) in &v.classes {
            for (bound, n) in bounds.iter().zip(ca.idle_over) {
                gauge(
                    &mut m,
                    &v.l(&[("port", port), ("class", class), ("idle_over", bound)]),
                    n as f64,
                )?;
            }
        }
    }

    type ClassValue = fn(&ClassAggregate) -> f64;
    let per_class: [(&str, &str, ClassValue); 2] = [
        (
            "drainwatch_oldest_connection_age_seconds",
            "Age of the oldest open connection (0 when none is open).",
            |ca| ca.oldest_age_seconds,
        ),
        (
            "drainwatch_retransmitting_connections",
            "Open connections whose retransmission timer fired and whose data is still unacknowledged.",
            |ca| ca.retransmitting as f64,
        ),
    ];
    for (name, help, value) in per_class {
        let mut m = family(enc, name, help, MetricType::Gauge)?;
        for v in &views {
            for (port, class, ca) in &v.classes {
                gauge(&mut m, &v.l(&[("port", port), ("class", class)]), value(ca))?;
            }
        }
    }

    type PortValue = fn(&crate::model::aggregate::PortAggregate) -> f64;
    let per_port: [(&str, &str, PortValue); 3] = [
        (
            "drainwatch_listening",
            "1 while a socket listens on the port.",
            |pa| f64::from(u8::from(pa.listening)),
        ),
        (
            "drainwatch_listen_queue_length",
            "Connections waiting in the port's accept queues.",
            |pa| pa.listen_queue_length as f64,
        ),
        (
            "drainwatch_listen_queue_limit",
            "Accept backlog of the port's listeners (summed over listeners).",
            |pa| pa.listen_queue_limit as f64,
        ),
    ];
    for (name, help, value) in per_port {
        let mut m = family(enc, name, help, MetricType::Gauge)?;
        for v in &views {
            for (port, pa) in &v.p.aggregates.ports {
                gauge(&mut m, &v.l(&[("port", v.port(port))]), value(pa))?;
            }
        }
    }

    let mut m = family(
        enc,
        "drainwatch_connections_upgraded",
        "Connections that moved from http to websocket once evidence appeared (they keep their opening's class in opened_total).",
        MetricType::Counter,
    )?;
    for v in &views {
        for (port, pa) in &v.p.aggregates.ports {
            counter(&mut m, &v.l(&[("port", v.port(port))]), pa.upgraded_total)?;
        }
    }

    let mut m = family(
        enc,
        "drainwatch_drain_phase",
        "1 for the port's drain phase (serving, draining, drained, stopped), 0 for the others.",
        MetricType::Gauge,
    )?;
    for v in &views {
        for (port, _, verdict) in &v.verdicts {
            for phase in PHASES {
                gauge(
                    &mut m,
                    &v.l(&[("port", port), ("phase", phase)]),
                    f64::from(u8::from(verdict.phase == phase)),
                )?;
            }
        }
    }
    type VerdictValue = fn(&Verdict) -> Option<f64>;
    let drain_gauges: [(&str, &str, VerdictValue); 3] = [
        (
            "drainwatch_drain_ready",
            "1 when the port is safe to remove: no new connection for the quiet window and active connections within the thresholds for the hold samples.",
            |v| Some(f64::from(u8::from(v.ready))),
        ),
        (
            "drainwatch_drain_stalled",
            "1 when the active connections above the thresholds did not decrease over the last 60 s of a drain.",
            |v| Some(f64::from(u8::from(v.stalled))),
        ),
        (
            "drainwatch_drain_eta_seconds",
            "Seconds until the active connections reach the thresholds at the rate of the last 60 s; 0 within them, absent while they do not decrease.",
            |v| v.eta_seconds,
        ),
    ];
    for (name, help, value) in drain_gauges {
        let mut m = family(enc, name, help, MetricType::Gauge)?;
        for v in &views {
            for (port, _, verdict) in &v.verdicts {
                if let Some(x) = value(verdict) {
                    gauge(&mut m, &v.l(&[("port", port)]), x)?;
                }
            }
        }
    }
    let marked = |v: &View| v.verdicts.iter().any(|(_, d, _)| d.mark.is_some());
    if views.iter().any(marked) {
        let mut m = family(
            enc,
            "drainwatch_drain_started_timestamp_seconds",
            "When a drain of the port was marked (POST /drain/start), seconds since the Unix epoch.",
            MetricType::Gauge,
        )?;
        for v in &views {
            for (port, d, _) in &v.verdicts {
                if let Some(mark) = &d.mark {
                    gauge(
                        &mut m,
                        &v.l(&[("port", port)]),
                        mark.unix_ms as f64 / 1000.0,
                    )?;
                }
            }
        }
        let mut m = family(
            enc,
            "drainwatch_connections_opened_after_drain",
            "Connections (health probes excluded) opened in the samples after the drain mark: how long the load balancer kept sending.",
            MetricType::Counter,
        )?;
        for v in &views {
            for (port, d, _) in &v.verdicts {
                if let Some(mark) = &d.mark {
                    counter(&mut m, &v.l(&[("port", port)]), mark.opened_after)?;
                }
            }
        }
    }
    let mut m = family(
        enc,
        "drainwatch_recommended_drain_timeout_seconds",
        "Advice: the 99th percentile of observed connection lifetimes (upper bound of its histogram bucket), the drain timeout that lets 99% of sessions end on their own.",
        MetricType::Gauge,
    )?;
    for v in &views {
        for (port, class, ca) in &v.classes {
            if let Some(q) = ca.lifetime.quantile_upper_bound(0.99) {
                gauge(&mut m, &v.l(&[("port", port), ("class", class)]), q)?;
            }
        }
    }

    let mut m = family(
        enc,
        "drainwatch_unwatched_listening_ports",
        "Listening ports not watched because --watch.max-ports was reached.",
        MetricType::Gauge,
    )?;
    for v in &views {
        gauge(
            &mut m,
            &v.l(&[]),
            v.p.aggregates.unwatched_listening_ports as f64,
        )?;
    }

    type HostValue = fn(&HostCounters) -> u64;
    let host: [(&str, &str, HostValue); 8] = [
        (
            "drainwatch_host_tcp_passive_opens",
            "Host-wide TCP passive opens (Tcp PassiveOpens).",
            |h| h.passive_opens,
        ),
        (
            "drainwatch_host_tcp_active_opens",
            "Host-wide TCP active opens (Tcp ActiveOpens).",
            |h| h.active_opens,
        ),
        (
            "drainwatch_host_tcp_resets_sent",
            "Host-wide TCP segments sent with RST (Tcp OutRsts).",
            |h| h.resets_sent,
        ),
        (
            "drainwatch_host_tcp_established_resets",
            "Host-wide resets of ESTABLISHED or CLOSE_WAIT connections (Tcp EstabResets).",
            |h| h.established_resets,
        ),
        (
            "drainwatch_host_tcp_attempt_fails",
            "Host-wide failed connection attempts (Tcp AttemptFails).",
            |h| h.attempt_fails,
        ),
        (
            "drainwatch_host_tcp_retransmit_timeouts",
            "Host-wide retransmission timeouts (TcpExt TCPTimeouts).",
            |h| h.retransmit_timeouts,
        ),
        (
            "drainwatch_host_tcp_listen_overflows",
            "Host-wide accept queue overflows (TcpExt ListenOverflows).",
            |h| h.listen_overflows,
        ),
        (
            "drainwatch_host_tcp_listen_drops",
            "Host-wide SYNs dropped at listeners (TcpExt ListenDrops).",
            |h| h.listen_drops,
        ),
    ];
    let hosts: Vec<(&View, &HostCounters)> = views
        .iter()
        .filter_map(|v| Some((v, v.p.host.as_ref()?)))
        .collect();
    if !hosts.is_empty() {
        for (name, help, value) in host {
            let mut m = family(enc, name, help, MetricType::Counter)?;
            for (v, h) in &hosts {
                counter(&mut m, &v.l(&[]), value(h))?;
            }
        }
        let mut m = family(
            enc,
            "drainwatch_host_tcp_aborts",
            "Host-wide connections aborted by the kernel, by reason (TcpExt TCPAbortOn*).",
            MetricType::Counter,
        )?;
        for (v, h) in &hosts {
            for ((_, reason), n) in ABORT_REASONS.iter().zip(h.aborts) {
                counter(&mut m, &v.l(&[("reason", reason)]), n)?;
            }
        }
    }

    let mut m = family(
        enc,
        "drainwatch_sample_duration_seconds",
        "Wall time of one sample: dumps, decoding, tracking and aggregation.",
        MetricType::Histogram,
    )?;
    for v in &views {
        histogram(&mut m, &v.l(&[]), &v.p.stats.sample_duration)?;
    }
    type StatsValue = fn(&SelfStats) -> f64;
    let selfg: [(&str, &str, StatsValue); 3] = [
        (
            "drainwatch_last_sample_timestamp_seconds",
            "Time of the last successful sample, seconds since the Unix epoch.",
            |s| s.last_sample_unix_seconds,
        ),
        (
            "drainwatch_sampled_sockets",
            "Sockets returned by the kernel in the last sample (after the port filter).",
            |s| s.sampled_sockets as f64,
        ),
        (
            "drainwatch_tracked_connections",
            "Connections the tracker follows (open ones and TIME_WAIT remnants).",
            |s| s.tracked_connections as f64,
        ),
    ];
    for (name, help, value) in selfg {
        let mut m = family(enc, name, help, MetricType::Gauge)?;
        for v in &views {
            gauge(&mut m, &v.l(&[]), value(&v.p.stats))?;
        }
    }
    let mut m = family(
        enc,
        "drainwatch_source_errors",
        "Failed reads per source; the last good data stays published.",
        MetricType::Counter,
    )?;
    for v in &views {
        for (source, n) in SOURCES.iter().zip(v.p.stats.source_errors) {
            counter(&mut m, &v.l(&[("source", source)]), n)?;
        }
    }
    let mut m = family(
        enc,
        "drainwatch_source_up",
        "1 when the last read of the source succeeded.",
        MetricType::Gauge,
    )?;
    for v in &views {
        for (source, up) in SOURCES.iter().zip(v.p.stats.source_up) {
            gauge(&mut m, &v.l(&[("source", source)]), f64::from(u8::from(up)))?;
        }
    }
    // (view, source, [received, overflows, lost]) for every event source running.
    let mut sources: Vec<(&View, &str, [u64; 3])> = Vec::new();
    for v in &views {
        let s = &v.p.stats;
        if s.events_subscribed {
            sources.push((
                v,
                "destroy_events",
                [s.destroy_events, s.events_overflows, s.events_missed],
            ));
        }
        if s.tracepoints_running {
            sources.push((
                v,
                "tracepoints",
                [s.trace_events, s.trace_overflows, s.trace_lost],
            ));
        }
    }
    if !sources.is_empty() {
        let events: [(&str, &str); 3] = [
            ("drainwatch_events_received", "Events received from the kernel, for every port, side and (tracepoints) namespace."),
            ("drainwatch_events_overflows", "Samples in which the source's buffer overflowed (destroy events: ENOBUFS, and the next dump resynchronised; tracepoints: records dropped)."),
            ("drainwatch_events_lost", "Events known lost: closes the dump found whose destroy event never came; tracepoint records the kernel dropped."),
        ];
        for (i, (name, help)) in events.iter().enumerate() {
            let mut m = family(enc, name, help, MetricType::Counter)?;
            for (v, source, values) in &sources {
                counter(&mut m, &v.l(&[("source", source)]), values[i])?;
            }
        }
    }
    if !traced.is_empty() {
        let mut m = family(
            enc,
            "drainwatch_trace_unattributed",
            "Tracepoint hits that joined no inbound connection of the watched namespace (other namespaces, outbound sockets), dropped.",
            MetricType::Counter,
        )?;
        for v in &traced {
            counter(&mut m, &v.l(&[]), v.p.stats.trace_unattributed)?;
        }
    }
    let mut m = family(
        enc,
        "drainwatch_source_info",
        "The data sources running and what their numbers are worth; always 1.",
        MetricType::Gauge,
    )?;
    for v in &views {
        let s = &v.p.stats;
        let events_precision = if s.events_subscribed {
            "exact"
        } else {
            "unavailable"
        };
        // Resets, timeouts and close reasons are exact with both event sources: the destroy
        // events name every connection, the tracepoints every reset and timeout.
        let trace_precision = match (s.tracepoints_running, s.events_subscribed) {
            (true, true) => "exact",
            (true, false) => "sampled",
            (false, _) => "unavailable",
        };
        for (source, precision) in [
            ("sock_diag", "per_sample"),
            ("destroy_events", events_precision),
            ("procfs", "host"),
            ("tracepoints", trace_precision),
        ] {
            gauge(
                &mut m,
                &v.l(&[("source", source), ("precision", precision)]),
                1.0,
            )?;
        }
    }
    // The build is the process's, not a namespace's: one series.
    let mut m = family(
        enc,
        "drainwatch_build_info",
        "Build of the running drainwatch; always 1.",
        MetricType::Gauge,
    )?;
    gauge(
        &mut m,
        &vec![("version", first.p.version), ("revision", first.p.revision)],
        1.0,
    )?;
    Ok(())
}

/// Encodes `registry` as OpenMetrics text.
pub fn encode_openmetrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4, for clients that do not accept
/// OpenMetrics: counter families take their `_total` name, `# UNIT` and `# EOF` go away.
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((tag, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                let _ = writeln!(out, "{tag}{name}_total {tail}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
