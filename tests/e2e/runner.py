"""drainwatch end-to-end scenario runner (entry point: tests/e2e/run.sh).

For each scenario: build the test hosts, start the stack, run the timed
phases, read drainwatch's series back through Prometheus, tear everything
down, rebuild the truth from the capture and the clients' log, compare, and
write target/e2e/<scenario>/{report.txt,report.json,truth.json,scrapes.json}
(and classes.json, per connection, where the connections API was polled).
Exit status 0 only if every check of every scenario passed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import tomllib
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import classes as cl
import compare
import services
import topology as topo
import truth as tr

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCENARIOS = HERE / "scenarios"
DEFAULT_SET = ("steady-drain", "drain-stuck", "kill9", "mixed-classes-linger")
# Checks that read the connections API polls (scenario needs [api_poll] and [drainwatch] connections_api).
API_CHECKS = {"class_websocket", "class_http_never_websocket", "confusion"}
SCENARIO_TIME_LIMIT = 300  # seconds per scenario, setup to teardown
SETTLE_AFTER_LAST_PHASE = 2.5  # let Prometheus scrape the last sample


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame) -> None:
    # One interrupt is enough: a second one must not cut the cleanup short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def _on_alarm(_signum: int, _frame) -> None:
    raise TimeoutError(f"scenario exceeded {SCENARIO_TIME_LIMIT}s")


@contextmanager
def signals_deferred():
    """Cleanup must not itself be interrupted: hold SIGINT/SIGTERM until it is done."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def load_scenario(name: str) -> dict:
    path = SCENARIOS / f"{name}.toml"
    if not path.exists():
        known = sorted(p.stem for p in SCENARIOS.glob("*.toml"))
        raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(known)}")
    with open(path, "rb") as f:
        scenario = tomllib.load(f)
    if "base" in scenario:
        # A variant: the base scenario with this file's tables merged over it (keys of a
        # table replaced one by one; arrays such as phases and checks replaced whole).
        base = {k: v for k, v in load_scenario(scenario.pop("base")).items() if k != "name"}
        for key, value in scenario.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        scenario = base
    scenario["name"] = name
    phases = {p["name"] for p in scenario["phases"]}
    for check in scenario.get("checks", []):
        unknown = set(check["phases"]) - phases
        if unknown or not hasattr(compare.Evaluator, "check_" + check["kind"]) or not check.get("why"):
            raise SystemExit(f"{path}: bad check {check} (unknown phase/kind or no `why`)")
    kinds = {c["kind"] for c in scenario.get("checks", [])}
    if kinds & API_CHECKS and not (scenario.get("api_poll") and scenario.get("drainwatch", {}).get("connections_api")):
        raise SystemExit(f"{path}: checks {sorted(kinds & API_CHECKS)} need [api_poll] and "
                         "[drainwatch] connections_api = true")
    for phase in scenario["phases"]:
        for action in phase.get("actions", []):
            if action not in ACTIONS:
                raise SystemExit(f"{path}: unknown action {action!r}; known: {', '.join(ACTIONS)}")
    return scenario


# --- actions: what a phase does at its start (undone on time or at its end) -

