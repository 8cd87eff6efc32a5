"""Unit tests of the per-connection class truth and its join with the connections API (run by run.sh first)."""

from __future__ import annotations

import struct
import tempfile
import unittest
from pathlib import Path

import classes as cl
import truth as tr

SRV, LB = "10.250.11.2", "10.250.11.1"
S, A, F, R, P = tr.SYN, tr.ACK, tr.FIN, tr.RST, 0x08

WS_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: 10.250.1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n")
WS_ANSWER = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
KEEPALIVE = b"GET /api/items HTTP/1.1\r\nHost: lb\r\nConnection: keep-alive\r\n\r\n"
CLOSE = b"GET /api/items HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def pkt(t: float, inbound: bool, flags: int, data: bytes = b"", peer_port: int = 40000,
        length: int | None = None) -> tr.Packet:
    n = len(data) if length is None else length
    if inbound:
        return tr.Packet(t, LB, peer_port, SRV, 80, flags, n, data)
    return tr.Packet(t, SRV, 80, LB, peer_port, flags, n, data)


def handshake(t: float, peer_port: int = 40000) -> list[tr.Packet]:
    return [pkt(t, True, S, peer_port=peer_port), pkt(t + 0.001, False, S | A, peer_port=peer_port),
            pkt(t + 0.002, True, A, peer_port=peer_port)]


def exchange(t: float, request: bytes, answer: bytes, peer_port: int = 40000) -> list[tr.Packet]:
    return [pkt(t, True, P | A, request, peer_port), pkt(t + 0.002, False, P | A, answer, peer_port)]


def conns(packets: list[tr.Packet]) -> list[tr.Conn]:
    return tr.Capture(sorted(packets, key=lambda p: p.t), [80]).ports[80].conns


class RequestParsing(unittest.TestCase):
    def test_headers_are_read_case_insensitively(self):
        method, headers = cl.parse_request(WS_REQUEST)
        self.assertEqual((method, headers["upgrade"], headers["connection"]), ("GET", "websocket", "Upgrade"))

    def test_a_head_cut_by_the_snaplen_still_parses_what_it_holds(self):
        _, headers = cl.parse_request(WS_REQUEST[:60])
        self.assertEqual(headers.get("upgrade"), "websocket")

    def test_not_http(self):
        self.assertIsNone(cl.parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))
        self.assertIsNone(cl.parse_request(b""))


class TruthClass(unittest.TestCase):
    def one(self, packets: list[tr.Packet]) -> str | None:
        (c,) = conns(packets)
        return cl.truth_class(c)

    def test_websocket_upgrade(self):
        self.assertEqual(self.one(handshake(10.0) + exchange(10.01, WS_REQUEST, WS_ANSWER)), cl.WEBSOCKET)

    def test_refused_upgrade_is_not_a_websocket(self):
        answer = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
        self.assertEqual(self.one(handshake(10.0) + exchange(10.01, WS_REQUEST, answer)), cl.OTHER)

    def test_keep_alive_and_connection_close(self):
        self.assertEqual(self.one(handshake(10.0) + exchange(10.01, KEEPALIVE, OK)), cl.HTTP_KA)
        self.assertEqual(self.one(handshake(10.0) + exchange(10.01, CLOSE, OK)), cl.HTTP_CLOSE)

    def test_a_request_split_over_two_segments_is_joined(self):
        packets = handshake(10.0) + [pkt(10.01, True, A, WS_REQUEST[:20]), pkt(10.011, True, P | A, WS_REQUEST[20:])]
        self.assertEqual(self.one(packets), cl.WEBSOCKET)

    def test_a_segment_cut_by_the_snaplen_ends_the_kept_head(self):
        packets = handshake(10.0) + [pkt(10.01, True, A, KEEPALIVE[:10], length=30),
                                     pkt(10.011, True, P | A, b"Upgrade: websocket\r\n\r\n")]
        (c,) = conns(packets)
        self.assertEqual((c.head_in, c.head_in_cut, c.bytes_in), (KEEPALIVE[:10], True, 30 + 22))

    def test_probe_that_completes_its_handshake(self):
        self.assertEqual(self.one(handshake(10.0) + [pkt(10.003, True, F | A), pkt(10.004, False, F | A),
                                                     pkt(10.005, True, A)]), cl.PROBE)

    def test_probe_reset_in_its_handshake_never_was_a_socket(self):
        (c,) = conns([pkt(10.0, True, S), pkt(10.0001, False, S | A), pkt(10.0002, True, R | A)])
        self.assertEqual((c.est, cl.truth_class(c)), (None, cl.PROBE))

    def test_unanswered_or_refused_syn_is_no_connection(self):
        self.assertIsNone(self.one([pkt(10.0, True, S)]))
        self.assertIsNone(self.one([pkt(10.0, True, S), pkt(10.0001, False, R | A)]))

    def test_silent_long_lived_connection_is_other(self):
        self.assertEqual(self.one(handshake(10.0) + [pkt(15.0, True, F | A)]), cl.OTHER)


