#!/usr/bin/env bash
# benches/load/run.sh -- the edge beside Varnish, nginx and Apache Traffic Server, in front
# of the same origin, in one run, with the scripts of ../shared/bench.
#
# Usage: benches/load/run.sh [hit] [conns] [range] [miss] [tiered] [coalesce]   (default: all)
#   hit       bench-hit.sh for edge and each peer: 1k (64 and 256 conns), 16k, 256k, 4m hits
#   conns     1k hits at 1,000 connections (MANY_CONNS), edge and each peer
#   range     wrk with Range: a 1 MiB and a 16 KiB slice of the cached 4 MiB object
#   miss      miss-bench.sh random over 10,000 cold objects, cache restarted empty first
#   tiered    the same miss run through edge -> shield -> origin (both restarted empty,
#             both pinned to CPU 0 like each peer), beside each peer's miss run
#   coalesce  coalesce-test.sh: 200 concurrent cold requests through the edge to the slow origin
# Results: TSV files and raw wrk output under $OUT (default bench-results/<time>/), and a
# summary on stdout. Servers are pinned to CPU 0 and wrk to CPU 1, as the shared scripts do.
#
# Env: PEERS="varnish nginx ats"  SIZES="1k 16k 256k 4m"  SHARED=../shared/bench  OUT=...  SKIP_BUILD=1
#      EDGE_PORT=19084 EDGE_ADMIN_PORT=19094 SLOW_EDGE_PORT=19085  DURATION=10
#      EDGE_LOG=1: also "edge-logged" (port 19088), the same edge writing a JSON access log
#      to a file ($RUN/access.log), measured beside the edge in the hit case: the cost of
#      logging, same run
# Needs (Debian): varnish nginx-light trafficserver wrk hey curl. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
PEERS=${PEERS:-varnish nginx ats}
EDGE_PORT=${EDGE_PORT:-19084}
EDGE_ADMIN_PORT=${EDGE_ADMIN_PORT:-19094}
SLOW_EDGE_PORT=${SLOW_EDGE_PORT:-19085}
SHIELD_PORT=${SHIELD_PORT:-19086}
TIERED_PORT=${TIERED_PORT:-19087}
RUN=/tmp/perf/run/cdn-edge
PIDFILE=/tmp/perf/run/peers.pids
BIN=$ROOT/target/release/cdn

die() { echo "run.sh: $*" >&2; exit 1; }

write_config() { # name listen admin upstream -> config path
  local f=$RUN/$1.toml
  cat > "$f" <<TOML
[node]
name = "$1"
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
[cache]
capacity = "2 GiB"
max_object_size = "64 MiB"
TOML
  if [[ $1 == edge-logged ]]; then
    rm -f "$RUN/access.log"
    printf '[access_log]\npath = "%s"\n' "$RUN/access.log" >> "$f"
  fi
  cat >> "$f" <<TOML
[[site]]
name = "bench"
hosts = ["127.0.0.1", "localhost"]
upstream = "http://127.0.0.1:$4"
TOML
  echo "$f"
}

write_tiered_config() { # name listen admin shield_port shield_admin -> config path
  local f=$RUN/$1.toml
  cat > "$f" <<TOML
[node]
name = "$1"
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
[cache]
capacity = "2 GiB"
max_object_size = "64 MiB"
[[site]]
name = "bench"
hosts = ["127.0.0.1", "localhost"]
[site.pool]
balance = "consistent_hash"
servers = [{ url = "http://127.0.0.1:$4", probe = "http://127.0.0.1:$5/healthz" }]
TOML
  echo "$f"
}

start_edge() { # name port admin upstream_port [subcommand] [config]
  local config pid i
  config=${6:-$(write_config "$1" "$2" "$3" "$4")}
  RUST_LOG=warn timeout --signal=TERM 2h taskset -c 0 "$BIN" "${5:-edge}" --config "$config" \
    > "$RUN/$1.log" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$RUN/$1.wrapper"
  for i in $(seq 1 100); do
    if timeout 2 curl -sf -o /dev/null "http://127.0.0.1:$3/healthz"; then
      timeout 2 pgrep -P "$pid" | head -n1 > "$RUN/$1.pid"
      return 0
    fi
    sleep 0.1
  done
  die "$1 did not become healthy (see $RUN/$1.log)"
}

