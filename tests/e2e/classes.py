"""Per-connection classification truth from the capture, joined with drainwatch's connections API.

Truth (independent of drainwatch): backend 1's capture keeps the start of each
connection's byte stream (the classification scenario raises the snaplen for
it), and each :80 connection is classified from the wire:

  websocket             the first request carries `Upgrade: websocket` (and the
                        answer, where captured, is `101 Switching Protocols`)
  http keep-alive       any other HTTP request, without `Connection: close`
  http connection-close an HTTP request with `Connection: close`
  probe                 no payload either way, closed within PROBE_MAX_LIFETIME
                        of its SYN (haproxy's TCP connect checks), including a
                        handshake the LB reset right after the SYN-ACK (haproxy's
                        plain `check` does that: backend 1 then never has a
                        socket for it)
  other                 anything else (no payload but long-lived, not HTTP, a
                        refused upgrade)

drainwatch's per-connection view comes from the runner's polls of
GET /api/v1/connections (apipoll.py, run/api.jsonl). A listed connection is
joined with the truth by its peer (haproxy's ip:port), which is unique while the
connection lives: the capture connection with that peer whose SYN is the latest
before the poll. Probes live for milliseconds and never appear in a listing; they
are judged from Prometheus (opened_total{class="probe"}) against the same
counter model the counter checks use.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import truth as tr

PROBE_MAX_LIFETIME = 1.0  # s from SYN to the end of ESTABLISHED, for a payload-less connection to be a probe
WEBSOCKET, HTTP_KA, HTTP_CLOSE, PROBE, OTHER = "websocket", "http keep-alive", "http connection-close", "probe", "other"
TRUTH_ORDER = (WEBSOCKET, HTTP_KA, HTTP_CLOSE, PROBE, OTHER)
DW_ORDER = ("websocket", "http", "probe", "unclassified")
NOT_LISTED = "not listed"


def parse_request(head: bytes) -> tuple[str, dict[str, str]] | None:
    """Request line and headers (lower-cased names) of the start of a client byte stream."""
    text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha() or not parts[0].isupper():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return parts[0], headers


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def truth_class(c: tr.Conn) -> str | None:
    """The class of one connection attempt from its packets alone; None for a SYN that never
    became a connection nor a health check (unanswered, refused, or left half-open)."""
    if c.est is None:
        answered_then_reset = c.synack is not None and c.bytes_in == 0 and c.est_end - c.syn <= PROBE_MAX_LIFETIME
        return PROBE if answered_then_reset else None
    if c.bytes_in == 0 and c.bytes_out == 0:
        return PROBE if c.est_end - c.syn <= PROBE_MAX_LIFETIME else OTHER
    request = parse_request(c.head_in)
    if request is None:
        return OTHER
    _, headers = request
    if "websocket" in _tokens(headers.get("upgrade", "")):
        answered = c.head_out[:12]
        return WEBSOCKET if not answered or answered.startswith(b"HTTP/1.1 101") else OTHER
    return HTTP_CLOSE if "close" in _tokens(headers.get("connection", "")) else HTTP_KA


@dataclass
class Listing:
    """One connection in one poll of the API."""

    t: float                 # the poll's answer arrived (an upper bound of when drainwatch knew)
    sample: float | None     # drainwatch's sample instant the listing is from, when known for sure
    cls: str
    reason: str
    pushes: int
    stream: int
    state: str
    age: float


@dataclass
class Judged:
    conn: tr.Conn
    truth: str
    seen: list[Listing] = field(default_factory=list)

    @property
    def peer(self) -> str:
        return f"{self.conn.peer[0]}:{self.conn.peer[1]}"

    def first(self, cls: str) -> Listing | None:
        return next((s for s in self.seen if s.cls == cls), None)

    @property
    def last_class(self) -> str:
        return self.seen[-1].cls if self.seen else NOT_LISTED

    def timeline(self, t0: float, upto: float = math.inf) -> str:
        """Class changes as listed, relative to t0 (the SYN): `+1.2s http(reason)`."""
        out, last = [], None
        for s in self.seen:
            if s.t > upto:
                break
            key = (s.cls, s.reason)
            if key != last:
                out.append(f"+{s.t - t0:.1f}s {s.cls}({s.reason}; pushes {s.pushes}, stream {s.stream})")
                last = key
        return ", ".join(out) or "never listed"


def read_polls(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _peer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    return host, int(port)


class ClassView:
    """Truth classes of one port's connections and what the API listed for each."""

    def __init__(self, conns: list[tr.Conn], polls: list[dict], port: int) -> None:
        self.port = port
        self.polls = [p for p in polls if p.get("status") == 200]
        self.poll_errors = [p for p in polls if p.get("status") != 200]
        self.judged = [Judged(c, cls) for c in conns if (cls := truth_class(c)) is not None]
        by_peer: dict[tuple[str, int], list[Judged]] = {}
        for j in self.judged:
            by_peer.setdefault(j.conn.peer, []).append(j)
        self.unmatched: list[tuple[float, dict]] = []
        for poll in self.polls:
            same = poll.get("sample_before") is not None and poll.get("sample_before") == poll.get("sample_after")
            for entry in poll["connections"]:
                if entry["port"] != port:
                    continue
                match = self._match(by_peer.get(_peer(entry["peer"]), []), poll)
                if match is None:
                    self.unmatched.append((poll["t_done"], entry))
                    continue
                match.seen.append(Listing(poll["t_done"], poll["sample_before"] if same else None, entry["class"],
                                          entry["reason"], entry["server_pushes"], entry["stream_samples"],
                                          entry["state"], entry["age_seconds"]))

    @staticmethod
    def _match(candidates: list[Judged], poll: dict) -> Judged | None:
        """The connection with this peer whose SYN is the latest before the poll, if it was still
        in an open state (the API lists no TIME_WAIT) when the poll's sample was taken (at most a
        sample interval and a poll before the answer)."""
        best = None
        for j in candidates:
            if j.conn.syn <= poll["t_done"] and (best is None or j.conn.syn > best.conn.syn):
                best = j
        if best is None:
            return None
        c = best.conn
        open_until = c.tw if c.tw is not None else (c.gone if c.gone is not None else math.inf)  # not TIME_WAIT
        return best if open_until >= poll["t_sent"] - 2.5 else None

    def to_json(self) -> dict:
        """Every connection of the port: its truth, and each listing that differed from the one before."""
        conns = []
        for j in self.judged:
            c, listed, last = j.conn, [], None
            for s in j.seen:
                if (s.cls, s.reason) != last:
                    listed.append({"t": s.t, "sample": s.sample, "class": s.cls, "reason": s.reason,
                                   "server_pushes": s.pushes, "stream_samples": s.stream, "state": s.state})
                    last = (s.cls, s.reason)
            conns.append({"peer": j.peer, "truth": j.truth, "syn": c.syn, "est": c.est, "end": c.est_end
                          if c.est_end != math.inf else None, "how": c.how, "bytes_in": c.bytes_in,
                          "bytes_out": c.bytes_out, "request": c.head_in[:200].decode("latin-1"),
                          "listings": len(j.seen), "changes": listed})
        return {"polls": len(self.polls), "poll_errors": [p.get("error") for p in self.poll_errors],
                "unmatched": [{"t": t, **e} for t, e in self.unmatched], "connections": conns}

    @property
    def first_poll(self) -> float:
        return self.polls[0]["t_sent"] if self.polls else math.inf

    @property
    def last_poll(self) -> float:
        return self.polls[-1]["t_done"] if self.polls else -math.inf

    def in_span(self, start: float, end: float) -> list[Judged]:
        """Connections whose SYN lies in [start, end) and after the first poll."""
        lo = max(start, self.first_poll)
        return [j for j in self.judged if lo <= j.conn.syn < end]

    def of(self, judged: list[Judged], truth: str) -> list[Judged]:
        return [j for j in judged if j.truth == truth]


