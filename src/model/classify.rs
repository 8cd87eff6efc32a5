//! The classifier stage: decides the class of each connection from rules and from the evidence
//! the tracker collects across samples. Pure and deterministic.
//!
//! Classes: `http` (request/response, keep-alive), `websocket` (long-lived bidirectional or
//! server-push sessions: WebSocket, SSE, long-poll), `probe` (health checks), user-named classes
//! from rules, and `unclassified` where nothing is known yet. The decision procedure, its
//! thresholds and their defaults are documented in docs/classification.md.
//!
//! Rules first: a rule (local port, or a peer network on a port) fixes the class at first sight
//! and no heuristic ever changes it. Without a rule, a connection that has carried no payload is
//! `unclassified`; its first payload makes it `http`; evidence of server push, of a stream, of
//! idling beyond the HTTP keep-alive timeout or of living beyond any keep-alive lifetime moves it
//! to `websocket` (an upgrade, counted); and at close, a short connection that carried no payload
//! is a `probe`.

use std::net::IpAddr;

use super::socket::{SocketRecord, TcpInfo};

/// Index into the [`ClassTable`]; small so that per-connection state stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClassId(pub u8);

pub const UNCLASSIFIED: ClassId = ClassId(0);
pub const HTTP: ClassId = ClassId(1);
pub const WEBSOCKET: ClassId = ClassId(2);
pub const PROBE: ClassId = ClassId(3);

/// Class names, bounded by configuration (they become label values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassTable {
    names: Vec<String>,
}

impl Default for ClassTable {
    fn default() -> Self {
        ClassTable {
            names: ["unclassified", "http", "websocket", "probe"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl ClassTable {
    /// Returns the id of `name`, adding it when new. At most 255 names exist.
    pub fn intern(&mut self, name: &str) -> Option<ClassId> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Some(ClassId(i as u8));
        }
        if self.names.len() >= usize::from(u8::MAX) {
            return None;
        }
        self.names.push(name.to_string());
        Some(ClassId((self.names.len() - 1) as u8))
    }

    pub fn name(&self, id: ClassId) -> &str {
        self.names
            .get(usize::from(id.0))
            .map(String::as_str)
            .unwrap_or("unclassified")
    }
}

/// An IP network (address and prefix length) for peer rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Parses `10.250.0.0/16`, `fd00::/8` or a bare address (a host network).
    pub fn parse(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network (e.g. 10.250.0.0/16)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    /// True when `ip` is inside the network; IPv4-mapped IPv6 peers match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A rule: connections on `port` (from `peer`, when given) are of `class`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub port: u16,
    pub peer: Option<Network>,
    pub class: String,
}

/// Thresholds of the heuristics (docs/classification.md explains each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Unsolicited server transmissions before a connection counts as `websocket`.
    pub push_episodes: u8,
    /// Consecutive samples of server-only transmission after a response that make a stream.
    pub stream_samples: u8,
    /// Idle time (no data either way) beyond which an open connection is no HTTP keep-alive.
    pub http_idle_timeout_ms: u64,
    /// Age beyond which an open connection is no HTTP keep-alive.
    pub http_max_lifetime_ms: u64,
    /// A connection that closes within this time having carried no payload is a `probe`.
    pub probe_max_lifetime_ms: u64,
    /// Payload bytes a probe may carry in each direction (0: none at all).
    pub probe_max_bytes: u64,
    /// Apply the heuristics; when false, only rules classify and everything else is
    /// `unclassified` from first sight.
    pub heuristics: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            push_episodes: 1,
            stream_samples: 5,
            http_idle_timeout_ms: 80_000,
            http_max_lifetime_ms: 3_600_000,
            probe_max_lifetime_ms: 1_000,
            probe_max_bytes: 0,
            heuristics: true,
        }
    }
}

/// Why a connection has its class (shown by the connections API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Reason {
    /// No payload seen yet.
    #[default]
    NoPayload,
    /// A rule on the port or the peer.
    Rule,
    /// Payload seen, nothing beyond request/response.
    Payload,
    /// The server sent data the client had not asked for.
    ServerPush,
    /// The server kept sending for several samples after a response.
    Stream,
    /// Open and idle longer than the HTTP keep-alive timeout.
    IdleBeyondKeepAlive,
    /// Open longer than any HTTP keep-alive lifetime.
    LongLived,
    /// Closed quickly having carried no payload.
    ShortWithoutPayload,
    /// Seen only at its close (TIME_WAIT), with nothing known about its payload.
    SeenOnlyAtClose,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoPayload => "no payload yet",
            Reason::Rule => "rule",
            Reason::Payload => "request/response payload",
            Reason::ServerPush => "server push without request",
            Reason::Stream => "server stream after response",
            Reason::IdleBeyondKeepAlive => "idle beyond HTTP keep-alive timeout",
            Reason::LongLived => "alive beyond HTTP keep-alive lifetime",
            Reason::ShortWithoutPayload => "closed quickly without payload",
            Reason::SeenOnlyAtClose => "seen only at close",
        }
    }
}

