"""drainwatch as seen through Prometheus, compared with the capture truth.

drainwatch's numbers are read only through Prometheus's HTTP API
(query_range, 1 s step). Every scrape carries drainwatch's own
`drainwatch_last_sample_timestamp_seconds`, so each value is compared with the
truth at the instant drainwatch sampled, not at the scrape or step time.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import classes as cl
import truth as tr

QUERIES = {
    "timestamp": "max(drainwatch_last_sample_timestamp_seconds)",
    "established": 'sum by (port) (drainwatch_connections{state="established"})',
    "opened": "sum by (port) (drainwatch_connections_opened_total)",
    "closed": "sum by (port) (drainwatch_connections_closed_total)",
    "listening": "max by (port) (drainwatch_listening)",
    "destroy_events": 'max(drainwatch_source_up{source="destroy_events"})',
    "states": "sum by (port, class, state) (drainwatch_connections)",
    # Classification (tests/e2e/classes.py): openings by the class they were counted with.
    "opened_http": 'sum by (port) (drainwatch_connections_opened_total{class="http"})',
    "opened_websocket": 'sum by (port) (drainwatch_connections_opened_total{class="websocket"})',
    "opened_probe": 'sum by (port) (drainwatch_connections_opened_total{class="probe"})',
    "opened_unclassified": 'sum by (port) (drainwatch_connections_opened_total{class="unclassified"})',
    "opened_nonprobe": 'sum by (port) (drainwatch_connections_opened_total{class!="probe"})',
    "upgraded": "sum by (port) (drainwatch_connections_upgraded_total)",
    # Host-wide (backend 1's namespace): handshakes that ended in SYN_RECV (e.g. reset by the peer).
    "attempt_fails": "max(drainwatch_host_tcp_attempt_fails_total)",
    # Tracepoints (issue 5): RSTs per direction, timeouts, and whether they ran.
    "resets_sent": 'sum by (port) (drainwatch_resets_total{direction="sent"})',
    "resets_received": 'sum by (port) (drainwatch_resets_total{direction="received"})',
    "timeouts": "sum by (port) (drainwatch_connection_timeouts_total)",
    "tracepoints": 'max(drainwatch_source_up{source="tracepoints"})',
    "trace_exact": 'max(drainwatch_source_info{source="tracepoints",precision="exact"})',
    "trace_lost": 'sum(drainwatch_events_lost_total{source="tracepoints"})',
    "trace_unattributed": "sum(drainwatch_trace_unattributed_total)",
    # Drain readiness (issue 6).
    "drain_phase": "max by (port, phase) (drainwatch_drain_phase)",
    "opened_after_drain": "sum by (port) (drainwatch_connections_opened_after_drain_total)",
}
COUNTERS = ("opened", "closed", "opened_http", "opened_websocket", "opened_probe", "opened_unclassified",
            "opened_nonprobe", "upgraded", "attempt_fails", "resets_sent", "resets_received", "timeouts",
            "trace_lost", "trace_unattributed")


# Actions that close the listeners of these ports.
LISTENER_CLOSED_BY = {"nginx_quit": (80,), "kill9": (80, 8080)}


@dataclass
class Sample:
    """One drainwatch sample, as Prometheus scraped it."""

    t: float  # drainwatch's sample timestamp
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # query -> port -> value

    def get(self, query: str, port: int, missing: float = 0.0) -> float:
        return self.values.get(query, {}).get(str(port), missing)


@dataclass
class Row:
    check: str
    phase: str
    quantity: str
    expected: str
    observed: str
    error: str
    tolerance: str
    passed: bool | None  # None: informational
    why: str = ""


@dataclass
class Phase:
    name: str
    start: float
    end: float
    actions: list[dict] = field(default_factory=list)

    def action_time(self, names: set[str]) -> float | None:
        times = [a["t"] for a in self.actions if a["name"] in names]
        return min(times) if times else None


def destroy_events_up(results: dict[str, list]) -> bool:
    """drainwatch received destroy events for the whole run (its counters are then exact)."""
    series = results.get("destroy_events") or []
    values = [float(v) for _, v in series[0]["values"]] if series else []
    return bool(values) and min(values) == 1.0


def tracepoints_exact(results: dict[str, list]) -> bool:
    """drainwatch_source_info{source="tracepoints",precision="exact"} in every step of the run:
    the tracepoints and destroy events ran throughout, so resets and timeouts are exact."""
    # Runs kept from before this query existed: the source's up gauge instead.
    series = results.get("trace_exact", results.get("tracepoints")) or []
    values = [float(v) for _, v in series[0]["values"]] if series else []
    stamps = results.get("timestamp") or []
    steps = len(stamps[0]["values"]) if stamps else 0
    return bool(values) and min(values) == 1.0 and len(values) >= steps


def samples_from(results: dict[str, list]) -> list[Sample]:
    """Join the query_range results step by step; one Sample per drainwatch sample."""
    stamps = results["timestamp"][0]["values"] if results["timestamp"] else []
    by_step: dict[float, Sample] = {}
    for step, value in stamps:
        by_step[float(step)] = Sample(float(value))
    for query, series in results.items():
        if query in ("timestamp", "states", "destroy_events", "tracepoints", "trace_exact", "drain_phase"):
            continue
        for s in series:
            port = s["metric"].get("port", "")
            for step, value in s["values"]:
                sample = by_step.get(float(step))
                if sample is not None:
                    sample.values.setdefault(query, {})[port] = float(value)
    samples: list[Sample] = []
    for step in sorted(by_step):
        if not samples or by_step[step].t != samples[-1].t:
            samples.append(by_step[step])
    _fill_counters(samples)
    return samples


def _fill_counters(samples: list[Sample]) -> None:
    """A counter series missing from a scrape keeps its last value (0 before it first appears)."""
    for query in COUNTERS:
        last: dict[str, float] = {}
        for s in samples:
            current = s.values.setdefault(query, {})
            for port, value in last.items():
                current.setdefault(port, value)
            last.update(current)


def sample_instants(samples: list[Sample], interval: float) -> list[float]:
    """drainwatch's sample instants; a sample no scrape saw is put in its gap."""
    out: list[float] = []
    for s in samples:
        if out:
            missing = round((s.t - out[-1]) / interval) - 1
            step = (s.t - out[-1]) / (missing + 1)
            out.extend(out[-1] + step * (i + 1) for i in range(max(0, missing)))
        out.append(s.t)
    return out


def whole_span(handler):
    """Marks a check that judges all its phases at once (one span), not phase by phase."""
    handler.whole_span = True
    return handler


