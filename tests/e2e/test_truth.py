"""Unit tests of the capture truth and the sampler model (run by run.sh first)."""

from __future__ import annotations

import struct
import tempfile
import unittest
from pathlib import Path

import compare
import truth as tr

SRV, LB = "10.250.11.2", "10.250.11.1"
S, A, F, R = tr.SYN, tr.ACK, tr.FIN, tr.RST


def pkt(t: float, inbound: bool, flags: int, peer_port: int = 40000, port: int = 80) -> tr.Packet:
    if inbound:
        return tr.Packet(t, LB, peer_port, SRV, port, flags)
    return tr.Packet(t, SRV, port, LB, peer_port, flags)


def handshake(t: float, peer_port: int = 40000) -> list[tr.Packet]:
    return [pkt(t, True, S, peer_port), pkt(t + 0.001, False, S | A, peer_port), pkt(t + 0.002, True, A, peer_port)]


def conns(packets: list[tr.Packet], **kw) -> list[tr.Conn]:
    return tr.Capture(packets, [80], **kw).ports[80].conns


class ConnectionLife(unittest.TestCase):
    def test_server_close_first_enters_time_wait(self):
        (c,) = conns(handshake(10.0) + [pkt(12.0, False, F | A), pkt(12.001, True, A), pkt(12.002, True, F | A)])
        self.assertEqual((c.est, c.est_end, c.how), (10.002, 12.0, "server_fin_first"))
        self.assertEqual((c.tw, c.gone), (12.002, 12.002 + tr.TIME_WAIT_SECONDS))

    def test_peer_close_first_ends_at_last_ack(self):
        (c,) = conns(handshake(10.0) + [pkt(12.0, True, F | A), pkt(12.001, False, A),
                                        pkt(12.2, False, F | A), pkt(12.201, True, A)])
        self.assertEqual((c.how, c.tw, c.gone), ("peer_fin_first", None, 12.201))

    def test_reset_ends_the_socket(self):
        (c,) = conns(handshake(10.0) + [pkt(11.0, True, R | A), pkt(11.5, True, A)])
        self.assertEqual((c.how, c.gone, c.est_end), ("rst_in", 11.0, 11.0))

    def test_refused_syn_is_not_a_connection(self):
        capture = tr.Capture([pkt(10.0, True, S), pkt(10.001, False, R | A)], [80])
        self.assertEqual((capture.ports[80].conns[0].est, capture.ports[80].rst_out_without_socket), (None, 0))
        capture = tr.Capture([pkt(10.001, False, R | A)], [80])
        self.assertEqual(capture.ports[80].rst_out_without_socket, 1)

    def test_syn_reusing_a_time_wait_tuple_starts_a_new_connection(self):
        first = handshake(10.0) + [pkt(11.0, False, F | A), pkt(11.002, True, F | A)]
        a, b = conns(first + handshake(20.0))
        self.assertEqual((a.gone, b.est), (20.0, 20.002))

    def test_loopback_side_is_told_by_port(self):
        packets = [tr.Packet(1.0, "127.0.0.1", 50000, "127.0.0.1", 8080, S),
                   tr.Packet(1.001, "127.0.0.1", 8080, "127.0.0.1", 50000, S | A),
                   tr.Packet(1.002, "127.0.0.1", 50000, "127.0.0.1", 8080, A)]
        (c,) = tr.Capture(packets, [8080]).ports[8080].conns
        self.assertEqual((c.peer, c.est), (("127.0.0.1", 50000), 1.002))


