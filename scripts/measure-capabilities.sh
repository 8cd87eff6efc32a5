#!/usr/bin/env bash
# Measures which capability each source of drainwatch needs on this kernel: starts the binary as
# an unprivileged user (nobody) with one capability set at a time (setpriv: inheritable, ambient
# and bounding set), and prints what each source reports, the destroy-event receive buffer the
# kernel granted, and whether the user can read another user's network namespace (the census).
# The table of docs/install.md ("Least privilege") comes from this. Needs root.
#
#   scripts/measure-capabilities.sh [BINARY] [CAPSET ...]
#
# BINARY defaults to target/release/drainwatch; a CAPSET is a comma list of capability names
# without the cap_ prefix ("" or "none" for none). Default sets: none, each single candidate,
# and the unit's set.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/drainwatch}
shift || true
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release --locked)" >&2; exit 1; }
if [ "$#" -gt 0 ]; then sets=("$@"); else
  sets=(none dac_override dac_read_search perfmon sys_admin net_admin sys_ptrace "dac_override,net_admin")
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# A listening port to watch, and a root-owned task whose namespace the census would read.
python3 -c 'import socket, time; s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True); time.sleep(3600)' >"$tmp/port" &
pids+=($!)
sleep 3600 &
root_task=$!; pids+=("$root_task")
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
port=$(cat "$tmp/port")

printf 'kernel %s, net.core.rmem_max %s, binary %s\n\n' "$(uname -r)" "$(sysctl -n net.core.rmem_max)" "$bin"
printf '| capabilities | sock_diag | procfs | destroy_events | event buffer | tracepoints | census: /proc/<root task>/ns/net |\n'
printf '|---|---|---|---|---|---|---|\n'
for set in "${sets[@]}"; do
  if [ -z "$set" ] || [ "$set" = none ]; then
    capargs=(--inh-caps=-all --ambient-caps=-all --bounding-set=-all); label=none
  else
    plus=$(echo "$set" | sed 's/\(^\|,\)/\1+/g')
    capargs=(--inh-caps="-all,$plus" --ambient-caps="-all,$plus" --bounding-set="-all,$plus")
    label=$(echo "$set" | tr '[:lower:]' '[:upper:]' | sed 's/\(^\|,\)/\1CAP_/g; s/,/ + /g')
  fi
  as_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups "${capargs[@]}" --)
  web=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as_user[@]}" "$bin" --web.listen-address "127.0.0.1:$web" --watch.port "$port" 2>"$tmp/log" &
  dw=$!; pids+=("$dw")
  for _ in $(seq 100); do curl -sf "127.0.0.1:$web/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -s "127.0.0.1:$web/metrics" >"$tmp/metrics"
  up() { awk -v s="drainwatch_source_up{source=\"$1\"}" 'index($0, s " ") == 1 { print ($2 == 1 ? "up" : "DOWN") }' "$tmp/metrics"; }
  precision() { sed -n "s/^drainwatch_source_info{source=\"$1\",precision=\"\([a-z_]*\)\"}.*/\1/p" "$tmp/metrics"; }
  buffer=$(ss -f netlink -a -m 2>/dev/null | grep "/$dw " | grep -o 'rb[0-9]*' | tr -d rb | sort -n | tail -n1)
  if "${as_user[@]}" stat -L /proc/"$root_task"/ns/net >/dev/null 2>&1; then census=readable; else census="EACCES"; fi
  printf '| %s | %s | %s | %s (%s) | %s | %s (%s) | %s |\n' "$label" "$(up sock_diag)" "$(up procfs)" \
    "$(up destroy_events)" "$(precision destroy_events)" "$((${buffer:-0} / 2 >> 20)) MiB (rb ${buffer:-?})" \
    "$(up tracepoints)" "$(precision tracepoints)" "$census"
  kill "$dw"; wait "$dw" 2>/dev/null || true
  if grep -q 'cannot read tracepoints' "$tmp/log"; then
    sed -n 's/.*cannot read tracepoints: \(.*\); resets.*/    tracepoints: \1/p' "$tmp/log" | sed 's/\x1b\[[0-9;]*m//g' >&2
  fi
done
