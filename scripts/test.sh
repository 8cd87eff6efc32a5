#!/usr/bin/env bash
# Runs every test of drainwatch, installing what the tests need on a fresh Debian machine (as
# root): Debian's nginx, haproxy, prometheus (promtool), tcpdump, iproute2, nftables, and the
# end-to-end scenario's Python packages into a venv. Usage: scripts/test.sh [--no-e2e]
set -euo pipefail
cd "$(dirname "$0")/.."

run_e2e=1
for arg in "$@"; do
  case "$arg" in
    --no-e2e) run_e2e=0 ;;
    *) echo "usage: scripts/test.sh [--no-e2e]" >&2; exit 2 ;;
  esac
done

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "system packages"
need=()
for pair in nginx:nginx haproxy:haproxy promtool:prometheus prometheus:prometheus tcpdump:tcpdump \
            ip:iproute2 nft:nftables curl:curl ss:iproute2 pkill:procps tmux:tmux \
            amtool:prometheus-alertmanager; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need+=(python3-venv); fi
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "missing ${need[*]}: run as root" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo (Rust >= 1.85) is required" >&2; exit 1; }
# The tracepoint tests read tracefs; a host without it mounted gets it mounted (root only).
if [ ! -d /sys/kernel/tracing/instances ] && [ "$(id -u)" -eq 0 ]; then
  mount -t tracefs nodev /sys/kernel/tracing
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

step "unit, fixture, golden, HTTP, CLI and live-kernel tests"
cargo build --locked --bins
cargo test --locked --no-fail-fast

step "packaging (Debian package, systemd unit under systemd-nspawn, capabilities, Kubernetes manifests)"
scripts/test-packaging.sh

step "alert rules"
if compgen -G "alerts/*.yml" >/dev/null; then
  promtool check rules alerts/*.yml
  if compgen -G "alerts/tests/*.yml" >/dev/null; then promtool test rules alerts/tests/*.yml; fi
fi

if [ "$run_e2e" = 1 ]; then
  step "end-to-end drain scenarios (haproxy + nginx + app in network namespaces)"
  DRAINWATCH_BIN="$PWD/target/debug/drainwatch" timeout --signal=INT --kill-after=60 900 tests/e2e/run.sh
fi
step "all tests passed"
