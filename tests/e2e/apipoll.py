"""Polls drainwatch's connections API and logs every answer (standard library only).

Runs inside backend 1's namespace. Each poll reads drainwatch's
`drainwatch_last_sample_timestamp_seconds` from /metrics, then
GET /api/v1/connections?port=P, then the timestamp again: when both reads agree,
the listing is known to be that sample's (drainwatch publishes the listing and
the metrics together after every sample); when they differ, it is one of the
two. One JSON line per poll:

  {"n", "t_sent", "t_done", "sample_before", "sample_after", "status", "error", "connections"}

The loop stops at SIGTERM/SIGINT, after --duration seconds, or after
duration / interval + 1 polls, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import time
import urllib.error
import urllib.request

REQUEST_TIMEOUT = 0.8
TIMESTAMP = re.compile(rb"^drainwatch_last_sample_timestamp_seconds(?:\{[^}]*\})? (\S+)$", re.M)

stopping = False


def _stop(_signum, _frame) -> None:
    global stopping
    stopping = True


def sample_time(base: str) -> float | None:
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=REQUEST_TIMEOUT) as resp:
            m = TIMESTAMP.search(resp.read())
    except (OSError, urllib.error.URLError):
        return None
    return float(m.group(1)) if m else None


def poll(base: str, port: int) -> dict:
    out: dict = {"t_sent": time.time(), "sample_before": sample_time(base), "status": None, "error": None,
                 "connections": []}
    try:
        with urllib.request.urlopen(f"{base}/api/v1/connections?port={port}", timeout=REQUEST_TIMEOUT) as resp:
            out["status"] = resp.status
            out["connections"] = json.loads(resp.read())["connections"]
    except urllib.error.HTTPError as exc:
        out["status"], out["error"] = exc.code, exc.read().decode(errors="replace").strip()
    except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
        out["error"] = repr(exc)
    out["sample_after"] = sample_time(base)
    out["t_done"] = time.time()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="drainwatch's web address, http://host:port")
    parser.add_argument("--port", type=int, default=80, help="watched port to list")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, required=True, help="hard upper bound, seconds")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    start = time.monotonic()
    deadline = start + args.duration
    with open(args.out, "a") as log:
        for n in range(int(args.duration / args.interval) + 1):
            if stopping or time.monotonic() >= deadline:
                break
            log.write(json.dumps({"n": n, **poll(args.base, args.port)}) + "\n")
            log.flush()
            # Fixed schedule (no drift); after a slow poll the next one follows at once.
            next_at = start + (n + 1) * args.interval
            while not stopping and (left := next_at - time.monotonic()) > 0:
                time.sleep(min(left, 0.1))


if __name__ == "__main__":
    main()
