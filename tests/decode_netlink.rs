//! Decoder tests on byte fixtures annotated field by field (layouts in src/source/decode.rs).
//! Values were chosen to be distinct so that a field read at the wrong offset shows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use drainwatch::model::socket::{TcpState, Timer};
use drainwatch::source::decode::{decode_datagram, decode_tcp_info, DecodeError, Progress};

/// One SOCK_DIAG_BY_FAMILY message as Linux 6.18 sends it: an IPv4 connection with a full
/// 280-byte tcp_info.
#[rustfmt::skip]
static RESP_V4_FULL: [u8; 372] = [
    // nlmsghdr (SOCK_DIAG_BY_FAMILY, NLM_F_MULTI)
    0x74, 0x01, 0x00, 0x00, // nlmsg_len = 372
    0x14, 0x00, // nlmsg_type = 20
    0x02, 0x00, // nlmsg_flags = 0x2
    0x07, 0x00, 0x00, 0x00, // nlmsg_seq = 7
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid = 0
    // inet_diag_msg
    0x02, // idiag_family = 2 (AF_INET)
    0x01, // idiag_state = 1 (ESTABLISHED)
    0x01, // idiag_timer = 1
    0x02, // idiag_retrans = 2
    0x1f, 0x90, // id.idiag_sport = 8080 (big endian)
    0x9c, 0x40, // id.idiag_dport = 40000 (big endian)
    0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id.idiag_src
    0x0a, 0xfa, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id.idiag_dst
    0x00, 0x00, 0x00, 0x00, // id.idiag_if = 0
    0x34, 0x12, 0x00, 0x00, // id.idiag_cookie[0] = 0x1234 (low word)
    0x01, 0x00, 0x00, 0x00, // id.idiag_cookie[1] = 0x1 (high word)
    0xd0, 0x07, 0x00, 0x00, // idiag_expires = 2000 ms
    0x00, 0x00, 0x00, 0x00, // idiag_rqueue = 0
    0x2a, 0x00, 0x00, 0x00, // idiag_wqueue = 42
    0x00, 0x00, 0x00, 0x00, // idiag_uid = 0
    0x39, 0x30, 0x00, 0x00, // idiag_inode = 12345
    // rtattr
    0x1c, 0x01, // rta_len = 284
    0x02, 0x00, // rta_type = 2 (INET_DIAG_INFO)
    // struct tcp_info, 280 bytes
    0x01, //   0: state = 1 (TCP_ESTABLISHED)
    0x00, //   1: ca_state
    0x02, //   2: retransmits = 2
    0x00, //   3: probes
    0x03, //   4: backoff = 3
    0x00, //   5: options
    0x00, //   6: snd_wscale:4, rcv_wscale:4
    0x00, //   7: delivery_rate_app_limited:1, fastopen_client_fail:2
    0x00, 0xe7, 0x18, 0x00, //   8: rto = 1632000 (us)
    0x00, 0x00, 0x00, 0x00, //  12: ato (us)
    0x00, 0x80, 0x00, 0x00, //  16: snd_mss = 32768
    0x18, 0x02, 0x00, 0x00, //  20: rcv_mss = 536
    0x00, 0x00, 0x00, 0x00, //  24: unacked
    0x00, 0x00, 0x00, 0x00, //  28: sacked
    0x00, 0x00, 0x00, 0x00, //  32: lost
    0x00, 0x00, 0x00, 0x00, //  36: retrans
    0x00, 0x00, 0x00, 0x00, //  40: fackets
    0xdc, 0x05, 0x00, 0x00, //  44: last_data_sent = 1500 (ms)
    0x00, 0x00, 0x00, 0x00, //  48: last_ack_sent (ms)
    0xc4, 0x09, 0x00, 0x00, //  52: last_data_recv = 2500 (ms)
    0x78, 0x05, 0x00, 0x00, //  56: last_ack_recv = 1400 (ms)
    0xff, 0xff, 0x00, 0x00, //  60: pmtu = 65535
    0x00, 0x00, 0x00, 0x00, //  64: rcv_ssthresh
    0x34, 0x00, 0x00, 0x00, //  68: rtt = 52 (us)
    0x1a, 0x00, 0x00, 0x00, //  72: rttvar = 26 (us)
    0x00, 0x00, 0x00, 0x00, //  76: snd_ssthresh
    0x0a, 0x00, 0x00, 0x00, //  80: snd_cwnd = 10
    0xcb, 0xff, 0x00, 0x00, //  84: advmss = 65483
    0x00, 0x00, 0x00, 0x00, //  88: reordering
    0x00, 0x00, 0x00, 0x00, //  92: rcv_rtt
    0x00, 0x00, 0x00, 0x00, //  96: rcv_space
    0x07, 0x00, 0x00, 0x00, // 100: total_retrans = 7
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 104: pacing_rate
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 112: max_pacing_rate
    0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 120: bytes_acked = 4097 (4.1)
    0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 128: bytes_received = 1025 (4.1)
    0x0c, 0x00, 0x00, 0x00, // 136: segs_out = 12 (4.2)
    0x09, 0x00, 0x00, 0x00, // 140: segs_in = 9 (4.2)
    0x00, 0x00, 0x00, 0x00, // 144: notsent_bytes (4.6)
    0x00, 0x00, 0x00, 0x00, // 148: min_rtt
    0x04, 0x00, 0x00, 0x00, // 152: data_segs_in = 4
    0x05, 0x00, 0x00, 0x00, // 156: data_segs_out = 5
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 160: delivery_rate (4.9)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 168: busy_time (4.10)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 176: rwnd_limited
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 184: sndbuf_limited
    0x00, 0x00, 0x00, 0x00, // 192: delivered (4.18)
    0x00, 0x00, 0x00, 0x00, // 196: delivered_ce
    0x04, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 200: bytes_sent = 4100 (4.19)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 208: bytes_retrans
    0x00, 0x00, 0x00, 0x00, // 216: dsack_dups
    0x00, 0x00, 0x00, 0x00, // 220: reord_seen (5.0)
    0x00, 0x00, 0x00, 0x00, // 224: rcv_ooopack (5.4)
    0x00, 0x00, 0x00, 0x00, // 228: snd_wnd (5.4)
    0x00, 0x00, 0x00, 0x00, // 232: rcv_wnd (6.2)
    0x00, 0x00, 0x00, 0x00, // 236: rehash (6.2)
    0x02, 0x00, // 240: total_rto = 2 (6.7)
    0x00, 0x00, // 242: total_rto_recoveries (6.7)
    0x00, 0x00, 0x00, 0x00, // 244: total_rto_time (6.7)
    0x00, 0x00, 0x00, 0x00, // 248: received_ce (6.18)
    0x00, 0x00, 0x00, 0x00, // 252: delivered_e1_bytes
    0x00, 0x00, 0x00, 0x00, // 256: delivered_e0_bytes
    0x00, 0x00, 0x00, 0x00, // 260: delivered_ce_bytes
    0x00, 0x00, 0x00, 0x00, // 264: received_e1_bytes
    0x00, 0x00, 0x00, 0x00, // 268: received_e0_bytes
    0x00, 0x00, 0x00, 0x00, // 272: received_ce_bytes
    0x00, 0x00, // 276: accecn_fail_mode
    0x00, 0x00, // 278: accecn_opt_seen
];

