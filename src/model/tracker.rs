//! The tracker: follows each inbound connection of the watched ports from sample to sample,
//! keyed by socket cookie, feeds the classifier the connection's history, and turns what changed
//! into lifecycle events.
//!
//! Rules (docs/metrics.md says what they mean for the counters):
//! - A connection is a full socket of a watched local port in an open state (ESTABLISHED,
//!   FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING). Request sockets (SYN_RECV) are handshakes,
//!   not yet connections: the accepted socket gets a cookie of its own.
//! - Only the inbound side counts: a socket belongs to port P when P is watched and a listener
//!   on P exists in the same sample, or when the tracker already follows it (accepted while the
//!   listener existed: a graceful shutdown closes the listener first and drains afterwards).
//! - Closed = a destroy event for the cookie (with the final tcp_info), entering TIME_WAIT, or
//!   disappearing from the dump, whichever comes first; a closed connection is counted once.
//!   An orphaned FIN_WAIT2 connection (closed by the application, waiting for the peer's FIN)
//!   is a TIME_WAIT mini-socket that the dump reports as FIN_WAIT2 without tcp_info: a remnant
//!   like TIME_WAIT, not a connection of its own (its cookie is its own when the full socket
//!   never had one).
//! - A destroy event for a cookie never seen open is a connection opened and closed between two
//!   samples: opened and closed, with no lifetime. So is a TIME_WAIT socket never seen open when
//!   destroy events are not available (with them, the event counts it: a TIME_WAIT socket whose
//!   cookie was never generated while it was a full socket gets a new one).
//! - Opened is counted at first sighting when the class is known then (a rule, or payload
//!   already carried). A connection that has carried nothing yet waits (it may be a health
//!   probe) until its first payload, its close, or the probe lifetime threshold, and is counted
//!   then with the class it has at that moment.
//! - Sockets present in the first sample in which their port is watched were open before we
//!   looked: pre-existing, never counted as opened, lifetime unknown (age is a lower bound).
//! - A known cookie reappearing with another peer or port is a new connection (the old one
//!   closed unseen).
//!
//! Pure: no clock (time comes in the snapshot), no kernel.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use super::classify::{ClassId, Classifier, Evidence, HTTP, UNCLASSIFIED, WEBSOCKET};
use super::resets::{Attributor, CloseReason};
use super::socket::{Snapshot, SocketRecord, TcpInfo, TcpState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    Opened {
        cookie: u64,
        port: u16,
        class: ClassId,
    },
    /// An `http` connection became `websocket`; it keeps its opening's class in the counters.
    Upgraded { cookie: u64, port: u16 },
    Closed {
        cookie: u64,
        port: u16,
        class: ClassId,
        /// Milliseconds from first sighting to close; `None` when the opening was not observed.
        lifetime_ms: Option<u64>,
        reason: CloseReason,
    },
}

const PREEXISTING: u8 = 1;
/// Counted as closed already; kept until the socket leaves the dump so it is not counted again.
const CLOSED: u8 = 2;
/// Counted in `opened_total` already.
const COUNTED_OPEN: u8 = 4;
/// Absent from the last dump with no destroy event yet: given one more sample for it.
const MISSING: u8 = 8;
/// Counted closed when it left the dump without a destroy event: the socket may still exist,
/// closed by the kernel (a reset, a timeout) while the application holds it; its destroy
/// event comes when the application closes it, and must not count it again.
const AWAIT_DESTROY: u8 = 16;
/// How many samples such a tombstone waits for its destroy event (10 minutes at 1 s).
const AWAIT_GENERATIONS: u32 = 600;

/// What the tracker knows of one connection: kept small (one per connection of every watched
/// port; 40 bytes).
#[derive(Debug, Clone, Copy)]
struct Tracked {
    first_seen_ms: u64,
    evidence: Evidence,
    generation: u32,
    peer: u32,
    local_port: u16,
    remote_port: u16,
    class: ClassId,
    state: TcpState,
    flags: u8,
}

impl Tracked {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    fn lifetime(&self, now: u64) -> Option<u64> {
        (!self.has(PREEXISTING)).then(|| now.saturating_sub(self.first_seen_ms))
    }
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
    /// Why the connection has its class, and the classifier's evidence.
    pub evidence: Evidence,
}

#[derive(Debug, Default)]
pub struct Tracker {
    conns: HashMap<u64, Tracked>,
    /// Closes found by the dump while destroy events were subscribed: their event was lost.
    missed_events: u64,
    generation: u32,
    /// Ports watched in the previous sample.
    watched: BTreeSet<u16>,
}

fn peer_fingerprint(record: &SocketRecord) -> u32 {
    fingerprint(&record.remote_addr)
}

fn fingerprint(addr: &std::net::IpAddr) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish() as u32
}

/// A connection's key by addresses: local port, peer port and a fingerprint of the peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TupleKey(u16, u16, u32);

