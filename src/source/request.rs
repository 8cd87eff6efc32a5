//! Pure construction of `SOCK_DIAG_BY_FAMILY` dump requests, including the kernel-side port
//! filter (`INET_DIAG_REQ_BYTECODE`) that netlink-packet-sock-diag does not provide.
//!
//! The request header and `inet_diag_req_v2` are serialised by netlink-packet-sock-diag; the
//! bytecode attribute is appended here and `nlmsg_len` patched. Bytecode semantics are those
//! of `inet_diag_bc_run()` in `net/ipv4/inet_diag.c`: each op jumps `yes` bytes forward when it
//! matches and `no` bytes when it does not; landing exactly at the end accepts the socket,
//! landing 4 bytes past the end rejects it.

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};

/// `INET_DIAG_REQ_BYTECODE` request attribute type.
pub const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_S_EQ`: source (local) port equals the value of the following op.
pub const INET_DIAG_BC_S_EQ: u8 = 11;
/// `1 << TCP_NEW_SYN_RECV`, missing from the crate's state flags.
const TCPF_NEW_SYN_RECV: u32 = 1 << 12;

/// `TCPDIAG_GETSOCK`: the original inet_diag request type, still served by every kernel.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// `sizeof(struct inet_diag_req)`, the request of `TCPDIAG_GETSOCK`.
pub const INET_DIAG_REQ_V1_LEN: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    /// Both families in one dump. TCP keeps IPv4 and IPv6 sockets in one hash table, which
    /// every dump walks whole, so one dump for both costs one walk where a dump per family costs
    /// two. `SOCK_DIAG_BY_FAMILY` cannot express it; `TCPDIAG_GETSOCK` dumps with
    /// `sdiag_family = AF_UNSPEC` (`inet_diag_dump_compat()` in net/ipv4/inet_diag.c).
    Any,
}

/// What one dump asks the kernel for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSpec {
    pub family: Family,
    /// Include LISTEN sockets.
    pub listeners: bool,
    /// Include connection states (everything but LISTEN and SYN_SENT), with `tcp_info`.
    pub connections: bool,
    /// Restrict to these local ports in the kernel; `None` dumps every port.
    pub local_ports: Option<Vec<u16>>,
}

/// `INET_DIAG_BC_JMP`: always takes the `no` jump.
pub const INET_DIAG_BC_JMP: u8 = 1;

/// Bytecode accepting a socket whose local port is any of `ports`.
///
/// Per port, three 4-byte ops (12 bytes): `S_EQ {yes: 8, no: 12}`, `{0, 0, port}`, then
/// `JMP {yes: 4, no: <to the end>}`. A match lands on the JMP, which jumps to the end (accept);
/// a mismatch goes on to the next port, and past the last port to end + 4 (reject). The
/// trampoline is needed because `yes` is a `u8` while `no` is a `u16`, so only `no` can reach
/// the end of a long program; every op also lies on the `yes` chain, which is how the kernel's
/// `inet_diag_bc_audit()` walks and validates a program. An empty set gives an empty program,
/// which the caller must not send (it would accept everything).
pub fn port_filter_bytecode(ports: &[u16]) -> Vec<u8> {
    let total = ports.len() * 12;
    let mut bc = Vec::with_capacity(total);
    for (i, &port) in ports.iter().enumerate() {
        let at = i * 12;
        let no: u16 = if i + 1 == ports.len() { 12 + 4 } else { 12 };
        bc.extend_from_slice(&[INET_DIAG_BC_S_EQ, 8]);
        bc.extend_from_slice(&no.to_ne_bytes());
        bc.extend_from_slice(&[0, 0]);
        bc.extend_from_slice(&port.to_ne_bytes());
        let to_end = (total - (at + 8)) as u16;
        bc.extend_from_slice(&[INET_DIAG_BC_JMP, 4]);
        bc.extend_from_slice(&to_end.to_ne_bytes());
    }
    bc
}

/// The largest port set one program can hold (`no` is a `u16` byte offset).
pub const MAX_FILTER_PORTS: usize = 4096;

/// Serialises a dump request with sequence number `seq`.
pub fn build_request(spec: &DumpSpec, seq: u32) -> Vec<u8> {
    let mut buf = match spec.family {
        Family::Any => build_header_any(spec, seq),
        family => build_header_v2(spec, family, seq),
    };
    if let Some(ports) = &spec.local_ports {
        let bc = port_filter_bytecode(ports);
        if !bc.is_empty() {
            let nla_len = (4 + bc.len()) as u16;
            buf.extend_from_slice(&nla_len.to_ne_bytes());
            buf.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
            buf.extend_from_slice(&bc);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
            let len = buf.len() as u32;
            buf[0..4].copy_from_slice(&len.to_ne_bytes());
        }
    }
    buf
}

fn state_mask(spec: &DumpSpec) -> u32 {
    let mut states = StateFlags::empty();
    if spec.listeners {
        states |= StateFlags::LISTEN;
    }
    if spec.connections {
        states |= StateFlags::ESTABLISHED
            | StateFlags::SYN_RECV
            | StateFlags::FIN_WAIT1
            | StateFlags::FIN_WAIT2
            | StateFlags::TIME_WAIT
            | StateFlags::CLOSE_WAIT
            | StateFlags::LAST_ACK
            | StateFlags::CLOSING;
    }
    let mut mask = states.bits();
    if spec.connections {
        mask |= TCPF_NEW_SYN_RECV;
    }
    mask
}

/// `nlmsghdr` + `struct inet_diag_req` (v1) for both families, written by hand: the crate
/// only builds v2 requests.
fn build_header_any(spec: &DumpSpec, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        16 + INET_DIAG_REQ_V1_LEN + 4 + spec.local_ports.as_ref().map_or(0, |p| p.len() * 12),
    );
    let len = (16 + INET_DIAG_REQ_V1_LEN) as u32;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    let ext: u8 = if spec.connections {
        1 << (crate::source::decode::INET_DIAG_INFO - 1)
    } else {
        0
    };
    buf.extend_from_slice(&[0, 0, 0, ext]); // idiag_family (ignored: AF_UNSPEC), src_len, dst_len, idiag_ext
    buf.extend_from_slice(&[0u8; 48]); // id: struct inet_diag_sockid, all wildcards
    buf.extend_from_slice(&state_mask(spec).to_ne_bytes()); // idiag_states
    buf.extend_from_slice(&0u32.to_ne_bytes()); // idiag_dbs
    buf
}

fn build_header_v2(spec: &DumpSpec, family: Family, seq: u32) -> Vec<u8> {
    let (family, socket_id) = match family {
        Family::V6 => (AF_INET6, SocketId::new_v6()),
        _ => (AF_INET, SocketId::new_v4()),
    };
    let extensions = if spec.connections {
        ExtensionFlags::INFO
    } else {
        ExtensionFlags::empty()
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states: StateFlags::from_bits_retain(state_mask(spec)),
            socket_id,
        })
        .into(),
    );
    message.finalize();
    let mut buf = vec![0u8; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}