/// The same connection over IPv6 as an older kernel (4.2 - 4.5) sends it: tcp_info stops at
/// 144 bytes, after tcpi_segs_in.
#[rustfmt::skip]
static RESP_V6_SHORT: [u8; 236] = [
    // nlmsghdr (SOCK_DIAG_BY_FAMILY, NLM_F_MULTI)
    0xec, 0x00, 0x00, 0x00, // nlmsg_len = 236
    0x14, 0x00, // nlmsg_type = 20
    0x02, 0x00, // nlmsg_flags = 0x2
    0x07, 0x00, 0x00, 0x00, // nlmsg_seq = 7
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid = 0
    // inet_diag_msg
    0x0a, // idiag_family = 10 (AF_INET6)
    0x01, // idiag_state = 1 (ESTABLISHED)
    0x00, // idiag_timer = 0
    0x00, // idiag_retrans = 0
    0x1f, 0x90, // id.idiag_sport = 8080 (big endian)
    0x9c, 0x40, // id.idiag_dport = 40000 (big endian)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // id.idiag_src
    0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // id.idiag_dst
    0x00, 0x00, 0x00, 0x00, // id.idiag_if = 0
    0x99, 0x00, 0x00, 0x00, // id.idiag_cookie[0] = 0x99 (low word)
    0x00, 0x00, 0x00, 0x00, // id.idiag_cookie[1] = 0x0 (high word)
    0xd0, 0x07, 0x00, 0x00, // idiag_expires = 2000 ms
    0x00, 0x00, 0x00, 0x00, // idiag_rqueue = 0
    0x2a, 0x00, 0x00, 0x00, // idiag_wqueue = 42
    0x00, 0x00, 0x00, 0x00, // idiag_uid = 0
    0x39, 0x30, 0x00, 0x00, // idiag_inode = 12345
    // rtattr
    0x94, 0x00, // rta_len = 148
    0x02, 0x00, // rta_type = 2 (INET_DIAG_INFO)
    // struct tcp_info, 144 bytes
    0x01, //   0: state = 1 (TCP_ESTABLISHED)
    0x00, //   1: ca_state
    0x02, //   2: retransmits = 2
    0x00, //   3: probes
    0x03, //   4: backoff = 3
    0x00, //   5: options
    0x00, //   6: snd_wscale:4, rcv_wscale:4
    0x00, //   7: delivery_rate_app_limited:1, fastopen_client_fail:2
    0x00, 0xe7, 0x18, 0x00, //   8: rto = 1632000 (us)
    0x00, 0x00, 0x00, 0x00, //  12: ato (us)
    0x00, 0x80, 0x00, 0x00, //  16: snd_mss = 32768
    0x18, 0x02, 0x00, 0x00, //  20: rcv_mss = 536
    0x00, 0x00, 0x00, 0x00, //  24: unacked
    0x00, 0x00, 0x00, 0x00, //  28: sacked
    0x00, 0x00, 0x00, 0x00, //  32: lost
    0x00, 0x00, 0x00, 0x00, //  36: retrans
    0x00, 0x00, 0x00, 0x00, //  40: fackets
    0xdc, 0x05, 0x00, 0x00, //  44: last_data_sent = 1500 (ms)
    0x00, 0x00, 0x00, 0x00, //  48: last_ack_sent (ms)
    0xc4, 0x09, 0x00, 0x00, //  52: last_data_recv = 2500 (ms)
    0x78, 0x05, 0x00, 0x00, //  56: last_ack_recv = 1400 (ms)
    0xff, 0xff, 0x00, 0x00, //  60: pmtu = 65535
    0x00, 0x00, 0x00, 0x00, //  64: rcv_ssthresh
    0x34, 0x00, 0x00, 0x00, //  68: rtt = 52 (us)
    0x1a, 0x00, 0x00, 0x00, //  72: rttvar = 26 (us)
    0x00, 0x00, 0x00, 0x00, //  76: snd_ssthresh
    0x0a, 0x00, 0x00, 0x00, //  80: snd_cwnd = 10
    0xcb, 0xff, 0x00, 0x00, //  84: advmss = 65483
    0x00, 0x00, 0x00, 0x00, //  88: reordering
    0x00, 0x00, 0x00, 0x00, //  92: rcv_rtt
    0x00, 0x00, 0x00, 0x00, //  96: rcv_space
    0x07, 0x00, 0x00, 0x00, // 100: total_retrans = 7
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 104: pacing_rate
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 112: max_pacing_rate
    0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 120: bytes_acked = 4097 (4.1)
    0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 128: bytes_received = 1025 (4.1)
    0x0c, 0x00, 0x00, 0x00, // 136: segs_out = 12 (4.2)
    0x09, 0x00, 0x00, 0x00, // 140: segs_in = 9 (4.2)
];