stop_edge() { # name
  local w
  [[ -f $RUN/$1.wrapper ]] || return 0
  w=$(cat "$RUN/$1.wrapper")
  kill "$w" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$w" 2>/dev/null || break; sleep 0.1; done
  rm -f "$RUN/$1.wrapper" "$RUN/$1.pid"
}

case ${1:-} in
  restart-edge) stop_edge edge; start_edge edge "$EDGE_PORT" "$EDGE_ADMIN_PORT" 19080; exit 0 ;;
  restart-tiered)
    stop_edge edge-tiered; stop_edge shield
    start_edge shield "$SHIELD_PORT" $((SHIELD_PORT + 10)) 19080 shield
    start_edge edge-tiered "$TIERED_PORT" $((TIERED_PORT + 10)) 0 edge \
      "$(write_tiered_config edge-tiered "$TIERED_PORT" $((TIERED_PORT + 10)) "$SHIELD_PORT" $((SHIELD_PORT + 10)))"
    exit 0 ;;
  restart-peer) "$SHARED/stop-peers.sh" "$PIDFILE" "$2" >/dev/null
                COMPONENTS=$2 "$SHARED/setup-peers.sh" >/dev/null; exit 0 ;;
  peer-pid) awk -v k="$2" '$1==k{p=$3} END{print p}' "$PIDFILE"; exit 0 ;;
esac

CASES=${*:-hit conns range miss tiered coalesce}
OUT=${OUT:-$ROOT/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/raw" "$RUN"
for t in wrk curl taskset varnishd nginx traffic_server; do command -v "$t" >/dev/null || die "$t missing"; done
[[ $CASES == *coalesce* ]] && { command -v hey >/dev/null || die "hey missing"; }

[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && cargo build --release --quiet)
[[ -f /tmp/perf/origin/ws/10000.bin ]] || "$SHARED/make-origin.sh" >/dev/null

cleanup() {
  stop_edge edge; stop_edge edge-logged; stop_edge edge-slow; stop_edge edge-tiered; stop_edge shield
  [[ -f $PIDFILE ]] && "$SHARED/stop-peers.sh" "$PIDFILE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -f "$PIDFILE"
COMPONENTS="origin $PEERS slow" "$SHARED/setup-peers.sh" > "$OUT/setup.log"
start_edge edge "$EDGE_PORT" "$EDGE_ADMIN_PORT" 19080
EDGES=edge
if [[ ${EDGE_LOG:-0} == 1 ]]; then
  start_edge edge-logged 19088 19098 19080
  EDGES="edge edge-logged"
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet || echo -dirty)"
  echo "cpu: $(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc)"
  echo "kernel: $(uname -r)"
  echo "peers: varnish $(varnishd -V 2>&1 | head -1 | grep -o '[0-9][0-9.]*' | head -1), nginx $(nginx -v 2>&1 | grep -o '[0-9][0-9.]*'), ats $(traffic_server --version 2>&1 | grep -o 'Server [0-9][0-9.]*' | head -1)"
} > "$OUT/machine.txt"

port_of() { case $1 in edge) echo "$EDGE_PORT";; edge-logged) echo 19088;; varnish) echo 19081;; nginx) echo 19082;; ats) echo 19083;; esac; }
pid_of() { if [[ $1 == edge* ]]; then cat "$RUN/$1.pid"; else "$0" peer-pid "$1"; fi; }

if [[ $CASES == *hit* ]]; then
  # Sizes outer, servers inner: each size is measured for every server back to back, so
  # drift in the machine's speed (shared hosts) does not favour whoever runs first.
  : > "$OUT/hit.tsv"
  header=1
  for size in ${SIZES:-1k 16k 256k 4m}; do
    for s in $EDGES $PEERS; do
      HEADER=$header SIZES=$size SERVER_PIDS="$(pid_of "$s")" RAW_DIR="$OUT/raw" \
        "$SHARED/bench-hit.sh" "http://127.0.0.1:$(port_of "$s")" "$s" | tee -a "$OUT/hit.tsv"
      header=0
    done
  done
fi

if [[ $CASES == *conns* ]]; then
  # 1 KiB hits at 1,000 connections from one address (the shipped per-address limit
  # admits them): where tails show how evenly a saturated server serves its connections.
  : > "$OUT/conns.tsv"
  header=1
  for s in $EDGES $PEERS; do
    HEADER=$header SIZES=1k CONNS=${MANY_CONNS:-1000} CONNS_1K_EXTRA= SERVER_PIDS="$(pid_of "$s")" \
      RAW_DIR="$OUT/raw" "$SHARED/bench-hit.sh" "http://127.0.0.1:$(port_of "$s")" "$s" |
      tee -a "$OUT/conns.tsv"
    header=0
  done
