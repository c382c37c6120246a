#!/usr/bin/env bash
# benches/drill.sh -- failover drills as clients feel them: each mode (drain, kill), with
# and without warming before the clients come back, under client load, on `cdn up
# --processes` (release build).
#
# The topology is the default one with the answer TTL set to $TTL and GeoDNS's health
# checks at their defaults (interval 1 s, timeout 500 ms, fall 2: a failure is detected
# in ~2.5 s). Each drill, on a `cdn up --processes` of its own started empty: `cdn drill --region eu-west --mode M --load $RATE [--warm-before-
# restore] --report FILE`, 3 s of load before the failure, 3 s failed over, 5 s after the
# switch-back. Reports (JSON and the printed summaries) under $OUT.
#
# MODES="drain kill partition": partition runs `cdn up --processes --netns` (root and
# iproute2; skipped with a message where namespaces cannot be made).
#
# Env: RATE=200 TTL=5 PORT_BASE=33000 MODES="drain kill partition" SKIP_BUILD=1 OUT=...
# Needs: nothing beyond the build. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-200}
TTL=${TTL:-5}
PORT_BASE=${PORT_BASE:-33000}
MODES=${MODES:-drain kill partition}
OUT=${OUT:-$ROOT/bench-results/drill-$(date -u +%Y%m%d-%H%M%S)}
BIN=$ROOT/target/release/cdn
mkdir -p "$OUT"
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release --bin cdn)

sed "s/^ttl = 20/ttl = $TTL/" "$ROOT/config/topology.toml" > "$OUT/topology.toml"

# Each drill on a CDN of its own, started empty, so no drill inherits another's caches.
start_up() { # [--netns]
  : > "$OUT/up.out"
  RUST_LOG=warn timeout --signal=INT 30m "$BIN" up --processes ${1:-} --config "$OUT/topology.toml" \
    --port-base "$PORT_BASE" --endpoints "$OUT/endpoints.json" > "$OUT/up.out" 2>> "$OUT/up.err" &
  UP=$!
  for _ in $(seq 1 300); do
    grep -q "Ctrl-C stops everything" "$OUT/up.out" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "drill.sh: cdn up did not start" >&2
  exit 1
}
stop_up() { kill -INT "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
trap stop_up EXIT

for mode in $MODES; do
  netns=""
  if [[ $mode == partition ]]; then
    if ! ip netns add "cdnprobe$$" 2>/dev/null; then
      echo "== partition: skipped (network namespaces cannot be made here)" | tee -a "$OUT/summary.txt"
      continue
    fi
    ip netns del "cdnprobe$$"
    netns=--netns
  fi
  for warm in no yes; do
    label=$mode-$([[ $warm == yes ]] && echo warmed || echo cold)
    flag=()
    [[ $warm == yes ]] && flag=(--warm-before-restore)
    start_up $netns
    echo "== $label (load $RATE/s, TTL $TTL s)" | tee -a "$OUT/summary.txt"
    timeout 300 "$BIN" drill --region eu-west --mode "$mode" --load "$RATE" "${flag[@]}" \
      --endpoints "$OUT/endpoints.json" --report "$OUT/$label.json" 2>&1 \
      | grep -v "^ *[0-9.]*s " | tee -a "$OUT/summary.txt"
    stop_up
  done
done
echo "results: $OUT"
