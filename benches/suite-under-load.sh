#!/usr/bin/env bash
# benches/suite-under-load.sh -- the whole test suite N times in a row while a CPU-heavy job
# runs beside it: a release build of the workspace, looped (its target dir removed and
# built again) in a target dir of its own, so it never holds the suite's build lock.
#
# Usage: benches/suite-under-load.sh [N=10]
# Env: LOAD_TARGET=/tmp/cdn-load-target  OUT=/tmp/cdn-suite-under-load
# Prints one line per run (exit code, seconds, load average, FAILED lines) and exits
# non-zero if any run failed; each run's full output is kept under $OUT.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10}
LOAD_TARGET=${LOAD_TARGET:-/tmp/cdn-load-target}
OUT=${OUT:-/tmp/cdn-suite-under-load}
mkdir -p "$OUT"
cd "$ROOT"
cargo test --workspace --no-run -q >/dev/null 2>&1   # built once, outside the timed runs
stop=$OUT/stop
rm -f "$stop"
( while [ ! -f "$stop" ]; do
    rm -rf "$LOAD_TARGET"
    CARGO_TARGET_DIR=$LOAD_TARGET cargo build --release --workspace -q >/dev/null 2>&1
  done ) &
loader=$!
trap 'touch "$stop"; kill $loader 2>/dev/null; rm -rf "$LOAD_TARGET"' EXIT
failed=0
for i in $(seq 1 "$N"); do
  start=$(date +%s)
  cargo test --workspace --no-fail-fast >"$OUT/run-$i.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || failed=$((failed + 1))
  echo "run $i: rc=$rc $(( $(date +%s) - start ))s load=$(cut -d' ' -f1 /proc/loadavg) failed_lines=$(grep -ac FAILED "$OUT/run-$i.log")"
done
echo "$((N - failed)) of $N runs green"
[ $failed -eq 0 ]
