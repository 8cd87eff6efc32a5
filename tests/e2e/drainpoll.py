"""Polls drainwatch's GET /drain and logs every answer (standard library only).

Runs inside backend 1's namespace, beside `drainwatch wait`, with the same
thresholds, so that the exporter's verdict can be compared with the one `wait`
reaches by sampling the kernel itself. One JSON line per poll:

  {"t": time the answer came, "status": 200|503|..., "phase", "ready", "reason", "error"}

Stops at SIGTERM/SIGINT or after --duration seconds.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import urllib.error
import urllib.parse
import urllib.request

stopping = False


def _stop(_signum, _frame) -> None:
    global stopping
    stopping = True


def poll(url: str) -> dict:
    out: dict = {"status": None, "phase": None, "ready": None, "reason": None, "error": None}
    try:
        with urllib.request.urlopen(url, timeout=0.8) as resp:
            out["status"], body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        out["status"], body = exc.code, exc.read()
    except (OSError, urllib.error.URLError) as exc:
        out["error"], body = repr(exc), b""
    try:
        verdict = json.loads(body)["verdict"]
        out.update(phase=verdict["phase"], ready=verdict["ready"], reason=verdict["reason"])
    except (ValueError, KeyError, TypeError):
        pass
    out["t"] = time.time()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-active", type=int, default=0)
    ap.add_argument("--max-websocket", type=int, default=0)
    ap.add_argument("--quiet", default="10s")
    ap.add_argument("--hold-samples", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    query = urllib.parse.urlencode({"port": a.port, "max_active": a.max_active, "max_websocket": a.max_websocket,
                                    "quiet": a.quiet, "hold_samples": a.hold_samples})
    url = f"{a.base}/drain?{query}"
    end = time.time() + a.duration
    with open(a.out, "a", encoding="utf-8") as f:
        while not stopping and time.time() < end:
            f.write(json.dumps(poll(url)) + "\n")
            f.flush()
            time.sleep(a.interval)


if __name__ == "__main__":
    main()
