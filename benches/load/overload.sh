#!/usr/bin/env bash
# benches/load/overload.sh -- hit latency of an edge under 4x its configured capacity of
# misses, and a timed regional failover drill, both on `cdn up` (release build).
#
# 1. `cdn up` with the default topology moved to $PORT_BASE, edges' overload.max_upstream
#    set to $CAPACITY, pinned to CPU 0 (the whole CDN: edges, shield, origin, GeoDNS).
# 2. Unloaded: wrk -c$HIT_CONNS hits on one cached 1 KiB object of edge eu-west-1 (CPU 1).
# 3. Loaded: the same hits while a second wrk holds 4 x $CAPACITY connections of misses
#    (unique URLs, origin delay $DELAY_MS ms) on the same edge: beyond capacity they wait
#    for the queue timeout and are shed with 503.
# 4. `cdn drill --region eu-west` (1 s probes, fall 2): failover and recovery times.
# Results under $OUT (default bench-results/overload-<time>/); summary on stdout.
#
# Env: PORT_BASE=28000 CAPACITY=64 HIT_CONNS=8 DURATION=10 DELAY_MS=500 SKIP_BUILD=1 OUT=...
# Needs (Debian): wrk curl taskset. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PORT_BASE=${PORT_BASE:-28000}
CAPACITY=${CAPACITY:-64}
HIT_CONNS=${HIT_CONNS:-8}
DURATION=${DURATION:-10}
DELAY_MS=${DELAY_MS:-500}
OUT=${OUT:-$ROOT/bench-results/overload-$(date -u +%Y%m%d-%H%M%S)}
BIN=$ROOT/target/release/cdn
EDGE=127.0.1.1:$((PORT_BASE + 80))
EDGE_ADMIN=127.0.1.1:$((PORT_BASE + 90))
mkdir -p "$OUT"

[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release)
command -v wrk >/dev/null || { echo "overload.sh: install wrk" >&2; exit 1; }

sed -e "s/^max_upstream = .*/max_upstream = $CAPACITY/" \
  "$ROOT/config/topology.toml" > "$OUT/topology.toml"
RUST_LOG=warn taskset -c 0 "$BIN" up --config "$OUT/topology.toml" --port-base "$PORT_BASE" \
  --endpoints "$OUT/endpoints.json" > "$OUT/up.out" 2> "$OUT/up.err" &
UP=$!
trap 'kill -INT $UP 2>/dev/null || true; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "Ctrl-C stops" "$OUT/up.out" 2>/dev/null && break; sleep 0.1; done
grep -q "Ctrl-C stops" "$OUT/up.out" || { cat "$OUT/up.err"; exit 1; }

curl -sf -o /dev/null -H "Host: demo.cdn.test" "http://$EDGE/obj/1k.bin"
cat > "$OUT/miss.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/obj/m-" .. counter .. "-" .. math.random(1e9) .. ".bin?delay_ms=$DELAY_MS",
    { ["Host"] = "demo.cdn.test" })
end
LUA

hits() { # label
  taskset -c 1 wrk -t1 -c"$HIT_CONNS" -d"${DURATION}s" --latency -H "Host: demo.cdn.test" \
    "http://$EDGE/obj/1k.bin" > "$OUT/hits-$1.txt"
}
p99() { awk '$1 == "99%" { print $2 }' "$1"; }
rps() { awk '/^Requests\/sec/ { print $2 }' "$1"; }

hits unloaded
taskset -c 1 wrk -t1 -c$((4 * CAPACITY)) -d$((DURATION + 4))s --latency -s "$OUT/miss.lua" \
  "http://$EDGE/" > "$OUT/misses.txt" &
MISS=$!
sleep 2 # let the miss load fill every slot and the queue first
curl -s "http://$EDGE_ADMIN/healthz" > "$OUT/healthz-loaded.json"
hits loaded
wait $MISS
curl -s "http://$EDGE_ADMIN/metrics" > "$OUT/metrics.txt"

"$BIN" drill --region eu-west --endpoints "$OUT/endpoints.json" > "$OUT/drill.txt" 2>&1 || true

echo "overload: edge eu-west-1, capacity $CAPACITY upstream requests, miss load $((4 * CAPACITY)) connections (origin delay ${DELAY_MS} ms)"
printf "hits unloaded: %s req/s, p99 %s\n" "$(rps "$OUT/hits-unloaded.txt")" "$(p99 "$OUT/hits-unloaded.txt")"
printf "hits loaded:   %s req/s, p99 %s\n" "$(rps "$OUT/hits-loaded.txt")" "$(p99 "$OUT/hits-loaded.txt")"
grep -E "Non-2xx|Socket errors" "$OUT/hits-unloaded.txt" "$OUT/hits-loaded.txt" || echo "hits: no errors, no non-2xx"
printf "misses: %s req/s; " "$(rps "$OUT/misses.txt")"
grep -E "requests in|Non-2xx|Socket errors" "$OUT/misses.txt" | tr '\n' ';'; echo
echo "edge while loaded: $(cat "$OUT/healthz-loaded.json")"
grep -E '^edge_requests_total|overloaded' "$OUT/metrics.txt" || true
tail -1 "$OUT/drill.txt"
echo "results: $OUT"