const AWAITING: u8 = 1;
const RESPONDING: u8 = 2;
const PAYLOAD: u8 = 4;
const RULE: u8 = 8;

/// What the classifier remembers of one connection between samples (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evidence {
    /// Client-to-server data segments (or bytes on kernels without segment counts) at the last sample.
    last_in: u32,
    /// Server-to-client data segments (or bytes) at the last sample.
    last_out: u32,
    /// Unsolicited server transmissions seen.
    pub pushes: u8,
    /// Consecutive samples of server-only transmission continuing a response.
    pub stream_run: u8,
    flags: u8,
    pub reason: Reason,
}

impl Evidence {
    pub fn payload_seen(&self) -> bool {
        self.flags & PAYLOAD != 0
    }
    pub fn by_rule(&self) -> bool {
        self.flags & RULE != 0
    }
}

/// Payload counters of a tcp_info: data segments when the kernel has them (4.6+), else bytes.
fn payload_counters(info: &TcpInfo) -> (u32, u32) {
    match (info.data_segs_in(), info.data_segs_out()) {
        (Some(i), Some(o)) => (i, o),
        _ => (
            info.bytes_received().unwrap_or(0) as u32,
            info.bytes_acked().unwrap_or(0) as u32,
        ),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Classifier {
    table: ClassTable,
    /// (port, peer network, class) in configuration order; peer rules are tried first.
    rules: Vec<(u16, Option<Network>, ClassId)>,
    thresholds: Thresholds,
}

impl Classifier {
    pub fn new(rules: &[Rule], thresholds: Thresholds) -> Self {
        let mut table = ClassTable::default();
        let mut compiled = Vec::new();
        for rule in rules {
            if let Some(id) = table.intern(&rule.class) {
                compiled.push((rule.port, rule.peer, id));
            }
        }
        // Peer rules are more specific than port rules: try them first.
        compiled.sort_by_key(|(_, peer, _)| peer.is_none());
        Classifier {
            table,
            rules: compiled,
            thresholds,
        }
    }

    /// Port rules only, default thresholds.
    pub fn from_port_rules<'a>(rules: impl IntoIterator<Item = (u16, &'a str)>) -> Self {
        let rules: Vec<Rule> = rules
            .into_iter()
            .map(|(port, class)| Rule {
                port,
                peer: None,
                class: class.to_string(),
            })
            .collect();
        Classifier::new(&rules, Thresholds::default())
    }

    pub fn table(&self) -> &ClassTable {
        &self.table
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    fn rule_for(&self, port: u16, peer: Option<IpAddr>) -> Option<ClassId> {
        self.rules
            .iter()
            .find(|(p, net, _)| {
                *p == port
                    && match (net, peer) {
                        (None, _) => true,
                        (Some(net), Some(ip)) => net.contains(ip),
                        (Some(_), None) => false,
                    }
            })
            .map(|(_, _, c)| *c)
    }

    /// The class every connection of `port` has before anything is known of it: the port rule's
    /// class, or `unclassified`. Its series are exported at 0 from the start.
    pub fn port_default(&self, port: u16) -> ClassId {
        self.rule_for(port, None).unwrap_or(UNCLASSIFIED)
    }

    /// The classes a connection on `port` can have: their series are exported from the start, at
    /// 0, so that rates and alerts on any class have a series to work with.
    pub fn initial_classes(&self, port: u16) -> Vec<ClassId> {
        let mut classes = match self.rule_for(port, None) {
            Some(class) => vec![class],
            None if self.thresholds.heuristics => vec![UNCLASSIFIED, HTTP, WEBSOCKET, PROBE],
            None => vec![UNCLASSIFIED],
        };
        for (p, peer, class) in &self.rules {
            if *p == port && peer.is_some() && !classes.contains(class) {
                classes.push(*class);
            }
        }
        classes
    }

    /// First sighting of a connection: the class and the evidence to carry on with.
    pub fn first_sight(&self, record: &SocketRecord) -> (ClassId, Evidence) {
        let mut ev = Evidence::default();
        if let Some(class) = self.rule_for(record.local_port, Some(record.remote_addr)) {
            ev.flags = RULE;
            ev.reason = Reason::Rule;
            return (class, ev);
        }
        if !self.thresholds.heuristics {
            // Rules only: the port's class is final, as if a rule had said so.
            ev.flags = RULE;
            ev.reason = Reason::Rule;
            return (UNCLASSIFIED, ev);
        }
        let Some(info) = &record.info else {
            return (UNCLASSIFIED, ev);
        };
        let (cin, cout) = payload_counters(info);
        ev.last_in = cin;
        ev.last_out = cout;
        let class = match (cin > 0, cout > 0) {
            (false, false) => return (UNCLASSIFIED, ev),
            (true, false) => {
                ev.flags |= AWAITING;
                HTTP
            }
            (true, true) => {
                ev.flags |= RESPONDING;
                HTTP
            }
            (false, true) => {
                // The server spoke first: no HTTP server does.
                ev.pushes = 1;
                HTTP
            }
        };
        ev.flags |= PAYLOAD;
        ev.reason = Reason::Payload;
        (self.escalate(class, &mut ev), ev)
    }

    /// A later sample of a connection: update the evidence and return the class now.
    /// `age_ms` is the time since first sighting, `idle_ms` the kernel's idle time capped by
    /// what is known of the age.
    pub fn update(
        &self,
        class: ClassId,
        ev: &mut Evidence,
        info: &TcpInfo,
        age_ms: u64,
        idle_ms: u64,
    ) -> ClassId {
        if ev.by_rule() {
            return class;
        }
        let (cin, cout) = payload_counters(info);
        let din = cin.wrapping_sub(ev.last_in);
        let dout = cout.wrapping_sub(ev.last_out);
        ev.last_in = cin;
        ev.last_out = cout;
        let mut class = class;
        if din > 0 || dout > 0 {
            if !ev.payload_seen() {
                ev.flags |= PAYLOAD;
                ev.reason = Reason::Payload;
            }
            if class == UNCLASSIFIED {
                class = HTTP;
            }
        }
        match (din > 0, dout > 0) {
            (true, false) => {
                ev.flags = (ev.flags | AWAITING) & !RESPONDING;
                ev.stream_run = 0;
            }
            (true, true) => {
                ev.flags = (ev.flags | RESPONDING) & !AWAITING;
                ev.stream_run = 0;
            }
            (false, true) => {
                if ev.flags & AWAITING != 0 {
                    // The (slow) response to an outstanding request.
                    ev.flags = (ev.flags | RESPONDING) & !AWAITING;
                } else if ev.flags & RESPONDING != 0 {
                    // A response still being sent, or a stream.
                    ev.stream_run = ev.stream_run.saturating_add(1);
                } else {
                    ev.pushes = ev.pushes.saturating_add(1);
                }
            }
            (false, false) => {
                ev.flags &= !RESPONDING;
                ev.stream_run = 0;
            }
        }
        if ev.payload_seen() && class == HTTP {
            if idle_ms >= self.thresholds.http_idle_timeout_ms {
                ev.reason = Reason::IdleBeyondKeepAlive;
                return WEBSOCKET;
            }
            if age_ms >= self.thresholds.http_max_lifetime_ms {
                ev.reason = Reason::LongLived;
                return WEBSOCKET;
            }
        }
        self.escalate(class, ev)
    }

    fn escalate(&self, class: ClassId, ev: &mut Evidence) -> ClassId {
        if class != HTTP {
            return class;
        }
        if ev.pushes >= self.thresholds.push_episodes.max(1) {
            ev.reason = Reason::ServerPush;
            return WEBSOCKET;
        }
        if ev.stream_run >= self.thresholds.stream_samples.max(1) {
            ev.reason = Reason::Stream;
            return WEBSOCKET;
        }
        class
    }

    /// The final class of a closing connection. `final_info` is the tcp_info at close (from a
    /// destroy event) when known; `lifetime_ms` is `None` when the opening was not observed,
    /// `short` true when the connection lived less than one sample interval for certain.
    pub fn at_close(
        &self,
        class: ClassId,
        ev: &mut Evidence,
        final_info: Option<&TcpInfo>,
        lifetime_ms: Option<u64>,
        short: bool,
    ) -> ClassId {
        if ev.by_rule() {
            return class;
        }
        let quick =
            short || lifetime_ms.is_some_and(|ms| ms <= self.thresholds.probe_max_lifetime_ms);
        if quick && (class == UNCLASSIFIED || class == HTTP) {
            let silent = match final_info {
                Some(info) => {
                    let max = self.thresholds.probe_max_bytes;
                    if max == 0 {
                        payload_counters(info) == (0, 0)
                    } else {
                        info.bytes_received().unwrap_or(0) <= max + 1
                            && info.bytes_acked().unwrap_or(0) <= max + 1
                    }
                }
                None if short => {
                    // Seen only at close, in TIME_WAIT: nothing is known of its payload.
                    ev.reason = Reason::SeenOnlyAtClose;
                    return class;
                }
                None => !ev.payload_seen(),
            };
            if silent {
                ev.reason = Reason::ShortWithoutPayload;
                return PROBE;
            }
        }
        // Not a probe. The final tcp_info may show the payload no sample caught (a connection
        // dumped before its request and gone by the next sample): its first payload makes it
        // `http`, as while open.
        if class == UNCLASSIFIED && final_info.is_some_and(|info| payload_counters(info) != (0, 0))
        {
            ev.flags |= PAYLOAD;
            ev.reason = Reason::Payload;
            return HTTP;
        }
        class
    }
}
