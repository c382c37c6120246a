#!/usr/bin/env bash
# benches/fuzz/run.sh -- runs every cargo-fuzz target in fuzz/ for a bounded time. Not in
# CI: libFuzzer needs nightly features, enabled here on the stable toolchain with
# RUSTC_BOOTSTRAP=1 (no nightly is installed).
#
# Usage: benches/fuzz/run.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
#   targets: cache_key cache_control purge_request geodns_request (default: all)
# Crashes land in fuzz/artifacts/TARGET/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# and turn it into a unit test beside the code it broke. The corpus grows in
# fuzz/corpus/TARGET/ (not committed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=${*:-cache_key cache_control purge_request geodns_request}

command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cd "$ROOT"
status=0
for target in $TARGETS; do
  mkdir -p "fuzz/corpus/$target"
  echo "== $target: ${SECONDS_PER_TARGET}s"
  # The build is bounded too; -max_len keeps inputs to what a request head could be.
  if ! timeout --signal=TERM $((SECONDS_PER_TARGET + 1200)) nice -n 10 \
      cargo fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" \
      -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1; then
    echo "== $target: FAILED (see fuzz/artifacts/$target/)"
    status=1
  fi
done
exit $status
