//! Pure decoding of sock_diag dump replies: netlink frames -> `inet_diag_msg` -> [`SocketRecord`].
//!
//! Reads bytes only; never touches a socket. Every length is checked before it is read, so a
//! short or corrupt frame is a [`DecodeError`] naming the byte offset, never a panic.
//! `INET_DIAG_INFO` (`struct tcp_info`) is decoded length-aware: any length the kernel sends is
//! accepted and fields beyond it are reported as absent (see [`TcpInfo`]).
//!
//! Layouts: `include/uapi/linux/netlink.h` (nlmsghdr, nlmsgerr), `include/uapi/linux/inet_diag.h`
//! (inet_diag_msg, inet_diag_sockid), `include/uapi/linux/tcp.h` (tcp_info).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::socket::{tcp_info_offset as off, SocketRecord, TcpInfo, TcpState, Timer};

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct inet_diag_msg)`.
pub const INET_DIAG_MSG_LEN: usize = 72;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Replies to a `TCPDIAG_GETSOCK` request carry the request's type.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// `NLM_F_DUMP_INTR`: the dump was interrupted by a concurrent change and is inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `INET_DIAG_INFO` attribute type.
pub const INET_DIAG_INFO: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated {what} at byte {offset}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("kernel answered the dump with error {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Kernel { errno: i32 },
    #[error(
        "dump interrupted (NLM_F_DUMP_INTR): the kernel's socket table changed during the dump"
    )]
    Interrupted,
    #[error("unknown TCP state {code} at byte {offset}")]
    UnknownState { code: u8, offset: usize },
    #[error("unknown address family {family} at byte {offset}")]
    UnknownFamily { family: u8, offset: usize },
    #[error("unexpected netlink message type {kind} at byte {offset}")]
    UnexpectedType { kind: u16, offset: usize },
}

/// Whether the dump goes on after this datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u16_be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i32_ne(b: &[u8], at: usize) -> i32 {
    u32_ne(b, at) as i32
}
fn u64_ne(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn need(what: &'static str, buf: &[u8], offset: usize, len: usize) -> Result<(), DecodeError> {
    if buf.len() < offset.saturating_add(len) {
        return Err(DecodeError::Truncated {
            what,
            offset,
            need: len,
            have: buf.len().saturating_sub(offset),
        });
    }
    Ok(())
}

/// Decodes one received datagram of a dump, appending a record per socket to `out`.
///
/// Returns [`Progress::Done`] at `NLMSG_DONE`. `NLMSG_ERROR`, a negative `NLMSG_DONE` status and
/// `NLM_F_DUMP_INTR` are errors: a dump that ends in an error is never a partial success.
pub fn decode_datagram(buf: &[u8], out: &mut Vec<SocketRecord>) -> Result<Progress, DecodeError> {
    let mut offset = 0;
    while offset < buf.len() {
        need("nlmsghdr", buf, offset, NLMSG_HDRLEN)?;
        let len = u32_ne(buf, offset) as usize;
        let kind = u16_ne(buf, offset + 4);
        let flags = u16_ne(buf, offset + 6);
        if len < NLMSG_HDRLEN {
            return Err(DecodeError::Truncated {
                what: "nlmsg_len",
                offset,
                need: NLMSG_HDRLEN,
                have: len,
            });
        }
        need("netlink message", buf, offset, len)?;
        let payload = &buf[offset + NLMSG_HDRLEN..offset + len];
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(DecodeError::Interrupted);
        }
        match kind {
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                out.push(decode_inet_diag_msg(payload, offset + NLMSG_HDRLEN)?)
            }
            NLMSG_DONE => {
                // The dump's final status; negative is an errno (e.g. -EINTR).
                let status = if payload.len() >= 4 {
                    i32_ne(payload, 0)
                } else {
                    0
                };
                if status < 0 {
                    return Err(DecodeError::Kernel {
                        errno: status.checked_neg().unwrap_or(i32::MAX),
                    });
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                need("nlmsgerr", payload, 0, 4)?;
                let code = i32_ne(payload, 0);
                return Err(DecodeError::Kernel {
                    errno: code.checked_neg().unwrap_or(i32::MAX),
                });
            }
            NLMSG_NOOP => {}
            other => {
                return Err(DecodeError::UnexpectedType {
                    kind: other,
                    offset,
                })
            }
        }
        // NLMSG_ALIGN
        offset += (len + 3) & !3;
    }
    Ok(Progress::More)
}

/// Decodes one `inet_diag_msg` with its attributes. `base` is its offset in the datagram,
/// used only in error messages.
pub fn decode_inet_diag_msg(msg: &[u8], base: usize) -> Result<SocketRecord, DecodeError> {
    need("inet_diag_msg", msg, 0, INET_DIAG_MSG_LEN).map_err(|e| rebase(e, base))?;
    let family = msg[0];
    let state = TcpState::from_kernel(msg[1]).ok_or(DecodeError::UnknownState {
        code: msg[1],
        offset: base + 1,
    })?;
    let remote_addr = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(msg[24], msg[25], msg[26], msg[27])),
        AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&msg[24..40]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        other => {
            return Err(DecodeError::UnknownFamily {
                family: other,
                offset: base,
            })
        }
    };
    // idiag_cookie is two u32 in host order, low word first (sock_diag_save_cookie).
    let cookie = u64::from(u32_ne(msg, 44)) | (u64::from(u32_ne(msg, 48)) << 32);
    let mut record = SocketRecord {
        cookie,
        state,
        local_port: u16_be(msg, 4),
        remote_port: u16_be(msg, 6),
        remote_addr,
        rx_queue: u32_ne(msg, 56),
        tx_queue: u32_ne(msg, 60),
        timer: Timer::from_kernel(msg[2]),
        timer_retrans: msg[3],
        info: None,
    };
    // Attributes: struct rtattr { u16 len; u16 type; } padded to 4 bytes.
    let mut at = INET_DIAG_MSG_LEN;
    while at + 4 <= msg.len() {
        let nla_len = usize::from(u16_ne(msg, at));
        let nla_type = u16_ne(msg, at + 2) & 0x3fff;
        if nla_len < 4 {
            return Err(DecodeError::Truncated {
                what: "attribute length",
                offset: base + at,
                need: 4,
                have: nla_len,
            });
        }
        need("attribute", msg, at, nla_len).map_err(|e| rebase(e, base))?;
        if nla_type == INET_DIAG_INFO {
            record.info = Some(decode_tcp_info(&msg[at + 4..at + nla_len]));
        }
        at += (nla_len + 3) & !3;
    }
    Ok(record)
}

fn rebase(e: DecodeError, base: usize) -> DecodeError {
    match e {
        DecodeError::Truncated {
            what,
            offset,
            need,
            have,
        } => DecodeError::Truncated {
            what,
            offset: offset + base,
            need,
            have,
        },
        other => other,
    }
}

/// Decodes `struct tcp_info` of any length; fields the kernel did not send stay absent.
pub fn decode_tcp_info(b: &[u8]) -> TcpInfo {
    let u8_at = |at: usize| b.get(at).copied().unwrap_or(0);
    let u16_at = |at: usize| if b.len() >= at + 2 { u16_ne(b, at) } else { 0 };
    let u32_at = |at: usize| if b.len() >= at + 4 { u32_ne(b, at) } else { 0 };
    let u64_at = |at: usize| if b.len() >= at + 8 { u64_ne(b, at) } else { 0 };
    TcpInfo {
        len: u16::try_from(b.len()).unwrap_or(u16::MAX),
        retransmits: u8_at(off::RETRANSMITS),
        probes: u8_at(off::PROBES),
        backoff: u8_at(off::BACKOFF),
        rto_us: u32_at(off::RTO),
        last_data_sent_ms: u32_at(off::LAST_DATA_SENT),
        last_data_recv_ms: u32_at(off::LAST_DATA_RECV),
        last_ack_recv_ms: u32_at(off::LAST_ACK_RECV),
        total_retrans: u32_at(off::TOTAL_RETRANS),
        bytes_acked: u64_at(off::BYTES_ACKED),
        bytes_received: u64_at(off::BYTES_RECEIVED),
        segs_out: u32_at(off::SEGS_OUT),
        segs_in: u32_at(off::SEGS_IN),
        data_segs_in: u32_at(off::DATA_SEGS_IN),
        data_segs_out: u32_at(off::DATA_SEGS_OUT),
        total_rto: u16_at(off::TOTAL_RTO),
    }
}