class Driver:
    """Performs phase actions on a running stack and keeps the fault bookkeeping."""

    def __init__(self, stack: services.Stack, scenario: dict) -> None:
        self.stack = stack
        self.scenario = scenario
        self.faults: list[dict] = []
        self.expected_dead: set[str] = set()
        self.rng = random.Random(scenario["load"].get("seed", 1))
        self.undo: list[tuple[float, Callable[[], None]]] = []  # (when, what), done by that time or at phase end

    def act(self, name: str) -> dict:
        t = time.time()
        detail = ACTIONS[name](self)
        return {"name": name, "t": t, "detail": detail}

    def run_due(self, now: float) -> None:
        for item in [u for u in self.undo if u[0] <= now]:
            self.undo.remove(item)
            item[1]()

    def end_phase(self) -> None:
        self.run_due(math.inf)

    # LB runtime API
    def lb_drain(self) -> str:
        return self.stack.haproxy("set server be/b1 state drain").strip() or "ok"

    def lb_maint(self) -> str:
        return self.stack.haproxy("set server be/b1 state maint").strip() or "ok"

    def lb_shutdown(self) -> str:
        return self.stack.haproxy("shutdown sessions server be/b1").strip() or "ok"

    # drainwatch's drain API and `drainwatch wait` (issue 6)
    def drain_mark(self) -> str:
        """POST /drain/start for :80; first without the token (must be refused, changing nothing)."""
        refused = self.stack.drain_start(80, token="0" * 32)
        status = self.stack.drain_start(80)
        return json.dumps({"without_token": refused, "with_token": status})

    def wait_start(self) -> str:
        spec = self.scenario["drain_wait"]
        self.expected_dead.update({"drain-wait", "drain-poller", "drain-wait-remote", "drain-wait-prom"})
        self.stack.start_drain_wait(spec, float(spec["poll_seconds"]))
        return "drainwatch wait " + json.dumps(spec)

    # backend 1
    def app_close_ws(self) -> str:
        return json.dumps(self.stack.app_admin("b1", "POST", "/admin/close-ws?code=1001&rate=20"))

    def nginx_quit(self) -> str:
        conf = self.stack.run_dir / "b1" / "nginx.conf"
        self.expected_dead.add("b1-nginx")
        topo.run(topo.in_ns(topo.B1, ["nginx", "-c", str(conf), "-p", str(conf.parent), "-s", "quit"]))
        return "nginx -s quit"

    def kill9(self) -> str:
        nginx = self.stack.pid("b1-nginx")
        pids = [nginx, *_children(nginx), self.stack.pid("b1-app")]
        self.expected_dead.update({"b1-nginx", "b1-app"})
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        self.faults.append({"kind": "kill9", "t": time.time(), "pids": pids})
        return f"SIGKILL {pids}"

    def blackhole(self) -> str:
        """Backend 1 vanishes from the network: the LB host drops every packet from
        and to it, drainwatch's scrapes excepted. (Dropping inside backend 1 would
        not do: a local drop is an error the sending TCP sees, not a lost packet.)"""
        keep, dev = services.DRAINWATCH_PORT, "to-b1"
        _nft([f"add table inet {NFT_TABLE}",
              f"add chain inet {NFT_TABLE} in {{ type filter hook input priority 0 ; }}",
              f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0 ; }}",
              f'add rule inet {NFT_TABLE} in iifname "{dev}" tcp sport != {keep} drop',
              f'add rule inet {NFT_TABLE} out oifname "{dev}" tcp dport != {keep} drop'])
        self.faults.append({"kind": "blackhole", "start": time.time(), "end": None, "ports": [80]})
        return f"nft drop on the LB's {dev}, tcp except :{keep}"

    def forced_rst(self) -> str:
        """Abort every established socket on the watched ports (RST sent)."""
        t = time.time()
        ports = " or ".join(f"sport = :{p}" for p in services.WATCHED_PORTS)
        out = topo.run(topo.in_ns(topo.B1, ["ss", "-K", "-Htn", "state", "established", f"( {ports} )"]))
        self.faults.append({"kind": "forced_rst", "t": t, "sockets": len(out.splitlines())})
        return f"ss -K: {len(out.splitlines())} sockets"

    def client_aborts(self) -> str:
        self.stack.signal("clients", signal.SIGUSR1)
        t = time.time()

        def stop() -> None:
            self.stack.signal("clients", signal.SIGUSR2)
            self.faults.append({"kind": "client_aborts", "start": t, "end": time.time(),
                                "rate": self.scenario["load"]["abort_rate"]})
        seconds = self.scenario["faults"]["abort_seconds"]
        self.undo.append((t + seconds, stop))
        return f"SO_LINGER-0 aborts for {seconds}s"

    def drop_flows(self) -> str:
        """The LB host drops both directions of a few established :80 flows for `drop_seconds`."""
        flows = self._pick_flows(self.scenario["faults"]["drop_flows"])
        backend = topo.BACKEND_ADDRS[topo.B1]
        script = [f"add table inet {NFT_TABLE}",
                  f"add chain inet {NFT_TABLE} drops_in {{ type filter hook input priority 0 ; }}",
                  f"add chain inet {NFT_TABLE} drops_out {{ type filter hook output priority 0 ; }}"]
        for _, port in flows:
            script.append(f"add rule inet {NFT_TABLE} drops_in ip saddr {backend} tcp sport 80 tcp dport {port} drop")
            script.append(f"add rule inet {NFT_TABLE} drops_out ip daddr {backend} tcp dport 80 tcp sport {port} drop")
        _nft(script)
        t = time.time()
        seconds = self.scenario["faults"]["drop_seconds"]
        record = {"kind": "drop_flows", "start": t, "end": None, "flows": [[80, ip, port] for ip, port in flows]}
        self.faults.append(record)

        def lift() -> None:
            _nft([f"delete chain inet {NFT_TABLE} drops_in", f"delete chain inet {NFT_TABLE} drops_out"])
            record["end"] = time.time()
        self.undo.append((t + seconds, lift))
        return f"{len(flows)} flows for {seconds}s"

    def backend_rst(self) -> str:
        """Abort a few established :80 sockets on backend 1 (RST sent)."""
        flows = self._pick_flows(self.scenario["faults"]["backend_rst"])
        t = time.time()
        for ip, port in flows:
            topo.run(topo.in_ns(topo.B1, ["ss", "-K", "-tn", "state", "established",
                                          f"( sport = :80 and dst {ip} and dport = :{port} )"]))
        self.faults.append({"kind": "backend_rst", "t": t, "flows": [[80, ip, port] for ip, port in flows]})
        return f"ss -K {len(flows)} flows"

    def _pick_flows(self, n: int) -> list[tuple[str, int]]:
        """n random established :80 peers on backend 1, not already under a fault."""
        out = topo.run(topo.in_ns(topo.B1, ["ss", "-Htn", "state", "established", "( sport = :80 )"]))
        taken = {(ip, port) for f in self.faults for _, ip, port in f.get("flows", [])}
        peers = []
        for line in out.splitlines():
            ip, _, port = line.split()[-1].rpartition(":")
            if (ip, int(port)) not in taken:
                peers.append((ip, int(port)))
        return self.rng.sample(sorted(peers), min(n, len(peers)))