class Drops(unittest.TestCase):
    flow = frozenset({(80, LB, 40000)})
    give_up = tr.retransmission_timeout(5)

    def capture(self, window: tr.DropWindow, extra: list[tr.Packet]) -> tr.Capture:
        return tr.Capture(sorted(handshake(10.0) + extra, key=lambda p: p.t), [80], [window], retries2=5)

    def test_a_socket_with_nothing_to_send_cannot_time_out(self):
        window = tr.DropWindow(20.0, None, flows=self.flow)
        capture = self.capture(window, [pkt(21.0, False, A)])  # a pure ACK is not retransmitted
        self.assertEqual(tr.Established(capture.ports[80].conns).range(90.0, 90.0), (1, 1))

    def test_a_socket_retransmitting_into_a_drop_dies_after_its_last_retransmission(self):
        # Measured on a veth: a tail loss probe after 0.207 s, then RTOs doubling from 0.208 s.
        offsets = (0, 0.207, 0.415, 0.851, 1.683, 3.347, 6.707)
        window = tr.DropWindow(20.0, None, flows=self.flow)
        capture = self.capture(window, [tr.Packet(21.0 + r, SRV, 80, LB, 40000, A, length=54) for r in offsets])
        (c,) = capture.ports[80].conns
        gap = 6.707 - 3.347
        earliest, latest = 27.707 + 2 * gap / 1.125, 27.707 + 2 * gap * 1.125
        self.assertEqual(c.how, "timeout")
        self.assertAlmostEqual(c.uncertain[0], earliest - tr.TIMER_JITTER)
        self.assertAlmostEqual(c.died, latest + tr.TIMER_JITTER)
        est = tr.Established(capture.ports[80].conns)
        self.assertEqual(est.range(33.6, 33.6), (1, 1))  # past the 12.6 s bound, before the expiry
        self.assertEqual(est.range(35.0, 35.0), (0, 1))
        self.assertEqual(est.range(latest + 0.01, latest + 0.01), (0, 0))

    def test_a_drop_lifted_before_the_give_up_leaves_the_socket_uncertain_until_its_next_packet(self):
        window = tr.DropWindow(20.0, 30.0, flows=self.flow)
        sent = tr.Packet(21.0, SRV, 80, LB, 40000, A, length=54)
        (c,) = self.capture(window, [sent, pkt(35.0, True, F | A), pkt(35.0, False, R)]).ports[80].conns
        self.assertEqual((c.uncertain, c.died), ((21.0 + self.give_up, 35.0), None))

    def test_retransmission_timeout_matches_the_kernel_model(self):
        self.assertAlmostEqual(tr.retransmission_timeout(5), 12.6)
        self.assertAlmostEqual(tr.retransmission_timeout(15), 924.6, places=1)


class SamplerModel(unittest.TestCase):
    samples = [float(s) for s in range(0, 100)]

    def events(self, packets):
        return tr.counted_events(conns(packets), self.samples, skew=0.02)

    def test_short_peer_closed_connection_between_samples_is_invisible(self):
        packets = handshake(10.1) + [pkt(10.3, True, F | A), pkt(10.4, False, F | A), pkt(10.401, True, A)]
        self.assertEqual(self.events(packets), {"opened": [], "closed": []})

    def test_short_peer_closed_connection_is_counted_with_destroy_events(self):
        packets = handshake(10.1) + [pkt(10.3, True, F | A), pkt(10.4, False, F | A), pkt(10.401, True, A)]
        ev = tr.counted_events(conns(packets), self.samples, skew=0.02, exact=True)
        self.assertEqual(ev, {"opened": [tr.Event(11.0, 11.0, True)], "closed": [tr.Event(11.0, 11.0, True)]})

    def test_short_server_closed_connection_is_seen_in_time_wait(self):
        packets = handshake(10.1) + [pkt(10.3, False, F | A), pkt(10.301, True, F | A)]
        ev = self.events(packets)
        self.assertEqual(ev["opened"], [tr.Event(11.0, 11.0, True)])
        self.assertEqual(ev["closed"], [tr.Event(11.0, 11.0, True)])

    def test_long_connection_counted_at_first_and_after_last_sight(self):
        packets = handshake(10.5) + [pkt(15.5, True, R)]
        ev = self.events(packets)
        self.assertEqual((ev["opened"], ev["closed"]), ([tr.Event(11.0, 11.0, True)], [tr.Event(16.0, 16.0, True)]))
        self.assertEqual(tr.count_in(ev["opened"], 10.0, 11.0), (1, 1))
        self.assertEqual(tr.count_in(ev["opened"], 11.0, 20.0), (0, 0))

    def test_socket_first_seen_after_the_listener_closed_is_not_counted(self):
        packets = handshake(10.1) + [pkt(10.3, False, F | A), pkt(10.301, True, F | A)]
        ev = tr.counted_events(conns(packets), self.samples, skew=0.02, listener_gone=10.5)
        self.assertEqual(ev, {"opened": [], "closed": []})

    def test_event_within_skew_of_a_sample_is_a_range(self):
        ev = self.events(handshake(10.948) + [pkt(15.5, True, R)])
        self.assertEqual(ev["opened"], [tr.Event(11.0, 11.0, True)])
        ev = self.events(handshake(10.988) + [pkt(15.5, True, R)])
        self.assertEqual(ev["opened"], [tr.Event(11.0, 12.0, True)])
        ev = self.events(handshake(11.008) + [pkt(15.5, True, R)])
        self.assertEqual(ev["opened"], [tr.Event(11.0, 12.0, True)])
        self.assertEqual(tr.count_in(ev["opened"], 10.0, 11.0), (0, 1))


