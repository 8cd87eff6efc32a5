#!/usr/bin/env bash
# Installs and starts every packaging artefact of drainwatch on this machine (as root):
#   1. builds the release binary if needed and the .deb (scripts/build-deb.sh), installs it;
#   2. checks the installed files, the system user, `systemd-analyze verify` (no warning) and
#      `security --offline` of the unit, `drainwatch check-config` of the shipped config;
#   3. starts the packaged /usr/bin/drainwatch as user drainwatch with exactly the capabilities
#      of the installed unit's AmbientCapabilities= (setpriv), on 127.0.0.1, watching a port
#      with connections that get reset: every source runs, tracepoints are exact and count the
#      resets, the destroy-event buffer is the forced 16 MiB, every syscall it made is allowed
#      by the unit's SystemCallFilter=; then the preStop command of the Kubernetes sidecar
#      example runs against it and exits 0;
#   4. negative control: the same start with no capability: tracepoints do not run;
#      then the installed unit is started by systemd in a systemd-nspawn container (this
#      machine's PID 1 is not systemd): sandbox, capabilities and seccomp filter applied;
#   5. validates the Kubernetes manifests offline (kubernetes-validate --strict) and checks
#      they agree with the unit (capabilities) and with the scrape configuration (labels);
#   6. purges the package: files, user and group are gone.
# Prints one PASS/FAIL line per check and exits 1 if any failed. Usage: scripts/test-packaging.sh
# Needs: dpkg (dpkg-deb), binutils, util-linux (setpriv), systemd (systemd-analyze),
# adduser, strace, iproute2 (ss), curl, systemd-container (systemd-nspawn), python3 with venv;
# missing ones are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

K8S_VERSION=1.33.0      # Kubernetes version the manifests are validated against
EXPOSURE_MAX=30         # systemd-analyze security: at most 3.0 ("OK")