NFT_TABLE = topo.PREFIX.replace("-", "_") + "faults"
ACTIONS = {name: getattr(Driver, name) for name in (
    "lb_drain", "lb_maint", "lb_shutdown", "app_close_ws", "nginx_quit", "kill9",
    "blackhole", "forced_rst", "client_aborts", "drop_flows", "backend_rst", "drain_mark", "wait_start")}


def _nft(commands: list[str]) -> None:
    """Apply nft commands on the LB host as one transaction, so a fault starts at one instant."""
    topo.run(topo.in_ns(topo.LB, ["nft", "-f", "-"]), stdin="\n".join(commands) + "\n")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return kids


# --- one scenario ----------------------------------------------------------

def run_scenario(scenario: dict, out: Path, python: str, drainwatch: str) -> bool:
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "run"
    run_dir.mkdir(parents=True)
    stack = services.Stack(run_dir, REPO, python, drainwatch)
    phases: list[compare.Phase] = []
    driver = Driver(stack, scenario)
    signal.alarm(SCENARIO_TIME_LIMIT)
    try:
        print(f"[{scenario['name']}] starting the stack", flush=True)
        load, lb = scenario["load"], scenario.get("lb", {})
        topo.create()
        stack.start_capture(scenario.get("capture", {}).get("snaplen", 128))
        stack.start_backend(topo.B1, "b1", load.get("ws_push_interval", 3.0))
        stack.start_backend(topo.B2, "b2", load.get("ws_push_interval", 3.0))
        # drainwatch before haproxy: every drainwatch sees the first health check, so their
        # counters can be compared exactly.
        dw = scenario.get("drainwatch", {})
        stack.start_drainwatch(dw.get("connections_api", False), dw.get("args", []),
                               dw.get("compare_netns", False))
        stack.start_haproxy(lb.get("health_check", "http"), lb.get("check_inter", "1s"))
        stack.start_prometheus()
        total = sum(p["duration"] for p in scenario["phases"])
        if scenario.get("api_poll"):
            stack.start_api_poller(scenario["api_poll"]["interval"], total + 15, run_dir / "api.jsonl")
        stack.start_clients(load, total + 15, run_dir / "clients.jsonl")
        for spec in scenario["phases"]:
            phase = compare.Phase(spec["name"], time.time(), math.inf)
            print(f"[{scenario['name']}] phase {phase.name} ({spec['duration']}s)", flush=True)
            for action in spec.get("actions", []):
                phase.actions.append(driver.act(action))
            _hold(stack, driver, phase.start + spec["duration"])
            driver.end_phase()
            phase.end = time.time()
            phases.append(phase)
        time.sleep(SETTLE_AFTER_LAST_PHASE)
        start, end = phases[0].start, phases[-1].end + SETTLE_AFTER_LAST_PHASE
        scrapes = {name: stack.prom("query_range", {"query": q, "start": f"{start - 1:.0f}", "end": f"{end:.0f}",
                                                    "step": "1"}) for name, q in compare.QUERIES.items()}
        (out / "scrapes.json").write_text(json.dumps({"queries": compare.QUERIES, "results": scrapes}, indent=1))
        # Issue 7: every dashboard panel's queries, and the alerts that fired, over the run.
        panels = []
        for board, title, expr in compare.dashboard_queries(REPO / "dashboards", stack.dw_addr):
            result = stack.prom("query_range", {"query": expr, "start": f"{start - 1:.0f}", "end": f"{end:.0f}",
                                                "step": "2"})
            panels.append({"board": board, "title": title, "expr": expr, "result": result})
        alerts = stack.prom("query_range", {"query": 'ALERTS{alertstate="firing"}', "start": f"{start - 1:.0f}",
                                            "end": f"{end:.0f}", "step": "1"})
        (out / "panels.json").write_text(json.dumps({"panels": panels, "alerts": alerts}, indent=1))
        timeline = {
            "phases": [{"name": p.name, "start": p.start, "end": p.end, "actions": p.actions} for p in phases],
            "faults": driver.faults,
            "app_b1": stack.app_admin("b1", "GET", "/admin/stats") if stack.alive("b1-app") else None,
            "haproxy_show_stat": stack.haproxy("show stat"),
            "alert_rule_files": stack.rule_files(),
            "drain_wait": _wait_result(stack),
            "drain_wait_remote": _wait_result(stack, "drain-wait-remote"),
            "drain_wait_prom": _wait_result(stack, "drain-wait-prom"),
        }
        if stack.multi_addr:
            # Traffic stops (clients, then the LB's health checks), the last closes reach every
            # drainwatch, then their counters are read.
            stack.stop("clients")
            stack.stop("haproxy")
            time.sleep(3 * services.SAMPLE_INTERVAL)
            (out / "netns.json").write_text(json.dumps(stack.netns_comparison(), indent=1))
        (run_dir / "timeline.json").write_text(json.dumps(timeline, indent=1))
    finally:
        signal.alarm(0)
        with signals_deferred():
            stack.stop_all()
            topo.cleanup()
    return judge(scenario, out)