impl TupleKey {
    pub fn new(local_port: u16, remote: std::net::SocketAddr) -> Self {
        TupleKey(local_port, remote.port(), fingerprint(&remote.ip()))
    }
}

/// Idle time the classifier may trust: the kernel's idle clock starts at the socket's birth,
/// so for a connection seen opening it is capped by the age we know.
pub fn idle_ms(info: &TcpInfo, age_ms: u64, preexisting: bool) -> u64 {
    let idle = u64::from(info.idle_ms());
    if preexisting {
        idle
    } else {
        idle.min(age_ms)
    }
}

struct Step<'a> {
    classifier: &'a Classifier,
    attributor: &'a Attributor,
    trace_complete: bool,
    events: &'a mut Vec<LifecycleEvent>,
    now: u64,
}

impl Step<'_> {
    /// Counts the close of `t` (and its opening, if it was still waiting for a class).
    fn close(&mut self, cookie: u64, t: &mut Tracked, final_info: Option<&TcpInfo>, short: bool) {
        let lifetime = if short { None } else { t.lifetime(self.now) };
        t.class = self
            .classifier
            .at_close(t.class, &mut t.evidence, final_info, lifetime, short);
        if !t.has(COUNTED_OPEN) && !t.has(PREEXISTING) {
            self.events.push(LifecycleEvent::Opened {
                cookie,
                port: t.local_port,
                class: t.class,
            });
        }
        t.flags |= CLOSED | COUNTED_OPEN;
        self.events.push(LifecycleEvent::Closed {
            cookie,
            port: t.local_port,
            class: t.class,
            lifetime_ms: lifetime,
            reason: self.attributor.close_reason(cookie, self.trace_complete),
        });
    }

    /// Counts the opening of `t` once its class is known or its probe time is up.
    fn maybe_count_open(&mut self, cookie: u64, t: &mut Tracked) {
        if t.has(COUNTED_OPEN) {
            return;
        }
        let waited = self.now.saturating_sub(t.first_seen_ms)
            >= self.classifier.thresholds().probe_max_lifetime_ms;
        if t.class != UNCLASSIFIED || waited || t.evidence.by_rule() {
            t.flags |= COUNTED_OPEN;
            self.events.push(LifecycleEvent::Opened {
                cookie,
                port: t.local_port,
                class: t.class,
            });
        }
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Destroy events known to be lost: connections that left the dump and whose event never
    /// came while events were subscribed.
    pub fn missed_events(&self) -> u64 {
        self.missed_events
    }

    /// Connections followed now, including TIME_WAIT remnants not yet gone.
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// The tracker follows (or just closed) the connection `cookie`.
    pub fn knows(&self, cookie: u64) -> bool {
        self.conns.contains_key(&cookie)
    }

    /// The tracker counted the connection `cookie` as closed (and keeps its tombstone).
    pub fn closed(&self, cookie: u64) -> bool {
        self.conns.get(&cookie).is_some_and(|t| t.has(CLOSED))
    }

    /// Port and class of the connection `cookie`, open or just closed.
    pub fn port_and_class(&self, cookie: u64) -> Option<(u16, ClassId)> {
        self.conns.get(&cookie).map(|t| (t.local_port, t.class))
    }

    /// The open connections by address.
    pub fn open_by_tuple(&self) -> HashMap<TupleKey, u64> {
        self.conns
            .iter()
            .filter(|(_, t)| !t.has(CLOSED))
            .map(|(&cookie, t)| (TupleKey(t.local_port, t.remote_port, t.peer), cookie))
            .collect()
    }

    /// Ports that have at least one open tracked connection.
    pub fn ports_with_open_connections(&self) -> BTreeSet<u16> {
        self.conns
            .values()
            .filter(|c| !c.has(CLOSED))
            .map(|c| c.local_port)
            .collect()
    }

    /// Compares `snapshot` with what was known, appending lifecycle events to `events` and one
    /// [`SocketView`] per socket to `views`.
    pub fn observe(
        &mut self,
        snapshot: &Snapshot,
        classifier: &Classifier,
        attributor: &Attributor,
        events: &mut Vec<LifecycleEvent>,
        views: &mut Vec<SocketView>,
    ) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let now = snapshot.taken_at.monotonic_ms;
        let listening: BTreeSet<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
        let watched: BTreeSet<u16> = snapshot.watched_ports.iter().copied().collect();
        let mut step = Step {
            classifier,
            attributor,
            trace_complete: snapshot.trace_complete,
            events,
            now,
        };

        // Destroy events first: they carry the final tcp_info, and a socket destroyed after the
        // dump may still appear in it (stale) or as TIME_WAIT, already closed.
        for record in &snapshot.destroyed {
            if let Some(t) = self.conns.get_mut(&record.cookie) {
                if !t.has(CLOSED) {
                    step.close(record.cookie, t, record.info.as_ref(), false);
                } else if t.has(AWAIT_DESTROY) {
                    // Its event was late (the application held the closed socket): the
                    // tombstone has done its work. (`missed_events` is a counter: it stays.)
                    t.flags &= !AWAIT_DESTROY;
                }
                t.generation = generation;
                continue;
            }
            let port = record.local_port;
            if !(watched.contains(&port)
                && listening.contains(&port)
                && self.watched.contains(&port))
            {
                continue;
            }
            let (class, evidence) = classifier.first_sight(record);
            let mut t = Tracked {
                first_seen_ms: now,
                evidence,
                generation,
                peer: peer_fingerprint(record),
                local_port: port,
                remote_port: record.remote_port,
                class,
                state: TcpState::Close,
                flags: 0,
            };
            step.close(record.cookie, &mut t, record.info.as_ref(), true);
            self.conns.insert(record.cookie, t);
        }

        views.clear();
        views.reserve(snapshot.sockets.len());
        for record in &snapshot.sockets {
            let port = record.local_port;
            let mut view = SocketView {
                counted: false,
                class: classifier.port_default(port),
                first_seen_ms: None,
                preexisting: false,
                evidence: Evidence::default(),
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
            let peer = peer_fingerprint(record);
            let mut entry = match known {
                Some(t)
                    if t.local_port == port
                        && t.remote_port == record.remote_port
                        && t.peer == peer =>
                {
                    let mut t = t;
                    if !t.has(CLOSED) {
                        if let Some(info) = &record.info {
                            let age = now.saturating_sub(t.first_seen_ms);
                            let idle = idle_ms(info, age, t.has(PREEXISTING));
                            let before = t.class;
                            t.class = classifier.update(t.class, &mut t.evidence, info, age, idle);
                            if before == HTTP && t.class == WEBSOCKET {
                                step.events.push(LifecycleEvent::Upgraded {
                                    cookie: record.cookie,
                                    port,
                                });
                            }
                        }
                        if !t.has(PREEXISTING) {
                            step.maybe_count_open(record.cookie, &mut t);
                        }
                    }
                    t
                }
                other => {
                    if let Some(mut old) = other {
                        // Same cookie, other connection: the old one closed unseen.
                        if !old.has(CLOSED) {
                            step.close(record.cookie, &mut old, None, false);
                        }
                    }
                    let (class, evidence) = classifier.first_sight(record);
                    let preexisting = !self.watched.contains(&port);
                    let mut t = Tracked {
                        first_seen_ms: now,
                        evidence,
                        generation,
                        peer,
                        local_port: port,
                        remote_port: record.remote_port,
                        class,
                        state: record.state,
                        flags: if preexisting {
                            PREEXISTING | COUNTED_OPEN
                        } else {
                            0
                        },
                    };
                    if record.is_remnant() {
                        // With destroy events complete, this connection's close came (or comes
                        // within a sample) as an event; the kernel gives a TIME_WAIT socket a
                        // cookie of its own when none was generated before, so only the
                        // event counts it.
                        if preexisting || snapshot.events_complete {
                            t.flags |= CLOSED | COUNTED_OPEN;
                        } else {
                            step.close(record.cookie, &mut t, None, true);
                        }
                    } else if !preexisting {
                        step.maybe_count_open(record.cookie, &mut t);
                    }
                    t
                }
            };
            entry.generation = generation;
            entry.state = record.state;
            if record.is_remnant() && !entry.has(CLOSED) {
                step.close(record.cookie, &mut entry, None, false);
            }
            view.class = entry.class;
            view.preexisting = entry.has(PREEXISTING);
            view.evidence = entry.evidence;
            if !entry.has(CLOSED) {
                view.first_seen_ms = Some(entry.first_seen_ms);
            }
            self.conns.insert(record.cookie, entry);
            views.push(view);
        }

        let mut missed = 0;
        self.conns.retain(|&cookie, t| {
            if t.generation == generation {
                t.flags &= !MISSING;
                return true;
            }
            if t.has(CLOSED) {
                // Tombstones outlive the socket by one sample, so that a late destroy event or
                // TIME_WAIT sighting of the same cookie is not counted again; those of sockets
                // that left the dump without their event, until the event comes.
                let keep = if t.has(AWAIT_DESTROY) {
                    AWAIT_GENERATIONS
                } else {
                    2
                };
                return generation.wrapping_sub(t.generation) < keep;
            }
            // A port that is no longer watched is no longer dumped: its connections did not
            // close, we stopped looking.
            if !watched.contains(&t.local_port) {
                return false;
            }
            if snapshot.events_complete && !t.has(MISSING) {
                // The kernel frees sockets and sends their events from a workqueue: the event of
                // a socket that just left the table may still be on its way.
                t.flags |= MISSING;
                return true;
            }
            if snapshot.events_complete || t.has(MISSING) {
                missed += 1;
                t.flags |= AWAIT_DESTROY;
            }
            step.close(cookie, t, None, false);
            true
        });
        self.missed_events += missed;
        self.watched = watched;
    }
}
