"""The processes of one scenario run: start, drive, stop.

Every process runs inside one of the test namespaces through `ip netns exec`,
in its own session (so a terminal's Ctrl-C reaches only the runner), with its
output in a log file under the run directory. The runner stops them in
`Stack.stop_all()`; anything that survives is killed with its namespace by
`topology.cleanup()`.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import topology as topo

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
WATCHED_PORTS = (80, 8080)
HEALTH_PORT = 81
APP_PORT = 8080
DRAINWATCH_PORT = 9977
# Reference drainwatch processes started inside the backends (issue 8: the one in the root
# namespace with --netns must report what these report).
DRAINWATCH_ADDR = f"{topo.BACKEND_ADDRS[topo.B1]}:{DRAINWATCH_PORT}"
REF_ADDRS = {topo.B1: DRAINWATCH_ADDR, topo.B2: f"{topo.BACKEND_ADDRS[topo.B2]}:{DRAINWATCH_PORT}"}
# Counter families compared between the root-namespace drainwatch and the reference ones.
NETNS_FAMILIES = ("drainwatch_connections_opened_total", "drainwatch_connections_closed_total",
                  "drainwatch_resets_total", "drainwatch_connection_timeouts_total",
                  "drainwatch_connections_upgraded_total")


def free_loopback_port() -> int:
    """A port free on the root namespace's loopback now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_counters(text: str, netns: str | None) -> dict[str, float]:
    """Series of NETNS_FAMILIES in an exposition: those labelled `netns` (label removed) or,
    with None, those without a netns label."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{", 1)[0] not in NETNS_FAMILIES:
            continue
        label = f'netns="{netns}"' if netns else None
        if label is None:
            if "netns=" in series:
                continue
        elif label not in series:
            continue
        else:
            series = series.replace(label + ",", "").replace("," + label, "").replace("{" + label + "}", "")
        out[series] = float(value)
    return out
SAMPLE_INTERVAL = 1.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


def render(template: str, dest: Path, **values: str) -> Path:
    """Fill @KEY@ placeholders of a template file; every one must be given."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z0-9_]+@", text)
    if leftover:
        raise ValueError(f"{template}: unfilled placeholders {leftover}")
    dest.write_text(text)
    return dest


TRACEFS = "/run/drainwatch-e2e/tracefs"