def _wait_result(stack: services.Stack, name: str = "drain-wait") -> dict | None:
    """How `drainwatch wait` ended: exit status, when (its JSON summary gives the elapsed time
    from its start), its progress lines."""
    proc = stack.procs.get(name)
    if proc is None:
        return None
    code = proc.popen.poll()
    text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
    summary = None
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                summary = json.loads(line)
            except ValueError:
                pass
    return {"returncode": code, "summary": summary,
            "lines": [line for line in text.splitlines() if line.startswith("elapsed=")],
            "messages": [line for line in text.splitlines() if line.startswith("drainwatch wait:")]}


def _hold(stack: services.Stack, driver: Driver, until: float) -> None:
    """Wait for the phase to end, undoing timed faults on time and failing
    early if a process died unexpectedly."""
    while (left := until - time.time()) > 0:
        driver.run_due(time.time())
        dead = [p.name for p in stack.procs.values()
                if p.popen.poll() is not None and p.name not in driver.expected_dead]
        if dead:
            raise RuntimeError(f"processes exited early: {dead} (logs in {stack.run_dir})")
        time.sleep(min(0.2, left))


def judge(scenario: dict, out: Path) -> bool:
    """Compare a finished run's saved scrapes with its truth; write the reports."""
    run_dir = out / "run"
    timeline = json.loads((run_dir / "timeline.json").read_text())
    scrapes = json.loads((out / "scrapes.json").read_text())["results"]
    phases = [compare.Phase(**p) for p in timeline["phases"]]
    faults = timeline["faults"]
    drops = [tr.DropWindow(f["start"], f["end"], frozenset(f.get("ports", ())),
                           frozenset(tuple(x) for x in f.get("flows", ())))
             for f in faults if f["kind"] in ("blackhole", "drop_flows")]
    capture = tr.Capture(tr.read_pcap(run_dir / "b1.pcap"), services.WATCHED_PORTS, drops, topo.TCP_RETRIES2)
    clients = [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines() if line.strip()]
    app = timeline["app_b1"] or {}
    stats = {"app_closed_1001": app.get("closed_by_app", {}).get("1001", 0),
             "clients_ws_1001": sum(1 for c in clients if c["cls"] == "ws" and c["close_code"] == 1001)}
    samples = compare.samples_from(scrapes)
    polls_file = run_dir / "drain-polls.jsonl"
    drain_polls = ([json.loads(line) for line in polls_file.read_text().splitlines() if line.strip()]
                   if polls_file.exists() else [])
    panels_file = out / "panels.json"
    panels = json.loads(panels_file.read_text()) if panels_file.exists() else {}
    evaluator = compare.Evaluator(scenario, phases, capture, samples, services.SAMPLE_INTERVAL, stats,
                                  faults, compare.destroy_events_up(scrapes), cl.read_polls(run_dir / "api.jsonl"),
                                  drain_wait=timeline.get("drain_wait"), drain_polls=drain_polls, scrapes=scrapes,
                                  drain_wait_remote=timeline.get("drain_wait_remote"),
                                  drain_wait_prom=timeline.get("drain_wait_prom"),
                                  panels=panels)
    rows = evaluator.run()
    netns_file = out / "netns.json"
    if netns_file.exists():
        rows += compare.netns_rows(json.loads(netns_file.read_text()))
    passed = all(r.passed is not False for r in rows)

    truth = {"scenario": scenario["name"], **timeline, "capture": _capture_json(capture),
             "clients": _clients_json(clients)}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    text = "\n\n".join([compare.format_report(rows), *evaluator.tables])
    verdict = "PASS" if passed else "FAIL"
    (out / "report.txt").write_text(f"scenario {scenario['name']}: {verdict}\n\n{text}\n")
    (out / "report.json").write_text(json.dumps({"scenario": scenario["name"], "verdict": verdict,
                                                 "samples": len(samples), "rows": compare.rows_json(rows),
                                                 "tables": evaluator.tables}, indent=1))
    if evaluator.class_views:
        (out / "classes.json").write_text(json.dumps(
            {str(port): view.to_json() for port, view in evaluator.class_views.items()}, indent=1))
    print(f"\n[{scenario['name']}] {verdict}  ({out}/report.txt)\n{text}\n", flush=True)
    return passed


