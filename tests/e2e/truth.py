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
    sport, dport = struct.unpack_from(">HH", ip, ihl)
    src = ".".join(str(b) for b in ip[12:16])
    dst = ".".join(str(b) for b in ip[16:20])
    doff = (ip[ihl + 12] >> 4) * 4
    length = max(struct.unpack_from(">H", ip, 2)[0] - ihl - doff, 0)
    payload = ip[ihl + doff: ihl + doff + length] if length else b""
    return Packet(t, src, sport, dst, dport, ip[ihl + 13], length, payload)


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


def reset_events(truth: PortTruth, samples: list[float], skew: float,
                 delay: float = 0.0) -> dict[str, list[Event]]:
    """When drainwatch counts each RST of the port in `drainwatch_resets_total`.

    What its tracepoints count (docs/metrics.md, docs/architecture.md):

    - received: an RST that reaches a full socket of the port (tcp_receive_reset):
      after the handshake completed, while the socket lives, not in TIME_WAIT.
      The first RST kills the socket; later ones, and RSTs to a TIME_WAIT or
      request socket, hit no full socket and are not counted.
    - sent by a full socket (the connection's own abort, while it lives and is
      not in TIME_WAIT): joined to the socket's cookie, always counted.
    - sent without a full socket (no socket for the segment, TIME_WAIT, a
      handshake): it carries only addresses, and is counted only from an
      address of backend 1's own other than loopback. Other network namespaces
      exist (the LB, backend 2, the clients, each with its own 127.0.0.1), so a
      loopback RST without a socket (e.g. on 127.0.0.1:8080) is not attributable
      and not counted.

    A hit is counted at the first sample after it (the sample drains the
    tracepoints), up to `delay` later when its connection's cookie becomes
    known only at its destroy; instants are known to +-skew.
    """
    def event(t: float) -> Event | None:
        first = _first_sample(samples, t - skew, INF)
        last = _first_sample(samples, t + skew + delay, INF)
        if first is None:
            return None
        return Event(first, last if last is not None else INF, last is not None)

    out: dict[str, list[Event]] = {"resets_sent": [], "resets_received": []}
    by_socket: set[tuple[float, tuple[str, int]]] = set()
    for c in truth.conns:
        alive_full = lambda t: c.est is not None and t >= c.est and (c.tw is None or t < c.tw)  # noqa: E731
        if c.rst_in is not None and alive_full(c.rst_in):
            e = event(c.rst_in)
            if e:
                out["resets_received"].append(e)
        if c.rst_out is not None and alive_full(c.rst_out):
            by_socket.add((c.rst_out, c.peer))
            e = event(c.rst_out)
            if e:
                out["resets_sent"].append(e)
    for t, inbound, peer in truth.resets:
        if inbound or (t, peer) in by_socket or _is_loopback(peer[0]):
            continue
        e = event(t)
        if e:
            out["resets_sent"].append(e)
    return out
