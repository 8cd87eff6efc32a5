//! One sample of the kernel: the listener dump (when ports are discovered), the port selection,
//! and one filtered dump per address family, assembled into a [`Snapshot`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::events::{DestroyEvents, Drained, EventsError};
use super::netlink::SockDiag;
use super::netns::{local_addresses, sole_network_namespace};
use super::request::{DumpSpec, Family};
use super::tracepoints::{TraceDrained, TraceError, Tracepoints};
use super::SourceError;
use crate::model::socket::{Listener, Snapshot, SocketRecord, TcpState, Timestamp};
use crate::model::watch::{Selected, Watch};

pub struct Sampler {
    diag: SockDiag,
    events: Option<DestroyEvents>,
    trace: Option<Tracepoints>,
    /// procfs root and when the namespace census was last taken (tracepoints only).
    procfs: PathBuf,
    census_at: Option<Instant>,
    sole_netns: bool,
    scratch: Vec<SocketRecord>,
    origin: Instant,
}

/// How often the sampler checks whether other network namespaces exist.
const CENSUS_EVERY: Duration = Duration::from_secs(10);

impl Sampler {
    /// A sampler that dumps only.
    pub fn new() -> Self {
        Sampler {
            diag: SockDiag::new(),
            events: None,
            trace: None,
            procfs: PathBuf::from("/proc"),
            census_at: None,
            sole_netns: false,
            scratch: Vec::new(),
            origin: Instant::now(),
        }
    }

    /// Starts the tracepoint source (resets, timeouts) from the tracefs mounted at `tracefs`;
    /// `procfs` serves the namespace census.
    pub fn enable_tracepoints(&mut self, tracefs: &Path, procfs: &Path) -> Result<(), TraceError> {
        self.trace = Some(Tracepoints::start(tracefs)?);
        self.procfs = procfs.to_path_buf();
        Ok(())
    }

    pub fn tracepoints_running(&self) -> bool {
        self.trace.is_some()
    }

    /// A sampler that also subscribes to destroy events; without the privilege it dumps only
    /// and returns the reason beside it.
    pub fn with_events() -> (Self, Option<EventsError>) {
        let mut sampler = Sampler::new();
        match DestroyEvents::subscribe() {
            Ok(events) => {
                sampler.events = Some(events);
                (sampler, None)
            }
            Err(e) => (sampler, Some(e)),
        }
    }

    pub fn events_subscribed(&self) -> bool {
        self.events.is_some()
    }

    fn now(&self) -> Timestamp {
        Timestamp {
            monotonic_ms: self.origin.elapsed().as_millis() as u64,
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }

    /// Fills `snapshot` with one sample. `draining` are ports that still have open tracked
    /// connections (kept watched after their listener went away). On error `snapshot` holds
    /// no usable data and must not be observed.
    pub fn sample(
        &mut self,
        watch: &mut Watch,
        draining: &BTreeSet<u16>,
        snapshot: &mut Snapshot,
    ) -> Result<Selected, SourceError> {
        snapshot.listeners.clear();
        snapshot.sockets.clear();
        snapshot.destroyed.clear();
        self.scratch.clear();
        let selected = if watch.discovers() {
            let spec = DumpSpec {
                family: Family::Any,
                listeners: true,
                connections: false,
                local_ports: None,
            };
            self.diag.dump(&spec, &mut self.scratch)?;
            let listening: BTreeSet<u16> = self.scratch.iter().map(|r| r.local_port).collect();
            let selected = watch.select(&listening, draining);
            let watched: BTreeSet<u16> = selected.ports.iter().copied().collect();
            snapshot.listeners.extend(
                self.scratch
                    .iter()
                    .filter(|r| watched.contains(&r.local_port))
                    .map(listener_of),
            );
            if !selected.ports.is_empty() {
                let spec = DumpSpec {
                    family: Family::Any,
                    listeners: false,
                    connections: true,
                    local_ports: Some(selected.ports.clone()),
                };
                self.diag.dump(&spec, &mut snapshot.sockets)?;
            }
            selected
        } else {
            let selected = watch.select(&BTreeSet::new(), draining);
            if !selected.ports.is_empty() {
                let spec = DumpSpec {
                    family: Family::Any,
                    listeners: true,
                    connections: true,
                    local_ports: Some(selected.ports.clone()),
                };
                self.diag.dump(&spec, &mut snapshot.sockets)?;
            }
            snapshot.listeners.extend(
                snapshot
                    .sockets
                    .iter()
                    .filter(|r| r.state == TcpState::Listen)
                    .map(listener_of),
            );
            snapshot.sockets.retain(|r| r.state != TcpState::Listen);
            selected
        };
        if let Some(events) = &self.events {
            events.set_ports(&selected.ports);
        }
        if let Some(trace) = &self.trace {
            trace.set_ports(&selected.ports);
        }
        snapshot.watched_ports.clear();
        snapshot.watched_ports.extend_from_slice(&selected.ports);
        snapshot.taken_at = self.now();
        Ok(selected)
    }

    /// Collects the destroy events received so far into `snapshot.destroyed`; call right after
    /// [`Sampler::sample`], so that every socket missing from the dump had its event queued.
    pub fn drain_events(&mut self, snapshot: &mut Snapshot) -> Option<Drained> {
        let events = self.events.as_ref()?;
        let drained = events.drain(&mut snapshot.destroyed);
        snapshot.events_complete = !drained.overflowed;
        Some(drained)
    }

    /// Collects the tracepoint hits recorded so far into `snapshot.trace`, with what the model
    /// needs to attribute them to this namespace; call after [`Sampler::drain_events`], so that
    /// the hits of every destroyed socket are in.
    pub fn drain_trace(&mut self, snapshot: &mut Snapshot) -> Option<TraceDrained> {
        snapshot.trace.clear();
        snapshot.trace_running = false;
        snapshot.trace_complete = false;
        let trace = self.trace.as_ref()?;
        let drained = trace.drain(&mut snapshot.trace);
        snapshot.trace_running = true;
        snapshot.trace_complete = drained.lost == 0 && drained.undecodable == 0;
        if self.census_at.is_none_or(|at| at.elapsed() >= CENSUS_EVERY) {
            self.sole_netns = sole_network_namespace(&self.procfs);
            self.census_at = Some(Instant::now());
        }
        snapshot.sole_netns = self.sole_netns;
        if let Ok(addrs) = local_addresses() {
            snapshot.local_addrs = addrs;
        }
        Some(drained)
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

fn listener_of(r: &SocketRecord) -> Listener {
    Listener {
        port: r.local_port,
        queue_length: r.rx_queue,
        queue_limit: r.tx_queue,
    }
}