/// NLMSG_DONE with status 0: the end of a dump.
#[rustfmt::skip]
static DONE: [u8; 20] = [
    // nlmsghdr (NLMSG_DONE, NLM_F_MULTI)
    0x14, 0x00, 0x00, 0x00, // nlmsg_len = 20
    0x03, 0x00, // nlmsg_type = 3
    0x02, 0x00, // nlmsg_flags = 0x2
    0x07, 0x00, 0x00, 0x00, // nlmsg_seq = 7
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid = 0
    0x00, 0x00, 0x00, 0x00, // status = 0
];

/// NLMSG_ERROR carrying -EINVAL, as the kernel answers a request with a bad bytecode filter.
#[rustfmt::skip]
static ERROR_EINVAL: [u8; 36] = [
    // nlmsghdr (NLMSG_ERROR)
    0x24, 0x00, 0x00, 0x00, // nlmsg_len = 36
    0x02, 0x00, // nlmsg_type = 2
    0x00, 0x00, // nlmsg_flags = 0x0
    0x07, 0x00, 0x00, 0x00, // nlmsg_seq = 7
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid = 0
    0xea, 0xff, 0xff, 0xff, // error = -22 (EINVAL)
    // the offending request's nlmsghdr, echoed back
    0x48, 0x00, 0x00, 0x00, 0x14, 0x00, 0x01, 0x03, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

#[test]
fn full_tcp_info_message_decodes_every_field() {
    let mut out = Vec::new();
    assert_eq!(decode_datagram(&RESP_V4_FULL, &mut out), Ok(Progress::More));
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(r.cookie, 0x1_0000_1234);
    assert_eq!(r.state, TcpState::Established);
    assert_eq!(r.local_port, 8080);
    assert_eq!(r.remote_port, 40000);
    assert_eq!(r.remote_addr, IpAddr::V4(Ipv4Addr::new(10, 250, 0, 7)));
    assert_eq!((r.rx_queue, r.tx_queue), (0, 42));
    assert_eq!(r.timer, Timer::Retransmit);
    assert_eq!(r.timer_retrans, 2);
    let info = r.info.expect("INET_DIAG_INFO present");
    assert_eq!(info.len, 280);
    assert_eq!((info.retransmits, info.probes, info.backoff), (2, 0, 3));
    assert_eq!(info.rto_us, 1_632_000);
    assert_eq!(info.last_data_sent_ms, 1500);
    assert_eq!(info.last_data_recv_ms, 2500);
    assert_eq!(info.last_ack_recv_ms, 1400);
    assert_eq!(info.idle_ms(), 1500);
    assert_eq!(info.total_retrans, 7);
    assert_eq!(info.bytes_acked(), Some(4097));
    assert_eq!(info.bytes_received(), Some(1025));
    assert_eq!(info.segs_out(), Some(12));
    assert_eq!(info.segs_in(), Some(9));
    assert_eq!(info.data_segs_in(), Some(4));
    assert_eq!(info.data_segs_out(), Some(5));
    assert_eq!(info.total_rto(), Some(2));
    assert!(r.is_retransmitting());
}

#[test]
fn short_tcp_info_from_an_older_kernel_decodes_what_is_there() {
    let mut out = Vec::new();
    assert_eq!(
        decode_datagram(&RESP_V6_SHORT, &mut out),
        Ok(Progress::More)
    );
    let r = &out[0];
    assert_eq!(
        r.remote_addr,
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7))
    );
    assert_eq!(r.cookie, 0x99);
    assert_eq!(r.timer, Timer::None);
    let info = r.info.expect("INET_DIAG_INFO present");
    assert_eq!(info.len, 144);
    assert_eq!(info.last_data_recv_ms, 2500);
    assert_eq!(info.bytes_received(), Some(1025));
    assert_eq!(info.segs_in(), Some(9));
    // Fields after byte 144 did not exist yet.
    assert_eq!(info.data_segs_in(), None);
    assert_eq!(info.data_segs_out(), None);
    assert_eq!(info.total_rto(), None);
}

