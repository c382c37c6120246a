#!/usr/bin/env bash
# benches/load/overload.sh -- hit latency of an edge under 4x its configured capacity of
# misses, and a timed regional failover drill, both on `cdn up` (release build).
#
# 1. `cdn up` with the default topology moved to $PORT_BASE (shield, origin, GeoDNS and
#    the six edges), and the node under test: edge eu-west-1's own config
#    (`cdn config eu-west-1`) with `overload.max_upstream = $CAPACITY`, run as a process of
#    its own (`cdn edge`) on 127.0.1.101, in front of the same shield.
#    LAYOUT=split (default): the node under test alone on CPU 0; `cdn up` and wrk on CPU 1.
#    LAYOUT=shared: the node under test, `cdn up` and nothing else on CPU 0; wrk on CPU 1
#    (the whole CDN on one core).
# 2. Unloaded: wrk -c$HIT_CONNS hits on one cached 1 KiB object of the node under test.
# 3. Loaded: the same hits while a second wrk holds 4 x $CAPACITY connections of misses
#    (unique URLs, origin delay $DELAY_MS ms) on the same node: beyond capacity they wait
#    for the queue timeout and are shed with 503.
# 4. `cdn drill --region eu-west` (1 s probes, fall 2) on `cdn up`: failover and recovery.
# Results under $OUT (default bench-results/overload-<time>/); summary on stdout.
#
# Env: PORT_BASE=28000 CAPACITY=64 HIT_CONNS=8 DURATION=10 DELAY_MS=500 LAYOUT=split
#      SKIP_BUILD=1 OUT=...
# Needs (Debian): wrk curl taskset. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PORT_BASE=${PORT_BASE:-28000}
CAPACITY=${CAPACITY:-64}
HIT_CONNS=${HIT_CONNS:-8}
DURATION=${DURATION:-10}
DELAY_MS=${DELAY_MS:-500}
OUT=${OUT:-$ROOT/bench-results/overload-$(date -u +%Y%m%d-%H%M%S)}
LAYOUT=${LAYOUT:-split}
BIN=$ROOT/target/release/cdn
EDGE=127.0.1.101:$((PORT_BASE + 80))
EDGE_ADMIN=127.0.1.101:$((PORT_BASE + 90))
mkdir -p "$OUT"
case $LAYOUT in
  split) NODE_CPU=0 REST_CPU=1 ;;
  shared) NODE_CPU=0 REST_CPU=0 ;;
  *) echo "overload.sh: LAYOUT is split or shared" >&2; exit 1 ;;
esac

[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release)
command -v wrk >/dev/null || { echo "overload.sh: install wrk" >&2; exit 1; }

RUST_LOG=warn taskset -c $REST_CPU "$BIN" up --port-base "$PORT_BASE" \
  --endpoints "$OUT/endpoints.json" > "$OUT/up.out" 2> "$OUT/up.err" &
UP=$!
trap 'kill -INT $UP ${NODE:-} 2>/dev/null || true; wait $UP ${NODE:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "Ctrl-C stops" "$OUT/up.out" 2>/dev/null && break; sleep 0.1; done
grep -q "Ctrl-C stops" "$OUT/up.out" || { cat "$OUT/up.err"; exit 1; }

"$BIN" config eu-west-1 --port-base "$PORT_BASE" | sed \
  -e "s/^max_upstream = .*/max_upstream = $CAPACITY/" \
  -e "s/^listen = .*/listen = \"$EDGE\"/" \
  -e "s/^admin_listen = .*/admin_listen = \"$EDGE_ADMIN\"/" \
  -e 's/^name = "eu-west-1"/name = "node-under-test"/' > "$OUT/node.toml"
RUST_LOG=warn taskset -c $NODE_CPU "$BIN" edge --config "$OUT/node.toml" \
  > "$OUT/node.out" 2> "$OUT/node.err" &
NODE=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://$EDGE_ADMIN/healthz" && break; sleep 0.1; done
curl -sf -o /dev/null "http://$EDGE_ADMIN/healthz" || { cat "$OUT/node.err"; exit 1; }

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

echo "overload ($LAYOUT): edge eu-west-1 as its own process, capacity $CAPACITY upstream requests, miss load $((4 * CAPACITY)) connections (origin delay ${DELAY_MS} ms)"
printf "hits unloaded: %s req/s, p99 %s\n" "$(rps "$OUT/hits-unloaded.txt")" "$(p99 "$OUT/hits-unloaded.txt")"
printf "hits loaded:   %s req/s, p99 %s\n" "$(rps "$OUT/hits-loaded.txt")" "$(p99 "$OUT/hits-loaded.txt")"
grep -E "Non-2xx|Socket errors" "$OUT/hits-unloaded.txt" "$OUT/hits-loaded.txt" || echo "hits: no errors, no non-2xx"
printf "misses: %s req/s; " "$(rps "$OUT/misses.txt")"
grep -E "requests in|Non-2xx|Socket errors" "$OUT/misses.txt" | tr '\n' ';'; echo
echo "edge while loaded: $(cat "$OUT/healthz-loaded.json")"
grep -E '^edge_requests_total|overloaded' "$OUT/metrics.txt" || true
tail -1 "$OUT/drill.txt"
echo "results: $OUT"
