//! The tracker: follows each inbound connection of the watched ports from sample to sample,
//! keyed by socket cookie, and turns differences between samples into lifecycle events.
//!
//! Rules (see docs/metrics.md for what they mean for the counters):
//! - A connection is a full socket of a watched local port in an open state (ESTABLISHED,
//!   FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING). Request sockets (SYN_RECV) are handshakes,
//!   not yet connections: the accepted socket gets a cookie of its own.
//! - Only the inbound side counts: a socket belongs to port P when P is watched and a listener
//!   on P exists in the same sample, or when the tracker already follows it (accepted while the
//!   listener existed: a graceful shutdown closes the listener first and drains afterwards).
//! - First sighting = opened; disappearance or entering TIME_WAIT = closed. A TIME_WAIT socket
//!   never seen open is a connection opened and closed between two samples: opened and closed,
//!   with no lifetime.
//! - Sockets present in the first sample in which their port is watched were open before we
//!   looked: they are marked pre-existing, are not counted as opened, and their lifetime is
//!   unknown (their age is a lower bound).
//! - A known cookie reappearing with another peer or port is a new connection (the old one
//!   closed unseen).
//!
//! Pure: no clock (time comes in the snapshot), no kernel.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use super::classify::{ClassId, Classifier};
use super::socket::{Snapshot, SocketRecord, TcpState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    Opened {
        cookie: u64,
        port: u16,
        class: ClassId,
    },
    Closed {
        cookie: u64,
        port: u16,
        class: ClassId,
        /// Milliseconds from first sighting to close; `None` when the opening was not observed.
        lifetime_ms: Option<u64>,
    },
}

/// What the tracker knows of one connection: kept small (the tracker holds one per
/// connection of every watched port).
#[derive(Debug, Clone, Copy)]
struct Tracked {
    first_seen_ms: u64,
    generation: u32,
    peer: u32,
    local_port: u16,
    remote_port: u16,
    class: ClassId,
    state: TcpState,
    preexisting: bool,
    /// Counted as closed already (entered TIME_WAIT); kept until the socket disappears so that
    /// it is not counted again.
    closed: bool,
}

/// The tracker's verdict on one socket of a snapshot, aligned with `Snapshot::sockets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketView {
    /// The socket belongs to a watched port's inbound side and is counted in the gauges.
    pub counted: bool,
    pub class: ClassId,
    /// First sighting of the connection, for open connections.
    pub first_seen_ms: Option<u64>,
    pub preexisting: bool,
}

#[derive(Debug, Default)]
pub struct Tracker {
    conns: HashMap<u64, Tracked>,
    generation: u32,
    /// Ports watched in the previous sample.
    watched: BTreeSet<u16>,
}

fn peer_fingerprint(record: &SocketRecord) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    record.remote_addr.hash(&mut h);
    h.finish() as u32
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections followed now, including TIME_WAIT remnants not yet gone.
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Ports that have at least one open tracked connection.
    pub fn ports_with_open_connections(&self) -> BTreeSet<u16> {
        self.conns
            .values()
            .filter(|c| !c.closed)
            .map(|c| c.local_port)
            .collect()
    }

    /// Compares `snapshot` with what was known, appending lifecycle events to `events` and one
    /// [`SocketView`] per socket to `views`.
    pub fn observe(
        &mut self,
        snapshot: &Snapshot,
        classifier: &Classifier,
        events: &mut Vec<LifecycleEvent>,
        views: &mut Vec<SocketView>,
    ) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let now = snapshot.taken_at.monotonic_ms;
        let listening: BTreeSet<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
        let watched: BTreeSet<u16> = snapshot.watched_ports.iter().copied().collect();
        views.clear();
        views.reserve(snapshot.sockets.len());

        for record in &snapshot.sockets {
            let port = record.local_port;
            let mut view = SocketView {
                counted: false,
                class: classifier.port_default(port),
                first_seen_ms: None,
                preexisting: false,
            };
            let known = self.conns.get(&record.cookie).copied();
            let inbound = watched.contains(&port) && (listening.contains(&port) || known.is_some());
            if !inbound {
                views.push(view);
                continue;
            }
            view.counted = true;
            if matches!(record.state, TcpState::SynRecv | TcpState::NewSynRecv) {
                views.push(view);
                continue;
            }
            let newly_watched = !self.watched.contains(&port);
            let peer = peer_fingerprint(record);
            let mut entry = match known {
                Some(t)
                    if t.local_port == port
                        && t.remote_port == record.remote_port
                        && t.peer == peer =>
                {
                    t
                }
                other => {
                    if let Some(old) = other {
                        // Same cookie, other connection: the old one closed unseen.
                        if !old.closed {
                            events.push(closed_event(record.cookie, &old, now));
                        }
                    }
                    let class = classifier.classify(record);
                    let preexisting = newly_watched;
                    if !preexisting {
                        events.push(LifecycleEvent::Opened {
                            cookie: record.cookie,
                            port,
                            class,
                        });
                    }
                    Tracked {
                        first_seen_ms: now,
                        generation,
                        peer,
                        local_port: port,
                        remote_port: record.remote_port,
                        class,
                        state: record.state,
                        preexisting,
                        closed: false,
                    }
                }
            };
            entry.generation = generation;
            entry.state = record.state;
            if record.state == TcpState::TimeWait && !entry.closed {
                entry.closed = true;
                let first_sighting = known.is_none() || entry.first_seen_ms == now;
                if !(first_sighting && entry.preexisting) {
                    let mut event = closed_event(record.cookie, &entry, now);
                    if first_sighting {
                        // Opened and closed between two samples: the lifetime is unknown.
                        if let LifecycleEvent::Closed { lifetime_ms, .. } = &mut event {
                            *lifetime_ms = None;
                        }
                    }
                    events.push(event);
                }
            }
            view.class = entry.class;
            view.preexisting = entry.preexisting;
            if !entry.closed {
                view.first_seen_ms = Some(entry.first_seen_ms);
            }
            self.conns.insert(record.cookie, entry);
            views.push(view);
        }

        self.conns.retain(|&cookie, t| {
            if t.generation == generation {
                return true;
            }
            // A port that is no longer watched is no longer dumped: its connections did not
            // close, we stopped looking.
            if !t.closed && watched.contains(&t.local_port) {
                events.push(closed_event(cookie, t, now));
            }
            false
        });
        self.watched = watched;
    }
}

fn closed_event(cookie: u64, t: &Tracked, now: u64) -> LifecycleEvent {
    LifecycleEvent::Closed {
        cookie,
        port: t.local_port,
        class: t.class,
        lifetime_ms: (!t.preexisting).then(|| now.saturating_sub(t.first_seen_ms)),
    }
}
