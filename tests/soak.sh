#!/usr/bin/env bash
# Flake hunt: runs the README's test command RUNS times in a row (default 20)
# with BUSY busy loops (default 2, one per core here) competing for the CPU,
# and prints a tally. Failing runs keep their output in $OUT (default
# target/soak). Usage: tests/soak.sh [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
busy=${BUSY:-2}
out=${OUT:-target/soak}
mkdir -p "$out"

cargo test --locked --no-run >/dev/null 2>&1 || { echo "build failed"; exit 2; }

hogs=()
for _ in $(seq 1 "$busy"); do
    ( while :; do :; done ) &
    hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT

passed=0
for run in $(seq 1 "$runs"); do
    start=$(date +%s)
    if cargo test --locked >"$out/run-$run.log" 2>&1; then
        passed=$((passed + 1))
        verdict=green
        rm -f "$out/run-$run.log"
    else
        verdict="RED ($out/run-$run.log)"
        grep -E '^test .* FAILED$|panicked at' "$out/run-$run.log" | sed 's/^/    /'
    fi
    echo "run $run: $verdict in $(( $(date +%s) - start )) s"
done
echo "$passed of $runs green under $busy busy loops"
[ "$passed" -eq "$runs" ]