def listing(peer_port: int, cls: str) -> dict:
    return {"port": 80, "peer": f"{LB}:{peer_port}", "state": "established", "class": cls, "reason": "r",
            "server_pushes": 0, "stream_samples": 0, "age_seconds": 1.0, "age_is_lower_bound": False,
            "idle_seconds": 0.1, "retransmitting": False}


def poll(t: float, *entries: dict, sample: float | None = None) -> dict:
    sample = t - 0.5 if sample is None else sample
    return {"n": 0, "t_sent": t - 0.01, "t_done": t, "sample_before": sample, "sample_after": sample,
            "status": 200, "error": None, "connections": list(entries)}


class Join(unittest.TestCase):
    def view(self, polls: list[dict]) -> cl.ClassView:
        first = handshake(10.0, 40001) + exchange(10.01, KEEPALIVE, OK, 40001) + [
            pkt(12.0, False, F | A, peer_port=40001), pkt(12.001, True, F | A, peer_port=40001)]
        # The same peer port again later (TIME_WAIT reuse by a new SYN): a WebSocket.
        second = handshake(30.0, 40001) + exchange(30.01, WS_REQUEST, WS_ANSWER, 40001)
        return cl.ClassView(conns(first + second), polls, 80)

    def test_a_listing_joins_the_connection_with_the_latest_syn_before_the_poll(self):
        view = self.view([poll(11.0, listing(40001, "http")), poll(31.0, listing(40001, "http")),
                          poll(34.0, listing(40001, "websocket"))])
        ka, ws = view.judged
        self.assertEqual((ka.truth, [s.cls for s in ka.seen]), (cl.HTTP_KA, ["http"]))
        self.assertEqual((ws.truth, [s.cls for s in ws.seen]), (cl.WEBSOCKET, ["http", "websocket"]))
        self.assertEqual((ws.first("websocket").t, ws.first("websocket").sample), (34.0, 33.5))
        self.assertEqual(ws.last_class, "websocket")

    def test_a_listing_of_a_connection_long_gone_matches_nothing(self):
        view = self.view([poll(20.0, listing(40001, "http")), poll(21.0, listing(40002, "http"))])
        self.assertEqual(len(view.unmatched), 2)

    def test_sample_unknown_when_the_two_timestamp_reads_differ(self):
        p = poll(11.0, listing(40001, "http"))
        p["sample_after"] = p["sample_before"] + 1.0
        (ka, _) = self.view([p]).judged
        self.assertIsNone(ka.seen[0].sample)

    def test_failed_polls_are_kept_apart(self):
        view = self.view([{"n": 0, "t_sent": 1.0, "t_done": 1.1, "status": 404, "error": "off", "connections": []}])
        self.assertEqual((len(view.polls), len(view.poll_errors)), (0, 1))

    def test_confusion_table_counts_the_last_listed_class(self):
        view = self.view([poll(11.0, listing(40001, "http")), poll(34.0, listing(40001, "websocket"))])
        table = cl.confusion_table(view.judged, [], "t")
        ws_row = next(line for line in table.splitlines() if line.startswith("websocket "))
        self.assertEqual(ws_row.split(), ["websocket", "1", "0", "0", "0", "0", "1", "1"])


class PcapPayload(unittest.TestCase):
    def test_payload_is_read_up_to_the_captured_length(self):
        body = b"GET / HTTP/1.1\r\n"
        tcp = struct.pack(">HHIIBBHHH", 40000, 80, 1, 0, 0x50, P | A, 64240, 0, 0) + body
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                         bytes([10, 250, 11, 1]), bytes([10, 250, 11, 2]))
        frame = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"") + ip + tcp
        cut = len(frame) - 4  # the snaplen kept all but the last 4 bytes
        data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, cut, 276)
        data += struct.pack("<IIII", 100, 0, cut, len(frame)) + frame[:cut]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "x.pcap"
            path.write_bytes(data)
            (p,) = tr.read_pcap(path)
        self.assertEqual((p.length, p.payload), (len(body), body[:-4]))


if __name__ == "__main__":
    unittest.main()