class Pcap(unittest.TestCase):
    ip = bytes([0x45, 0, 0, 44, 0, 0, 0, 0, 64, 6, 0, 0, 10, 250, 11, 1, 10, 250, 11, 2])
    tcp = struct.pack(">HHIIBBHHH", 40000, 80, 1, 0, 0x50, S, 64240, 0, 0) + b"abcd"

    def read(self, linktype: int, frame: bytes) -> list[tr.Packet]:
        data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 128, linktype)
        data += struct.pack("<IIII", 100, 250000, len(frame), len(frame)) + frame
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "x.pcap"
            path.write_bytes(data)
            return list(tr.read_pcap(path))

    def test_reads_sll2_frames(self):
        sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"")
        (p,) = self.read(276, sll2 + self.ip + self.tcp)
        self.assertEqual(p, tr.Packet(100.25, LB, 40000, SRV, 80, S, length=4))


class Samples(unittest.TestCase):
    def test_a_sample_no_scrape_saw_is_put_in_its_gap(self):
        samples = [compare.Sample(t) for t in (10.3, 11.3, 13.3, 14.3)]
        self.assertEqual(compare.sample_instants(samples, 1.0), [10.3, 11.3, 12.3, 13.3, 14.3])

    def test_query_results_join_on_the_step_and_dedupe_on_sample_time(self):
        results = {
            "timestamp": [{"metric": {}, "values": [[1, "0.5"], [2, "0.5"], [3, "2.5"]]}],
            "established": [{"metric": {"port": "80"}, "values": [[1, "7"], [2, "7"], [3, "9"]]}],
            "opened": [{"metric": {"port": "80"}, "values": [[3, "4"]]}],
        }
        samples = compare.samples_from(results)
        self.assertEqual([s.t for s in samples], [0.5, 2.5])
        self.assertEqual([s.get("established", 80) for s in samples], [7, 9])
        self.assertEqual([s.get("opened", 80) for s in samples], [0, 4])


