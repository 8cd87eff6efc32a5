//! Kernel socket facts as the model sees them: one record per socket of a watched port, one
//! record per listener, and the snapshot that carries both with the time they were taken.
//!
//! Everything here is plain data. Sources fill it in; the model never reads a clock or the kernel.

use std::net::{IpAddr, SocketAddr};

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    /// `TCP_NEW_SYN_RECV`: a request socket (handshake not complete); reported as SYN_RECV.
    NewSynRecv = 12,
}

impl TcpState {
    pub fn from_kernel(code: u8) -> Option<Self> {
        use TcpState::*;
        Some(match code {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }

    /// The slot of this state in [`GAUGE_STATES`], if it is one of the exported states.
    pub fn gauge_index(self) -> Option<usize> {
        use TcpState::*;
        Some(match self {
            Established => 0,
            SynRecv | NewSynRecv => 1,
            FinWait1 => 2,
            FinWait2 => 3,
            TimeWait => 4,
            CloseWait => 5,
            LastAck => 6,
            Closing => 7,
            SynSent | Close | Listen => return None,
        })
    }

    /// A connection in this state is a live, accepted connection (a full socket, not a
    /// handshake in progress and not the TIME_WAIT remnant of a closed one).
    pub fn is_open(self) -> bool {
        use TcpState::*;
        matches!(
            self,
            Established | FinWait1 | FinWait2 | CloseWait | LastAck | Closing
        )
    }
}

/// The states exported in `drainwatch_connections{state}`, in label order.
pub const GAUGE_STATES: [&str; 8] = [
    "established",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close_wait",
    "last_ack",
    "closing",
];

/// The subset of `struct tcp_info` (`include/uapi/linux/tcp.h`) the model uses.
///
/// The kernel's struct grew over the years (104 bytes in 2.6, 144 in 4.2, 232 in 5.4, 280 in
/// 6.18); `len` is the length the kernel sent. Fields beyond it are zero, and the accessors of
/// fields that came later than 2.6 return `None` for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Length of the attribute the kernel sent, in bytes.
    pub len: u16,
    /// `tcpi_retransmits`: consecutive RTO retransmissions not yet recovered.
    pub retransmits: u8,
    /// `tcpi_probes`: unanswered zero-window or keepalive probes.
    pub probes: u8,
    /// `tcpi_backoff`: RTO exponential backoff.
    pub backoff: u8,
    /// `tcpi_rto` in microseconds.
    pub rto_us: u32,
    /// `tcpi_last_data_sent`: milliseconds since data was last sent.
    pub last_data_sent_ms: u32,
    /// `tcpi_last_data_recv`: milliseconds since data was last received.
    pub last_data_recv_ms: u32,
    /// `tcpi_last_ack_recv`: milliseconds since an ACK was last received.
    pub last_ack_recv_ms: u32,
    /// `tcpi_total_retrans`: segments retransmitted over the connection's life.
    pub total_retrans: u32,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub total_rto: u16,
}

/// Offsets of `struct tcp_info` fields; a field exists when `len >= offset + size`.
pub mod tcp_info_offset {
    pub const RETRANSMITS: usize = 2;
    pub const PROBES: usize = 3;
    pub const BACKOFF: usize = 4;
    pub const RTO: usize = 8;
    pub const LAST_DATA_SENT: usize = 44;
    pub const LAST_DATA_RECV: usize = 52;
    pub const LAST_ACK_RECV: usize = 56;
    pub const TOTAL_RETRANS: usize = 100;
    pub const BYTES_ACKED: usize = 120;
    pub const BYTES_RECEIVED: usize = 128;
    pub const SEGS_OUT: usize = 136;
    pub const SEGS_IN: usize = 140;
    pub const DATA_SEGS_IN: usize = 152;
    pub const DATA_SEGS_OUT: usize = 156;
    pub const TOTAL_RTO: usize = 240;
}

impl TcpInfo {
    fn has(&self, offset: usize, size: usize) -> bool {
        usize::from(self.len) >= offset + size
    }