#[test]
fn tcp_info_of_any_length_never_fails() {
    for len in 0..=RESP_V4_FULL.len() - 92 {
        let info = decode_tcp_info(&RESP_V4_FULL[92..92 + len]);
        assert_eq!(usize::from(info.len), len);
        assert_eq!(info.bytes_acked().is_some(), len >= 128);
    }
}

#[test]
fn multi_part_dump_collects_every_datagram_until_done() {
    let first = concat(&[&RESP_V4_FULL, &RESP_V6_SHORT]);
    let mut out = Vec::new();
    assert_eq!(decode_datagram(&first, &mut out), Ok(Progress::More));
    assert_eq!(decode_datagram(&DONE, &mut out), Ok(Progress::Done));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].cookie, 0x1_0000_1234);
    assert_eq!(out[1].cookie, 0x99);
}

#[test]
fn nlmsg_error_is_an_error_not_an_empty_dump() {
    let mut out = Vec::new();
    assert_eq!(
        decode_datagram(&ERROR_EINVAL, &mut out),
        Err(DecodeError::Kernel { errno: 22 })
    );
    assert!(out.is_empty());
}

#[test]
fn negative_done_status_is_an_error() {
    let mut done = DONE;
    done[16..20].copy_from_slice(&(-4i32).to_ne_bytes()); // -EINTR
    assert_eq!(
        decode_datagram(&done, &mut Vec::new()),
        Err(DecodeError::Kernel { errno: 4 })
    );
}