class ResetTruth(unittest.TestCase):
    """truth.reset_kinds / reset_events: which RSTs on the wire drainwatch's tracepoints count."""

    SAMPLES = [float(t) for t in range(0, 40)]

    def counts(self, packets: list[tr.Packet], port: int = 80) -> dict[str, tuple[int, int]]:
        capture = tr.Capture(sorted(packets, key=lambda p: p.t), [port])
        events = tr.reset_events(capture.ports[port], self.SAMPLES, 0.02, delay=1.0)
        return {k: tr.count_in(v, -1.0, 100.0) for k, v in events.items()}

    def kinds(self, packets: list[tr.Packet], port: int = 80) -> list[str]:
        capture = tr.Capture(sorted(packets, key=lambda p: p.t), [port])
        return [k for _, _, k in tr.reset_kinds(capture.ports[port])]

    def test_received_counts_only_on_a_live_full_socket(self):
        packets = handshake(10.0, 40001) + [pkt(11.5, True, R | A, 40001), pkt(11.6, True, R | A, 40001)]
        # A second RST hits no socket; a reset in the handshake hits a request socket.
        packets += [pkt(12.0, True, S, 40002), pkt(12.001, False, S | A, 40002), pkt(12.002, True, R, 40002)]
        # A reset of a TIME_WAIT socket.
        packets += handshake(13.0, 40003) + [pkt(14.0, False, F | A, 40003), pkt(14.002, True, F | A, 40003),
                                            pkt(15.0, True, R, 40003)]
        c = self.counts(packets)
        self.assertEqual(c["resets_received"], (1, 1))
        self.assertEqual(self.kinds(packets), ["received", "in, no full socket", "in, no full socket",
                                               "in, no full socket"])

    def test_a_reset_in_the_accept_queue_counts(self):
        # The handshake completed: a full socket, accepted or not yet.
        self.assertEqual(self.counts(handshake(10.0) + [pkt(10.003, True, R | A)])["resets_received"], (1, 1))

    def test_sent_by_a_socket_or_from_our_address_counts(self):
        packets = handshake(10.0, 40001) + [pkt(11.5, False, R | A, 40001)]   # the socket's own abort
        # No socket any more (LAST_ACK ended), from 10.250.11.2.
        packets += handshake(11.7, 40009) + [pkt(11.8, True, F | A, 40009), pkt(11.801, False, F | A, 40009),
                                            pkt(11.802, True, A, 40009), pkt(12.0, True, A, 40009),
                                            pkt(12.001, False, R, 40009)]
        packets += [pkt(13.0, True, S, 40010), pkt(13.001, False, R | A, 40010)]  # a refused SYN
        c = self.counts(packets)
        self.assertEqual(c["resets_sent"], (3, 3))
        self.assertEqual(self.kinds(packets), ["sent by the socket", "sent without a full socket",
                                               "sent without a full socket"])

    def test_a_socketless_reset_from_loopback_is_not_counted(self):
        lo = "127.0.0.1"
        packets = [tr.Packet(1.0, lo, 50000, lo, 8080, S), tr.Packet(1.001, lo, 8080, lo, 50000, S | A),
                   tr.Packet(1.002, lo, 50000, lo, 8080, A),
                   tr.Packet(2.0, lo, 8080, lo, 50000, R | A),      # the app's abort: counted
                   tr.Packet(3.0, lo, 50000, lo, 8080, A),
                   tr.Packet(3.001, lo, 8080, lo, 50000, R),        # no socket any more, on loopback: not
                   tr.Packet(4.0, lo, 50001, lo, 8080, S),
                   tr.Packet(4.001, lo, 8080, lo, 50001, R | A)]    # refused on loopback: not
        c = self.counts(packets, port=8080)
        self.assertEqual(c["resets_sent"], (1, 1))
        self.assertEqual(self.kinds(packets, port=8080), ["sent by the socket", "sent on loopback without a socket",
                                                          "sent on loopback without a socket"])

    def test_a_reset_at_a_sample_edge_may_fall_in_either_sample(self):
        capture = tr.Capture(handshake(10.0) + [pkt(12.01, True, R | A)], [80])
        events = tr.reset_events(capture.ports[80], self.SAMPLES, 0.02, delay=0.0)["resets_received"]
        self.assertEqual(tr.count_in(events, 11.0, 12.0), (0, 1))
        self.assertEqual(tr.count_in(events, 12.0, 13.0), (0, 1))
        self.assertEqual(tr.count_in(events, 11.0, 13.0), (1, 1))

    def test_a_reset_whose_connection_is_joined_at_its_destroy_may_come_a_sample_later(self):
        capture = tr.Capture(handshake(10.0) + [pkt(12.5, True, R | A)], [80])
        events = tr.reset_events(capture.ports[80], self.SAMPLES, 0.02, delay=1.0)["resets_received"]
        self.assertEqual(tr.count_in(events, 12.0, 13.0), (0, 1))
        self.assertEqual(tr.count_in(events, 12.0, 14.0), (1, 1))


def seq_pkt(t: float, inbound: bool, flags: int, seq: int, ack: int, length: int = 0,
            peer: tuple[str, int] = (LB, 40000), port: int = 80) -> tr.Packet:
    if inbound:
        return tr.Packet(t, peer[0], peer[1], SRV, port, flags, length, seq=seq, ack=ack)
    return tr.Packet(t, SRV, port, peer[0], peer[1], flags, length, seq=seq, ack=ack)


