#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time with libFuzzer, on the stable
# toolchain, and prints one line of figures per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 600 s, every target)
#   FUZZ_JOBS=2 scripts/fuzz.sh 600                       (targets run two at a time)
#
# Corpora start from seeds: inputs that once crashed a target (tests/fixtures/fuzz/<target>),
# the repository's fixtures, and bytes captured from this kernel by examples/fuzz_seeds.rs (a
# live dump and live destroy events on loopback; root needed for the events). A crash or a hang
# (an input running over 10 s) leaves its input in target/fuzz/artifacts/<target>/ and fails
# the run: copy it into tests/fixtures/fuzz/<target>/ and fix the bug (tests/fuzz_regressions.rs
# replays that directory in every test run).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
all=(dump events tcp_info model ftrace config web_config proc)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
jobs=${FUZZ_JOBS:-1}
work=target/fuzz
triple=$(rustc -vV | sed -n 's/^host: //p')

echo "== building the targets (release, coverage instrumented, debug assertions on)"
# What cargo-fuzz passes, minus the sanitizer (safe Rust; panics are what we look for). An
# explicit --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cforce-frame-pointers=yes"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" \
    --target-dir "$work/build" "${targets[@]/#/--bin=}"
unset RUSTFLAGS
bin="$work/build/$triple/release"

echo "== seeds"
rm -rf "$work/seeds"
cargo run --quiet --example fuzz_seeds -- "$work/seeds"

run_one() {
    local t=$1 corpus="$work/corpus/$1" artifacts="$work/artifacts/$1/" log="$work/logs/$1.log"
    mkdir -p "$corpus" "$artifacts" "$work/logs"
    local dirs=("$corpus" "$work/seeds/$t")
    [ -d "tests/fixtures/fuzz/$t" ] && dirs+=("tests/fixtures/fuzz/$t")
    local started=$SECONDS rc=0
    "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$artifacts" "${dirs[@]}" >"$log" 2>&1 || rc=$?
    local execs cov corpus_n
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus_n=$(find "$corpus" -type f | wc -l)
    local found
    found=$(find "$artifacts" -type f | wc -l)
    printf '%-11s %5ss %12s runs %6s edges %6s corpus %3s crashes  exit %s\n' \
        "$t" "$((SECONDS - started))" "${execs:-?}" "${cov:-?}" "$corpus_n" "$found" "$rc"
    [ "$rc" -eq 0 ] && [ "$found" -eq 0 ]
}

echo "== fuzzing ${targets[*]} for ${seconds}s each, $jobs at a time (logs in $work/logs)"
failed=0
running=0
pids=()
for t in "${targets[@]}"; do
    rm -rf "$work/artifacts/$t"
    run_one "$t" &
    pids+=($!)
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || failed=$((failed + 1))
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=$((failed + 1))
    running=$((running - 1))
done
if [ "$failed" -gt 0 ]; then
    echo "$failed target(s) crashed or hung: inputs in $work/artifacts/" >&2
    exit 1
fi
echo "no crash, no hang"