def ensure_tracefs() -> str:
    """A tracefs mount outside /sys (kept across runs: mounting is idempotent here)."""
    os.makedirs(TRACEFS, exist_ok=True)
    if not os.path.isdir(os.path.join(TRACEFS, "instances")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
    return TRACEFS


class Stack:
    """The processes of one run, in start order."""

    def __init__(self, run_dir: Path, repo: Path, python: str, drainwatch: str) -> None:
        self.run_dir = run_dir
        self.repo = repo
        self.python = python
        self.drainwatch_bin = drainwatch
        self.procs: dict[str, Proc] = {}
        # drainwatch (judged, root namespace, --netns backend 1) and Prometheus listen on the
        # root namespace's loopback; ports picked free so that parallel runs do not collide.
        self.dw_addr = f"127.0.0.1:{free_loopback_port()}"
        self.prom_addr = f"127.0.0.1:{free_loopback_port()}"
        self.multi_addr: str | None = None

    # --- process plumbing -------------------------------------------------

    def start(self, name: str, ns: str | None, argv: list[str]) -> Proc:
        log = self.run_dir / f"{name}.log"
        out = open(log, "ab")
        popen = subprocess.Popen(topo.in_ns(ns, argv), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.run_dir)
        out.close()
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.popen.poll() is not None:
            return
        proc.popen.send_signal(sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout)

    def stop_all(self) -> None:
        # tcpdump gets SIGINT so it flushes the capture file cleanly.
        for name in reversed(list(self.procs)):
            self.stop(name, signal.SIGINT if name == "capture" else signal.SIGTERM)

    def pid(self, name: str) -> int:
        return self.procs[name].popen.pid

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.popen.poll() is None

    def check_alive(self) -> None:
        dead = [p.name for p in self.procs.values() if p.popen.poll() is not None]
        if dead:
            raise RuntimeError(f"processes exited early: {dead} (see their logs in {self.run_dir})")

    def wait_for(self, what: str, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.check_alive()
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    # --- components -------------------------------------------------------

    def start_capture(self, snaplen: int = 128) -> None:
        """tcpdump on backend 1, all interfaces (the LB link and loopback).

        128 bytes keep every header; the classification scenario raises `snaplen`
        so that the first request of each connection (its HTTP headers) is kept too."""
        ports = " or ".join(f"port {p}" for p in WATCHED_PORTS)
        proc = self.start("capture", topo.B1, ["tcpdump", "-i", "any", "-n", "-U", "-s", str(snaplen), "-Z", "root",
                                               "-w", str(self.run_dir / "b1.pcap"), f"tcp and ({ports})"])
        self.wait_for("tcpdump", lambda: b"listening on" in proc.log.read_bytes(), 10)

    def start_backend(self, ns: str, name: str, push_interval: float = 3.0) -> None:
        host_dir = self.run_dir / name
        (host_dir / "tmp").mkdir(parents=True)
        admin = host_dir / "app-admin.sock"
        app = self.start(f"{name}-app", ns, [self.python, str(HERE / "app.py"), "--name", name,
                                              "--port", str(APP_PORT), "--admin-socket", str(admin),
                                              "--push-interval", f"{push_interval:g}"])
        self.wait_for(f"{name} app", lambda: b'"listening"' in app.log.read_bytes(), 20)
        conf = render("nginx.conf", host_dir / "nginx.conf", RUN=str(host_dir), ADDR=topo.BACKEND_ADDRS[ns])
        self.start(f"{name}-nginx", ns, ["nginx", "-c", str(conf), "-p", str(host_dir)])
        self.wait_for(f"{name} nginx", lambda: self.health_ok(ns), 10)

    def health_ok(self, ns: str) -> bool:
        url = f"http://{topo.BACKEND_ADDRS[ns]}:{HEALTH_PORT}/healthz"
        out = topo.run(topo.in_ns(ns, ["curl", "-s", "--max-time", "1", url]), check=False)
        return out.strip() == "ok"

    def start_haproxy(self, health_check: str = "http", check_inter: str = "1s") -> None:
        """haproxy in mode tcp. `health_check` "http": `option httpchk GET /healthz` on
        nginx's :81, off the watched ports; "tcp": plain TCP connect checks on the
        service port :80 itself (connect, then close without a byte)."""
        if health_check == "http":
            chk_option = "option httpchk GET /healthz"
            chk_comment = "Health checks go to nginx's :81, so they are not connections on :80."
            chk_args = f"check port {HEALTH_PORT} inter {check_inter} fall 2 rise 2"
        elif health_check == "tcp":
            # haproxy 2.6 resets such a check as soon as the SYN-ACK arrives, without the
            # handshake's final ACK: backend 1's kernel drops the request socket, and no
            # socket (so no connection drainwatch could see) ever exists there.
            chk_option = "# (no option httpchk: a TCP connect check)"
            chk_comment = "TCP connect checks on the service port :80: probes among the traffic."
            chk_args = f"check inter {check_inter} fall 2 rise 2"
        elif health_check == "tcp-linger":
            # The same check, closed cleanly: the handshake completes (its final ACK rides on
            # haproxy's FIN), so each check is a full, payload-less socket on backend 1.
            chk_option = "option tcp-check\n    tcp-check connect linger"
            chk_comment = "TCP connect checks on :80 that complete the handshake and close with a FIN."
            chk_args = f"check inter {check_inter} fall 2 rise 2"
        else:
            raise ValueError(f"health_check must be http, tcp or tcp-linger, not {health_check!r}")
        conf = render("haproxy.cfg", self.run_dir / "haproxy.cfg", RUN=str(self.run_dir),
                      FRONT=topo.LB_FRONT_ADDR, B1=topo.BACKEND_ADDRS[topo.B1], B2=topo.BACKEND_ADDRS[topo.B2],
                      CHECK_COMMENT=chk_comment, CHECK_OPTION=chk_option, CHECK=chk_args)
        self.start("haproxy", topo.LB, ["haproxy", "-db", "-f", str(conf)])
        self.wait_for("haproxy servers UP", lambda: self._servers_up(), 15)

    def _servers_up(self) -> bool:
        if not (self.run_dir / "haproxy.sock").exists():
            return False
        return all(self.server_status(s) == "UP" for s in ("b1", "b2"))

    def haproxy(self, command: str) -> str:
        """One command on haproxy's runtime API (unix socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.run_dir / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_status(self, server: str) -> str:
        for line in self.haproxy("show stat").splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "be" and fields[1] == server:
                return fields[17]
        return ""

    def app_admin(self, name: str, method: str, path: str, timeout: float = 30.0) -> dict:
        conn = _UnixHTTPConnection(str(self.run_dir / name / "app-admin.sock"), timeout)
        conn.request(method, path)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        return body

    def start_drainwatch(self, connections_api: bool = False, extra: list[str] | None = None,
                         compare_netns: bool = False) -> None:
        """The judged drainwatch: in the root namespace, watching backend 1 with --netns
        (issue 8). With `compare_netns`, also one drainwatch inside each backend (the
        reference) and one in the root namespace watching both backends (`netns` label)."""
        # `ip netns exec` mounts a fresh sysfs for the namespace, which hides
        # /sys/kernel/tracing: the references get a tracefs mounted outside /sys.
        tracefs = ensure_tracefs()
        self.drain_token = secrets.token_hex(16)
        token_file = self.run_dir / "drain-token"
        token_file.write_text(self.drain_token + "\n")
        common = [*[a for p in WATCHED_PORTS for a in ("--watch.port", str(p))],
                  "--sample.interval", f"{SAMPLE_INTERVAL:g}s", "--path.tracefs", tracefs, *(extra or [])]
        self.start("drainwatch", None, [
            self.drainwatch_bin, "--netns", topo.B1, *common, "--web.listen-address", self.dw_addr,
            "--web.drain-token-file", str(token_file),
            *(["--web.enable-connections-api"] if connections_api else [])])
        started = [(None, self.dw_addr)]
        if compare_netns:
            self.multi_addr = f"127.0.0.1:{free_loopback_port()}"
            self.start("drainwatch-netns", None, [
                self.drainwatch_bin, "--netns", topo.B1, "--netns", topo.B2, *common,
                "--web.listen-address", self.multi_addr])
            started.append((None, self.multi_addr))
            for ns, addr in REF_ADDRS.items():
                self.start(f"drainwatch-ref-{ns}", ns, [self.drainwatch_bin, *common, "--web.listen-address", addr])
                started.append((ns, addr))
            topo.route_clients_to(topo.B1)
        for ns, addr in started:
            url = f"http://{addr}/healthz"
            self.wait_for(f"drainwatch /healthz at {addr}", lambda: topo.run(
                topo.in_ns(ns, ["curl", "-sf", "--max-time", "1", url]), check=False) != "", 20)

    def metrics_text(self, ns: str | None, addr: str) -> str:
        return topo.run(topo.in_ns(ns, ["curl", "-sf", "--max-time", "5", f"http://{addr}/metrics"]))

    def netns_comparison(self) -> dict:
        """The counters of every drainwatch, read once traffic has stopped: the judged one
        (--netns backend 1), the two-namespace one per `netns` label, the references."""
        multi = self.metrics_text(None, self.multi_addr)
        return {
            "judged_b1": parse_counters(self.metrics_text(None, self.dw_addr), None),
            "multi_b1": parse_counters(multi, topo.B1),
            "multi_b2": parse_counters(multi, topo.B2),
            "multi_unlabelled": parse_counters(multi, None),
            "ref_b1": parse_counters(self.metrics_text(topo.B1, REF_ADDRS[topo.B1]), None),
            "ref_b2": parse_counters(self.metrics_text(topo.B2, REF_ADDRS[topo.B2]), None),
        }

    def start_prometheus(self) -> None:
        rules = str(self.repo / "alerts" / "*.yml")
        conf = render("prometheus.yml", self.run_dir / "prometheus.yml", RULES=rules, TARGET=self.dw_addr)
        self.start("prometheus", None, [
            "prometheus", f"--config.file={conf}", f"--storage.tsdb.path={self.run_dir / 'prometheus-data'}",
            f"--web.listen-address={self.prom_addr}", "--storage.tsdb.retention.time=1d",
            f"--web.page-title=drainwatch-e2e-{topo.PREFIX}"])
        self.wait_for("prometheus target up", lambda: self._target_up(), 30)

    def rule_files(self) -> list[str]:
        """The alert rule files Prometheus loaded (the config names them by glob)."""
        return sorted(glob.glob(str(self.repo / "alerts" / "*.yml")))

    def _target_up(self) -> bool:
        try:
            result = self.prom("query", {"query": 'up{job="drainwatch"}'})
        except (RuntimeError, ValueError):
            return False
        return any(r["value"][1] == "1" for r in result)

    def prom(self, endpoint: str, params: dict[str, str]) -> list:
        """A Prometheus HTTP API query, run from inside the LB namespace."""
        url = f"http://{self.prom_addr}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        out = topo.run(["curl", "-s", "--max-time", "10", url], check=False)
        reply = json.loads(out)
        if reply.get("status") != "success":
            raise RuntimeError(f"prometheus {endpoint} {params}: {reply}")
        return reply["data"]["result"]

    def drain_start(self, port: int, token: str | None = None) -> str:
        """POST /drain/start?port=P to the judged drainwatch; returns the HTTP status code."""
        auth = ["-H", f"Authorization: Bearer {token if token is not None else self.drain_token}"]
        return topo.run([
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "-X", "POST", *auth,
            f"http://{self.dw_addr}/drain/start?port={port}"], check=False).strip()

    def start_drain_wait(self, spec: dict, duration: float) -> None:
        """`drainwatch wait` in backend 1 (it samples the kernel itself), and a poller of the
        exporter's GET /drain with the same thresholds (drainpoll.py)."""
        args = ["--port", str(spec["port"]), "--max-active", str(spec.get("max_active", 0)),
                "--max-websocket", str(spec.get("max_websocket", 0)), "--quiet", spec.get("quiet", "3s"),
                "--hold-samples", str(spec.get("hold_samples", 3)), "--timeout", spec["timeout"],
                "--sample.interval", f"{SAMPLE_INTERVAL:g}s", "--progress", "lines"]
        self.start("drain-wait", topo.B1, [self.drainwatch_bin, "wait", *args])
        if self.multi_addr:
            # The same gate asked from the clients' side, over HTTP, of the drainwatch inside
            # backend 1 (issue 8: `wait --url` agrees with the local verdict).
            self.start("drain-wait-remote", topo.CLIENTS, [
                self.drainwatch_bin, "wait", "--url", f"http://{REF_ADDRS[topo.B1]}", *args])
            # And asked of Prometheus, from the judged drainwatch's series (scraped every 1 s,
            # the --sample.interval of args).
            self.start("drain-wait-prom", None, [
                self.drainwatch_bin, "wait", "--prometheus", f"http://{self.prom_addr}",
                "--instance", self.dw_addr, *args])
        self.start("drain-poller", None, [
            self.python, str(HERE / "drainpoll.py"), "--base", f"http://{self.dw_addr}",
            "--port", str(spec["port"]), "--max-active", str(spec.get("max_active", 0)),
            "--max-websocket", str(spec.get("max_websocket", 0)), "--quiet", spec.get("quiet", "3s"),
            "--hold-samples", str(spec.get("hold_samples", 3)), "--duration", f"{duration:.0f}",
            "--out", str(self.run_dir / "drain-polls.jsonl")])

    def start_api_poller(self, interval: float, duration: float, out: Path) -> None:
        """Polls the judged drainwatch's connections API (apipoll.py)."""
        self.start("api-poller", None, [
            self.python, str(HERE / "apipoll.py"), "--base", f"http://{self.dw_addr}", "--port", "80",
            "--interval", f"{interval:g}", "--duration", f"{duration:.0f}", "--out", str(out)])
        self.wait_for("first connections API poll", lambda: out.exists() and out.stat().st_size > 0, 10)

    def start_clients(self, load: dict, duration: float, log: Path) -> None:
        self.start("clients", topo.CLIENTS, [
            self.python, str(HERE / "clients.py"), "--host", topo.LB_FRONT_ADDR, "--duration", f"{duration:.0f}",
            "--api", str(load["api_clients"]), "--api-interval", *map(str, load["api_interval"]),
            "--ws", str(load["ws_clients"]), "--ws-lifetime", *map(str, load.get("ws_lifetime", (0, 0))),
            "--short-rate", str(load["short_rate"]),
            "--abort-rate", str(load.get("abort_rate", 0.0)), "--ramp", str(load["ramp"]),
            "--seed", str(load.get("seed", 1)), "--log", str(log)])

    def signal(self, name: str, sig: int) -> None:
        os.kill(self.pid(name), sig)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)