    /// `tcpi_bytes_acked` (kernel 4.1+).
    pub fn bytes_acked(&self) -> Option<u64> {
        self.has(tcp_info_offset::BYTES_ACKED, 8)
            .then_some(self.bytes_acked)
    }
    /// `tcpi_bytes_received` (kernel 4.1+).
    pub fn bytes_received(&self) -> Option<u64> {
        self.has(tcp_info_offset::BYTES_RECEIVED, 8)
            .then_some(self.bytes_received)
    }
    /// `tcpi_segs_out` (kernel 4.2+).
    pub fn segs_out(&self) -> Option<u32> {
        self.has(tcp_info_offset::SEGS_OUT, 4)
            .then_some(self.segs_out)
    }
    /// `tcpi_segs_in` (kernel 4.2+).
    pub fn segs_in(&self) -> Option<u32> {
        self.has(tcp_info_offset::SEGS_IN, 4)
            .then_some(self.segs_in)
    }
    /// `tcpi_data_segs_in` (kernel 4.6+).
    pub fn data_segs_in(&self) -> Option<u32> {
        self.has(tcp_info_offset::DATA_SEGS_IN, 4)
            .then_some(self.data_segs_in)
    }
    /// `tcpi_data_segs_out` (kernel 4.6+).
    pub fn data_segs_out(&self) -> Option<u32> {
        self.has(tcp_info_offset::DATA_SEGS_OUT, 4)
            .then_some(self.data_segs_out)
    }
    /// `tcpi_total_rto`: RTO timeouts over the connection's life (kernel 6.7+).
    pub fn total_rto(&self) -> Option<u16> {
        self.has(tcp_info_offset::TOTAL_RTO, 2)
            .then_some(self.total_rto)
    }

    /// Milliseconds since data last moved in either direction, as far as the kernel knows.
    pub fn idle_ms(&self) -> u32 {
        self.last_data_recv_ms.min(self.last_data_sent_ms)
    }
}

/// `idiag_timer`: which timer is pending on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timer {
    #[default]
    None,
    Retransmit,
    KeepAlive,
    TimeWait,
    ZeroWindowProbe,
    Other(u8),
}

impl Timer {
    pub fn from_kernel(code: u8) -> Self {
        match code {
            0 => Timer::None,
            1 => Timer::Retransmit,
            2 => Timer::KeepAlive,
            3 => Timer::TimeWait,
            4 => Timer::ZeroWindowProbe,
            other => Timer::Other(other),
        }
    }
}

/// One socket of a watched local port, as read from one `inet_diag_msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRecord {
    /// `idiag_cookie`: the kernel's identity for this socket for its whole life.
    pub cookie: u64,
    pub state: TcpState,
    pub local_port: u16,
    pub remote_port: u16,
    pub remote_addr: IpAddr,
    /// `idiag_rqueue`: bytes not yet read by the application.
    pub rx_queue: u32,
    /// `idiag_wqueue`: bytes not yet acknowledged by the peer.
    pub tx_queue: u32,
    pub timer: Timer,
    /// `idiag_retrans`: for the retransmit timer, the unrecovered RTO count.
    pub timer_retrans: u8,
    /// `INET_DIAG_INFO`, absent for TIME_WAIT and request sockets.
    pub info: Option<TcpInfo>,
}

impl SocketRecord {
    /// The TIME_WAIT remnant of a closed connection: a TIME_WAIT socket, or a TIME_WAIT
    /// mini-socket still in its FIN_WAIT2 substate (an orphan waiting for the peer's FIN, which
    /// the kernel reports as FIN_WAIT2 but without tcp_info, since it is no full socket).
    pub fn is_remnant(&self) -> bool {
        self.state == TcpState::TimeWait
            || (self.state == TcpState::FinWait2 && self.info.is_none())
    }

