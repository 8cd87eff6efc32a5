"""Network namespaces, veth links and their removal.

Every object this module creates carries the PREFIX in its name, so that
`cleanup()` can find and remove the leftovers of any earlier run by name alone.
Addresses are taken from 10.250.0.0/16 only and no namespace has a default
route, so nothing can leave the test hosts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

# DRAINWATCH_E2E_PREFIX lets two runs share a machine (each cleans up only its own objects).
PREFIX = os.environ.get("DRAINWATCH_E2E_PREFIX", "dwe2e-")
if not (PREFIX.endswith("-") and 2 <= len(PREFIX) <= 8 and PREFIX[:-1].isalnum()):
    raise SystemExit(f"DRAINWATCH_E2E_PREFIX {PREFIX!r}: 1-7 letters or digits and a trailing '-'")
CLIENTS = PREFIX + "cl"
LB = PREFIX + "lb"
B1 = PREFIX + "b1"
B2 = PREFIX + "b2"
NAMESPACES = (CLIENTS, LB, B1, B2)

LB_FRONT_ADDR = "10.250.1.1"
CLIENT_ADDR = "10.250.1.2"
BACKEND_ADDRS = {B1: "10.250.11.2", B2: "10.250.12.2"}
LB_BACKSIDE_ADDRS = {B1: "10.250.11.1", B2: "10.250.12.1"}

# Backend sysctls. tcp_retries2=5 makes a socket whose segments vanish give up
# after about 12.6 s (RTO backoff from 200 ms) instead of ~15 min.
BACKEND_SYSCTLS = {"net.ipv4.tcp_retries2": "5"}
TCP_RETRIES2 = int(BACKEND_SYSCTLS["net.ipv4.tcp_retries2"])

CMD_TIMEOUT = 15.0


@dataclass(frozen=True)
class Link:
    """A veth pair between two namespaces, each end with a /24 address."""

    ns_a: str
    dev_a: str
    addr_a: str
    ns_b: str
    dev_b: str
    addr_b: str


LINKS = (
    Link(CLIENTS, "to-lb", CLIENT_ADDR, LB, "to-cl", LB_FRONT_ADDR),
    Link(B1, "to-lb", BACKEND_ADDRS[B1], LB, "to-b1", LB_BACKSIDE_ADDRS[B1]),
    Link(B2, "to-lb", BACKEND_ADDRS[B2], LB, "to-b2", LB_BACKSIDE_ADDRS[B2]),
)
BACKEND_DEV = "to-lb"


def run(args: list[str], check: bool = True, timeout: float = CMD_TIMEOUT, stdin: str | None = None) -> str:
    """Run a short command and return its stdout."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str | None, args: list[str]) -> list[str]:
    """`args` run inside namespace `ns`, or in the root namespace when `ns` is None."""
    return list(args) if ns is None else ["ip", "netns", "exec", ns, *args]


# Root-namespace processes of a run carry one of these in their command line, so that a run
# killed with SIGKILL leaves nothing the next cleanup cannot find: drainwatch watches the
# run's namespaces with --netns, Prometheus gets a page title naming the prefix.
ROOT_MARKERS = (f"--netns\0{PREFIX}", f"--web.page-title=drainwatch-e2e-{PREFIX}")


def leftover_root_processes() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(m in cmdline for m in ROOT_MARKERS):
            pids.append(int(entry))
    return pids


def create() -> None:
    """Create the four hosts and the three links between them."""
    for ns in NAMESPACES:
        run(["ip", "netns", "add", ns])
        run(in_ns(ns, ["ip", "link", "set", "lo", "up"]))
    for link in LINKS:
        # Both ends are created directly inside their namespaces, so no veth
        # ever exists in the root namespace, even for a moment.
        run(["ip", "link", "add", "name", link.dev_a, "netns", link.ns_a, "type", "veth",
             "peer", "name", link.dev_b, "netns", link.ns_b])
        for ns, dev, addr in ((link.ns_a, link.dev_a, link.addr_a), (link.ns_b, link.dev_b, link.addr_b)):
            run(in_ns(ns, ["ip", "addr", "add", f"{addr}/24", "dev", dev]))
            run(in_ns(ns, ["ip", "link", "set", dev, "up"]))
    for ns in (B1, B2):
        for key, value in BACKEND_SYSCTLS.items():
            run(in_ns(ns, ["sysctl", "-q", "-w", f"{key}={value}"]))


def leftover_namespaces() -> list[str]:
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


def leftover_links() -> list[str]:
    """Root-namespace links with the prefix (none are ever created there)."""
    out = run(["ip", "-o", "link", "show"])
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [name for name in names if name.startswith(PREFIX)]


def leftover_nft_tables() -> list[str]:
    """Root-namespace nft tables with the prefix (rules live inside namespaces)."""
    out = run(["nft", "list", "tables"], check=False)
    tables = [line.split()[1:] for line in out.splitlines() if line.startswith("table ")]
    return [" ".join(t) for t in tables if len(t) == 2 and t[1].startswith(PREFIX.replace("-", "_"))]


def namespace_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_pids(pids: list[int], grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def cleanup() -> list[str]:
    """Remove every prefixed namespace (and all processes inside), link and table.

    Safe to call at any time and more than once; returns what it removed.
    """
    removed = []
    stray = leftover_root_processes()
    if stray:
        kill_pids(stray, grace=2.0)
        removed.append(f"{len(stray)} root-namespace processes")
    for ns in leftover_namespaces():
        pids = namespace_pids(ns)
        if pids:
            kill_pids(pids, grace=2.0)
            removed.append(f"{len(pids)} processes in {ns}")
        run(["ip", "netns", "del", ns], check=False)
        removed.append(f"netns {ns}")
    for dev in leftover_links():
        run(["ip", "link", "del", dev], check=False)
        removed.append(f"link {dev}")
    for table in leftover_nft_tables():
        run(["nft", "delete", "table", *table.split()], check=False)
        removed.append(f"nft table {table}")
    return removed


def route_clients_to(backend: str) -> None:
    """Lets the clients' namespace reach `backend` directly through the LB host (IP
    forwarding in the LB's namespace, a route each way): for `drainwatch wait --url` from the
    clients' side (issue 8). The load-balanced traffic still goes through haproxy."""
    run(in_ns(LB, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
    subnet = BACKEND_ADDRS[backend].rsplit(".", 1)[0] + ".0/24"
    run(in_ns(CLIENTS, ["ip", "route", "add", subnet, "via", LB_FRONT_ADDR]))
    run(in_ns(backend, ["ip", "route", "add", CLIENT_ADDR.rsplit(".", 1)[0] + ".0/24",
                        "via", LB_BACKSIDE_ADDRS[backend]]))
