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
# 2. $ROUNDS rounds, each of two phases; the summary gives each round's ratio of loaded
#    to unloaded hit p99, and their median.
#    Unloaded: wrk -c$HIT_CONNS hits on one cached 1 KiB object of the node under test.
#    Loaded: the same hits while a second wrk holds 4 x $CAPACITY connections of misses
#    (unique URLs, origin delay $DELAY_MS ms) on the same node: beyond capacity they wait
#    for the queue timeout and are shed with 503.
# 3. `cdn drill --region eu-west` (1 s probes, fall 2) on `cdn up`: failover and recovery.
# Results under $OUT (default bench-results/overload-<time>/); summary on stdout.
#
# Env: PORT_BASE=28000 CAPACITY=64 HIT_CONNS=8 DURATION=10 DELAY_MS=500 LAYOUT=split
#      ROUNDS=5 HIT_NICE=-20 (root; else 0) MISS_AT=(the node under test)
#      MISS_SIZE=1k
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
ROUNDS=${ROUNDS:-5}
MISS_SIZE=${MISS_SIZE:-1k} # body of each miss
# The hit client stands for browsers on other machines; here it shares CPU 1 with the miss
# load, the shield and the origin, and their timeslices would be charged to the edge's hit
# latency. Raised priority (root only) keeps the measurement about the edge.
HIT_NICE=${HIT_NICE:-$([ "$(id -u)" = 0 ] && echo -20 || echo 0)}
BIN=$ROOT/target/release/cdn
EDGE=127.0.1.101:$((PORT_BASE + 80))
EDGE_ADMIN=127.0.1.101:$((PORT_BASE + 90))
# Where the miss load goes: the node under test. A control run points it at an edge of
# `cdn up` instead (MISS_AT=127.0.1.2:$((PORT_BASE + 80))): the same load on CPU 1 with the
# node under test untouched, so what the hit tail owes to the client's core shows apart.
MISS_AT=${MISS_AT:-$EDGE}
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

hits() { # label
  taskset -c 1 nice -n "$HIT_NICE" wrk -t1 -c"$HIT_CONNS" -d"${DURATION}s" --latency \
    -H "Host: demo.cdn.test" "http://$EDGE/obj/1k.bin" > "$OUT/hits-$1.txt"
}
p99_us() { # wrk's 99% latency in microseconds
  awk '$1 == "99%" { v = $2; m = 1
    if (v ~ /ms$/) m = 1000; else if (v !~ /us$/) m = 1000000
    sub(/[a-z]+$/, "", v); printf "%.0f\n", v * m }' "$1"
}
rps() { awk '/^Requests\/sec/ { printf "%.0f\n", $2 }' "$1"; }

# Rounds alternate unloaded and loaded so that drift of the machine hits both alike.
for round in $(seq "$ROUNDS"); do
  hits "unloaded-$round"
  # Unique URLs in every round (wrk seeds math.random alike in every run).
  cat > "$OUT/miss-$round.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/obj/m-$round-" .. counter .. "-" .. math.random(1e9) .. ".bin?delay_ms=$DELAY_MS&size=$MISS_SIZE",
    { ["Host"] = "demo.cdn.test" })
end
LUA
  taskset -c 1 wrk -t1 -c$((4 * CAPACITY)) -d$((DURATION + 4))s --latency -s "$OUT/miss-$round.lua" \
    "http://$MISS_AT/" > "$OUT/misses-$round.txt" &
  MISS=$!
  sleep 2 # let the miss load fill every slot and the queue first
  curl -s "http://$EDGE_ADMIN/healthz" > "$OUT/healthz-loaded-$round.json"
  hits "loaded-$round"
  wait $MISS
done
curl -s "http://$EDGE_ADMIN/metrics" > "$OUT/metrics.txt"

"$BIN" drill --region eu-west --endpoints "$OUT/endpoints.json" > "$OUT/drill.txt" 2>&1 || true

echo "overload ($LAYOUT): edge eu-west-1 as its own process, capacity $CAPACITY upstream requests, miss load $((4 * CAPACITY)) connections on $MISS_AT ($MISS_SIZE bodies, origin delay ${DELAY_MS} ms); hits wrk -c$HIT_CONNS at nice $HIT_NICE"
echo "round  hits/s unloaded  loaded  p99 unloaded  loaded  ratio"
for round in $(seq "$ROUNDS"); do
  u=$(p99_us "$OUT/hits-unloaded-$round.txt") l=$(p99_us "$OUT/hits-loaded-$round.txt")
  printf "%5s  %15s  %6s  %9s us  %3s us  %4.2fx\n" "$round" \
    "$(rps "$OUT/hits-unloaded-$round.txt")" "$(rps "$OUT/hits-loaded-$round.txt")" \
    "$u" "$l" "$(awk -v l="$l" -v u="$u" 'BEGIN { print l / u }')"
done | tee "$OUT/rounds.txt"
printf "median ratio: %sx\n" "$(awk '{ print $NF }' "$OUT/rounds.txt" | tr -d x | sort -n \
  | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
grep -E "Non-2xx|Socket errors" "$OUT"/hits-*.txt || echo "hits: no errors, no non-2xx"
for round in $(seq "$ROUNDS"); do
  printf "misses round %s: " "$round"
  grep -E "requests in|Non-2xx|Socket errors" "$OUT/misses-$round.txt" | tr '\n' ';'; echo
done
echo "edge while loaded: $(cat "$OUT/healthz-loaded-$ROUNDS.json")"
grep -E '^edge_requests_total|overloaded' "$OUT/metrics.txt" || true
tail -1 "$OUT/drill.txt"
echo "results: $OUT"