def print_failed_rows(out: Path) -> None:
    """Repeats a failed scenario's failed checks at the very end, where a truncated CI log still shows them."""
    try:
        rows = json.loads((out / "report.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        print(f"    no report in {out} (the scenario broke before judging; see its traceback above)")
        return
    for r in rows:
        if r.get("passed") is False:
            print(f"    failed: {r['check']} [{r['phase']}] {r['quantity']}: expected {r['expected']}, "
                  f"observed {r['observed']} (error {r['error']}, tolerance {r['tolerance']}) {r.get('why', '')}")


def _capture_json(capture: tr.Capture) -> dict:
    ports = {}
    for port, truth in capture.ports.items():
        est = tr.Established(truth.conns)
        first, last = int(capture.first_t), int(capture.last_t)
        per_second = []
        for sec in range(first, last + 1):
            row = {"t": sec, **truth.per_second.get(sec, {}), "established": est.at(float(sec))}
            per_second.append(row)
        ports[str(port)] = {
            "connections": len(truth.conns),
            "ended": dict(Counter(c.how for c in truth.conns)),
            "rst_out_without_socket": truth.rst_out_without_socket,
            "uncertain": sum(1 for c in truth.conns if c.uncertain is not None),
            "per_second": per_second,
        }
    return ports


def _clients_json(clients: list[dict]) -> dict:
    summary: dict[str, Counter] = {}
    for c in clients:
        summary.setdefault(c["cls"], Counter())[f"{c['backend']}:{c['end']}"] += 1
    ws_codes = Counter(str(c["close_code"]) for c in clients if c["cls"] == "ws")
    return {"by_class": {k: dict(v) for k, v in summary.items()}, "ws_close_codes": dict(ws_codes),
            "faults": [c for c in clients if c.get("fault")]}


# --- main ------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="scenario name (repeatable); default: "
                        + ", ".join(DEFAULT_SET))
    parser.add_argument("--out", type=Path, default=REPO / "target" / "e2e")
    parser.add_argument("--python", default=sys.executable, help="interpreter with aiohttp, for app and clients")
    parser.add_argument("--drainwatch", default=os.environ.get("DRAINWATCH_BIN", str(REPO / "target/debug/drainwatch")))
    parser.add_argument("--judge-only", action="store_true",
                        help="re-judge the kept output of earlier runs (e.g. after editing tolerances)")
    args = parser.parse_args()
    names = args.scenario or list(DEFAULT_SET)
    scenarios = [load_scenario(n) for n in names]
    if args.judge_only:
        results = [judge(s, args.out / s["name"]) for s in scenarios]
        return 0 if all(results) else 1
    if os.geteuid() != 0:
        raise SystemExit("the e2e runner needs root (network namespaces)")
    if not os.access(args.drainwatch, os.X_OK):
        raise SystemExit(f"drainwatch binary not found or not executable: {args.drainwatch}")
    args.out.mkdir(parents=True, exist_ok=True)
    lock = open(args.out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another e2e run holds {args.out / '.lock'}")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_alarm)
    with signals_deferred():
        removed = topo.cleanup()
    if removed:
        print("removed leftovers of an earlier run: " + "; ".join(removed), flush=True)
    results = {}
    started = time.monotonic()
    try:
        for scenario in scenarios:
            t = time.monotonic()
            try:
                results[scenario["name"]] = run_scenario(scenario, args.out / scenario["name"], args.python,
                                                         args.drainwatch)
            except Interrupted:
                raise
            except Exception as exc:  # a broken scenario fails, the others still run
                traceback.print_exc()
                print(f"[{scenario['name']}] ERROR: {exc}", file=sys.stderr, flush=True)
                results[scenario["name"]] = False
            print(f"[{scenario['name']}] took {time.monotonic() - t:.0f}s", flush=True)
    except Interrupted as exc:
        print(f"interrupted by {exc}; cleaned up", file=sys.stderr)
        return 130
    finally:
        with signals_deferred():
            topo.cleanup()  # normally a no-op: each scenario cleans up after itself
    for name, ok in results.items():
        print(f"{name}: {'PASS' if ok else 'FAIL'}")
        if not ok:
            print_failed_rows(args.out / name)
    print(f"e2e scenarios took {time.monotonic() - started:.0f}s")
    print(f"{sum(results.values())} passed, {len(results) - sum(results.values())} failed")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