started=$(date +%s)
failures=0
pass() { printf 'PASS: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }
check() { # check NAME COMMAND...: PASS when the command succeeds
  local name=$1; shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}
die() { printf 'FAIL: %s\n' "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (installs a package, starts drainwatch as another user)"
if dpkg-query -W -f='${Status}' drainwatch 2>/dev/null | grep -q 'install ok installed'; then
  die "a drainwatch package is already installed here; this test installs and purges its own"
fi

tmp=$(mktemp -d /tmp/drainwatch-pkgtest.XXXXXX)
pids=()
installed=0
stop_pid() { # SIGTERM, then SIGKILL after 10 s: never waits forever
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
forget() { # drop stopped processes from the cleanup list (their PIDs may be reused)
  local keep=() p q
  for p in "${pids[@]}"; do
    for q in "$@"; do [ "$p" != "$q" ] || continue 2; done
    keep+=("$p")
  done
  pids=("${keep[@]}")
}
cleanup() {
  local rc=$? i
  set +e
  trap '' INT TERM
  # Newest first: a traced drainwatch before its strace (which would leave it running).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  if [ "$installed" = 1 ]; then
    dpkg --purge drainwatch >/dev/null 2>&1 || echo "cleanup: dpkg --purge drainwatch failed" >&2
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n=== %s (%ss)\n' "$1" "$(($(date +%s) - started))"; }

step "tools"
need=()
for pair in dpkg-deb:dpkg objcopy:binutils setpriv:util-linux systemd-analyze:systemd \
            adduser:adduser strace:strace ss:iproute2 curl:curl deb-systemd-helper:init-system-helpers \
            systemd-nspawn:systemd-container; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need+=(python3-venv); fi
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
# Tracepoints need tracefs where the unit expects it (as scripts/test.sh does).
if [ ! -d /sys/kernel/tracing/instances ]; then
  mount -t tracefs nodev /sys/kernel/tracing
fi

step "build"
cargo build --release --locked
deb=$(SKIP_BUILD=1 scripts/build-deb.sh | tail -n1)
version=$(dpkg-deb -f "$deb" Version)
check "package built: $deb ($(du -h "$deb" | cut -f1))" test -s "$deb"

step "install"
installed=1
if ! dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -f >>"$tmp/dpkg.log" 2>&1 || true
fi
check "dpkg -i: drainwatch $version installed" \
  sh -c "dpkg-query -W -f='\${Status} \${Version}' drainwatch | grep -qx 'install ok installed $version'"
[ "$failures" = 0 ] || { cat "$tmp/dpkg.log"; die "the package did not install"; }

files_ok() {
  local f missing=0
  for f in /usr/bin/drainwatch /lib/systemd/system/drainwatch.service \
           /etc/drainwatch/drainwatch.toml /etc/default/drainwatch \
           /usr/share/drainwatch/provisioning/dashboards.yml \
           /usr/share/drainwatch/provisioning/datasources.yml \
           /usr/share/doc/drainwatch/README.md /usr/share/doc/drainwatch/copyright \
           /usr/share/doc/drainwatch/install.md; do
    [ -s "$f" ] || { echo "  missing: $f"; missing=1; }
  done
  for f in dashboards/*.json; do
    cmp -s "$f" "/usr/share/drainwatch/dashboards/$(basename "$f")" || { echo "  missing or different: dashboards/$(basename "$f")"; missing=1; }
  done
  for f in alerts/*.yml; do
    cmp -s "$f" "/usr/share/drainwatch/alerts/$(basename "$f")" || { echo "  missing or different: alerts/$(basename "$f")"; missing=1; }
  done
  if [ ! -x /usr/bin/drainwatch ] || [ "$(/usr/bin/drainwatch --version)" != "drainwatch $version" ]; then
    echo "  /usr/bin/drainwatch --version is not drainwatch $version"; missing=1
  fi
  return "$missing"
}
check "files installed (binary, unit, config, dashboards, provisioning, alerts, docs)" files_ok
check "conffiles: /etc/drainwatch/drainwatch.toml and /etc/default/drainwatch" \
  sh -c "dpkg-query -W -f='\${Conffiles}' drainwatch | awk '{print \$1}' | sort | tr '\n' ' ' | grep -qx '/etc/default/drainwatch /etc/drainwatch/drainwatch.toml '"
user_ok() {
  local uid shell
  uid=$(id -u drainwatch) && shell=$(getent passwd drainwatch | cut -d: -f7) || return 1
  echo "  drainwatch: uid $uid, groups $(id -Gn drainwatch), shell $shell, home $(getent passwd drainwatch | cut -d: -f6)"
  [ "$uid" -lt 1000 ] && [ "$(id -gn drainwatch)" = drainwatch ] && [ "$(id -Gn drainwatch)" = drainwatch ] \
    && case $shell in */nologin|/bin/false) true ;; *) false ;; esac && [ ! -e /home/drainwatch ]
}
check "system user and group drainwatch (no login, no home, no other group)" user_ok
check "enabled for boot (deb-systemd-helper, without a running systemd)" \
  test -L /etc/systemd/system/multi-user.target.wants/drainwatch.service

step "unit"
unit=/lib/systemd/system/drainwatch.service
verify_ok() {
  local out
  out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; return 1; }
  # systemd-analyze exits 0 on unknown keys and bad values: any output is a failure here.
  [ -z "$out" ] || { echo "$out"; return 1; }
}
check "systemd-analyze verify $unit: exit 0, no warning" verify_ok
exposure=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for drainwatch.service: \([0-9.]*\).*/\1/p')
exposure_ok() { systemd-analyze security --offline=true --threshold="$EXPOSURE_MAX" "$unit" >/dev/null 2>&1; }
check "systemd-analyze security --offline: exposure ${exposure:-?} <= $((EXPOSURE_MAX / 10)).$((EXPOSURE_MAX % 10))" exposure_ok
config_ok() {
  setpriv --reuid=drainwatch --regid=drainwatch --clear-groups --inh-caps=-all --bounding-set=-all -- \
    /usr/bin/drainwatch check-config /etc/drainwatch/drainwatch.toml >/dev/null
}
check "drainwatch check-config /etc/drainwatch/drainwatch.toml (as drainwatch)" config_ok

# The capabilities of the installed unit: every AmbientCapabilities= line (an empty one resets).
unit_caps() { # KEY -> sorted lower-case names without cap_, one per line
  awk -F= -v key="$1" '$1 == key { if ($2 == "") caps = ""; else caps = caps " " $2 } END { print caps }' "$unit" \
    | tr ' ' '\n' | sed '/^$/d; s/^CAP_//; s/^cap_//' | tr '[:upper:]' '[:lower:]' | sort -u
}
ambient=$(unit_caps AmbientCapabilities | paste -sd, -)
bounding=$(unit_caps CapabilityBoundingSet | paste -sd, -)
check "unit: CapabilityBoundingSet= ($bounding) is AmbientCapabilities= ($ambient)" test "$ambient" = "$bounding"
[ -n "$ambient" ] || fail "unit: AmbientCapabilities= is empty"

step "run the packaged binary as drainwatch"
cat >"$tmp/app.py" <<'EOF'
# A listening port with connections to watch: SIGUSR1 opens 5 (held open), SIGUSR2 resets them
# (SO_LINGER 0: the server side receives 5 RSTs).
import signal, socket, struct, sys, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
held, clients = [], []
def serve():
    while True:
        held.append(srv.accept()[0])
threading.Thread(target=serve, daemon=True).start()
def open_(*_):
    for _ in range(5):
        clients.append(socket.create_connection(srv.getsockname()))
def reset(*_):
    for c in clients:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
    clients.clear()
signal.signal(signal.SIGUSR1, open_); signal.signal(signal.SIGUSR2, reset)
print(srv.getsockname()[1], flush=True)
while True:
    signal.pause()
EOF
python3 "$tmp/app.py" >"$tmp/app.port" &
pids+=($!); app_pid=$!
for _ in $(seq 50); do [ -s "$tmp/app.port" ] && break; sleep 0.1; done
app_port=$(cat "$tmp/app.port")

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
caps_hex() { # the CapEff mask of a list like "dac_override,net_admin"
  python3 - "$1" <<'EOF'
import sys
bits = {"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "net_admin": 12,
        "sys_ptrace": 19, "sys_admin": 21, "perfmon": 38, "bpf": 39}
mask = 0
for c in filter(None, sys.argv[1].split(",")):
    mask |= 1 << bits[c]
print(f"{mask:016x}")
EOF
}
metric() { # metric FILE SERIES -> value, or empty when absent
  awk -v s="$2" 'index($0, s " ") == 1 { print $2; exit }' "$1"
}

# start NAME CAPS [strace]: starts /usr/bin/drainwatch as drainwatch with CAPS; sets dw_pid, dw_port
start_drainwatch() {
  local name=$1 caps=$2 capargs
  if [ -n "$caps" ]; then
    local plus; plus=$(echo "$caps" | sed 's/\(^\|,\)/\1+/g')
    capargs=(--inh-caps="-all,$plus" --ambient-caps="-all,$plus" --bounding-set="-all,$plus")
  else
    capargs=(--inh-caps=-all --ambient-caps=-all --bounding-set=-all)
  fi
  dw_port=$(free_port)
  local cmd=(setpriv --reuid=drainwatch --regid=drainwatch --clear-groups "${capargs[@]}" --
             /usr/bin/drainwatch --config.file /etc/drainwatch/drainwatch.toml
             --web.listen-address "127.0.0.1:$dw_port" --watch.port "$app_port" --sample.interval 250ms)
  if [ "${3:-}" = strace ]; then
    strace -f -qq -o "$tmp/$name.strace" "${cmd[@]}" 2>"$tmp/$name.log" &
  else
    "${cmd[@]}" 2>"$tmp/$name.log" &
  fi
  dw_pid=$!; pids+=("$dw_pid")
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$dw_port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Under strace, the process to inspect is the traced child (setpriv execs drainwatch).
  if [ "${3:-}" = strace ]; then
    dw_proc=$(pgrep -P "$dw_pid" | head -n1 || true)
    [ -z "$dw_proc" ] || pids+=("$dw_proc")
  else
    dw_proc=$dw_pid
  fi
}
stop_drainwatch() { # stop NAME: SIGTERM, expects exit 0 within 10 s
  local name=$1 rc=0
  kill -TERM "$dw_proc"
  for _ in $(seq 100); do kill -0 "$dw_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$dw_pid" 2>/dev/null && echo "  still running 10 s after SIGTERM: killed"
  wait "$dw_pid" || rc=$?
  forget "$dw_pid" "$dw_proc"
  check "$name: stops on SIGTERM with exit 0" test "$rc" = 0
  check "$name: its tracefs instance is gone" test ! -e "/sys/kernel/tracing/instances/drainwatch-$dw_proc"
}
event_buffer() { # the receive buffer of the destroy-event socket (the largest sock_diag one)
  ss -f netlink -a -m 2>/dev/null | grep "/$dw_proc " | grep -o 'rb[0-9]*' | tr -d rb | sort -n | tail -n1
}

# --- with the unit's capabilities (under strace, for the syscall check) ---
start_drainwatch with-unit-caps "$ambient" strace
kill -USR1 "$app_pid"; sleep 1.5
kill -USR2 "$app_pid"; sleep 1.5
curl -s "127.0.0.1:$dw_port/metrics" >"$tmp/with.metrics"
# drainwatch gives up, in every thread, what only its start needed (net_admin: the event
# buffer is set): the running set is the unit's minus net_admin (src/source/privileges.rs).
running=$(echo "$ambient" | tr ',' '\n' | grep -vx net_admin | paste -sd, -)
status_ok() {
  [ "$(awk '/^Uid:/ {print $3}' /proc/"$dw_proc"/status)" = "$(id -u drainwatch)" ] || return 1
  local t n=0
  for t in /proc/"$dw_proc"/task/*; do
    [ "$(awk '/^CapEff:/ {print $2}' "$t/status")" = "$(caps_hex "$running")" ] || return 1
    n=$((n + 1))
  done
  [ "$n" -ge 4 ]
}
check "with-unit-caps: runs as drainwatch, every thread with CapEff = {$running} once started" status_ok
for s in sock_diag procfs destroy_events tracepoints; do
  check "with-unit-caps: drainwatch_source_up{source=\"$s\"} 1" \
    test "$(metric "$tmp/with.metrics" "drainwatch_source_up{source=\"$s\"}")" = 1.0
done
check "with-unit-caps: tracepoints precision exact" \
  test -n "$(metric "$tmp/with.metrics" 'drainwatch_source_info{source="tracepoints",precision="exact"}')"
check "with-unit-caps: destroy_events precision exact" \
  test -n "$(metric "$tmp/with.metrics" 'drainwatch_source_info{source="destroy_events",precision="exact"}')"
check "with-unit-caps: the 5 resets received on port $app_port are counted" \
  test "$(metric "$tmp/with.metrics" "drainwatch_resets_total{port=\"$app_port\",direction=\"received\",reason=\"none\"}")" = 5
received=$(metric "$tmp/with.metrics" 'drainwatch_events_received_total{source="destroy_events"}')
check "with-unit-caps: destroy events received (${received:-none})" test "${received%.*}" -gt 0 2>/dev/null
buffer=$(event_buffer)
if [[ ",$ambient," == *,net_admin,* ]]; then
  # SO_RCVBUFFORCE: the kernel doubles the 16 MiB asked for, whatever net.core.rmem_max says.
  check "with-unit-caps: destroy-event buffer forced to 16 MiB (rb $buffer)" test "${buffer:-0}" = $((2 * 16 << 20))
fi

# The sidecar example's preStop command, against this drainwatch (its port and URL swapped in).
venv=$repo/target/pkg-venv
stamp=$venv/.requirements.sha256
want=$(sha256sum deploy/kubernetes/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/kubernetes/requirements.txt
  echo "$want" >"$stamp"
fi
mapfile -t prestop < <("$venv/bin/python" - "$dw_port" "$app_port" <<'EOF'
import sys, yaml
port, app_port = sys.argv[1], sys.argv[2]
for doc in yaml.safe_load_all(open("deploy/kubernetes/sidecar-deployment.yaml")):
    for c in doc["spec"]["template"]["spec"]["containers"]:
        cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        if cmd:
            cmd = ["/usr/bin/drainwatch"] + cmd[1:]
            cmd[cmd.index("--url") + 1] = f"http://127.0.0.1:{port}"
            cmd[cmd.index("--port") + 1] = app_port
            print("\n".join(cmd))
EOF
)
prestop_ok() {
  local rc=0
  [ "${#prestop[@]}" -gt 1 ] || { echo "  no preStop command found"; return 1; }
  timeout 60 setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all -- \
    "${prestop[@]}" --progress none >"$tmp/prestop.json" 2>"$tmp/prestop.log" || rc=$?
  if [ "$rc" != 0 ] || ! grep -q '"result":"drained"' "$tmp/prestop.json"; then
    echo "  exit $rc: $(head -c 300 "$tmp/prestop.json") $(tail -n 3 "$tmp/prestop.log")"; return 1
  fi
}
check "sidecar preStop (${prestop[*]:1}): exit 0, drained" prestop_ok
stop_drainwatch with-unit-caps

# Every syscall drainwatch made (after setpriv's execve) is allowed by the unit's filter.
syscalls_ok() {
  "$venv/bin/python" - "$tmp/with-unit-caps.strace" "$unit" <<'EOF'
import functools, re, subprocess, sys
trace, unit = sys.argv[1], sys.argv[2]
@functools.lru_cache(None)
def expand(name):
    if not name.startswith("@"):
        return frozenset([name])
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            names |= expand(line)
    return frozenset(names)
# As systemd reads them: the first assignment (an allow list here) starts the set, later ones
# remove (~) or add, in order.
allow = None
for line in open(unit):
    if line.startswith("SystemCallFilter="):
        value = line.split("=", 1)[1].strip()
        if value.startswith("~"):
            if allow is not None:
                allow -= set().union(*(expand(n) for n in value[1:].split()))
        else:
            allow = (allow or set()) | set().union(*(expand(n) for n in value.split()))
if allow is None:
    sys.exit(0)
# The first pid is setpriv until it execs drainwatch: its calls before that are systemd's
# business, not the service's. Every other pid is a thread drainwatch started.
used, first, execed = set(), None, False
for line in open(trace):
    m = re.match(r"(\d+)\s+([a-z_0-9]+)\(", line)
    if not m:
        continue
    pid, call = m.groups()
    first = first or pid
    if pid == first and not execed:
        execed = 'execve("/usr/bin/drainwatch"' in line
        continue
    used.add(call)
refused = sorted(c for c in used if c not in allow)
print(f"  {len(used)} distinct syscalls; refused by the filter: {refused or 'none'}")
sys.exit(1 if refused or not used else 0)
EOF
}
check "with-unit-caps: every syscall made is allowed by SystemCallFilter=" syscalls_ok

# --- negative control: no capability at all ---
start_drainwatch no-caps ""
kill -USR1 "$app_pid"; sleep 1.5
kill -USR2 "$app_pid"; sleep 1
curl -s "127.0.0.1:$dw_port/metrics" >"$tmp/without.metrics"
check "no-caps: drainwatch_source_up{source=\"tracepoints\"} 0" \
  test "$(metric "$tmp/without.metrics" 'drainwatch_source_up{source="tracepoints"}')" = 0.0
check "no-caps: tracepoints precision unavailable, no reset series" \
  sh -c "grep -q 'drainwatch_source_info{source=\"tracepoints\",precision=\"unavailable\"}' '$tmp/without.metrics' && ! grep -q '^drainwatch_resets_total' '$tmp/without.metrics'"
for s in sock_diag procfs destroy_events; do
  check "no-caps: drainwatch_source_up{source=\"$s\"} 1 (needs no capability)" \
    test "$(metric "$tmp/without.metrics" "drainwatch_source_up{source=\"$s\"}")" = 1.0
done
rmem_max=$(sysctl -n net.core.rmem_max)
expect=$((2 * (rmem_max < (16 << 20) ? rmem_max : (16 << 20))))
buffer=$(event_buffer)
check "no-caps: destroy-event buffer capped by net.core.rmem_max $rmem_max (rb $buffer)" test "${buffer:-0}" = "$expect"
stop_drainwatch no-caps

step "the unit under systemd (systemd-nspawn container booting this host's /usr and /etc)"
# This machine's PID 1 is not systemd: a container boots systemd as its PID 1 with the host's
# /usr and /etc (read-only; the package is installed there) and its own network namespace,
# and starts drainwatch.service as systemd would on a host, sandbox and seccomp filter applied.
# From the container's PID namespace every host PID looks dead: drainwatch's stale-instance
# cleanup must leave the instances of drainwatch processes running on the host alone.
others=$(find /sys/kernel/tracing/instances -maxdepth 1 -name 'drainwatch-*' -printf '%f ' 2>/dev/null)
if command -v systemd-nspawn >/dev/null; then
  systemd-nspawn --quiet --register=no --keep-unit --volatile=yes --directory=/ --bind-ro=/etc \
    --private-network --machine="dwpkgtest$$" -b -- systemd.unit=basic.target systemd.firstboot=off \
    >"$tmp/nspawn.log" 2>&1 &
  nspawn_pid=$!; pids+=("$nspawn_pid")
  leader=
  for _ in $(seq 150); do
    leader=$(pgrep -P "$nspawn_pid" | head -n1 || true)
    if [ -n "$leader" ]; then
      # Until systemd in the container listens, systemctl fails at once; then it waits for the boot.
      booted=$(timeout 60 nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null || true)
      case $booted in running|degraded) break ;; esac
    fi
    leader=; sleep 0.2
  done
  in_ct() { nsenter -t "$leader" -a "$@"; }
  if [ -z "$leader" ]; then
    tail -n 20 "$tmp/nspawn.log"; fail "the container booted systemd to basic.target"
  else
    pass "the container booted systemd to basic.target ($booted)"
    # nspawn gives the container a read-only sysfs without tracefs: mount it, as the host has.
    in_ct sh -c '[ -d /sys/kernel/tracing/instances ] || mount -t tracefs nodev /sys/kernel/tracing'
    in_ct systemctl start drainwatch.service || true
    for _ in $(seq 100); do in_ct curl -sf 127.0.0.1:9977/healthz >/dev/null 2>&1 && break; sleep 0.1; done
    in_ct curl -s 127.0.0.1:9977/metrics >"$tmp/systemd.metrics" || true
    main=$(in_ct systemctl show -p MainPID --value drainwatch.service)
    unit_status_ok() {
      local st; st=$(in_ct cat "/proc/$main/status") || return 1
      echo "$st" | grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' | sed 's/^/  /'
      [ "$(echo "$st" | awk '/^Uid:/ {print $3}')" = "$(id -u drainwatch)" ] \
        && [ "$(echo "$st" | awk '/^CapEff:/ {print $2}')" = "$(caps_hex "$running")" ] \
        && [ "$(echo "$st" | awk '/^CapBnd:/ {print $2}')" = "$(caps_hex "$ambient")" ] \
        && [ "$(echo "$st" | awk '/^NoNewPrivs:/ {print $2}')" = 1 ] \
        && [ "$(echo "$st" | awk '/^Seccomp:/ {print $2}')" = 2 ]
    }
    check "systemd: drainwatch.service active as drainwatch, CapBnd = {$ambient}, CapEff = {$running} once started, no_new_privs, seccomp filter" unit_status_ok
    for s in sock_diag procfs destroy_events tracepoints; do
      check "systemd: drainwatch_source_up{source=\"$s\"} 1" \
        test "$(metric "$tmp/systemd.metrics" "drainwatch_source_up{source=\"$s\"}")" = 1.0
    done
    check "systemd: tracepoints precision exact" \
      test -n "$(metric "$tmp/systemd.metrics" 'drainwatch_source_info{source="tracepoints",precision="exact"}')"
    sandbox_ok() { # the service's own mount table: / read-only, tracefs writable
      local mi; mi=$(in_ct cat "/proc/$main/mountinfo") || return 1
      echo "$mi" | awk '$5 == "/" || $5 == "/sys/kernel/tracing" {print "  " $5, $6}'
      echo "$mi" | awk '$5 == "/" {split($6, o, ","); ro = o[1]} END {exit ro != "ro"}' \
        && echo "$mi" | awk '$5 == "/sys/kernel/tracing" {split($6, o, ","); rw = o[1]} END {exit rw != "rw"}'
    }
    check "systemd: the service sees / read-only and tracefs writable (ProtectSystem=strict, ReadWritePaths=)" sandbox_ok
    in_ct systemctl stop drainwatch.service || true
    check "systemd: stops with Result=success" \
      test "$(in_ct systemctl show -p Result --value drainwatch.service)" = success
    check "systemd: its tracefs instance is gone" test ! -e "/sys/kernel/tracing/instances/drainwatch-$main"
  fi
  stop_pid "$nspawn_pid"   # SIGTERM: nspawn halts the container
  forget "$nspawn_pid"
  for other in $others; do
    check "systemd: the host's running drainwatch instance $other was left alone" \
      test -d "/sys/kernel/tracing/instances/$other"
  done
fi

step "kubernetes manifests"
check "kubernetes-validate --strict -k $K8S_VERSION deploy/kubernetes/*.yaml" \
  "$venv/bin/kubernetes-validate" --quiet --strict -k "$K8S_VERSION" deploy/kubernetes/*.yaml
# The validator must be able to fail: an unknown field in a copy.
sed 's/readOnlyRootFilesystem: true/readOnlyRootFileSystem: true/' deploy/kubernetes/daemonset.yaml >"$tmp/typo.yaml"
check "kubernetes-validate --strict rejects a misspelt field" \
  sh -c "! '$venv/bin/kubernetes-validate' --quiet --strict -k '$K8S_VERSION' '$tmp/typo.yaml' >/dev/null 2>&1"
consistent() {
  "$venv/bin/python" - "$ambient" <<'EOF'
import sys, yaml
unit_caps = sorted(c.upper() for c in sys.argv[1].split(",") if c)
docs = {}
for f in ["daemonset", "sidecar-deployment", "prometheus-scrape"]:
    for d in yaml.safe_load_all(open(f"deploy/kubernetes/{f}.yaml")):
        docs[d["kind"]] = d
ds = docs["DaemonSet"]["spec"]["template"]
c = ds["spec"]["containers"][0]
ok = True
def need(cond, what):
    global ok
    print(f"  {'ok' if cond else 'WRONG'}: {what}")
    ok = ok and cond
need(sorted(c["securityContext"]["capabilities"]["add"]) == unit_caps, f"DaemonSet adds {unit_caps}")
need(c["securityContext"]["capabilities"]["drop"] == ["ALL"], "DaemonSet drops ALL")
need(ds["spec"]["hostNetwork"] is True, "DaemonSet hostNetwork")
scrape = yaml.safe_load(docs["ConfigMap"]["data"]["drainwatch-scrape.yml"])["scrape_configs"]
node = next(j for j in scrape if j["job_name"] == "drainwatch")
sel = dict(kv.split("=") for kv in node["kubernetes_sd_configs"][0]["selectors"][0]["label"].split(","))
need(all(ds["metadata"]["labels"].get(k) == v for k, v in sel.items()), f"scrape selector {sel} matches the DaemonSet's pods")
port_names = {p["name"] for p in c["ports"]}
keep = [r["regex"] for r in node["relabel_configs"] if r.get("action") == "keep" and r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]]
need(keep and keep[0] in port_names, f"scrape keeps port {keep} of the DaemonSet")
dep = docs["Deployment"]["spec"]["template"]["spec"]
side = next(i for i in dep["initContainers"] if i.get("restartPolicy") == "Always")
sidecar_job = next(j for j in scrape if j["job_name"] == "drainwatch-sidecar")
keep = [r["regex"] for r in sidecar_job["relabel_configs"] if r.get("action") == "keep" and r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]]
need(keep and keep[0] in {p["name"] for p in side["ports"]}, "sidecar scrape keeps the sidecar's port")
app = dep["containers"][0]
cmd = app["lifecycle"]["preStop"]["exec"]["command"]
timeout = cmd[cmd.index("--timeout") + 1]
need(timeout.endswith("s") and dep["terminationGracePeriodSeconds"] > int(timeout[:-1]), f"terminationGracePeriodSeconds {dep['terminationGracePeriodSeconds']} > wait --timeout {timeout}")
sys.exit(0 if ok else 1)
EOF
}
check "manifests agree with the unit and the scrape configuration" consistent

step "purge"
dpkg --purge drainwatch >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; fail "dpkg --purge drainwatch"; }
installed=0
gone_ok() {
  local f left=0
  for f in /usr/bin/drainwatch /lib/systemd/system/drainwatch.service /etc/drainwatch \
           /etc/default/drainwatch /usr/share/drainwatch /usr/share/doc/drainwatch \
           /etc/systemd/system/multi-user.target.wants/drainwatch.service; do
    if [ -e "$f" ] || [ -L "$f" ]; then echo "  left: $f"; left=1; fi
  done
  ! dpkg-query -W drainwatch >/dev/null 2>&1 || { echo "  dpkg still knows drainwatch"; left=1; }
  return "$left"
}
check "dpkg --purge: files, conffiles and boot enablement gone" gone_ok
check "dpkg --purge: user and group drainwatch gone" \
  sh -c '! getent passwd drainwatch >/dev/null && ! getent group drainwatch >/dev/null'

printf '\n%s packaging checks failed, %ss\n' "$failures" "$(($(date +%s) - started))"
[ "$failures" = 0 ] && echo "PASS: packaging" || echo "FAIL: packaging"
[ "$failures" = 0 ]