class ResetSequence(unittest.TestCase):
    """The kernel accepts an RST only at RCV.NXT (RFC 5961); the capture tracks RCV.NXT. Client
    ISN 1000, server ISN 5000; the client sends 100 bytes, the server answers 200."""

    SAMPLES = [float(t) for t in range(0, 40)]

    def exchange(self, peer=(LB, 40000), port=80) -> list[tr.Packet]:
        return [seq_pkt(10.0, True, S, 1000, 0, peer=peer, port=port),
                seq_pkt(10.001, False, S | A, 5000, 1001, peer=peer, port=port),
                seq_pkt(10.002, True, A, 1001, 5001, peer=peer, port=port),
                seq_pkt(10.5, True, A, 1001, 5001, 100, peer=peer, port=port),
                seq_pkt(10.6, False, A, 5001, 1101, 200, peer=peer, port=port),
                seq_pkt(10.601, True, A, 1101, 5201, peer=peer, port=port)]

    def run_(self, packets, port=80):
        truth = tr.Capture(packets, [port]).ports[port]
        events = tr.reset_events(truth, self.SAMPLES, 0.02, delay=1.0)
        return truth, {k: tr.count_in(v, -1.0, 100.0) for k, v in events.items()}

    def test_an_rst_at_rcv_nxt_resets(self):
        truth, c = self.run_(self.exchange() + [seq_pkt(12.0, True, R | A, 1101, 5201)])
        self.assertEqual((c["resets_received"], truth.conns[0].how), ((1, 1), "rst_in"))

    def test_an_rst_off_rcv_nxt_is_ignored_and_the_socket_lives(self):
        # In the window but not RCV.NXT (data the peer sent was lost): a challenge ACK answers it,
        # then the peer's answer to the challenge ACK is at RCV.NXT and resets.
        packets = self.exchange() + [seq_pkt(12.0, True, R | A, 1301, 5201),
                                     seq_pkt(12.0001, False, A, 5201, 1101),
                                     seq_pkt(12.0002, True, R, 1101, 0)]
        truth, c = self.run_(packets)
        (conn,) = truth.conns
        self.assertEqual((c["resets_received"], conn.rst_in, conn.rst_in_ignored), ((1, 1), 12.0002, [12.0]))
        self.assertEqual([k for _, _, k in tr.reset_kinds(truth)], ["in, ignored (sequence)", "received"])

    def test_rcv_nxt_minus_one_resets_once_the_peers_fin_is_in(self):
        packets = self.exchange() + [seq_pkt(11.0, True, F | A, 1101, 5201), seq_pkt(11.001, False, A, 5201, 1102),
                                     seq_pkt(12.0, True, R, 1101, 0)]  # CLOSE_WAIT: tcp_reset_check
        self.assertEqual(self.run_(packets)[1]["resets_received"], (1, 1))

    def test_rcv_nxt_minus_one_is_ignored_while_established(self):
        packets = self.exchange() + [seq_pkt(12.0, True, R, 1100, 0)]
        self.assertEqual(self.run_(packets)[1]["resets_received"], (0, 0))

    def test_fin_wait1_is_a_full_socket(self):
        # The server closed; its FIN not acknowledged yet.
        packets = self.exchange() + [seq_pkt(11.0, False, F | A, 5201, 1101), seq_pkt(11.5, True, R, 1101, 0)]
        truth, c = self.run_(packets)
        self.assertEqual((truth.conns[0].fin_acked, c["resets_received"]), (None, (1, 1)))

    def test_after_the_fin_is_acked_an_orphan_is_a_time_wait_remnant_the_capture_cannot_tell(self):
        # FIN_WAIT2: close() made it a TIME_WAIT mini-socket (tcp_fin_timeout 60), shutdown() did
        # not. Received: counted in the upper bound only.
        packets = self.exchange() + [seq_pkt(11.0, False, F | A, 5201, 1101), seq_pkt(11.001, True, A, 1101, 5202),
                                     seq_pkt(11.5, True, R, 1101, 0)]
        truth, c = self.run_(packets)
        self.assertEqual((truth.conns[0].fin_acked, c["resets_received"]), (11.001, (0, 1)))

    def test_a_reset_sent_in_fin_wait2_counts_by_address_on_the_lb_link(self):
        # Data after the FIN was acked: an orphan answers with an RST, from its TIME_WAIT remnant
        # (no full socket) or the socket: from 10.250.11.2 it counts either way.
        tail = [seq_pkt(11.0, False, F | A, 5201, 1101), seq_pkt(11.001, True, A, 1101, 5202),
                seq_pkt(11.5, True, A, 1101, 5202, 30), seq_pkt(11.501, False, R, 5202, 0)]
        _, c = self.run_(self.exchange() + tail)
        self.assertEqual(c["resets_sent"], (1, 1))
        lo = ("127.0.0.1", 50000)
        packets = self.exchange(lo, 8080) + [
            seq_pkt(p.t, p.dst == SRV, p.flags, p.seq, p.ack, p.length, lo, 8080) for p in tail]
        _, c = self.run_(packets, port=8080)
        self.assertEqual(c["resets_sent"], (0, 1))  # on loopback: only a full socket is attributable

    def test_data_acking_the_fin_of_an_orphan_is_answered_by_its_full_socket(self):
        # FIN_WAIT1, and the segment that acks the FIN carries data: tcp_rcv_state_process aborts
        # the orphan (abort-on-data) while it is still a full socket, so on loopback it counts.
        lo = ("127.0.0.1", 50000)
        packets = self.exchange(lo, 8080) + [seq_pkt(11.0, False, F | A, 5201, 1101, peer=lo, port=8080),
                                             seq_pkt(11.5, True, A, 1101, 5202, 30, peer=lo, port=8080),
                                             seq_pkt(11.5001, False, R, 5202, 0, peer=lo, port=8080)]
        truth, c = self.run_(packets, port=8080)
        self.assertEqual((truth.conns[0].fin_acked, c["resets_sent"]), (11.5, (1, 1)))
        self.assertEqual([k for _, _, k in tr.reset_kinds(truth)],
                         ["sent by the socket, aborting on data after close"])

    def test_a_reset_in_time_wait_is_not_counted(self):
        packets = self.exchange() + [seq_pkt(11.0, False, F | A, 5201, 1101), seq_pkt(11.001, True, F | A, 1101, 5202),
                                     seq_pkt(11.002, False, A, 5202, 1102), seq_pkt(12.0, True, R, 1102, 0)]
        truth, c = self.run_(packets)
        self.assertEqual((truth.conns[0].tw, c["resets_received"]), (11.001, (0, 0)))