class Evaluator:
    def __init__(self, scenario: dict, phases: list[Phase], capture: tr.Capture,
                 samples: list[Sample], interval: float, stats: dict, faults: list[dict], exact: bool,
                 api_polls: list[dict] | None = None, drain_wait: dict | None = None,
                 drain_polls: list[dict] | None = None, scrapes: dict | None = None,
                 panels: dict | None = None, drain_wait_remote: dict | None = None,
                 drain_wait_prom: dict | None = None) -> None:
        self.panels = panels or {}
        self.drain_wait = drain_wait
        self.drain_wait_remote = drain_wait_remote
        self.drain_wait_prom = drain_wait_prom
        self.drain_polls = drain_polls or []
        self.scrapes = scrapes or {}
        self.scenario = scenario
        self.phases = {p.name: p for p in phases}
        self.capture = capture
        self.samples = samples
        self.interval = interval
        self.skew = float(scenario["timing"]["sample_skew"])
        self.instants = sample_instants(samples, interval)
        self.stats = stats
        self.faults = faults
        self.established = {p: tr.Established(t.conns) for p, t in capture.ports.items()}
        self.exact = exact
        self.events = {p: tr.counted_events(t.conns, self.instants, self.skew, self._listener_gone(p, phases), exact)
                       for p, t in capture.ports.items()}
        for p, t in capture.ports.items():
            self.events[p].update(tr.reset_events(t, self.instants, self.skew, delay=interval))
            self.events[p]["timeouts"] = tr.timeout_events(t, self.instants, self.skew, delay=interval)
        self.trace_exact = tracepoints_exact(scrapes or {}) if scrapes is not None else True
        self.api_polls = api_polls or []
        self.tables: list[str] = []  # extra report sections (the confusion matrix)
        self.class_views: dict[int, cl.ClassView] = {}

    @staticmethod
    def _listener_gone(port: int, phases: list[Phase]) -> float:
        """When the runner closed the port's listener (nginx quit, kill -9), if it did."""
        times = [a["t"] for p in phases for a in p.actions if port in LISTENER_CLOSED_BY.get(a["name"], ())]
        return min(times, default=math.inf)

    def run(self) -> list[Row]:
        if not self.samples:
            return [Row("drainwatch", "all", "samples read through Prometheus", ">0", "0", "", "", False)]
        mode = "every connection (destroy events)" if self.exact else "connections a sample saw (no destroy events)"
        rows = [Row("mode", "all", "what opened/closed_total count", mode, "", "", "", None,
                    'drainwatch_source_up{source="destroy_events"} decides which counter model is expected.')]
        for check in self.scenario.get("checks", []):
            handler = getattr(self, "check_" + check["kind"])
            if getattr(handler, "whole_span", False):
                rows.extend(handler(check, self._span(check["phases"])))
                continue
            for phase_name in check["phases"]:
                rows.extend(handler(check, self.phases[phase_name]))
        return rows

    def _span(self, names: list[str]) -> Phase:
        """Consecutive phases as one."""
        phases = [self.phases[n] for n in names]
        return Phase("+".join(names), min(p.start for p in phases), max(p.end for p in phases),
                     [a for p in phases for a in p.actions])

    def _in_phase(self, phase: Phase) -> list[Sample]:
        return [s for s in self.samples if phase.start <= s.t < phase.end]

    def _last_before(self, t: float) -> Sample | None:
        i = bisect.bisect_right([s.t for s in self.samples], t)
        return self.samples[i - 1] if i else None

    def check_established(self, check: dict, phase: Phase) -> list[Row]:
        """Per sample: drainwatch's established count vs the capture's, at the sample instant."""
        rows = []
        window = check.get("lag_samples", 0) * self.interval + self.skew
        samples = self._in_phase(phase)
        n = max(len(samples), 1)
        for port in check["ports"]:
            worst, worst_desc, fails, truth_sum, obs_sum = 0.0, "", 0, 0.0, 0.0
            for s in samples:
                lo, hi = self.established[port].range(s.t - window, s.t + window)
                obs = s.get("established", port)
                err = max(0.0, lo - obs, obs - hi)
                fails += err > max(check.get("abs", 0), check["rel"] * hi)
                truth_sum += self.established[port].at(s.t)
                obs_sum += obs
                if err / max(hi, 1) > worst:
                    worst = err / max(hi, 1)
                    worst_desc = f"; worst {obs:g} vs {lo}..{hi} at {s.t - phase.start:+.1f}s"
            tolerance = f"{check['rel']:.0%}/sample"
            if check.get("lag_samples"):
                tolerance += f", +-{check['lag_samples']} sample"
            rows.append(Row(
                "established", phase.name, f":{port} established per sample ({len(samples)} samples)",
                f"capture {truth_sum / n:.1f} avg", f"{obs_sum / n:.1f} avg{worst_desc}",
                f"max {worst:.1%}, {fails} over", tolerance, fails == 0 and bool(samples), check["why"]))
        return rows

    def check_counter(self, check: dict, phase: Phase) -> list[Row]:
        """Per phase: increase of opened/closed_total vs the sampler model over the capture."""
        rows = []
        first, last = self._last_before(phase.start), self._last_before(phase.end)
        if first is None or last is None:
            return [Row("counter", phase.name, f"{check['counter']} (no samples)", "", "", "", "", False, check["why"])]
        name = check["counter"]
        for port in check["ports"]:
            lo, hi = tr.count_in(self.events[port][name], first.t, last.t)
            obs = last.get(name, port) - first.get(name, port)
            tol = max(check.get("abs", 0), math.ceil(check.get("rel", 0) * hi))
            err = max(0.0, lo - obs, obs - hi)
            wire = self._wire(port, name, first.t, last.t)
            rows.append(Row(
                "counter", phase.name, f":{port} {name}_total increase",
                f"{lo}..{hi} (wire {wire})", f"{obs:g}", f"{err:g}", f"+-{tol}", err <= tol, check["why"]))
        return rows

    def _trace_guard(self, kind: str, phase: Phase, first: Sample, last: Sample, why: str) -> list[Row]:
        """A failing row unless the tracepoints were exact for the whole run and lost nothing in
        the window: without them the reset and timeout families are absent, and 0 would match."""
        lost = last.values.get("trace_lost", {}).get("", 0.0) - first.values.get("trace_lost", {}).get("", 0.0)
        if self.trace_exact and lost == 0:
            return []
        state = "exact" if self.trace_exact else "not exact throughout (or absent)"
        return [Row(kind, phase.name, 'drainwatch_source_info{source="tracepoints",precision="exact"}, records lost',
                    "exact, 0 lost", f"{state}, {lost:g} lost", "", "", False, why)]

    def check_resets(self, check: dict, phase: Phase) -> list[Row]:
        """Per phase and direction: increase of drainwatch_resets_total vs the RSTs on the wire
        that its tracepoints count (truth.reset_kinds, truth.reset_events)."""
        rows = []
        first, last = self._last_before(phase.start), self._last_before(phase.end)
        if first is None or last is None:
            return [Row("resets", phase.name, "(no samples)", "", "", "", "", False, check["why"])]
        rows.extend(self._trace_guard("resets", phase, first, last, check["why"]))
        for port in check["ports"]:
            kinds = [(inbound, kind) for t, inbound, kind in tr.reset_kinds(self.capture.ports[port])
                     if first.t < t <= last.t]
            for direction in ("sent", "received"):
                name = "resets_" + direction
                lo, hi = tr.count_in(self.events[port][name], first.t, last.t)
                obs = last.get(name, port) - first.get(name, port)
                tol = max(check.get("abs", 0), math.ceil(check.get("rel", 0) * hi))
                err = max(0.0, lo - obs, obs - hi)
                mine = Counter(kind for inbound, kind in kinds if inbound == (direction == "received"))
                plain = ("received", "sent by the socket", "sent without a full socket")
                left_out = "; ".join(f"{n} {k}" for k, n in sorted(mine.items()) if k not in plain)
                rows.append(Row(
                    "resets", phase.name, f":{port} resets_total{{direction=\"{direction}\"}} increase",
                    f"{lo}..{hi} (wire {sum(mine.values())}" + (f"; {left_out}" if left_out else "") + ")",
                    f"{obs:g}", f"{err:g}", f"+-{tol}", err <= tol, check["why"]))
        return rows

    def check_timeouts(self, check: dict, phase: Phase) -> list[Row]:
        """Per phase: increase of drainwatch_connection_timeouts_total vs the connections the
        fault bookkeeping put under a drop and the capture shows dying at the retransmission
        give-up (truth.timeout_events)."""
        rows = []
        first, last = self._last_before(phase.start), self._last_before(phase.end)
        if first is None or last is None:
            return [Row("timeouts", phase.name, "(no samples)", "", "", "", "", False, check["why"])]
        rows.extend(self._trace_guard("timeouts", phase, first, last, check["why"]))
        # The fault bookkeeping's drops that overlap the phase.
        drops = [f for f in self.faults if f["kind"] in ("blackhole", "drop_flows")
                 and f["start"] < last.t and (f["end"] or math.inf) > first.t]
        for port in check["ports"]:
            lo, hi = tr.count_in(self.events[port]["timeouts"], first.t, last.t)
            obs = last.get("timeouts", port) - first.get("timeouts", port)
            tol = max(check.get("abs", 0), math.ceil(check.get("rel", 0) * hi))
            err = max(0.0, lo - obs, obs - hi)
            conns = self.capture.ports[port].conns
            flows = {(port, ip, pp) for f in drops for _, ip, pp in f.get("flows", ())}
            under = [c for c in conns if c.est is not None and any(
                (port in f.get("ports", ()) or (port, *c.peer) in flows)
                and c.est < (f["end"] or math.inf) and c.est_end > f["start"] for f in drops)]
            queued = sum(1 for c in under if c.uncertain is not None)
            book = (f" ({len(under)} conns under a drop, {queued} with data queued)" if drops else " (no drop)")
            rows.append(Row("timeouts", phase.name, f":{port} connection_timeouts_total increase",
                            f"{lo}..{hi}{book}", f"{obs:g}", f"{err:g}", f"+-{tol}", err <= tol, check["why"]))
        return rows

    def check_opened(self, check: dict, phase: Phase) -> list[Row]:
        """Per phase: increase of opened_total vs the capture's accepted SYNs: connections whose
        SYN was answered and whose handshake completed (a full socket), short-lived ones and
        health checks included, placed at drainwatch's samples by the counter model (with
        destroy events each one at the first sample after its handshake)."""
        first, last = self._last_before(phase.start), self._last_before(phase.end)
        if first is None or last is None:
            return [Row("opened", phase.name, "opened_total (no samples)", "", "", "", "", False, check["why"])]
        return [self._opened_row(check, phase.name, port, first, last) for port in check["ports"]]

    @whole_span
    def check_opened_total(self, check: dict, span: Phase) -> list[Row]:
        """The same over consecutive phases as one span (the 0.5% of the acceptance needs
        counts in the hundreds)."""
        first, last = self._last_before(span.start), self._last_before(span.end)
        if first is None or last is None:
            return [Row("opened", span.name, "opened_total (no samples)", "", "", "", "", False, check["why"])]
        return [self._opened_row(check, span.name, port, first, last) for port in check["ports"]]

    def _opened_row(self, check: dict, name: str, port: int, first: Sample, last: Sample) -> Row:
        lo, hi = tr.count_in(self.events[port]["opened"], first.t, last.t)
        obs = last.get("opened", port) - first.get("opened", port)
        # Within rel of the count, rounded down: exact below 1 / rel connections.
        tol = check.get("abs", 0) + math.floor(check.get("rel", 0) * hi + 1e-9)
        err = max(0.0, lo - obs, obs - hi)
        conns = self.capture.ports[port].conns
        accepted = [c for c in conns if c.est is not None and c.synack is not None and first.t < c.est <= last.t]
        partial = sum(1 for c in conns if c.est is not None and c.synack == c.est and c.partial and first.t < c.est <= last.t)
        unfinished = sum(1 for c in conns if c.est is None and c.synack is not None and first.t < c.synack <= last.t)
        gone = self._listener_gone(port, list(self.phases.values()))
        late = sum(1 for c in accepted if c.est < gone and (self._next_instant(c.est - self.skew) >= gone))
        notes = [f"accepted SYNs {len(accepted) - partial}"]
        if unfinished:
            notes.append(f"{unfinished} SYN-ACKed, handshake never completed (no socket)")
        if late:
            notes.append(f"{late} accepted after the last sample before the listener closed (not counted, by design)")
        return Row("opened", name, f":{port} opened_total increase", f"{lo}..{hi} ({'; '.join(notes)})",
                   f"{obs:g}", f"{err:g}", f"+-{tol}", err <= tol, check["why"])

    # --- dashboards and alerts (issue 7) ------------------------------------

    @whole_span
    def check_panels(self, check: dict, phase: Phase) -> list[Row]:
        """Every dashboard panel query returns data during the run (through Prometheus, with the
        dashboards' variables set to this backend)."""
        panels = self.panels.get("panels", [])
        empty = []
        for p in panels:
            has = any(any(v[1] not in ("NaN", "+Inf", "-Inf") for v in series["values"]) for series in p["result"])
            if not has and p["title"] not in check.get("allow_empty", []):
                empty.append(f"{p['board']}: {p['title']}")
        return [Row("panels", phase.name, f"dashboard panel queries returning data ({len(panels)} queries)",
                    "all", f"{len(panels) - len(empty)}" + (f"; empty: {'; '.join(empty)}" if empty else ""),
                    str(len(empty)), "0", bool(panels) and not empty, check["why"])]

    def _alert_starts(self) -> dict[str, float]:
        """When each alert first started firing, by name (a run of firing steps)."""
        starts: dict[str, float] = {}
        for series in self.panels.get("alerts", []):
            name = series["metric"].get("alertname", "")
            first = min(float(t) for t, _ in series["values"]) if series["values"] else math.inf
            starts[name] = min(starts.get(name, math.inf), first)
        return starts

    def _alert_onsets(self) -> list[tuple[str, float]]:
        """Every onset (start of a run of firing steps) of every alert series."""
        onsets = []
        for series in self.panels.get("alerts", []):
            name = series["metric"].get("alertname", "")
            prev = None
            for t, _ in series["values"]:
                t = float(t)
                if prev is None or t - prev > 1.5:
                    onsets.append((name, t))
                prev = t
        return onsets

    @whole_span
    def check_alerts_fire(self, check: dict, phase: Phase) -> list[Row]:
        """One of `any_of` starts firing within `within` seconds of the phase's first action."""
        t0 = min(a["t"] for a in phase.actions) if phase.actions else phase.start
        onsets = [(n, t) for n, t in self._alert_onsets() if n in check["any_of"] and t >= t0 - 1]
        first = min(onsets, key=lambda o: o[1], default=None)
        observed = f"{first[0]} after {first[1] - t0:.1f}s" if first else "none fired"
        return [Row("alerts", phase.name, "damage alert after the cut", f"one of {', '.join(check['any_of'])} "
                    f"within {check['within']:g}s", observed, "", f"{check['within']:g}s",
                    first is not None and first[1] - t0 <= check["within"], check["why"])]

    @whole_span
    def check_alerts_quiet(self, check: dict, phase: Phase) -> list[Row]:
        """None of `none_of` starts firing during the phases."""
        onsets = [(n, t) for n, t in self._alert_onsets()
                  if n in check["none_of"] and phase.start <= t <= phase.end + check.get("after", 0)]
        observed = ", ".join(f"{n} at {t - phase.start:+.1f}s" for n, t in onsets) or "none"
        return [Row("alerts", phase.name, "damage alerts starting in a graceful drain", "none", observed,
                    str(len(onsets)), "0", not onsets, check["why"])]

    # --- drain readiness (issue 6) -------------------------------------------

    def _wait_times(self, phase: Phase) -> tuple[float, float | None]:
        start = phase.action_time({"wait_start"})
        summary = (self.drain_wait or {}).get("summary") or {}
        elapsed = summary.get("elapsed_seconds")
        return start, (start + elapsed if elapsed is not None else None)

    def _active_spans(self, port: int) -> list[tuple[float, float]]:
        """When each connection of the port was active as drainwatch counts it: from the
        handshake to the server's own FIN or a reset (CLOSE_WAIT is still active: the
        application has not closed), health probes aside (none complete a handshake here)."""
        spans = []
        for c in self.capture.ports[port].conns:
            if c.est is None:
                continue
            ends = [t for t in (c.fin_out, c.rst_in, c.rst_out, c.died) if t is not None]
            spans.append((c.est, min(ends) if ends else math.inf))
        return spans

    @whole_span
    def check_drain_wait(self, check: dict, phase: Phase) -> list[Row]:
        """`drainwatch wait` exits 0 within 3 samples of the last active connection leaving (on
        the wire) and never while one is active; or exits 1 at its timeout, saying why."""
        w = self.drain_wait or {}
        start, end = self._wait_times(phase)
        code = w.get("returncode")
        port = check["port"]
        if check["expect"] == "timeout":
            said = [m for m in w.get("messages", []) if check["reason_contains"] in m]
            result = ((w.get("summary") or {}).get("result"))
            ok = code == 1 and result == "timeout" and bool(said)
            return [Row("drain_wait", phase.name, f":{port} drainwatch wait with sessions that never leave",
                        f"exit 1, says \"{check['reason_contains']}\"", f"exit {code}, {result}; {said[:1]}",
                        "", "exact", ok, check["why"])]
        rows = []
        if code != 0 or end is None:
            return [Row("drain_wait", phase.name, f":{port} drainwatch wait", "exit 0", f"exit {code}", "", "",
                        False, check["why"])]
        spans = self._active_spans(port)
        active_at_exit = sum(1 for a, b in spans if a <= end < b)
        left = [b for a, b in spans if start <= b <= end]
        last_leave = max(left, default=start)
        limit = check["max_samples"] * self.interval + self.skew + check.get("exit_overhead", 0.3)
        rows.append(Row("drain_wait", phase.name, f":{port} active connections (capture) when wait exited",
                        "0", str(active_at_exit), str(active_at_exit), "exact", active_at_exit == 0,
                        check["why"]))
        rows.append(Row("drain_wait", phase.name, f":{port} wait's exit after the last active connection left",
                        f"0..{limit:.2f}s", f"{end - last_leave:+.2f}s ({len(left)} left after wait started)",
                        f"{max(0.0, end - last_leave - limit):.2f}s", f"{check['max_samples']} samples",
                        0 <= end - last_leave <= limit, check["why"]))
        return rows

    @whole_span
    def check_drain_agree(self, check: dict, phase: Phase) -> list[Row]:
        """GET /drain (the exporter) and `drainwatch wait` (its own sampling) give the same
        phase at the same time, once wait has watched for its quiet window."""
        start, end = self._wait_times(phase)
        lines = []
        for line in (self.drain_wait or {}).get("lines", []):
            f = dict(part.split("=", 1) for part in line.split(" reason=")[0].split())
            lines.append((start + float(f["elapsed"]), f["phase"], f["ready"] == "true"))
        stop = end if end is not None else phase.end
        # Two independent samplers (the exporter's and wait's) see a transition up to a sample
        # apart each: phases are compared within two sample intervals.
        slack = check.get("slack_samples", 2) * self.interval + 0.6
        compared = disagreed = 0
        worst = ""
        for p in self.drain_polls:
            t = p.get("t", 0.0)
            if not (start + check["skip_seconds"] <= t <= stop) or p.get("phase") is None:
                continue
            near = [(ph, ready) for tl, ph, ready in lines if abs(tl - t) <= slack]
            if not near:
                continue
            compared += 1
            if (p["phase"], p["ready"]) not in near:
                disagreed += 1
                worst = worst or f"/drain {p['phase']} at {t - start:+.1f}s vs wait {sorted(set(near))}"
        statuses_ok = all((p["status"] == 200) == bool(p["ready"]) for p in self.drain_polls if p.get("status"))
        return [Row("drain_agree", phase.name, "GET /drain vs drainwatch wait, phase and readiness",
                    f"agree at every poll (+-{slack:.1f}s)", f"{compared - disagreed}/{compared} agree" +
                    (f"; {worst}" if worst else ""), str(disagreed), "0",
                    disagreed == 0 and compared >= check.get("min_polls", 5) and statuses_ok, check["why"])]

    @staticmethod
    def _wait_lines(result: dict | None, start: float) -> list[tuple[float, str, bool]]:
        lines = []
        for line in (result or {}).get("lines", []):
            f = dict(part.split("=", 1) for part in line.split(" reason=")[0].split())
            lines.append((start + float(f["elapsed"]), f["phase"], f["ready"] == "true"))
        return lines

    @whole_span
    def check_remote_agree(self, check: dict, phase: Phase) -> list[Row]:
        """`drainwatch wait --url` run in the clients' namespace against the drainwatch inside
        backend 1 (or, with `source = "prometheus"`, `wait --prometheus` on the judged
        drainwatch's series) agrees with `drainwatch wait` sampling backend 1's kernel itself:
        same phase and readiness at every line (within `slack_samples`), and the same exit."""
        start, end = self._wait_times(phase)
        local = self._wait_lines(self.drain_wait, start)
        prom = check.get("source") == "prometheus"
        other = self.drain_wait_prom if prom else self.drain_wait_remote
        label = "wait --prometheus (root namespace)" if prom else "wait --url (clients' namespace)"
        remote = self._wait_lines(other, start)
        stop = end if end is not None else phase.end
        slack = check.get("slack_samples", 2) * self.interval + 0.6
        compared = disagreed = 0
        worst = ""
        for t, ph, ready in remote:
            if not (start + check["skip_seconds"] <= t <= stop):
                continue
            near = [(p, r) for tl, p, r in local if abs(tl - t) <= slack]
            if not near:
                continue
            compared += 1
            if (ph, ready) not in near:
                disagreed += 1
                worst = worst or f"{ph}/{ready} at {t - start:+.1f}s vs local {sorted(set(near))}"
        codes = ((self.drain_wait or {}).get("returncode"), (other or {}).get("returncode"))
        return [Row("remote_agree", phase.name, f"{label} vs wait (local), phase and readiness",
                    f"agree at every line (+-{slack:.1f}s), same exit", f"{compared - disagreed}/{compared} agree" +
                    (f"; {worst}" if worst else "") + f"; exits local {codes[0]}, other {codes[1]}",
                    str(disagreed), "0",
                    disagreed == 0 and compared >= check.get("min_lines", 5) and codes[0] == codes[1] == 0,
                    check["why"])]

    @whole_span
    def check_phase_walk(self, check: dict, phase: Phase) -> list[Row]:
        """drainwatch_drain_phase{port} walks through the expected phases, in order."""
        port = str(check["port"])
        at: dict[float, str] = {}
        for series in self.scrapes.get("drain_phase", []):
            if series["metric"].get("port") != port:
                continue
            for step, value in series["values"]:
                if float(value) == 1.0 and phase.start <= float(step) <= phase.end + check.get("after", 0):
                    at[float(step)] = series["metric"]["phase"]
        walk: list[str] = []
        for step in sorted(at):
            if not walk or walk[-1] != at[step]:
                walk.append(at[step])
        return [Row("phase_walk", phase.name, f'drainwatch_drain_phase{{port="{port}"}} over the run',
                    " -> ".join(check["expect"]), " -> ".join(walk) or "none", "", "exact",
                    walk == check["expect"], check["why"])]

    @whole_span
    def check_late_arrivals(self, check: dict, phase: Phase) -> list[Row]:
        """opened_after_drain_total equals the connections the capture shows opening after the
        drain mark (counted from the sample after the one before the mark)."""
        port = check["port"]
        t_mark = phase.action_time({"drain_mark"})
        i = bisect.bisect_right(self.instants, t_mark)
        before = self.instants[i - 1] if i else -math.inf
        after = self.instants[i] if i < len(self.instants) else math.inf
        end = self.samples[-1].t if self.samples else math.inf
        lo = tr.count_in(self.events[port]["opened"], after, end)[0]
        hi = tr.count_in(self.events[port]["opened"], before, end)[1]
        obs = self.samples[-1].get("opened_after_drain", port) if self.samples else 0.0
        wire = sum(1 for c in self.capture.ports[port].conns if c.est is not None and c.est > t_mark)
        err = max(0.0, lo - obs, obs - hi)
        refused = ""
        for a in phase.actions:
            if a["name"] == "drain_mark":
                refused = a["detail"]
        codes = json.loads(refused) if refused else {}
        ok_codes = codes.get("without_token") == "401" and codes.get("with_token") == "202"
        return [Row("late_arrivals", phase.name, f":{port} opened_after_drain_total",
                    f"{lo}..{hi} (wire {wire} after the mark)", f"{obs:g}", f"{err:g}", "exact",
                    err == 0 and ok_codes, check["why"] + f" POST /drain/start: {refused}")]

    def _wire(self, port: int, name: str, after: float, upto: float) -> int:
        conns = self.capture.ports[port].conns
        if name == "opened":
            return sum(1 for c in conns if c.est is not None and after < c.est <= upto)
        return sum(1 for c in conns if c.est is not None and after < c.est_end <= upto)

    def check_new_zero(self, check: dict, phase: Phase) -> list[Row]:
        """After the LB drain: no SYN-ACK on the port on the wire, then no opened increase."""
        t0 = phase.action_time({"lb_drain", "lb_maint"})
        port = check["port"]
        conns = self.capture.ports[port].conns
        synacks = [c.synack for c in conns if c.synack is not None and t0 <= c.synack < phase.end]
        last_wire = max(synacks, default=t0)
        rows = [Row("new_zero", phase.name, f":{port} last accepted SYN after the drain (capture)",
                    f"<= {check['capture_max_delay']:g}s", f"{last_wire - t0:.2f}s ({len(synacks)} SYNs)",
                    f"{last_wire - t0:.2f}s", f"{check['capture_max_delay']:g}s",
                    last_wire - t0 <= check["capture_max_delay"], check["why"])]
        samples = [s for s in self.samples if s.t < phase.end]
        last_increase = t0
        for prev, cur in zip(samples, samples[1:]):
            if cur.t >= t0 and cur.get("opened", port) > prev.get("opened", port):
                # When no scrape saw a sample, the increase may belong to the first one after prev.
                last_increase = max(t0, self._next_instant(prev.t))
        lag = last_increase - last_wire
        limit = check["exporter_max_lag_samples"] * self.interval + self.skew
        flat = sum(1 for s in samples if s.t > last_increase)
        rows.append(Row("new_zero", phase.name, f":{port} last opened_total increase after the capture's last SYN",
                        f"<= {limit:.2f}s, then flat", f"{lag:+.2f}s, flat for {flat} samples",
                        f"{max(lag, 0):.2f}s", f"{check['exporter_max_lag_samples']} sample",
                        lag <= limit and flat >= check["min_flat_samples"], check["why"]))
        return rows

    def _next_instant(self, t: float) -> float:
        """drainwatch's first sample instant after t (scraped or not)."""
        i = bisect.bisect_right(self.instants, t)
        return self.instants[i] if i < len(self.instants) else math.inf

    def check_listening(self, check: dict, phase: Phase) -> list[Row]:
        """drainwatch_listening{port} equals `expect`: after the `after` actions within
        max_delay_samples and from then on, or (no `after`) throughout the phase."""
        port, expect = check["port"], check["expect"]
        samples = self._in_phase(phase)
        if not check.get("after"):
            values = sorted({s.get("listening", port) for s in samples})
            ok = values == [expect]
            return [Row("listening", phase.name, f'drainwatch_listening{{port="{port}"}}', f"{expect:g} throughout",
                        "values " + ",".join(f"{v:g}" for v in values), "" if ok else "mismatch", "exact",
                        ok, check["why"])]
        t0 = phase.action_time(set(check["after"]))
        limit = check["max_delay_samples"] * self.interval + self.skew
        # Samples up to `limit` after the action may show either value (the sample that
        # first sees the change may be one no scrape saw); every later one must show `expect`.
        after = [s for s in samples if s.t > t0]
        due = [s for s in after if s.t > t0 + limit]
        first = next((s for s in after if s.get("listening", port) == expect), None)
        wrong = [s for s in due if s.get("listening", port) != expect]
        ok = bool(due) and not wrong
        if first is None:
            observed = "never"
        else:
            observed = f"first seen {first.t - t0:.2f}s after" + (f", but {len(wrong)} later samples differ" if wrong else "")
        return [Row("listening", phase.name, f'drainwatch_listening{{port="{port}"}} after {", ".join(check["after"])}',
                    f"{expect:g} from {limit:.2f}s on", observed, f"{len(wrong)} samples", f"{check['max_delay_samples']} sample",
                    ok, check["why"])]

    def check_capture_rst(self, check: dict, phase: Phase) -> list[Row]:
        """Stack sanity: RSTs on the wire in a phase that should have none.

        RSTs of flows under an injected fault are left out: a flow whose socket
        died during a drop keeps drawing RSTs for the LB's retransmissions. So are RSTs within
        50 ms after such a flow's FIN from the LB: a request retransmitted long after the drop,
        with the LB's FIN on it, makes nginx abort the proxied request (499) and close its
        upstream connection to the app with the response unread, an RST on the app's port.
        """
        rows = []
        faulted = {(port, ip, peer_port) for f in self.faults for port, ip, peer_port in f.get("flows", ())}
        faulted_fins = [c.fin_in for truth in self.capture.ports.values() for c in truth.conns
                        if (truth.port, *c.peer) in faulted and c.fin_in is not None]
        for port in check["ports"]:
            resets = [f"{'in' if inbound else 'out'} {peer[1]} at {t - phase.start:+.2f}s"
                      for t, inbound, peer in self.capture.ports[port].resets
                      if phase.start <= t < phase.end and (port, *peer) not in faulted
                      and not any(0 <= t - fin <= 0.05 for fin in faulted_fins)]
            rows.append(Row("capture_rst", phase.name,
                            f":{port} RSTs on the wire, faulted flows and their consequences aside (stack sanity)",
                            f"<= {check['max']}", f"{len(resets)}" + (f" ({'; '.join(resets[:3])})" if resets else ""),
                            str(max(0, len(resets) - check["max"])), str(check["max"]),
                            len(resets) <= check["max"], check["why"]))
        return rows

    def check_ws_1001(self, check: dict, phase: Phase) -> list[Row]:
        """Stack sanity: every session the app closed with 1001 reached a client as 1001."""
        sent = self.stats.get("app_closed_1001", 0)
        seen = self.stats.get("clients_ws_1001", 0)
        return [Row("ws_1001", phase.name, "WS closes with 1001: clients vs app (stack sanity)",
                    f"{sent} (app) and >= {check['min']}", str(seen), str(abs(sent - seen)), "0",
                    seen == sent and sent >= check["min"], check["why"])]


    # --- classification (tests/e2e/classes.py) ------------------------------

    def _classes(self, port: int) -> cl.ClassView:
        if port not in self.class_views:
            self.class_views[port] = cl.ClassView(self.capture.ports[port].conns, self.api_polls, port)
        return self.class_views[port]

    def _without_polls(self, check: dict, span: Phase) -> list[Row]:
        view = self._classes(check["port"])
        if view.polls:
            return []
        return [Row(check["kind"], span.name, "connections API polls answered", "> 0",
                    f"0 ({len(view.poll_errors)} failed)", "", "", False, check["why"])]

    def _evidence(self, title: str, judged: list[cl.Judged], upto: float = math.inf) -> None:
        """Per-connection timelines of the connections a check failed on, for the report."""
        lines = [title]
        for j in judged[:20]:
            c = j.conn
            lines.append(f"  {j.peer}  SYN {c.syn:.3f}  ended {c.est_end - c.syn:+.1f}s ({c.how})  "
                         f"listed: {j.timeline(c.syn, upto)}")
        if len(judged) > 20:
            lines.append(f"  ... and {len(judged) - 20} more (classes.py can list them from the kept run)")
        self.tables.append("\n".join(lines))

    def _counter_window(self, span: Phase) -> tuple[Sample, Sample] | None:
        first = self._last_before(span.start) or (self.samples[0] if self.samples else None)
        last = self._last_before(span.end)
        return (first, last) if first is not None and last is not None and last.t > first.t else None

    def _model_count(self, port: int, conns: list[tr.Conn], after: float, upto: float) -> tuple[int, int]:
        """[lo, hi] openings of `conns` a sampler counts in (after, upto] (the counter model).

        A health check reset during its handshake never was a socket here; it is expected
        as if it had been one counted at the first sample after its end."""
        gone = self._listener_gone(port, list(self.phases.values()))
        events = tr.counted_events([c for c in conns if c.est is not None], self.instants, self.skew, gone,
                                   self.exact)["opened"]
        lo, hi = tr.count_in(events, after, upto)
        ends = [c.est_end for c in conns if c.est is None]
        lo += sum(1 for e in ends if after + self.skew < e <= upto - self.skew)
        hi += sum(1 for e in ends if after - self.skew < e <= upto + self.skew)
        return lo, hi

    @whole_span
    def check_class_websocket(self, check: dict, span: Phase) -> list[Row]:
        """WebSocket connections (capture truth) first listed as `websocket` by the API within
        `within_push_intervals` times the app's push interval, plus one poll interval."""
        if rows := self._without_polls(check, span):
            return rows
        port = check["port"]
        view = self._classes(port)
        push = float(self.scenario["load"]["ws_push_interval"])
        poll = float(self.scenario["api_poll"]["interval"])
        limit = check["within_push_intervals"] * push + poll
        judged: list[cl.Judged] = []
        misses: list[cl.Judged] = []
        too_short = 0
        latency, sample_latency = [], []
        for j in view.of(view.in_span(span.start, span.end), cl.WEBSOCKET):
            c, first = j.conn, j.first("websocket")
            due = c.syn + limit
            if first is not None and first.t <= due:
                judged.append(j)
                latency.append(first.t - c.syn)
                if first.sample is not None:
                    sample_latency.append(first.sample - c.syn)
            elif c.est_end < due or view.last_poll < due:
                too_short += 1  # gone (or the run over) before it was due, not yet websocket: not judged
            else:
                judged.append(j)
                misses.append(j)
        n = len(judged)
        frac = (n - len(misses)) / n if n else 0.0
        rows = [Row("class_websocket", span.name,
                    f":{port} WebSocket conns listed `websocket` <= {check['within_push_intervals']:g} x push "
                    f"({push:g}s) + 1 poll ({poll:g}s) = {limit:g}s after SYN",
                    f">= {check['min_fraction']:.0%} of >= {check['min_connections']}",
                    f"{n - len(misses)}/{n} = {frac:.1%}; SYN -> first websocket poll: {cl.latency_summary(latency)}",
                    f"{len(misses)} late or never", f">= {check['min_fraction']:.0%}",
                    n >= check["min_connections"] and frac >= check["min_fraction"], check["why"]),
               Row("class_websocket", span.name, f":{port} SYN -> drainwatch sample that first listed websocket",
                   "", f"{cl.latency_summary(sample_latency)} ({len(sample_latency)} with a known sample; "
                   f"{too_short} conns ended before due, not judged)", "", "", None,
                   "The poll's answer time is an upper bound of when drainwatch knew (polls are 1 s apart); "
                   "the sample instant, known when the metrics read before and after the listing agree, is exact.")]
        if misses:
            self._evidence(f"class_websocket: WebSocket connections not listed as websocket within {limit:g}s "
                           "(times relative to their SYN)", misses)
        return rows

    @whole_span
    def check_class_http_never_websocket(self, check: dict, span: Phase) -> list[Row]:
        """HTTP connections (capture truth) that any poll listed as `websocket`."""
        if rows := self._without_polls(check, span):
            return rows
        port = check["port"]
        view = self._classes(port)
        rows = []
        for truth, judged_by_tolerance in ((cl.HTTP_KA, True), (cl.HTTP_CLOSE, False)):
            members = view.of(view.in_span(span.start, span.end), truth)
            listed = [j for j in members if j.seen]
            bad = [j for j in listed if j.first("websocket")]
            frac = len(bad) / len(listed) if listed else 0.0
            rows.append(Row("class_http", span.name, f":{port} {truth} conns ever listed `websocket`",
                            f"<= {check['max_fraction']:.0%} of >= {check['min_connections']} listed"
                            if judged_by_tolerance else "0",
                            f"{len(bad)}/{len(listed)} listed = {frac:.1%} ({len(members) - len(listed)} never listed)",
                            str(len(bad)), f"<= {check['max_fraction']:.0%}" if judged_by_tolerance else "info",
                            (len(listed) >= check["min_connections"] and frac <= check["max_fraction"])
                            if judged_by_tolerance else None, check["why"]))
            if bad:
                self._evidence(f"class_http: {truth} connections listed as websocket (times relative to their SYN)",
                               bad)
        return rows

    def _probe_rows(self, check: dict, span_name: str, first: Sample, last: Sample, what: str) -> Row:
        port = check["port"]
        probes = [j.conn for j in self._classes(port).judged if j.truth == cl.PROBE]
        lo, hi = self._model_count(port, probes, first.t, last.t)
        obs = last.get("opened_probe", port) - first.get("opened_probe", port)
        tol = math.floor((1 - check["min_fraction"]) * hi + 1e-9)
        err = max(0.0, lo - obs, obs - hi)
        share = f"{obs / hi:.1%}" if hi else "n/a"
        return Row("class_probe", span_name, f":{port} {what}",
                   f"{lo}..{hi} health checks (capture)", f"{obs:g} ({share})", f"{err:g}",
                   f"+-{tol} ({check['min_fraction']:.0%})", hi > 0 and obs > 0 and err <= tol, check["why"])

    @whole_span
    def check_class_probe(self, check: dict, span: Phase) -> list[Row]:
        """Health checks (capture truth) vs the increase of opened_total{class="probe"}."""
        window = self._counter_window(span)
        if window is None:
            return [Row("class_probe", span.name, "probe counter (no samples)", "", "", "", "", False, check["why"])]
        first, last = window
        probes = [j.conn for j in self._classes(check["port"]).judged if j.truth == cl.PROBE]
        reset = sum(1 for c in probes if c.est is None and first.t < c.est_end <= last.t)
        fails = last.values.get("attempt_fails", {}).get("", 0.0) - first.values.get("attempt_fails", {}).get("", 0.0)
        row = self._probe_rows(check, span.name, first, last, 'opened_total{class="probe"} increase')
        if row.passed is False:
            lines = [f"class_probe: health checks on the wire (the first 5 of {len(probes)}; times from the SYN)"]
            for c in probes[:5]:
                ack = "never" if c.est is None else f"+{(c.est - c.syn) * 1e3:.2f} ms"
                end = "RST in" if c.rst_in is not None else ("FIN in" if c.fin_in is not None else c.how)
                lines.append(f"  {c.peer[0]}:{c.peer[1]}  SYN {c.syn:.3f}  SYN-ACK +{((c.synack or c.syn) - c.syn) * 1e3:.2f} ms"
                             f"  final ACK {ack}  {end} +{(c.est_end - c.syn) * 1e3:.2f} ms  payload 0 bytes")
            lines.append(f"  drainwatch over the same span: opened_total{{class=\"probe\"}} "
                         f"+{last.get('opened_probe', check['port']) - first.get('opened_probe', check['port']):g}, "
                         f"{{class=\"unclassified\"}} +{last.get('opened_unclassified', check['port']) - first.get('opened_unclassified', check['port']):g}, "
                         f"{{class=\"http\"}} +{last.get('opened_http', check['port']) - first.get('opened_http', check['port']):g}; "
                         f"host Tcp AttemptFails +{fails:g}")
            self.tables.append("\n".join(lines))
        return [row,
                Row("class_probe", span.name, f":{check['port']} health checks reset in their handshake (capture)",
                    "", f"{reset} of {sum(1 for c in probes if first.t < c.est_end <= last.t)} probes; "
                    f"drainwatch_host_tcp_attempt_fails_total +{fails:g} (host-wide)", "", "", None,
                    "A check the LB resets right after the SYN-ACK never becomes a socket on backend 1 (the "
                    "kernel drops the request socket): no dump or destroy event can show it; the kernel counts "
                    "it only host-wide, in Tcp AttemptFails.")]

    def check_new_zero_nonprobe(self, check: dict, phase: Phase) -> list[Row]:
        """After the LB drain, with health checks on the service port: no new non-probe
        connection on the wire nor in drainwatch's opened_total{class!="probe"}, while the
        probes go on (on the wire and in opened_total{class="probe"})."""
        t0 = phase.action_time({"lb_drain", "lb_maint"})
        port = check["port"]
        view = self._classes(port)
        nonprobe = [j.conn for j in view.judged if j.truth != cl.PROBE]
        synacks = [c.synack for c in nonprobe if c.synack is not None and t0 <= c.synack < phase.end]
        last_wire = max(synacks, default=t0)
        probes_after = [j for j in view.of(view.judged, cl.PROBE) if t0 <= j.conn.syn < phase.end]
        rate = len(probes_after) / max(phase.end - t0, 1e-9)
        rows = [Row("new_zero_nonprobe", phase.name, f":{port} last non-probe SYN-ACK after the drain (capture)",
                    f"<= {check['capture_max_delay']:g}s", f"{last_wire - t0:.2f}s ({len(synacks)} SYN-ACKs)",
                    f"{last_wire - t0:.2f}s", f"{check['capture_max_delay']:g}s",
                    last_wire - t0 <= check["capture_max_delay"], check["why"]),
                Row("new_zero_nonprobe", phase.name, f":{port} health-check connections after the drain (capture)",
                    f">= {check['min_probe_rate']:g}/s", f"{len(probes_after)} ({rate:.2f}/s)", "", "",
                    rate >= check["min_probe_rate"], check["why"])]
        samples = [s for s in self.samples if s.t < phase.end]
        last_increase = t0
        for prev, cur in zip(samples, samples[1:]):
            if cur.t >= t0 and cur.get("opened_nonprobe", port) > prev.get("opened_nonprobe", port):
                last_increase = max(t0, self._next_instant(prev.t))
        lag = last_increase - last_wire
        limit = check["exporter_max_lag_samples"] * self.interval + self.skew
        flat = [s for s in samples if s.t > last_increase]
        rows.append(Row("new_zero_nonprobe", phase.name,
                        f':{port} last opened_total{{class!="probe"}} increase after the last non-probe SYN-ACK',
                        f"<= {limit:.2f}s, then flat", f"{lag:+.2f}s, flat for {len(flat)} samples",
                        f"{max(lag, 0):.2f}s", f"{check['exporter_max_lag_samples']} sample",
                        lag <= limit and len(flat) >= check["min_flat_samples"], check["why"]))
        first, last = self._last_before(last_increase), self._last_before(phase.end)
        if first is None or last is None or last.t <= first.t:
            rows.append(Row("new_zero_nonprobe", phase.name, f":{port} probes counted while non-probes are flat",
                            "", "no samples", "", "", False, check["why"]))
        else:
            rows.append(self._probe_rows(check, phase.name, first, last,
                                         f'opened_total{{class="probe"}} increase while non-probes are flat '
                                         f'({len(flat)} samples)'))
        return rows

    @whole_span
    def check_confusion(self, check: dict, span: Phase) -> list[Row]:
        """The confusion matrix (truth vs the API's last listed class) and the class counters."""
        if rows := self._without_polls(check, span):
            return rows
        port = check["port"]
        view = self._classes(port)
        judged = view.in_span(span.start, span.end)
        counters: list[tuple[str, str, str, str]] = []
        window = self._counter_window(span)
        if window is not None:
            first, last = window

            def model(truths: tuple[str, ...]) -> str:
                lo, hi = self._model_count(port, [j.conn for j in view.judged if j.truth in truths], first.t, last.t)
                return f"{lo}..{hi}" if lo != hi else str(lo)

            def obs(query: str) -> str:
                return f"{last.get(query, port) - first.get(query, port):g}"

            counters = [
                ('opened_total{class="http"}', model((cl.HTTP_KA, cl.HTTP_CLOSE, cl.WEBSOCKET)), obs("opened_http"),
                 "every HTTP connection; a WebSocket opens as http (its handshake is a request/response)"),
                ('opened_total{class="websocket"}', "0", obs("opened_websocket"), "none is websocket at its opening"),
                ('opened_total{class="probe"}', model((cl.PROBE,)), obs("opened_probe"), "health checks"),
                ('opened_total{class="unclassified"}', model((cl.OTHER,)), obs("opened_unclassified"),
                 "truth `other` (payload-less and long-lived, or not HTTP)"),
                ("upgraded_total", model((cl.WEBSOCKET,)), obs("upgraded"), "every WebSocket moves http -> websocket"),
            ]
        title = (f"Confusion matrix, :{port}, connections with SYN in {span.name} after the first API poll "
                 f"({len(judged)} connections; {len(view.polls)} polls answered, {len(view.poll_errors)} failed; "
                 f"{len(view.unmatched)} listings matched no capture connection)")
        self.tables.append(cl.confusion_table(judged, counters, title))
        by_truth = {t: len(view.of(judged, t)) for t in cl.TRUTH_ORDER}
        return [Row("confusion", span.name, f":{port} connections by capture truth",
                    "", ", ".join(f"{k} {v}" for k, v in by_truth.items()),
                    f"{len(view.unmatched)} unmatched listings", "", None, check["why"])]