    /// The connection has fired its retransmission timer at least once and the data is still
    /// unacknowledged: the peer is not answering (blackhole, dead peer, heavy loss).
    pub fn is_retransmitting(&self) -> bool {
        let rto_fired = match self.info {
            Some(info) => info.retransmits > 0,
            None => false,
        };
        rto_fired || (self.timer == Timer::Retransmit && self.timer_retrans > 0)
    }
}

/// A socket in LISTEN state on some local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    /// `idiag_rqueue` of a listener: connections waiting in the accept queue.
    pub queue_length: u32,
    /// `idiag_wqueue` of a listener: the accept backlog limit.
    pub queue_limit: u32,
}

/// Time as the source read it when the snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    /// Monotonic milliseconds (any fixed origin); all durations come from these.
    pub monotonic_ms: u64,
    /// Wall clock, milliseconds since the Unix epoch; only for the exported timestamp.
    pub unix_ms: u64,
}

/// Everything one sample saw.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub taken_at: Timestamp,
    /// Ports watched in this sample, ascending.
    pub watched_ports: Vec<u16>,
    /// Listeners of watched ports (several per port with SO_REUSEPORT or dual stack).
    pub listeners: Vec<Listener>,
    /// Non-listening sockets whose local port is watched.
    pub sockets: Vec<SocketRecord>,
    /// Sockets the kernel destroyed since the previous sample (sock_diag destroy events), with
    /// their final tcp_info; any port, any side: the tracker attributes them.
    pub destroyed: Vec<SocketRecord>,
    /// Destroy events were subscribed and none were lost since the previous sample: a socket
    /// missing from the dump without an event has its event still on the way.
    pub events_complete: bool,
    /// Tracepoint hits since the previous sample (RSTs, timeouts, socket destructions), in the
    /// order the kernel recorded them; any port, any network namespace: the model attributes
    /// them.
    pub trace: Vec<TraceEvent>,
    /// Tracepoints are subscribed: resets and timeouts are counted.
    pub trace_running: bool,
    /// Tracepoints ran and lost nothing since the previous sample: a connection that closed
    /// with no RST and no timeout recorded closed with a FIN.
    pub trace_complete: bool,
    /// Addresses of the watched network namespace's interfaces.
    pub local_addrs: Vec<IpAddr>,
    /// The watched network namespace is the only one on the host: a loopback or wildcard
    /// address in a tracepoint hit can only be ours.
    pub sole_netns: bool,
}

/// One kernel tracepoint hit, decoded. `local` is this host's side of the connection (the
/// kernel's source address for a reset it sends). `skaddr` is the kernel address of the socket,
/// valid only until the socket is freed (the allocator reuses it): a hit that carries no cookie
/// is joined to one through the socket's [`TraceEvent::Destroyed`] that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceEvent {
    /// `tcp:tcp_send_reset`. `skaddr` is 0 when no socket sent it (no socket for the segment);
    /// `state` is `None` then, or for a kernel that does not report it.
    ResetSent {
        skaddr: u64,
        state: Option<TcpState>,
        reason: &'static str,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// `tcp:tcp_receive_reset`: a full socket received a valid RST.
    ResetReceived {
        skaddr: u64,
        cookie: u64,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// `tcp:tcp_destroy_sock`: the kernel freed a full socket.
    Destroyed {
        skaddr: u64,
        cookie: u64,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// `sock:inet_sk_error_report` with ETIMEDOUT: a TCP connection gave up (retransmissions,
    /// keepalive or zero-window probes unanswered).
    TimedOut {
        local: SocketAddr,
        remote: SocketAddr,
    },
}

impl TraceEvent {
    /// This host's side of the connection.
    pub fn local(&self) -> SocketAddr {
        match *self {
            TraceEvent::ResetSent { local, .. }
            | TraceEvent::ResetReceived { local, .. }
            | TraceEvent::Destroyed { local, .. }
            | TraceEvent::TimedOut { local, .. } => local,
        }
    }
}