class TimeoutTruth(unittest.TestCase):
    """truth.timeout_events: connections that time out into a drop of the fault bookkeeping."""

    SAMPLES = [float(t) for t in range(0, 60)]
    flow = frozenset({(80, LB, 40000)})
    offsets = (0, 0.207, 0.415, 0.851, 1.683, 3.347, 6.707)  # retransmissions, measured on a veth

    def events(self, window: tr.DropWindow, extra: list[tr.Packet]) -> list[tr.Event]:
        capture = tr.Capture(sorted(handshake(10.0) + extra, key=lambda p: p.t), [80], [window], retries2=5)
        return tr.timeout_events(capture.ports[80], self.SAMPLES, 0.02, delay=1.0)

    def retransmissions(self, start: float) -> list[tr.Packet]:
        return [tr.Packet(start + r, SRV, 80, LB, 40000, A, length=54) for r in self.offsets]

    def test_a_socket_retransmitting_into_a_drop_times_out_once_in_its_death_span(self):
        (e,) = self.events(tr.DropWindow(20.0, None, flows=self.flow), self.retransmissions(21.0))
        self.assertTrue(e.certain)
        self.assertEqual(tr.count_in([e], 30.0, 40.0), (1, 1))
        # The give-up falls in its death span (33.7 to 35.3 s): counted at sample 34, 35 or 36 (37
        # when the connection is joined at its destroy), never before.
        self.assertEqual(tr.count_in([e], 30.0, 33.0), (0, 0))
        self.assertEqual(tr.count_in([e], 33.0, 35.0), (0, 1))
        self.assertEqual(tr.count_in([e], 33.0, 37.0), (1, 1))

    def test_a_socket_with_nothing_to_send_does_not_time_out(self):
        self.assertEqual(self.events(tr.DropWindow(20.0, None, flows=self.flow), [pkt(21.0, False, A)]), [])

    def test_a_flow_outside_the_bookkeeping_does_not_time_out(self):
        window = tr.DropWindow(20.0, None, flows=frozenset({(80, LB, 49999)}))
        self.assertEqual(self.events(window, self.retransmissions(21.0)), [])

    def test_a_drop_lifted_before_the_give_up_leaves_a_possible_timeout(self):
        sent = tr.Packet(21.0, SRV, 80, LB, 40000, A, length=54)
        (e,) = self.events(tr.DropWindow(20.0, 30.0, flows=self.flow), [sent, pkt(40.0, True, A), pkt(40.0001, False, A)])
        self.assertFalse(e.certain)
        self.assertEqual(tr.count_in([e], 0.0, 59.0), (0, 1))

    def test_an_rst_answering_the_peer_after_the_lift_proves_the_timeout(self):
        # Lifted at 34 s, inside the death span (33.7 to 35.3 s): the capture cannot bound the
        # death, but the RST that answers the peer's next segment says it is gone.
        (e,) = self.events(tr.DropWindow(20.0, 34.0, flows=self.flow),
                           self.retransmissions(21.0) + [pkt(34.5, True, F | A), pkt(34.5001, False, R)])
        self.assertTrue(e.certain)
        self.assertEqual(tr.count_in([e], 30.0, 40.0), (1, 1))

    def test_a_reset_received_in_a_silent_deaths_span_may_hit_no_socket(self):
        capture = tr.Capture(sorted(handshake(10.0) + self.retransmissions(21.0) + [pkt(34.8, True, R)],
                                    key=lambda p: p.t), [80], [tr.DropWindow(20.0, 34.5, flows=self.flow)], retries2=5)
        events = tr.reset_events(capture.ports[80], self.SAMPLES, 0.02, delay=1.0)
        self.assertEqual(tr.count_in(events["resets_received"], 0.0, 59.0), (0, 1))


