//! Resets and timeouts: joins the kernel's tracepoint hits to the connections of the watched
//! network namespace and counts them per port.
//!
//! Tracepoints fire for every namespace of the host and name sockets by kernel address, cookie
//! or 4-tuple; only the cookie is unique and stable. Rules:
//! - A reset received (`tcp_receive_reset`) carries the socket's cookie: it counts for the
//!   connection the tracker follows under that cookie, i.e. one seen in the watched
//!   namespace's dump or destroy events, or for a socket of a watched port whose destroy event
//!   the namespace received though the tracker did not count it (accepted by the kernel, never
//!   by the application, and reset when the listener closed).
//! - A reset sent by a full socket (`tcp_send_reset` with a socket in a closable state) waits
//!   for that socket's `tcp_destroy_sock`, which names its cookie (the kernel frees every socket
//!   that sent a reset); then it counts like a received one.
//!   Each CPU's buffer is read in turn, so a reset recorded on one CPU can arrive a drain after
//!   its socket's destroy recorded on another: a destroy nothing waited for is remembered for
//!   2.5 s by kernel address.
//! - A reset sent by a listener counts at once when the listener's address is ours (below);
//!   a wildcard listener's waits, like a connection's, for its `tcp_destroy_sock` (a listener
//!   that closes, as in a hard cut, resets the connections still in its accept queue).
//! - A reset sent with no full socket (no socket for the segment, TIME_WAIT, request sockets)
//!   has only addresses: it counts when its local address belongs to the watched namespace
//!   alone (an interface address other than loopback, or any address when no other namespace
//!   exists).
//! - A timeout (`inet_sk_error_report` with ETIMEDOUT) has only a 4-tuple: it joins the open
//!   connection the tracker follows with that tuple, or else the cookie of the socket's
//!   `tcp_destroy_sock` with that tuple.
//! - A hit that joins no connection of the watched namespace within [`PENDING_MS`] of sample
//!   time belongs to another namespace or to an unwatched side: it is dropped and counted as
//!   unattributed.
//!
//! Pure: time comes from the snapshots.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::classify::{ClassId, UNCLASSIFIED};
use super::socket::{Snapshot, TcpState, TraceEvent};
use super::tracker::{Tracker, TupleKey};

/// How long (sample time) a hit may wait for the event that names its connection.
pub const PENDING_MS: u64 = 60_000;
/// How long (sample time) a destroy with no reset waiting is remembered for a late reset.
const RECENT_DESTROY_MS: u64 = 2_500;
/// Hits waiting at most; beyond, the oldest are dropped (unattributed).
const MAX_PENDING: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// The `reason` label of a received reset: the kernel gives none.
pub const RECEIVED_REASON: &str = "none";

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseReason {
    /// Neither a reset nor a timeout was recorded while the tracepoints lost nothing.
    Fin,
    /// The connection sent or received a reset.
    Reset,
    /// The kernel gave up on the connection (ETIMEDOUT).
    Timeout,
    /// No exact source tells (tracepoints off or lost events).
    Unknown,
}

/// Labels of [`CloseReason`], in index order.
pub const CLOSE_REASONS: [&str; 4] = ["fin", "reset", "timeout", "unknown"];

impl CloseReason {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One counted hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reset {
        port: u16,
        direction: Direction,
        reason: &'static str,
    },
    Timeout {
        port: u16,
        class: ClassId,
    },
}

/// What is known of one cookie from tracepoints.
#[derive(Debug, Default)]
struct Mark {
    /// Hits not counted yet (waiting for the tracker to know the cookie).
    sent: Vec<&'static str>,
    received: u32,
    timeout_pending: bool,
    /// Ever reset / timed out: the close reason.
    reset: bool,
    timeout: bool,
    touched_ms: u64,
    /// The socket's local port, from the hit.
    port: u16,
}

#[derive(Debug)]
struct PendingSent {
    seen_ms: u64,
    reasons: Vec<&'static str>,
}

#[derive(Debug, Default)]
pub struct Attributor {
    marks: HashMap<u64, Mark>,
    by_skaddr: HashMap<u64, PendingSent>,
    /// Sockets destroyed recently with no reset waiting for them, by kernel address: a reset
    /// recorded on another CPU can reach us one drain after its socket's destroy (each CPU's
    /// buffer is read in turn), and still joins it.
    recent_destroys: HashMap<u64, (u64, u16, u64)>,
    /// Cookies of this namespace's recent destroy events (port, sample time): a reset that
    /// follows its socket's destroy (data arriving at a socket freed on close: abort-on-data)
    /// is read after that event, when the tracker may not follow the socket (no listener left).
    recent_ours: HashMap<u64, (u16, u64)>,
    timeouts: HashMap<(SocketAddr, SocketAddr), u64>,
    /// Hits dropped without a connection of the watched namespace.
    unattributed: u64,
    /// Hits counted by address alone.
    outcomes: Vec<Outcome>,
}

