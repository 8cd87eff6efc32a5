//! Scripted snapshot sequences: a readable TOML file -> [`Snapshot`]s, for tests and demos of the
//! pure model without a kernel. Pure: parses text, reads no clock.
//!
//! ```toml
//! watched = [8080]                      # ports watched in every sample unless a sample says
//! [[sample]]
//! at = "0s"                             # time of the sample (monotonic)
//! listeners = [{ port = 8080, queue_limit = 511 }]
//! sockets = [
//!   { cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", idle_ms = 200 },
//! ]
//! trace = [                             # tracepoint hits since the previous sample
//!   { event = "reset_received", cookie = 1, local = "10.250.0.2:8080", remote = "10.250.0.1:40001" },
//! ]
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::model::socket::{
    Listener, Snapshot, SocketRecord, TcpInfo, TcpState, Timer, TraceEvent,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[serde(default)]
    watched: Vec<u16>,
    /// Destroy events are subscribed (and complete) for the whole scenario.
    #[serde(default)]
    events: bool,
    /// Tracepoints run (and lose nothing) for the whole scenario.
    #[serde(default)]
    tracepoints: bool,
    /// Interface addresses of the watched namespace.
    #[serde(default)]
    local_addrs: Vec<IpAddr>,
    /// No other network namespace exists.
    #[serde(default)]
    sole_netns: bool,
    #[serde(default)]
    sample: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sample {
    at: String,
    watched: Option<Vec<u16>>,
    #[serde(default)]
    listeners: Vec<ScriptListener>,
    #[serde(default)]
    sockets: Vec<ScriptSocket>,
    /// Destroy events received since the previous sample (state is ignored: always closed).
    #[serde(default)]
    destroyed: Vec<ScriptSocket>,
    #[serde(default)]
    trace: Vec<ScriptTrace>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptTrace {
    /// reset_sent | reset_received | destroyed | timed_out
    event: String,
    #[serde(default)]
    skaddr: u64,
    #[serde(default)]
    cookie: u64,
    /// The sending socket's state (reset_sent); absent when no socket sent it.
    state: Option<String>,
    #[serde(default)]
    reason: String,
    local: SocketAddr,
    remote: SocketAddr,
}

fn script_trace(t: ScriptTrace, sample: usize) -> Result<TraceEvent, String> {
    let (local, remote, skaddr, cookie) = (t.local, t.remote, t.skaddr, t.cookie);
    Ok(match t.event.as_str() {
        "reset_sent" => TraceEvent::ResetSent {
            skaddr,
            state: match &t.state {
                None => None,
                Some(s) => Some(
                    state_from_label(s)
                        .ok_or_else(|| format!("sample {}: unknown state {s:?}", sample + 1))?,
                ),
            },
            // Scenarios are small and parsed once: their few reason names may live forever.
            reason: Box::leak(t.reason.into_boxed_str()),
            local,
            remote,
        },
        "reset_received" => TraceEvent::ResetReceived {
            skaddr,
            cookie,
            local,
            remote,
        },
        "destroyed" => TraceEvent::Destroyed {
            skaddr,
            cookie,
            local,
            remote,
        },
        "timed_out" => TraceEvent::TimedOut { local, remote },
        other => {
            return Err(format!(
                "sample {}: unknown trace event {other:?}",
                sample + 1
            ))
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptListener {
    port: u16,
    #[serde(default)]
    queue_length: u32,
    #[serde(default = "default_backlog")]
    queue_limit: u32,
}

fn default_backlog() -> u32 {
    511
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptSocket {
    cookie: u64,
    #[serde(default = "closed_state")]
    state: String,
    port: u16,
    peer: SocketAddr,
    #[serde(default)]
    idle_ms: u32,
    #[serde(default)]
    retransmits: u8,
    #[serde(default)]
    bytes_received: u64,
    #[serde(default)]
    bytes_acked: u64,
    /// Data segments received from the client (tcpi_data_segs_in).
    #[serde(default)]
    segs_in: u32,
    /// Data segments sent to the client (tcpi_data_segs_out).
    #[serde(default)]
    segs_out: u32,
    /// The kernel sent no tcp_info (a TIME_WAIT mini-socket, whatever its reported state).
    #[serde(default)]
    no_info: bool,
}

fn closed_state() -> String {
    "close".to_string()
}

fn state_from_label(s: &str) -> Option<TcpState> {
    use TcpState::*;
    Some(match s {
        "established" => Established,
        "syn_recv" => SynRecv,
        "fin_wait1" => FinWait1,
        "fin_wait2" => FinWait2,
        "time_wait" => TimeWait,
        "close_wait" => CloseWait,
        "last_ack" => LastAck,
        "closing" => Closing,
        "close" => Close,
        "listen" => Listen,
        _ => return None,
    })
}

/// Parses a scenario into its snapshots, in order.
pub fn parse_scenario(text: &str) -> Result<Vec<Snapshot>, String> {
    let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(scenario.sample.len());
    let events = scenario.events;
    for (i, sample) in scenario.sample.into_iter().enumerate() {
        let at: Duration = humantime::parse_duration(&sample.at)
            .map_err(|e| format!("sample {}: at = {:?}: {e}", i + 1, sample.at))?;
        // The model's clock is monotonic, as the sampler's is.
        if let Some(previous) = out.last() {
            let previous: &Snapshot = previous;
            if (at.as_millis() as u64) < previous.taken_at.monotonic_ms {
                return Err(format!(
                    "sample {}: at = {:?} is before the previous sample",
                    i + 1,
                    sample.at
                ));
            }
        }
        let mut watched = sample.watched.unwrap_or_else(|| scenario.watched.clone());
        watched.sort_unstable();
        watched.dedup();
        let sockets = sample
            .sockets
            .into_iter()
            .map(|s| script_record(s, i))
            .collect::<Result<Vec<_>, _>>()?;
        let destroyed = sample
            .destroyed
            .into_iter()
            .map(|s| script_record(s, i))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Snapshot {
            taken_at: crate::model::socket::Timestamp {
                monotonic_ms: at.as_millis() as u64,
                unix_ms: 1_800_000_000_000 + at.as_millis() as u64,
            },
            watched_ports: watched,
            listeners: sample
                .listeners
                .into_iter()
                .map(|l| Listener {
                    port: l.port,
                    queue_length: l.queue_length,
                    queue_limit: l.queue_limit,
                })
                .collect(),
            sockets,
            events_complete: events,
            destroyed,
            trace: sample
                .trace
                .into_iter()
                .map(|t| script_trace(t, i))
                .collect::<Result<Vec<_>, _>>()?,
            trace_running: scenario.tracepoints,
            trace_complete: scenario.tracepoints,
            local_addrs: scenario.local_addrs.clone(),
            sole_netns: scenario.sole_netns,
        });
    }
    Ok(out)
}

fn script_record(s: ScriptSocket, sample: usize) -> Result<SocketRecord, String> {
    let state = state_from_label(&s.state)
        .ok_or_else(|| format!("sample {}: unknown state {:?}", sample + 1, s.state))?;
    let info =
        (state != TcpState::TimeWait && state != TcpState::SynRecv && !s.no_info).then(|| {
            TcpInfo {
                len: 280,
                retransmits: s.retransmits,
                last_data_recv_ms: s.idle_ms,
                last_data_sent_ms: s.idle_ms,
                bytes_received: s.bytes_received,
                bytes_acked: s.bytes_acked,
                data_segs_in: s.segs_in,
                data_segs_out: s.segs_out,
                ..TcpInfo::default()
            }
        });
    Ok(SocketRecord {
        cookie: s.cookie,
        state,
        local_port: s.port,
        remote_port: s.peer.port(),
        remote_addr: s.peer.ip(),
        rx_queue: 0,
        tx_queue: 0,
        timer: if s.retransmits > 0 {
            Timer::Retransmit
        } else {
            Timer::None
        },
        timer_retrans: s.retransmits,
        info,
    })
}
