"""drainwatch as seen through Prometheus, compared with the capture truth.

drainwatch's numbers are read only through Prometheus's HTTP API
(query_range, 1 s step). Every scrape carries drainwatch's own
`drainwatch_last_sample_timestamp_seconds`, so each value is compared with the
truth at the instant drainwatch sampled, not at the scrape or step time.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

import truth as tr

QUERIES = {
    "timestamp": "max(drainwatch_last_sample_timestamp_seconds)",
    "established": 'sum by (port) (drainwatch_connections{state="established"})',
    "opened": "sum by (port) (drainwatch_connections_opened_total)",
    "closed": "sum by (port) (drainwatch_connections_closed_total)",
    "listening": "max by (port) (drainwatch_listening)",
    "destroy_events": 'max(drainwatch_source_up{source="destroy_events"})',
    "states": "sum by (port, class, state) (drainwatch_connections)",
}


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


def samples_from(results: dict[str, list]) -> list[Sample]:
    """Join the query_range results step by step; one Sample per drainwatch sample."""
    stamps = results["timestamp"][0]["values"] if results["timestamp"] else []
    by_step: dict[float, Sample] = {}
    for step, value in stamps:
        by_step[float(step)] = Sample(float(value))
    for query, series in results.items():
        if query in ("timestamp", "states", "destroy_events"):
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
    for query in ("opened", "closed"):
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


class Evaluator:
    def __init__(self, scenario: dict, phases: list[Phase], capture: tr.Capture,
                 samples: list[Sample], interval: float, stats: dict, faults: list[dict], exact: bool) -> None:
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
            for phase_name in check["phases"]:
                rows.extend(handler(check, self.phases[phase_name]))
        return rows

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
        died during a drop keeps drawing RSTs for the LB's retransmissions.
        """
        rows = []
        faulted = {(port, ip, peer_port) for f in self.faults for port, ip, peer_port in f.get("flows", ())}
        for port in check["ports"]:
            resets = [f"{'in' if inbound else 'out'} {peer[1]} at {t - phase.start:+.2f}s"
                      for t, inbound, peer in self.capture.ports[port].resets
                      if phase.start <= t < phase.end and (port, *peer) not in faulted]
            rows.append(Row("capture_rst", phase.name, f":{port} RSTs on the wire, faulted flows aside (stack sanity)",
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
