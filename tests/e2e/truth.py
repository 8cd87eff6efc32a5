"""Ground truth from the packet capture on backend 1, independent of drainwatch.

The capture (tcpdump -i any in backend 1's namespace) holds every TCP packet to
or from the watched ports, on the LB link and on loopback (nginx -> app). This
module rebuilds, per connection, the server-side socket's life from its
packets:

    SYN in ........ SYN-ACK out .. first ACK in = ESTABLISHED (3WHS done)
    ESTABLISHED ends at the first FIN or RST in either direction;
    server FIN first  -> FIN_WAIT -> TIME_WAIT at the peer's FIN, for 60 s;
    peer FIN first    -> CLOSE_WAIT -> LAST_ACK -> gone at the peer's last ACK;
    RST either way    -> gone.

Faults that drop packets (blackhole, per-connection drops; known from the
fault bookkeeping) do so on the LB host, so the capture on backend 1 holds
exactly what its sockets sent and received. A socket that keeps
retransmitting into a drop dies silently at the tcp_retries2 give-up; the span
in which that happens, or in which a socket may or may not have died, is marked
uncertain instead of guessed, so every count is a [lo, hi] range.

Only IPv4 is parsed: the test network is 10.250.0.0/16.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

TIME_WAIT_SECONDS = 60.0  # fixed in Linux (TCP_TIMEWAIT_LEN)
TCP_RTO_MIN = 0.2
TCP_RTO_MAX = 120.0
# Linux's timer wheel fires a timer up to 1/8 of its timeout late (its level's granularity);
# plus a few milliseconds of tick and scheduling.
TIMER_SLACK = 0.125
TIMER_JITTER = 0.005

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
INF = float("inf")


def retransmission_timeout(retries2: int) -> float:
    """Earliest time after its first unanswered segment that a socket gives up.

    The kernel's tcp_model_timeout(): exponential backoff from TCP_RTO_MIN,
    linear once the RTO reaches TCP_RTO_MAX.
    """
    linear_after = int(math.log2(TCP_RTO_MAX / TCP_RTO_MIN))
    if retries2 <= linear_after:
        return ((2 << retries2) - 1) * TCP_RTO_MIN
    return ((2 << linear_after) - 1) * TCP_RTO_MIN + (retries2 - linear_after) * TCP_RTO_MAX


@dataclass(frozen=True)
class Packet:
    t: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    length: int = 0  # TCP payload bytes
    # The captured part of the payload (the snaplen may cut it short of `length`).
    payload: bytes = field(default=b"", compare=False, repr=False)
    # Sequence and acknowledgment numbers (None in hand-made packets: not checked then).
    seq: int | None = field(default=None, compare=False)
    ack: int | None = field(default=None, compare=False)


def read_pcap(path: Path) -> Iterator[Packet]:
    """TCP/IPv4 packets of a classic pcap file (Ethernet, SLL or SLL2 links)."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    offset = 24
    record = struct.Struct(endian + "IIII")
    while offset + 16 <= len(data):
        sec, frac, incl, _ = record.unpack_from(data, offset)
        frame = data[offset + 16: offset + 16 + incl]
        offset += 16 + incl
        if len(frame) < incl:
            break  # truncated last record (capture stopped mid-write)
        ip = _ip_payload(frame, linktype)
        if ip is None:
            continue
        packet = _parse_ipv4_tcp(ip, sec + frac / (1e9 if nanos else 1e6))
        if packet is not None:
            yield packet


def _ip_payload(frame: bytes, linktype: int) -> bytes | None:
    if linktype == LINKTYPE_LINUX_SLL2:
        proto, header = struct.unpack_from(">H", frame, 0)[0], 20
    elif linktype == LINKTYPE_LINUX_SLL:
        proto, header = struct.unpack_from(">H", frame, 14)[0], 16
    elif linktype == LINKTYPE_ETHERNET:
        proto, header = struct.unpack_from(">H", frame, 12)[0], 14
    else:
        raise ValueError(f"unsupported pcap link type {linktype}")
    return frame[header:] if proto == 0x0800 else None