fi

if [[ $CASES == *range* ]]; then
  # Ranged reads of the cached 4 MiB object: a 1 MiB slice and a 16 KiB slice (a video
  # player's and a PDF viewer's kind of request), 64 connections, 10 s, servers back to back.
  printf '#label\trange\tconns\trps\tp50_ms\tp99_ms\n' > "$OUT/range.tsv"
  for r in 1048576-2097151 0-16383; do
    for s in edge $PEERS; do
      url="http://127.0.0.1:$(port_of "$s")/obj/4m.bin"
      for _ in 1 2 3; do timeout 30 curl -s -o /dev/null "$url"; done
      got=$(timeout 30 curl -s -o /dev/null -w '%{http_code} %{size_download}' -H "Range: bytes=$r" "$url")
      [[ $got == "206 "* ]] || echo "run.sh: $s answered '$got' to a range request" >&2
      timeout 60 taskset -c 1 wrk -t1 -c64 -d2s -H "Range: bytes=$r" "$url" > /dev/null 2>&1
      timeout 60 taskset -c 1 wrk -t1 -c64 -d"${DURATION:-10}"s --latency -H "Range: bytes=$r" "$url" \
        > "$OUT/raw/$s-range-$r.txt" 2>&1
      awk -v l="$s" -v r="$r" '/Requests\/sec/{q=$2} $1=="50%"{p50=$2} $1=="99%"{p99=$2}
        function ms(v){ if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        END{printf "%s\t%s\t64\t%s\t%.3f\t%.3f\n", l, r, q, ms(p50), ms(p99)}' \
        "$OUT/raw/$s-range-$r.txt" | tee -a "$OUT/range.tsv"
    done
  done
fi

if [[ $CASES == *miss* ]]; then
  HEADER=1 RESTART_CMD="$0 restart-edge" PIDS_CMD="cat $RUN/edge.pid" RAW_DIR="$OUT/raw" \
    "$SHARED/miss-bench.sh" "http://127.0.0.1:$EDGE_PORT" edge random | tee "$OUT/miss.tsv"
  for p in $PEERS; do
    RESTART_CMD="$0 restart-peer $p" PIDS_CMD="$0 peer-pid $p" RAW_DIR="$OUT/raw" \
      "$SHARED/miss-bench.sh" "http://127.0.0.1:$(port_of "$p")" "$p" random | tee -a "$OUT/miss.tsv"
  done
fi

if [[ $CASES == *tiered* ]]; then
  # Edge and shield share CPU 0, as each peer's single process has it alone; the peers'
  # miss runs go back to back with it, so the ratio is from one run.
  HEADER=1 RESTART_CMD="$0 restart-tiered" PIDS_CMD="cat $RUN/edge-tiered.pid $RUN/shield.pid" \
    RAW_DIR="$OUT/raw" "$SHARED/miss-bench.sh" "http://127.0.0.1:$TIERED_PORT" edge+shield random \
    | tee "$OUT/tiered.tsv"
  if [[ $CASES != *miss* ]]; then
    for p in $PEERS; do
      RESTART_CMD="$0 restart-peer $p" PIDS_CMD="$0 peer-pid $p" RAW_DIR="$OUT/raw" \
        "$SHARED/miss-bench.sh" "http://127.0.0.1:$(port_of "$p")" "$p" random | tee -a "$OUT/tiered.tsv"
    done
  fi
fi

if [[ $CASES == *coalesce* ]]; then
  start_edge edge-slow "$SLOW_EDGE_PORT" $((SLOW_EDGE_PORT + 10)) 19090
  "$SHARED/coalesce-test.sh" edge "http://127.0.0.1:$SLOW_EDGE_PORT" http://127.0.0.1:19090 \
    | tee "$OUT/coalesce.tsv"
fi

echo
echo "results in $OUT"
for f in hit range miss tiered; do
  [[ -f $OUT/$f.tsv ]] || continue
  echo "== $f: label size/mode conns req/s p50_ms p99_ms"
  grep -v '^#' "$OUT/$f.tsv" | awk -F'\t' '{printf "%-8s %-6s %5s %10s %8s %8s\n", $1, $2, $3, $4, $5, $6}'
done