/// A full socket: its `tcp_destroy_sock` will name its cookie (a connection that reset is
/// destroyed at once; a listener when it closes, which is when a hard cut makes it reset the
/// connections of its accept queue).
fn full_socket(skaddr: u64, state: Option<TcpState>) -> bool {
    skaddr != 0
        && matches!(state, Some(s) if !matches!(s, TcpState::TimeWait | TcpState::NewSynRecv))
}

/// The watched namespace owns `ip`: an interface address of its own, or any address when it
/// is alone on the host.
fn ours(ip: IpAddr, snapshot: &Snapshot) -> bool {
    let ip = ip.to_canonical();
    if snapshot.sole_netns {
        return true;
    }
    !ip.is_loopback() && !ip.is_unspecified() && snapshot.local_addrs.contains(&ip)
}

impl Attributor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hits dropped because no connection of the watched namespace claimed them.
    pub fn unattributed(&self) -> u64 {
        self.unattributed
    }

    /// Hits waiting for the event that names their connection.
    pub fn pending(&self) -> usize {
        self.by_skaddr.len() + self.timeouts.len() + self.marks.len()
    }

    /// How the connection `cookie` ended, as far as the hits ingested so far tell.
    pub fn close_reason(&self, cookie: u64, trace_complete: bool) -> CloseReason {
        match self.marks.get(&cookie) {
            Some(m) if m.timeout => CloseReason::Timeout,
            Some(m) if m.reset => CloseReason::Reset,
            _ if trace_complete => CloseReason::Fin,
            _ => CloseReason::Unknown,
        }
    }

    fn mark(&mut self, cookie: u64, port: u16, now: u64) -> &mut Mark {
        let m = self.marks.entry(cookie).or_default();
        m.touched_ms = now;
        if port != 0 {
            m.port = port;
        }
        m
    }

    /// Joins the snapshot's hits to cookies; call before the tracker observes the snapshot, so
    /// that the closes it finds know their reason. `tracker` still holds the previous sample.
    pub fn ingest(&mut self, snapshot: &Snapshot, tracker: &Tracker) {
        let now = snapshot.taken_at.monotonic_ms;
        let watched = |port: u16| snapshot.watched_ports.binary_search(&port).is_ok();
        let mut by_tuple = None;
        for event in &snapshot.trace {
            match *event {
                TraceEvent::ResetSent {
                    skaddr,
                    state,
                    reason,
                    local,
                    remote,
                } => {
                    if !watched(local.port()) {
                        continue;
                    }
                    let listener_of_ours =
                        state == Some(TcpState::Listen) && ours(local.ip(), snapshot);
                    if full_socket(skaddr, state) && !listener_of_ours {
                        // A connection the tracker follows is named by its addresses at once
                        // (`ss -K`, an abortive close: the socket may be freed much later).
                        let index = by_tuple.get_or_insert_with(|| tracker.open_by_tuple());
                        if let Some(&cookie) = index.get(&TupleKey::new(local.port(), remote)) {
                            let m = self.mark(cookie, local.port(), now);
                            m.sent.push(reason);
                            m.reset = true;
                            continue;
                        }
                        if let Some((cookie, port, _)) = self.recent_destroys.remove(&skaddr) {
                            let m = self.mark(cookie, port, now);
                            m.sent.push(reason);
                            m.reset = true;
                            continue;
                        }
                        let p = self.by_skaddr.entry(skaddr).or_insert(PendingSent {
                            seen_ms: now,
                            reasons: Vec::new(),
                        });
                        p.reasons.push(reason);
                    } else if ours(local.ip(), snapshot) {
                        self.outcomes.push(Outcome::Reset {
                            port: local.port(),
                            direction: Direction::Sent,
                            reason,
                        });
                    } else {
                        self.unattributed += 1;
                    }
                }
                TraceEvent::ResetReceived { cookie, local, .. } => {
                    if watched(local.port()) || tracker.knows(cookie) {
                        let m = self.mark(cookie, local.port(), now);
                        m.received += 1;
                        m.reset = true;
                    }
                }
                TraceEvent::Destroyed {
                    skaddr,
                    cookie,
                    local,
                    remote,
                } => {
                    if let Some(p) = self.by_skaddr.remove(&skaddr) {
                        let m = self.mark(cookie, local.port(), now);
                        m.sent.extend(p.reasons);
                        m.reset = true;
                    } else if skaddr != 0 {
                        self.recent_destroys
                            .insert(skaddr, (cookie, local.port(), now));
                    }
                    if self.timeouts.remove(&(local, remote)).is_some() {
                        let m = self.mark(cookie, local.port(), now);
                        m.timeout = true;
                        m.timeout_pending = true;
                    }
                }
                TraceEvent::TimedOut { local, remote } => {
                    if !watched(local.port()) {
                        continue;
                    }
                    let index = by_tuple.get_or_insert_with(|| tracker.open_by_tuple());
                    match index.get(&TupleKey::new(local.port(), remote)) {
                        Some(&cookie) => {
                            let m = self.mark(cookie, local.port(), now);
                            m.timeout = true;
                            m.timeout_pending = true;
                        }
                        None => {
                            self.timeouts.insert((local, remote), now);
                        }
                    }
                }
            }
        }
    }

    /// Counts the hits whose cookie the tracker now follows into `out` (after the tracker
    /// observed the snapshot) and forgets what waited too long.
    pub fn settle(&mut self, snapshot: &Snapshot, tracker: &Tracker, out: &mut Vec<Outcome>) {
        let now = snapshot.taken_at.monotonic_ms;
        out.append(&mut self.outcomes);
        let mut dropped = 0u64;
        // Sockets of the watched namespace the tracker does not follow (e.g. accepted by the
        // kernel but never by the application, reset when the listener closed: no listener
        // is left to tell them inbound): their destroy event proves they were ours.
        if snapshot.trace_running {
            for r in &snapshot.destroyed {
                self.recent_ours.insert(r.cookie, (r.local_port, now));
            }
            self.recent_ours
                .retain(|_, &mut (_, seen)| now.saturating_sub(seen) < RECENT_DESTROY_MS);
        }
        let recent_ours = &self.recent_ours;
        self.marks.retain(|&cookie, m| {
            let known = tracker.port_and_class(cookie).or_else(|| {
                let &(port, _) = recent_ours.get(&cookie)?;
                let port = if port != 0 { port } else { m.port };
                (port != 0).then_some((port, UNCLASSIFIED))
            });
            if let Some((port, class)) = known {
                for reason in m.sent.drain(..) {
                    out.push(Outcome::Reset {
                        port,
                        direction: Direction::Sent,
                        reason,
                    });
                }
                for _ in 0..std::mem::take(&mut m.received) {
                    out.push(Outcome::Reset {
                        port,
                        direction: Direction::Received,
                        reason: RECEIVED_REASON,
                    });
                }
                if std::mem::take(&mut m.timeout_pending) {
                    out.push(Outcome::Timeout { port, class });
                }
                if tracker.closed(cookie) || recent_ours.contains_key(&cookie) {
                    // Counted, and the close already has its reason: nothing left to keep.
                    return false;
                }
            }
            if now.saturating_sub(m.touched_ms) < PENDING_MS {
                return true;
            }
            dropped += m.sent.len() as u64 + u64::from(m.received) + u64::from(m.timeout_pending);
            false
        });
        // A late reset comes within a drain or two of its socket's destroy.
        self.recent_destroys
            .retain(|_, &mut (_, _, seen)| now.saturating_sub(seen) < RECENT_DESTROY_MS);
        self.by_skaddr.retain(|_, p| {
            let keep = now.saturating_sub(p.seen_ms) < PENDING_MS;
            if !keep {
                dropped += p.reasons.len() as u64;
            }
            keep
        });
        self.timeouts.retain(|_, &mut seen| {
            let keep = now.saturating_sub(seen) < PENDING_MS;
            dropped += u64::from(!keep);
            keep
        });
        // A flood of hits from elsewhere must not grow memory without bound.
        if self.pending() > MAX_PENDING {
            dropped += self
                .by_skaddr
                .values()
                .map(|p| p.reasons.len() as u64)
                .sum::<u64>();
            dropped += self.timeouts.len() as u64;
            self.by_skaddr.clear();
            self.timeouts.clear();
            self.marks.retain(|_, m| {
                m.sent.is_empty() && m.received == 0 && !m.timeout_pending && (m.reset || m.timeout)
            });
        }
        self.unattributed += dropped;
    }
}