def format_report(rows: list[Row]) -> str:
    headers = ("check", "phase", "quantity", "expected", "observed", "error", "tolerance", "result")
    table = [headers] + [(r.check, r.phase, r.quantity, r.expected, r.observed, r.error, r.tolerance,
                          "info" if r.passed is None else ("PASS" if r.passed else "FAIL")) for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(headers))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rows_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


def dashboard_queries(directory, instance: str, job: str = "drainwatch", port: str = "80"):
    """(board, panel title, expr) for every query of every dashboard, variables substituted."""
    from pathlib import Path
    subst = {"$job": job, "$instance": instance, "$port": port, "$__rate_interval": "1m",
             "${datasource}": ""}
    for path in sorted(Path(directory).glob("*.json")):
        board = json.loads(path.read_text())
        for p in board["panels"]:
            for t in p["targets"]:
                expr = t["expr"]
                for k, v in subst.items():
                    expr = expr.replace(k, v)
                yield board["title"], p["title"], expr


def netns_rows(data: dict) -> list[Row]:
    """Issue 8: the root-namespace drainwatch (--netns) against the drainwatch inside each
    backend, counter by counter, once traffic stopped. Equal means every series is present in
    both with the same value."""
    def diff(a: dict, b: dict) -> list[str]:
        keys = sorted(set(a) | set(b))
        return [f"{k}: {a.get(k)} vs {b.get(k)}" for k in keys if a.get(k) != b.get(k)]

    def opened(d: dict) -> float:
        return sum(v for k, v in d.items() if k.startswith("drainwatch_connections_opened_total"))

    rows = []
    for name, ours, ref, what in [
        ("judged_b1", data["judged_b1"], data["ref_b1"], "--netns b1 (the judged drainwatch)"),
        ("multi_b1", data["multi_b1"], data["ref_b1"], '--netns b1 --netns b2, series netns="b1"'),
        ("multi_b2", data["multi_b2"], data["ref_b2"], '--netns b1 --netns b2, series netns="b2"'),
    ]:
        bad = diff(ours, ref)
        rows.append(Row(
            "netns", "all", f"{what}: {len(NETNS_FAMILIES_SHORT)} counter families vs drainwatch inside the backend",
            f"{len(ref)} series equal (opened {opened(ref):.0f})",
            f"{len(ref) - len(bad)} equal" + (f"; first differences: {'; '.join(bad[:3])}" if bad else ""),
            str(len(bad)), "0", not bad and opened(ref) > 0,
            "Counters read from each drainwatch's /metrics after the clients and the LB stopped."))
    rows.append(Row(
        "netns", "all", "two namespaces watched: series without a netns label (of these families)",
        "0", str(len(data["multi_unlabelled"])), str(len(data["multi_unlabelled"])), "0",
        not data["multi_unlabelled"] and bool(data["multi_b1"]) and bool(data["multi_b2"])))
    return rows


NETNS_FAMILIES_SHORT = ("opened", "closed", "resets", "timeouts", "upgraded")