#[test]
fn interrupted_dump_is_an_error() {
    let mut msg = RESP_V4_FULL;
    msg[6] |= 0x10; // NLM_F_DUMP_INTR
    assert_eq!(
        decode_datagram(&msg, &mut Vec::new()),
        Err(DecodeError::Interrupted)
    );
}

#[test]
fn every_truncation_is_a_decode_error_never_a_panic() {
    for cut in 1..RESP_V4_FULL.len() {
        let result = decode_datagram(&RESP_V4_FULL[..cut], &mut Vec::new());
        assert!(
            matches!(result, Err(DecodeError::Truncated { .. })),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn truncated_attribute_inside_a_whole_message_is_an_error() {
    let mut msg = RESP_V4_FULL;
    // rta_len claims 4 bytes more than the message holds.
    msg[88..90].copy_from_slice(&(288u16).to_ne_bytes());
    let result = decode_datagram(&msg, &mut Vec::new());
    assert!(
        matches!(
            result,
            Err(DecodeError::Truncated {
                what: "attribute",
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn unknown_state_is_reported_with_its_offset() {
    let mut msg = RESP_V4_FULL;
    msg[17] = 99;
    assert_eq!(
        decode_datagram(&msg, &mut Vec::new()),
        Err(DecodeError::UnknownState {
            code: 99,
            offset: 17
        })
    );
}

#[test]
fn random_bytes_never_panic() {
    // A small deterministic generator (xorshift) stands in for a fuzzer here.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut buf = RESP_V4_FULL.to_vec();
        let at = (x as usize) % buf.len();
        buf[at] = (x >> 32) as u8;
        let cut = ((x >> 40) as usize) % (buf.len() + 1);
        let _ = decode_datagram(&buf[..cut], &mut Vec::new());
    }
}