def latency_summary(values: list[float]) -> str:
    if not values:
        return "none"
    return f"median {statistics.median(values):.1f}s, max {max(values):.1f}s"


def confusion_table(judged: list[Judged], counters: list[tuple[str, str, str, str]], title: str) -> str:
    """The confusion matrix (truth rows, drainwatch's last listed class in columns) and the
    counter comparison, as text."""
    columns = list(DW_ORDER)
    for j in judged:
        if j.last_class not in columns and j.last_class != NOT_LISTED:
            columns.append(j.last_class)
    columns += [NOT_LISTED, "ever websocket", "total"]
    rows = [("truth \\ drainwatch", *columns)]
    for truth in TRUTH_ORDER:
        members = [j for j in judged if j.truth == truth]
        if not members and truth == OTHER:
            continue
        cells = [sum(1 for j in members if j.last_class == c) for c in columns[:-2]]
        cells += [sum(1 for j in members if j.first("websocket")), len(members)]
        rows.append((truth, *map(str, cells)))
        reset = [j for j in members if j.conn.est is None]
        if reset:
            cells = [sum(1 for j in reset if j.last_class == c) for c in columns[:-2]]
            cells += [sum(1 for j in reset if j.first("websocket")), len(reset)]
            rows.append(("  of which reset in handshake", *map(str, cells)))
    lines = [title, "", _table(rows), "",
             "Columns: the class drainwatch's API showed at the connection's last listing (polled every",
             "second); `not listed`: the connection was never in a listing (it lived between two polls,",
             "or closed before drainwatch counted it); `ever websocket`: listed as websocket at least once.",
             "`reset in handshake`: the LB reset the handshake right after the SYN-ACK, so backend 1's",
             "kernel dropped the request socket and no socket existed for drainwatch to see.",
             "", "Counters on the port over the same span (Prometheus), against the capture's counter model:", "",
             _table([("drainwatch counter", "expected (capture)", "observed", "from")] + counters)]
    return "\n".join(lines)


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
