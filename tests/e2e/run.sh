#!/usr/bin/env bash
# drainwatch end-to-end scenarios: tests/e2e/run.sh [--scenario NAME ...]
# Without --scenario: the default set (steady-drain, drain-stuck, kill9, mixed-classes-linger). Needs root.
# See docs/e2e.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/e2e-venv"
export DRAINWATCH_BIN="${DRAINWATCH_BIN:-$repo/target/debug/drainwatch}"

missing=()
for tool in nginx haproxy prometheus tcpdump ip nft ss curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "e2e: missing tools: ${missing[*]} (apt-get install nginx haproxy prometheus tcpdump iproute2 nftables curl)" >&2
    exit 2
fi
if [[ ! -x "$DRAINWATCH_BIN" ]]; then
    echo "e2e: drainwatch binary not found at $DRAINWATCH_BIN (cargo build, or set DRAINWATCH_BIN)" >&2
    exit 2
fi

# The venv is kept and reused; it is rebuilt when requirements.txt changes.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" >"$stamp"
fi

"$venv/bin/python" -m unittest discover -s "$here" -p 'test_*.py' -q
exec "$venv/bin/python" "$here/runner.py" --python "$venv/bin/python" "$@"
