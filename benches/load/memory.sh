#!/usr/bin/env bash
# benches/load/memory.sh -- memory per cached byte: RSS growth of an edge after caching
# N distinct objects of SIZE bytes, divided by the payload bytes it holds.
#
# Usage: benches/load/memory.sh [N=65536] [SIZE=16k]      (defaults: 1 GiB of 16 KiB objects)
# Env: SKIP_BUILD=1  PORT_BASE=19300  CLIENTS=8
# Starts `cdn origin` and `cdn edge` (2.5 GiB cache) on 127.0.0.1, fills the cache over
# keep-alive connections from a Python client, reads VmRSS and /metrics, stops both.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-65536}
SIZE=${2:-16k}
PORT_BASE=${PORT_BASE:-19300}
CLIENTS=${CLIENTS:-8}
BIN=$ROOT/target/release/cdn
RUN=$(mktemp -d /tmp/cdn-memory.XXXXXX)
[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && cargo build --release --quiet)

ORIGIN=127.0.0.1:$PORT_BASE
EDGE=127.0.0.1:$((PORT_BASE + 1))
ADMIN=127.0.0.1:$((PORT_BASE + 2))
cat > "$RUN/edge.toml" <<TOML
[node]
name = "edge-mem"
listen = "$EDGE"
admin_listen = "$ADMIN"
[cache]
capacity = "2560 MiB"
max_object_size = "16 MiB"
[[site]]
name = "mem"
hosts = ["127.0.0.1"]
upstream = "http://$ORIGIN"
TOML

timeout 1h "$BIN" origin --listen "$ORIGIN" > "$RUN/origin.log" 2>&1 &
ORIGIN_PID=$!
RUST_LOG=warn timeout 1h "$BIN" edge --config "$RUN/edge.toml" > "$RUN/edge.log" 2>&1 &
EDGE_WRAPPER=$!
trap 'kill $ORIGIN_PID $EDGE_WRAPPER 2>/dev/null; rm -rf "$RUN"' EXIT
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://$ADMIN/healthz" && break; sleep 0.1; done
EDGE_PID=$(pgrep -P "$EDGE_WRAPPER" | head -n1)
rss() { awk '/^VmRSS/{print $2 * 1024}' "/proc/$EDGE_PID/status"; }
metric() { curl -s "http://$ADMIN/metrics" | awk -v m="$1" '$1==m{print $2}'; }

# Warm the code paths (allocator arenas, connection pool) before the baseline.
curl -s -o /dev/null "http://$EDGE/warm/$SIZE.bin"
BASE=$(rss)
python3 - "$EDGE" "$N" "$SIZE" "$CLIENTS" <<'PY'
import http.client, sys, threading
host, n, size, clients = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
addr, port = host.split(":")
errors = []
def work(k):
    c = http.client.HTTPConnection(addr, int(port), timeout=30)
    for i in range(k, n, clients):
        c.request("GET", f"/m/{i}/{size}.bin", headers={"Host": "127.0.0.1"})
        r = c.getresponse(); r.read()
        if r.status != 200: errors.append(r.status)
threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
[t.start() for t in threads]; [t.join() for t in threads]
if errors: sys.exit(f"{len(errors)} non-200 answers, e.g. {errors[0]}")
PY
AFTER=$(rss)
BYTES=$(metric edge_cache_bytes)
ENTRIES=$(metric edge_cache_entries)
PAYLOAD=$(awk -v e="$ENTRIES" -v s="$SIZE" 'BEGIN{m=1; if (s ~ /k$/) m=1024; if (s ~ /m$/) m=1048576; sub(/[km]$/,"",s); printf "%d", e * s * m}')
awk -v n="$N" -v size="$SIZE" -v base="$BASE" -v after="$AFTER" -v payload="$PAYLOAD" \
    -v weighed="$BYTES" -v entries="$ENTRIES" 'BEGIN{
  printf "objects requested      %d x %s\n", n, size
  printf "entries cached         %d\n", entries
  printf "payload cached         %.1f MiB\n", payload / 1048576
  printf "cache weigher says     %.1f MiB (%.3fx payload)\n", weighed / 1048576, weighed / payload
  printf "RSS before / after     %.1f / %.1f MiB\n", base / 1048576, after / 1048576
  printf "RSS growth / payload   %.3fx\n", (after - base) / payload
}'