def _parse_ipv4_tcp(ip: bytes, t: float) -> Packet | None:
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
        return None
    ihl = (ip[0] & 0x0F) * 4
    if len(ip) < ihl + 14:
        return None
    sport, dport, seq, ack = struct.unpack_from(">HHII", ip, ihl)
    src = ".".join(str(b) for b in ip[12:16])
    dst = ".".join(str(b) for b in ip[16:20])
    doff = (ip[ihl + 12] >> 4) * 4
    length = max(struct.unpack_from(">H", ip, 2)[0] - ihl - doff, 0)
    payload = ip[ihl + doff: ihl + doff + length] if length else b""
    return Packet(t, src, sport, dst, dport, ip[ihl + 13], length, payload, seq, ack)


@dataclass(frozen=True)
class DropWindow:
    """Packets from and to backend 1 that the network dropped between start and end.

    Either every flow of `ports`, or only the listed flows, each given as
    (local_port, peer_ip, peer_port). end is None for a drop never lifted.
    """

    start: float
    end: float | None
    ports: frozenset[int] = frozenset()
    flows: frozenset[tuple[int, str, int]] = frozenset()

    def matches(self, local_port: int, peer_ip: str, peer_port: int) -> bool:
        return local_port in self.ports or (local_port, peer_ip, peer_port) in self.flows

    def covers(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass
class Conn:
    """The server-side socket of one TCP connection on a watched local port."""

    port: int
    peer: tuple[str, int]
    syn: float
    synack: float | None = None
    est: float | None = None
    fin_in: float | None = None
    fin_out: float | None = None
    rst_in: float | None = None
    rst_out: float | None = None
    tw: float | None = None       # TIME_WAIT entry
    gone: float | None = None     # socket no longer exists
    partial: bool = False         # started before the capture
    # Payload: bytes each way, and the start of each direction's byte stream as
    # captured (contiguous only while no segment was cut by the snaplen).
    bytes_in: int = 0
    bytes_out: int = 0
    head_in: bytes = field(default=b"", repr=False)
    head_out: bytes = field(default=b"", repr=False)
    head_in_cut: bool = False
    head_out_cut: bool = False
    # Span in which the socket may have died silently (see Capture._mark_uncertain).
    uncertain: tuple[float, float] | None = None
    died: float | None = None     # dead by retransmission give-up by this time at the latest
    # Dead by retransmission give-up, known after the fact: the first thing it "sent" once the
    # drop was lifted was an RST (no socket), while its last segment before was still data.
    timed_out: bool = False
    # Kept only when drops exist: times of all packets, and of the segments the
    # socket sent that would be retransmitted (payload or FIN).
    packets: list[float] = field(default_factory=list, repr=False)
    sent: list[float] = field(default_factory=list, repr=False)
    out_flags: list[tuple[float, int]] = field(default_factory=list, repr=False)  # (time, flags) sent
    # Sequence space, where the capture has it (not for a connection older than the capture):
    # the next byte the server expects (RCV.NXT), and its own FIN's sequence number.
    rcv_nxt: int | None = field(default=None, repr=False)
    fin_seq: int | None = field(default=None, repr=False)
    fin_acked: float | None = None  # the peer acknowledged the server's FIN (FIN_WAIT1 -> FIN_WAIT2)
    fin_ack_data: bool = False      # ... with a segment that carried data
    # RSTs in that the kernel ignores (sequence number not RCV.NXT: a challenge ACK answers an
    # in-window one, an out-of-window one is dropped); the socket lives on.
    rst_in_ignored: list[float] = field(default_factory=list, repr=False)

    def full_at(self, t: float) -> bool | None:
        """Whether the server's socket is a full socket at t (what tcp_receive_reset and the
        cookie of tcp_send_reset need): from the handshake's last ACK until it is freed or
        enters TIME_WAIT. None where the capture cannot tell: after the peer acknowledged the
        server's FIN and before the peer's FIN, an orphaned socket (the application called
        close()) becomes a TIME_WAIT mini-socket in its FIN_WAIT2 substate (tcp_fin_timeout
        is not above 60 s), while one the application only shut down stays a full FIN_WAIT2
        socket; the wire looks the same."""
        if self.est is None or t < self.est:
            return False
        if (self.gone is not None and t > self.gone) or (self.tw is not None and t >= self.tw):
            return False
        if self.gone is not None and t == self.gone and t not in (self.rst_in, self.rst_out):
            return False
        if self.died is not None and t >= self.died:
            return False
        if self.uncertain is not None and self.uncertain[0] <= t <= self.uncertain[1]:
            return None  # it may have died silently by now (see Capture._mark_uncertain)
        if self.fin_acked is not None and t >= self.fin_acked:
            if self.fin_ack_data and t == self.rst_out and t - self.fin_acked <= ABORT_ANSWER:
                # The segment that acked the FIN carried data: an orphan in FIN_WAIT1 aborts on
                # it ("out of order FIN after close", abort-on-data) with its full socket, before
                # it could become a TIME_WAIT remnant.
                return True
            return None
        return True

    @property
    def est_end(self) -> float:
        ends = [t for t in (self.fin_in, self.fin_out, self.rst_in, self.rst_out, self.died) if t is not None]
        return min(ends) if ends else INF

    @property
    def finished(self) -> bool:
        return self.gone is not None or self.tw is not None

    @property
    def how(self) -> str:
        """How the connection ended, from the server's side."""
        if self.est is None:
            return "never_established"
        first = self.est_end
        if first == INF:
            return "open"
        if first == self.rst_in:
            return "rst_in"
        if first == self.rst_out:
            return "rst_out"
        if first == self.died:
            return "timeout"
        return "server_fin_first" if first == self.fin_out else "peer_fin_first"


@dataclass
class PortTruth:
    port: int
    conns: list[Conn] = field(default_factory=list)
    per_second: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    rst_out_without_socket: int = 0  # refused SYNs and answers to segments for dead sockets
    resets: list[tuple[float, bool, tuple[str, int]]] = field(default_factory=list)  # (time, inbound, peer)


class Capture:
    """Connections and per-second packet counts per watched port."""

    def __init__(self, packets: Iterable[Packet], ports: Iterable[int],
                 drops: Iterable[DropWindow] = (), retries2: int = 15) -> None:
        self.ports = {p: PortTruth(p) for p in ports}
        self.drops = list(drops)
        self.first_t = INF
        self.last_t = 0.0
        current: dict[tuple, Conn] = {}
        for pkt in packets:
            self.first_t = min(self.first_t, pkt.t)
            self.last_t = max(self.last_t, pkt.t)
            self._feed(pkt, current)
        self._mark_uncertain(retransmission_timeout(retries2))

    def _feed(self, pkt: Packet, current: dict[tuple, Conn]) -> None:
        if pkt.dport in self.ports:
            inbound, port, peer = True, pkt.dport, (pkt.src, pkt.sport)
        elif pkt.sport in self.ports:
            inbound, port, peer = False, pkt.sport, (pkt.dst, pkt.dport)
        else:
            return
        truth = self.ports[port]
        sec = truth.per_second[int(pkt.t)]
        _count_flags(sec, pkt.flags, inbound)
        if pkt.flags & RST:
            truth.resets.append((pkt.t, inbound, peer))
        key = (port, peer)
        conn = current.get(key)
        f = pkt.flags
        if inbound and f & SYN and not f & ACK:
            if conn is None or conn.finished:
                if conn is not None and (conn.gone is None or conn.gone > pkt.t):
                    conn.gone = pkt.t  # a new SYN takes over a TIME_WAIT socket
                conn = current[key] = Conn(port, peer, syn=pkt.t)
                if pkt.seq is not None:
                    conn.rcv_nxt = (pkt.seq + 1) % SEQ_SPACE
                truth.conns.append(conn)
            return
        if conn is None:
            if f & RST:
                if not inbound:
                    truth.rst_out_without_socket += 1
                return
            # A connection that was open before the capture started.
            conn = current[key] = Conn(port, peer, syn=pkt.t, synack=pkt.t, est=pkt.t, partial=True)
            truth.conns.append(conn)
        if conn.gone is not None and pkt.t >= conn.gone:
            if f & RST and not inbound:
                truth.rst_out_without_socket += 1  # answer to a segment for a dead socket
            return
        if inbound and f & RST and not _reset_accepted(conn, pkt):
            conn.rst_in_ignored.append(pkt.t)
            return
        _track_sequence(conn, pkt, inbound)
        if pkt.length:
            _record_payload(conn, pkt, inbound)
        if self.drops:
            conn.packets.append(pkt.t)
            if not inbound:
                conn.out_flags.append((pkt.t, pkt.flags))
            if not inbound and (pkt.length > 0 or pkt.flags & FIN):
                conn.sent.append(pkt.t)
        if f & RST:
            if inbound:
                conn.rst_in = conn.rst_in or pkt.t
            else:
                conn.rst_out = conn.rst_out or pkt.t
            conn.gone = pkt.t
            return
        if not inbound and f & SYN:
            conn.synack = conn.synack or pkt.t
            return
        if inbound and conn.est is None and conn.synack is not None and f & ACK:
            conn.est = pkt.t
            sec["established_new"] += 1
        if f & FIN:
            if inbound and conn.fin_in is None:
                conn.fin_in = pkt.t
                if conn.fin_out is not None:
                    conn.tw = pkt.t
                    conn.gone = pkt.t + TIME_WAIT_SECONDS
            elif not inbound and conn.fin_out is None:
                conn.fin_out = pkt.t
            return
        if inbound and conn.fin_in is not None and conn.fin_out is not None and conn.fin_in < conn.fin_out:
            conn.gone = pkt.t  # the peer's ACK of our FIN ends LAST_ACK

    def _mark_uncertain(self, timeout: float) -> None:
        """Where a drop may have killed a socket without a packet on the wire.

        A socket whose segments go unanswered retransmits with a doubling
        timeout (all of it in the capture) and gives up at the first timer
        expiry at least `timeout` (tcp_retries2) after the first unanswered
        segment: the expiry after its last retransmission. The last interval
        between retransmissions is the previous timeout plus up to
        TIMER_SLACK of it, and the next timeout is twice the previous one,
        again plus up to TIMER_SLACK, which bounds the death. A socket that
        sent nothing under the drop has nothing to retransmit and cannot time
        out. If the drop is lifted first, or too little was retransmitted to
        tell, the socket may have lived or died: uncertain until its next
        packet.
        """
        for truth in self.ports.values():
            for conn in truth.conns:
                for w in self.drops:
                    if not w.matches(conn.port, *conn.peer) or conn.est is None:
                        continue
                    # A segment sent just before the drop may or may not have been answered.
                    before = [t for t in conn.sent if w.start - 0.01 <= t < w.start]
                    inside = [t for t in conn.sent if w.covers(t)]
                    if not before and not inside:
                        continue
                    u0 = min(before + inside) + timeout
                    if conn.est_end <= u0 or (conn.gone or INF) <= u0:
                        continue
                    u1 = INF
                    if len(inside) >= 2:
                        last, gap = inside[-1], inside[-1] - inside[-2]
                        u0 = max(u0, last + 2 * gap / (1 + TIMER_SLACK)) - TIMER_JITTER
                        u1 = last + 2 * gap * (1 + TIMER_SLACK) + TIMER_JITTER
                    if u1 < INF and (w.end is None or w.end >= u1):
                        conn.uncertain, conn.died = (u0, u1), u1
                        conn.gone = u1 if conn.gone is None else min(conn.gone, u1)
                        if conn.tw is not None and conn.tw > u1:
                            conn.tw = None  # the peer's FIN came after the socket died
                    else:
                        after = [t for t in conn.packets if w.end is not None and t >= w.end]
                        conn.uncertain = (u0, min(after) if after else INF)
                        # Once the drop is lifted, the socket's first answer tells: a live one
                        # acknowledges or retransmits, a dead one is no socket and answers the
                        # peer's next segment with an RST at once. An RST that is the first thing
                        # sent after the lift, within 10 ms of a segment from the peer, means it
                        # gave up at a timer expiry in [u0, that RST] (the give-up itself sends
                        # nothing; an application's abort would not wait for the peer).
                        first_out = sorted((t, f) for t, f in conn.out_flags if w.end is not None and t >= w.end)
                        out_times = {t for t, _ in conn.out_flags}
                        if first_out and first_out[0][1] & RST and first_out[0][0] >= u0:
                            t_rst = first_out[0][0]
                            answered = any(t_rst - 0.01 <= t <= t_rst and t not in out_times for t in conn.packets)
                            if answered:
                                conn.uncertain, conn.died = (u0, t_rst), t_rst
                                conn.timed_out = True
            for conn in truth.conns:
                conn.packets, conn.sent, conn.out_flags = [], [], []


SEQ_SPACE = 1 << 32
ABORT_ANSWER = 0.01  # an RST answering a segment leaves within this (same softirq; on a veth)


def _seq_after(a: int, b: int) -> bool:
    """a is after b in sequence space (RFC 793 arithmetic, as the kernel's after())."""
    return 0 < (a - b) % SEQ_SPACE < SEQ_SPACE // 2


def _reset_accepted(conn: Conn, pkt: Packet) -> bool:
    """Whether the kernel accepts an RST on the server's socket (tcp_validate_incoming, RFC
    5961): its sequence number must be RCV.NXT exactly, or RCV.NXT - 1 once the peer's FIN is
    in (CLOSE_WAIT, LAST_ACK, CLOSING: tcp_reset_check). Any other is ignored (a challenge ACK
    answers it if it is in the window). Before the handshake completed (a request socket) and
    where the capture does not know RCV.NXT, it is taken as accepted."""
    if conn.est is None or conn.rcv_nxt is None or pkt.seq is None:
        return True
    if conn.tw is not None and pkt.t >= conn.tw:
        return True  # TIME_WAIT checks it its own way; it is no full socket either way
    if pkt.seq == conn.rcv_nxt:
        return True
    return conn.fin_in is not None and pkt.seq == (conn.rcv_nxt - 1) % SEQ_SPACE


def _track_sequence(conn: Conn, pkt: Packet, inbound: bool) -> None:
    """RCV.NXT from the peer's in-order segments; the server's FIN and when the peer acked it."""
    if pkt.seq is None:
        return
    if inbound:
        if conn.rcv_nxt is not None and not pkt.flags & (SYN | RST):
            end = (pkt.seq + pkt.length + (1 if pkt.flags & FIN else 0)) % SEQ_SPACE
            if not _seq_after(pkt.seq, conn.rcv_nxt) and _seq_after(end, conn.rcv_nxt):
                conn.rcv_nxt = end
        if (conn.fin_seq is not None and conn.fin_acked is None and pkt.flags & ACK and pkt.ack is not None
                and _seq_after(pkt.ack, conn.fin_seq)):
            conn.fin_acked = pkt.t
            conn.fin_ack_data = pkt.length > 0
    elif pkt.flags & FIN and conn.fin_seq is None:
        conn.fin_seq = (pkt.seq + pkt.length) % SEQ_SPACE


HEAD_BYTES = 2048  # how much of each direction's stream start is kept


def _record_payload(conn: Conn, pkt: Packet, inbound: bool) -> None:
    """Payload byte counts, and the stream's first bytes while they are contiguous.

    Segments are taken in capture order; a retransmission of bytes already
    kept would repeat them, which at the start of a connection (an unanswered
    first request) is rare and only adds text after the first request's head.
    """
    if inbound:
        conn.bytes_in += pkt.length
        if not conn.head_in_cut and len(conn.head_in) < HEAD_BYTES:
            conn.head_in += pkt.payload
            conn.head_in_cut = len(pkt.payload) < pkt.length
    else:
        conn.bytes_out += pkt.length
        if not conn.head_out_cut and len(conn.head_out) < HEAD_BYTES:
            conn.head_out += pkt.payload
            conn.head_out_cut = len(pkt.payload) < pkt.length


def _count_flags(sec: dict[str, int], flags: int, inbound: bool) -> None:
    d = "in" if inbound else "out"
    if flags & SYN and not flags & ACK and inbound:
        sec["syn_in"] += 1
    if flags & SYN and flags & ACK and not inbound:
        sec["synack_out"] += 1
    if flags & FIN:
        sec[f"fin_{d}"] += 1
    if flags & RST:
        sec[f"rst_{d}"] += 1


class Intervals:
    """Count of half-open intervals [a, b) containing an instant, by bisection."""

    def __init__(self, spans: Iterable[tuple[float, float]]) -> None:
        spans = [(a, b) for a, b in spans if a < b]
        self.starts = sorted(a for a, _ in spans)
        self.ends = sorted(b for _, b in spans)

    def at(self, t: float) -> int:
        return bisect.bisect_right(self.starts, t) - bisect.bisect_right(self.ends, t)

    def edges(self, lo: float, hi: float) -> list[float]:
        out = self.starts[bisect.bisect_left(self.starts, lo): bisect.bisect_right(self.starts, hi)]
        return out + self.ends[bisect.bisect_left(self.ends, lo): bisect.bisect_right(self.ends, hi)]


class Established:
    """Established-connection count of one port over time, as a [lo, hi] range."""

    def __init__(self, conns: list[Conn]) -> None:
        certain, uncertain = [], []
        for c in conns:
            if c.est is None:
                continue
            a, b = c.est, c.est_end
            if c.uncertain is None:
                certain.append((a, b))
                continue
            u0, u1 = c.uncertain
            certain.append((a, min(b, u0)))
            uncertain.append((max(a, u0), min(b, u1)))
            certain.append((max(a, u1), b))
        self.certain = Intervals(certain)
        self.uncertain = Intervals(uncertain)

    def at(self, t: float) -> int:
        return self.certain.at(t)

    def range(self, lo_t: float, hi_t: float) -> tuple[int, int]:
        """Smallest and largest count the socket table can have had in [lo_t, hi_t]."""
        points = [lo_t, hi_t, *self.certain.edges(lo_t, hi_t), *self.uncertain.edges(lo_t, hi_t)]
        points = [p for p in points if lo_t <= p <= hi_t]
        return (min(self.certain.at(p) for p in points),
                max(self.certain.at(p) + self.uncertain.at(p) for p in points))


@dataclass(frozen=True)
class Event:
    """A count a sampler makes at some sample instant in [first, last].

    `certain` is False when the sampler may not count it at all.
    """

    first: float
    last: float
    certain: bool


def counted_events(conns: list[Conn], samples: list[float], skew: float,
                   listener_gone: float = INF, exact: bool = False) -> dict[str, list[Event]]:
    """When a sampler that diffs socket tables at `samples` counts each connection.

    A connection is `opened` at the first sample that sees its socket (from
    the handshake's last ACK on: a request socket is not a connection yet),
    and `closed` at the first sample that sees it in TIME_WAIT or, failing
    that, at the first sample after it has gone.

    Without destroy events (`exact` False) a socket that lives and vanishes
    between two samples (no TIME_WAIT on this side) is never counted: that is
    the lower-bound nature of sampling. With them, the kernel reports every
    full socket it frees (entering TIME_WAIT frees it too), so every
    connection is counted, at the first sample after its handshake and the
    first sample after its close.

    A socket first seen once the port's listener is gone (`listener_gone`)
    cannot be told from an outbound one and is not counted. The sample
    instants are known only to +-skew, and a socket may have died silently in
    its uncertain span, so each event comes as a range of instants and may be
    uncertain.
    """
    events: dict[str, list[Event]] = {"opened": [], "closed": []}
    for c in conns:
        if c.est is None:
            continue
        gone = c.gone if c.gone is not None else INF
        visible_until = INF if exact else gone
        seen = [_first_sample(samples, c.est + d, visible_until + d) for d in (-skew, skew)]
        known = [s for s in seen if s is not None and s < listener_gone]
        if not known:
            continue
        certain = len(known) == len(seen)
        events["opened"].append(Event(min(known), max(known), certain))
        start = c.tw if c.tw is not None else gone
        ends = [_first_sample(samples, start + d, INF) for d in (-skew, skew)]
        if c.uncertain is not None:
            ends.append(_first_sample(samples, c.uncertain[0], INF))
        known_ends = [e for e in ends if e is not None]
        if known_ends:
            events["closed"].append(Event(min(known_ends), max(known_ends), certain and len(known_ends) == len(ends)))
    return events


def _first_sample(samples: list[float], start: float, end: float) -> float | None:
    """The first sample instant s with start <= s < end."""
    i = bisect.bisect_left(samples, start)
    if i < len(samples) and samples[i] < end:
        return samples[i]
    return None


def count_in(events: list[Event], after: float, upto: float) -> tuple[int, int]:
    """[lo, hi] number of events counted at a sample in (after, upto]."""
    lo = sum(1 for e in events if e.certain and after < e.first and e.last <= upto)
    hi = sum(1 for e in events if e.first <= upto and e.last > after)
    return lo, hi


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.")


def _counted_at(samples: list[float], t: float, skew: float, delay: float,
                certain: bool = True, until: float | None = None) -> Event | None:
    """An event that happened at t (or, uncertain, somewhere in [t, until]) as a sampler that
    collects its hits at each sample counts it: at the first sample after it, up to `delay`
    later (its connection joined only at its destroy); sample instants are known to +-skew."""
    first = _first_sample(samples, t - skew, INF)
    last = _first_sample(samples, (t if until is None else until) + skew + delay, INF)
    if first is None:
        return None
    return Event(first, last if last is not None else INF, certain and last is not None)


# How drainwatch's tracepoints see each RST on the wire (reset_kinds): counted, counted only in
# the upper bound (the capture cannot tell), or not counted, and why.
RESET_KINDS = {
    "received": True,                       # accepted by a live full socket
    "received, maybe no full socket": None,  # orphaned FIN_WAIT2 or a silent death's span
    "in, no full socket": False,            # request socket, TIME_WAIT, already gone
    "in, ignored (sequence)": False,        # not RCV.NXT: challenge ACK or dropped
    "sent by the socket": True,
    "sent by the socket, aborting on data after close": True,  # FIN_WAIT1 orphan: see Conn.full_at
    "sent without a full socket": True,     # from 10.250.11.2: attributed by address
    "sent on loopback, maybe no full socket": None,
    "sent on loopback without a socket": False,  # unattributable by design
}


def reset_kinds(truth: PortTruth) -> list[tuple[float, bool, str]]:
    """Every RST of the port on the wire, (time, inbound, kind), kind a key of RESET_KINDS.

    - received (tcp:tcp_receive_reset): an RST the kernel accepts (sequence number RCV.NXT;
      any other is ignored or draws a challenge ACK) on a full socket of the port: after the
      handshake completed (in the accept queue or accepted), while the socket lives, not in
      TIME_WAIT. The first one kills the socket; later ones, and RSTs to a TIME_WAIT socket, a
      request socket or no socket at all, are not counted.
    - sent by a full socket (tcp:tcp_send_reset with the socket: the connection's own abort,
      an answer to data after close in FIN_WAIT1, the accept queue's reset when the listener
      closes): joined to the socket's cookie, always counted.
    - sent without a full socket (no socket for the segment, a TIME_WAIT socket, a request
      socket): the hit carries only addresses, and is counted only from an address of
      backend 1's own other than loopback (10.250.11.2). Other network namespaces exist (the
      LB, backend 2, the clients, each with its own 127.0.0.1), so a loopback RST without a
      socket (e.g. on 127.0.0.1:8080: the app's port answering nginx after the app's socket is
      gone) is not attributable: drainwatch_trace_unattributed_total, by design.

    Where the capture cannot tell whether the socket was still a full one (Conn.full_at is
    None: orphaned FIN_WAIT2, a silent death's uncertain span), the RST counts in the upper
    bound only, unless it counts either way (one sent from 10.250.11.2).
    """
    by_packet: dict[tuple[float, bool, tuple[str, int]], str] = {}
    for c in truth.conns:
        for t in c.rst_in_ignored:
            by_packet[(t, True, c.peer)] = "in, ignored (sequence)"
        if c.rst_in is not None:
            full = c.full_at(c.rst_in)
            by_packet[(c.rst_in, True, c.peer)] = ("received" if full else "in, no full socket" if full is False
                                                   else "received, maybe no full socket")
        if c.rst_out is not None:
            full = c.full_at(c.rst_out)
            if full:
                kind = ("sent by the socket, aborting on data after close"
                        if c.fin_acked is not None and c.rst_out >= c.fin_acked else "sent by the socket")
            elif not _is_loopback(c.peer[0]):
                kind = "sent without a full socket"
            else:
                kind = "sent on loopback without a socket" if full is False else "sent on loopback, maybe no full socket"
            by_packet[(c.rst_out, False, c.peer)] = kind
    out = []
    for t, inbound, peer in truth.resets:
        kind = by_packet.get((t, inbound, peer))
        if kind is None:  # no live socket for it on the wire's evidence
            kind = ("in, no full socket" if inbound else
                    "sent on loopback without a socket" if _is_loopback(peer[0]) else "sent without a full socket")
        out.append((t, inbound, kind))
    return out


def reset_events(truth: PortTruth, samples: list[float], skew: float,
                 delay: float = 0.0) -> dict[str, list[Event]]:
    """When drainwatch counts each RST of the port in `drainwatch_resets_total` (which ones:
    reset_kinds). A hit is counted at the first sample after it (the sample drains the
    tracepoints), up to `delay` later when its connection's cookie becomes known only at its
    destroy."""
    out: dict[str, list[Event]] = {"resets_sent": [], "resets_received": []}
    for t, inbound, kind in reset_kinds(truth):
        counts = RESET_KINDS[kind]
        if counts is not False and (e := _counted_at(samples, t, skew, delay, certain=bool(counts))):
            out["resets_received" if inbound else "resets_sent"].append(e)
    return out


def timeout_events(truth: PortTruth, samples: list[float], skew: float,
                   delay: float = 0.0) -> list[Event]:
    """When drainwatch counts each connection of the port in
    `drainwatch_connection_timeouts_total` (sock:inet_sk_error_report with ETIMEDOUT).

    Only a socket that retransmitted into a drop of the fault bookkeeping can time out here
    (no keepalive, no zero window): it dies at the give-up, somewhere in its uncertain span
    (Capture._mark_uncertain), and is counted at the first sample after. One the capture
    cannot decide (the drop lifted before the give-up could be bounded, no answer telling)
    is counted in the upper bound only, at any sample from its span's start.
    """
    out = []
    for c in truth.conns:
        if c.uncertain is None:
            continue
        dead = c.died is not None and (c.how == "timeout" or c.timed_out)
        u0, u1 = c.uncertain
        if e := _counted_at(samples, u0, skew, delay, certain=dead, until=c.died if dead else u1):
            out.append(e)
    return out