class ResetAndTimeoutChecks(unittest.TestCase):
    """compare.Evaluator's resets and timeouts checks on a hand-made run."""

    def evaluator(self, packets, values: list[dict], trace_exact=True) -> compare.Evaluator:
        capture = tr.Capture(sorted(packets, key=lambda p: p.t), [80])
        samples = [compare.Sample(float(t), {k: {"80": v} for k, v in vals.items()} | {"trace_lost": {"": 0.0}})
                   for t, vals in enumerate(values)]
        scrapes = {"timestamp": [{"metric": {}, "values": [[t, str(t)] for t in range(len(values))]}],
                   "trace_exact": [{"metric": {}, "values": [[t, "1" if trace_exact else "0"]
                                                            for t in range(len(values))]}]}
        scenario = {"timing": {"sample_skew": 0.02}, "checks": []}
        phase = compare.Phase("p", 0.5, len(values) - 0.5)
        return compare.Evaluator(scenario, [phase], capture, samples, 1.0, {}, [], True, scrapes=scrapes)

    def test_resets_pass_when_drainwatch_counts_the_wire(self):
        packets = handshake(2.0) + [pkt(3.5, True, R | A)]
        ev = self.evaluator(packets, [{"resets_received": 0}] * 4 + [{"resets_received": 1}] * 4)
        rows = ev.check_resets({"ports": [80], "why": "w"}, ev.phases["p"])
        self.assertEqual([(r.quantity.split()[1], r.passed) for r in rows],
                         [('resets_total{direction="sent"}', True), ('resets_total{direction="received"}', True)])

    def test_resets_fail_without_exact_tracepoints(self):
        ev = self.evaluator(handshake(2.0), [{}] * 8, trace_exact=False)
        rows = ev.check_resets({"ports": [80], "why": "w"}, ev.phases["p"])
        self.assertFalse(rows[0].passed)

    def test_resets_fail_on_one_too_many(self):
        ev = self.evaluator(handshake(2.0), [{"resets_sent": 0}] * 4 + [{"resets_sent": 1}] * 4)
        rows = ev.check_resets({"ports": [80], "why": "w"}, ev.phases["p"])
        self.assertEqual([r.passed for r in rows], [False, True])


if __name__ == "__main__":
    unittest.main()
