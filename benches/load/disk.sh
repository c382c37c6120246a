#!/usr/bin/env bash
# benches/load/disk.sh -- the disk-tier benchmark of issue 20: the edge (memory tier of MEM
# in front of a disk tier of DISK) beside Apache Traffic Server (RAM cache MEM, a DISK
# cache file) and nginx (proxy_cache of DISK on disk; its memory is the page cache only),
# and Varnish (malloc MEM, no persistence: a reference), in front of one origin, in one run.
#
# Usage: benches/load/disk.sh            (all servers, all phases; ~12 min with the defaults)
#   SERVERS="edge ats nginx varnish" PHASES="zipf restart ram" benches/load/disk.sh
# Phases, per server, one server at a time (its cache is wiped before and after):
#   zipf     fill (every object of the working set requested once, plus the restart
#            probes twice), WARMUP s of Zipf(ZIPF_S) load, then DURATION s measured: req/s,
#            p50/p99, hit ratio = 1 - origin requests / client requests (the origin's
#            access log, timestamped, counts what reached it: the same meter for every
#            server), and the server's PSS at the end per object of the working set.
#   restart  under Zipf load (wrk keeps running): stop the server (SIGTERM; also SIGKILL
#            for the edge: EDGE_SIGNALS, PEER_SIGNALS), start it on the same cache, then
#            - first hit: a probe loop requests objects cached before the stop, each only
#              once after the restart (PROBES of 1 KiB, /p/<i>/0.bin), so a probe the
#              origin did not see was served from what survived on disk; reported as
#              seconds from process start to the first response (up) and first such hit;
#            - hit ratio per second over the first 10 s after process start (origin log
#              vs wrk's 200 responses per 100 ms), against the RESTART_PRE s before stop,
#              and the first second it is back above 90 % of that.
#   ram      fresh server, RAM_OBJECTS objects of RAM_OBJ_SIZE bytes requested once each;
#            PSS growth per object held (ram_B_per_obj: minus payload and head bytes, the
#            origin's response head, where the process holds them), twice: variant "mem" with a memory budget of RAM_MEM (objects
#            in memory; each object requested twice, since ATS admits to its RAM cache on
#            a later read), variant "disk" with DISKONLY_MEM (each object requested twice,
#            1,000 objects apart: the edge keeps one-hit wonders off its disk; objects held only on disk; not
#            for Varnish; that small memory tier adds DISKONLY_MEM / RAM_OBJECTS per
#            object). A sampled last pass checks how many objects are held. The "disk"
#            variant then restarts the server (SIGTERM) and times its first hit among the
#            RAM_OBJECTS on disk (probes as above, no other load): "first hit with N
#            objects on disk".
# Output: zipf.tsv, restart.tsv, ram.tsv, machine.txt and raw/ (wrk output, logs) under
# $OUT (default bench-results/<time>/), and a summary on stdout.
#
# Env (sizes in MiB or GiB, e.g. 256MiB, 2GiB):
#   MEM=256MiB DISK=2GiB WS=<4 x MEM> (bytes of distinct objects, 1 KiB-1 MiB log-uniform)
#   ZIPF_S=0.9 DURATION=60 WARMUP=30 CONNS=64 THREADS=1
#   RESTART_PRE=5 RESTART_WATCH=20 PROBES=2000 EDGE_SIGNALS="TERM KILL" PEER_SIGNALS=TERM
#   RAM_OBJECTS=200000 RAM_OBJ_SIZE=100 RAM_MEM=1GiB DISKONLY_MEM=4MiB RAM_CHECK=2000
#   RAM_SETTLE_ATS=65 (wait before the "disk" variant's restart of ATS: its directory sync)
#   ATS_AVG_OBJ=8000 (proxy.config.cache.min_average_object_size: ATS sizes its directory
#   as DISK / this, so RAM_OBJECTS must stay below it; lower it for 1M small objects)
#   EDGE_MEMORY_ONLY=1: if the edge has no disk tier, run it memory-only as a reference;
#   EDGE_MEMORY_ONLY=force: run it memory-only anyway (what the memory tier alone costs:
#   with a disk tier, an object hit once is on disk too, and its index entry counts)
#   PORT_BASE=19480 (origin, +1 edge, +2 ats, +3 nginx, +4 varnish, +11 edge admin,
#   +14 varnish admin)  OUT=...  SKIP_BUILD=1  RUN_DIR=/tmp/perf/run/cdn-disk
# Issue 20's scale: MEM=2GiB DISK=10GiB WS=8GiB RAM_OBJECTS=1000000 ATS_AVG_OBJ=1024
#   DURATION=60 WARMUP=60 (about 45 min, ~25 GB of disk; the fill alone moves 8 GiB per
#   server; nginx stores 1M small objects as 1M files, 4 KiB each on disk).
# Needs (Debian): nginx-light trafficserver varnish wrk curl python3 (none other). The
# servers and the origin are pinned to CPU 0, wrk and the probes to CPU 1; loopback only;
# every process started is stopped by PID (trap on exit, error and Ctrl-C).
#
# Caveat: with 24 GiB of RAM the kernel's page cache holds the whole disk budget, so "disk"
# reads here are page-cache reads for every server (the edge's too unless it bypasses the
# page cache); hit ratios compare what each server keeps, req/s the CPU cost of the path.
# shellcheck disable=SC2317 # cleanup runs from a trap, config_<server> by name
# shellcheck disable=SC2016 # single-quoted backticks and the probe loop's $ are meant literally
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$ROOT/target/release/cdn
LUA=$HERE/zipf.lua
RUN=${RUN_DIR:-/tmp/perf/run/cdn-disk}
SERVERS=${SERVERS:-edge ats nginx varnish}
PHASES=${PHASES:-zipf restart ram}
ZIPF_S=${ZIPF_S:-0.9}
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-30}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
RESTART_PRE=${RESTART_PRE:-5}
RESTART_WATCH=${RESTART_WATCH:-20}
PROBES=${PROBES:-2000}
EDGE_SIGNALS=${EDGE_SIGNALS:-TERM KILL}
PEER_SIGNALS=${PEER_SIGNALS:-TERM}
RAM_OBJECTS=${RAM_OBJECTS:-200000}
RAM_OBJ_SIZE=${RAM_OBJ_SIZE:-100}
RAM_CHECK=${RAM_CHECK:-2000}
RAM_SETTLE_ATS=${RAM_SETTLE_ATS:-65}
ATS_AVG_OBJ=${ATS_AVG_OBJ:-8000}
EDGE_MEMORY_ONLY=${EDGE_MEMORY_ONLY:-0}
PORT_BASE=${PORT_BASE:-19480}
ORIGIN_PORT=$PORT_BASE
declare -A PORT=([edge]=$((PORT_BASE + 1)) [ats]=$((PORT_BASE + 2)) [nginx]=$((PORT_BASE + 3))
                 [varnish]=$((PORT_BASE + 4)))
EDGE_ADMIN_PORT=$((PORT_BASE + 11))
VARNISH_ADMIN_PORT=$((PORT_BASE + 14))

die() { echo "disk.sh: $*" >&2; exit 1; }
note() { echo "disk.sh: $*" >&2; }

mib_of() { # "256MiB" | "2GiB" | "512M" | "2G" | bytes -> MiB (integer)
  local v=${1// /}
  case $v in
    *GiB|*G|*g) echo $(( ${v%%[Gg]*} * 1024 )) ;;
    *MiB|*M|*m) echo $(( ${v%%[Mm]*} )) ;;
    *[0-9]) echo $(( v / 1048576 )) ;;
    *) die "cannot read size '$1' (use e.g. 256MiB or 2GiB)" ;;
  esac
}
MEM_MIB=$(mib_of "${MEM:-256MiB}")
DISK_MIB=$(mib_of "${DISK:-2GiB}")
WS_MIB=$(mib_of "${WS:-$((MEM_MIB * 4))MiB}")
RAM_MEM_MIB=$(mib_of "${RAM_MEM:-1GiB}")
DISKONLY_MIB=$(mib_of "${DISKONLY_MEM:-4MiB}")
(( MEM_MIB >= 8 && DISK_MIB >= 64 && WS_MIB >= 16 )) || die "MEM >= 8 MiB, DISK >= 64 MiB, WS >= 16 MiB"
case $RUN in /tmp/*) ;; *) die "RUN_DIR must be under /tmp";; esac

for t in wrk curl taskset python3 awk; do command -v "$t" >/dev/null || die "$t missing"; done
for s in $SERVERS; do
  case $s in
    edge) ;;
    ats) command -v traffic_server >/dev/null || die "traffic_server missing (apt-get install trafficserver)" ;;
    nginx) ;;
    varnish) command -v varnishd >/dev/null || die "varnishd missing (apt-get install varnish)" ;;
    *) die "unknown server $s" ;;
  esac
done
command -v nginx >/dev/null || die "nginx missing (the origin is nginx too; apt-get install nginx-light)"
if [[ " $SERVERS " == *" edge "* && ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && nice -n 10 cargo build --release --quiet)
fi

OUT=${OUT:-$ROOT/bench-results/$(date +%Y%m%d-%H%M%S)-disk}
mkdir -p "$OUT/raw" "$RUN"

# ---------------------------------------------------------------- processes, by PID
declare -A WRAP=() SPID=() BG=()   # BG: PIDs of background wrk and probe loops
now() { echo "$EPOCHREALTIME"; }

start_proc() { # name log cmd... : `timeout` wrapper, pinned to CPU 0; sets WRAP/SPID
  local name=$1 log=$2 _ c=""; shift 2
  timeout --signal=TERM 3h taskset -c 0 "$@" > "$log" 2>&1 < /dev/null &
  WRAP[$name]=$!
  for _ in $(seq 1 100); do
    c=$(pgrep -P "${WRAP[$name]}" | head -n1 || true)
    [[ -n $c ]] && break
    kill -0 "${WRAP[$name]}" 2>/dev/null || break
    sleep 0.02
  done
  SPID[$name]=${c:-}
}

tree_pids() { # pid -> the pid and its descendants
  local p=$1 k
  echo "$p"
  for k in $(pgrep -P "$p" || true); do tree_pids "$k"; done
}

stop_proc() { # name [TERM|KILL]
  local name=$1 sig=${2:-TERM} w=${WRAP[$1]:-} p=${SPID[$1]:-} pids _
  [[ -n $w ]] || return 0
  if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
    if [[ $sig == KILL ]]; then
      pids=$(tree_pids "$p")
      # shellcheck disable=SC2086 # a list of PIDs
      kill -KILL $pids 2>/dev/null || true
    else
      kill -TERM "$p" 2>/dev/null || true
    fi
    for _ in $(seq 1 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$p" 2>/dev/null; then
      note "$name (pid $p) still running 30 s after SIG$sig: SIGKILL"
      pids=$(tree_pids "$p")
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
  else
    kill -TERM "$w" 2>/dev/null || true
  fi
  wait "$w" 2>/dev/null || true
  unset "WRAP[$name]" "SPID[$name]"
}

cleanup() {
  local p n
  for p in "${!BG[@]}"; do kill "$p" 2>/dev/null || true; done
  for n in "${!WRAP[@]}"; do stop_proc "$n" TERM; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds [name: give up when its process is gone]
  local _
  for _ in $(seq 1 $(($2 * 20))); do
    port_open "$1" && return 0
    [[ -n ${3:-} ]] && ! kill -0 "${SPID[$3]:-${WRAP[$3]}}" 2>/dev/null && return 1
    sleep 0.05
  done
  return 1
}

pss_of() { # pid -> "pss_bytes rss_bytes" summed over the process tree (smaps_rollup)
  local p pss=0 rss=0 a b
  for p in $(tree_pids "$1"); do
    read -r a b < <(awk '/^Pss:/{p=$2} /^Rss:/{r=$2} END{print p+0, r+0}' "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
    pss=$((pss + a * 1024)); rss=$((rss + b * 1024))
  done
  echo "$pss $rss"
}

# ---------------------------------------------------------------- the origin
# nginx serving /<prefix>/<id>/<k>.bin from files/<k>.bin (321 size classes, 1 KiB-1 MiB;
# "small" is RAM_OBJ_SIZE bytes), logging "<msec> <uri>" per request: the meter of what
# reached the origin. Every URL is its own cache key, so 321 files back any number of objects.
ORIG=$RUN/origin
size_of_k() { awk -v k="$1" 'BEGIN{printf "%d", 1024 * 2^(k/32) + 0.5}'; }
make_origin() {
  mkdir -p "$ORIG/files" "$ORIG/tmp"
  local k
  if [[ ! -f $ORIG/files/320.bin || $(stat -c %s "$ORIG/files/320.bin") != 1048576 ]]; then
    for k in $(seq 0 320); do head -c "$(size_of_k "$k")" /dev/urandom > "$ORIG/files/$k.bin"; done
  fi
  head -c "$RAM_OBJ_SIZE" /dev/urandom > "$ORIG/files/small.bin"
  : > "$ORIG/access.log"
  cat > "$ORIG/nginx.conf" <<CONF
worker_processes 1;
pid $ORIG/nginx.pid;
error_log $ORIG/error.log warn;
events { worker_connections 8192; }
http {
  log_format t '\$msec \$uri';
  access_log $ORIG/access.log t buffer=256k flush=1s;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=600s;
  default_type application/octet-stream;
  client_body_temp_path $ORIG/tmp/body; proxy_temp_path $ORIG/tmp/proxy;
  fastcgi_temp_path $ORIG/tmp/fcgi; uwsgi_temp_path $ORIG/tmp/uwsgi; scgi_temp_path $ORIG/tmp/scgi;
  server {
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    location ~ ^/[a-z]+/[0-9]+/([a-z0-9]+)\\.bin\$ {
      alias $ORIG/files/\$1.bin;
      add_header Cache-Control "public, max-age=86400";
    }
  }
}
CONF
  nginx -t -q -p "$ORIG/" -c "$ORIG/nginx.conf" -e "$ORIG/error.log" || die "origin config invalid"
  start_proc origin "$ORIG/stdout.log" nginx -p "$ORIG/" -c "$ORIG/nginx.conf" -e "$ORIG/error.log" -g 'daemon off;'
  wait_port "$ORIGIN_PORT" 10 || die "origin did not come up ($ORIG/error.log)"
}

# Origin requests with this path prefix in [t0, t1) (epoch seconds, fractional).
origin_count() { # prefix t0 t1
  awk -v p="$1" -v a="$2" -v b="$3" 'index($2, p) == 1 && $1 >= a && $1 < b {n++} END{print n+0}' "$ORIG/access.log"
}
flush_wait() { sleep 1.3; }  # the origin's access log is flushed every second

# Working set: ids 1..N with sizes by class_of(id) until WS bytes (same hash as zipf.lua).
read -r WS_N WS_BYTES < <(awk -v ws="$((WS_MIB * 1048576))" 'BEGIN{
  s = 0; for (id = 1; s < ws; id++) { h = (id * 2654435761) % 4294967296; k = int(h * 321 / 4294967296)
  s += int(1024 * 2^(k/32) + 0.5) } printf "%d %d\n", id - 1, s }')

# ---------------------------------------------------------------- the servers
# Each writes its config under $RUN/<name>; "fresh" wipes the cache first.
EDGE_STATUS=""
[[ $EDGE_MEMORY_ONLY == force ]] && EDGE_STATUS=memory-only
config_edge() { # mem_mib disk_mib
  local d=$RUN/edge
  mkdir -p "$d/disk"
  cat > "$d/edge.toml" <<TOML
[node]
name = "edge-disk"
listen = "127.0.0.1:${PORT[edge]}"
admin_listen = "127.0.0.1:$EDGE_ADMIN_PORT"
[cache]
capacity = "$1 MiB"
max_object_size = "$(( $1 < 2 ? $1 : 2 )) MiB"
TOML
  if [[ $EDGE_STATUS != memory-only ]]; then
    cat >> "$d/edge.toml" <<TOML
[cache.disk]
path = "$d/disk"
size = "$2 MiB"
TOML
  fi
  cat >> "$d/edge.toml" <<TOML
[[site]]
name = "bench"
hosts = ["127.0.0.1", "localhost"]
upstream = "http://127.0.0.1:$ORIGIN_PORT"
TOML
}

config_ats() { # mem_mib disk_mib
  local d=$RUN/ats
  mkdir -p "$d/etc" "$d/var" "$d/run" "$d/log" "$d/cache"
  cp -r /etc/trafficserver/. "$d/etc/"
  printf '%s\n' "prefix: $d" "exec_prefix: /usr" "bindir: /usr/bin" "sbindir: /usr/sbin" \
    "sysconfdir: $d/etc" "datadir: $d/var" "includedir: /usr/include" \
    "libdir: /usr/lib/trafficserver" "libexecdir: /usr/lib/trafficserver/modules" \
    "localstatedir: $d/var" "runtimedir: $d/run" "logdir: $d/log" "cachedir: $d/cache" \
    > "$d/runroot.yaml"
  grep -Ev 'proxy\.config\.(http\.server_ports|exec_thread\.(autoconfig|limit|affinity)|cache\.ram_cache\.size|cache\.ram_cache_cutoff|log\.logging_enabled|http\.wait_for_cache|cache\.min_average_object_size) ' \
    /etc/trafficserver/records.config > "$d/etc/records.config"
  printf '%s\n' "# ---- disk.sh ----" \
    "CONFIG proxy.config.http.server_ports STRING ${PORT[ats]}:ipv4:ip-in=127.0.0.1" \
    "CONFIG proxy.config.exec_thread.autoconfig INT 0" \
    "CONFIG proxy.config.exec_thread.limit INT 1" \
    "CONFIG proxy.config.exec_thread.affinity INT 0" \
    "CONFIG proxy.config.cache.ram_cache.size INT $(( $1 * 1048576 ))" \
    "CONFIG proxy.config.cache.ram_cache_cutoff INT 4194304" \
    "CONFIG proxy.config.cache.min_average_object_size INT $ATS_AVG_OBJ" \
    "CONFIG proxy.config.log.logging_enabled INT 1" \
    "CONFIG proxy.config.http.wait_for_cache INT 1" >> "$d/etc/records.config"
  echo "$d/cache $(( $2 * 1048576 ))" > "$d/etc/storage.config"
  echo "map http://127.0.0.1:${PORT[ats]}/ http://127.0.0.1:$ORIGIN_PORT/" > "$d/etc/remap.config"
  : > "$d/etc/plugin.config"
  chown -R trafficserver: "$d" 2>/dev/null || true
}

config_nginx() { # mem_mib (unused: nginx has no memory tier of its own) disk_mib
  local d=$RUN/nginx
  mkdir -p "$d/tmp" "$d/cache"
  cat > "$d/nginx.conf" <<CONF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fcgi; uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
  proxy_cache_path $d/cache levels=1:2 keys_zone=disk:256m max_size=$2m inactive=7d use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache disk;
      proxy_cache_valid 200 1d;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
CONF
}

config_varnish() { mkdir -p "$RUN/varnish"; echo "$1" > "$RUN/varnish/mem_mib"; }

wipe() { rm -rf -- "${RUN:?}/$1"; }

launch() { # server -> starts it on its current config (no wait)
  local d=$RUN/$1
  case $1 in
    edge) RUST_LOG=warn start_proc edge "$d/edge.log" "$BIN" edge --config "$d/edge.toml" ;;
    ats) start_proc ats "$d/stdout.log" env TS_RUNROOT="$d" traffic_server --run-root="$d/runroot.yaml" ;;
    nginx) start_proc nginx "$d/stdout.log" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;' ;;
    varnish) start_proc varnish "$d/stdout.log" varnishd -F -n "$d/work" -a "127.0.0.1:${PORT[varnish]}" \
               -T "127.0.0.1:$VARNISH_ADMIN_PORT" -b "127.0.0.1:$ORIGIN_PORT" \
               -s "malloc,$(cat "$d/mem_mib")M" -p thread_pools=1 ;;
  esac
}

# ATS rebinds its threads to all CPUs at start (see ../shared/bench/setup-peers.sh): pin again.
repin() {
  if [[ $1 == ats && -n ${SPID[ats]:-} ]]; then taskset -a -p -c 0 "${SPID[ats]}" > /dev/null 2>&1 || true; fi
}

start_server() { # server mem_mib disk_mib fresh|keep -> 0 up, 1 refused to start
  local s=$1
  if [[ $4 == fresh ]]; then wipe "$s"; fi
  "config_$s" "$2" "$3"
  launch "$s"
  if ! wait_port "${PORT[$s]}" 60 "$s"; then
    return 1
  fi
  sleep 1; repin "$s"
  # One request through, outside the measured prefixes, so the server is really serving.
  curl -s -o /dev/null --max-time 10 "http://127.0.0.1:${PORT[$s]}/w/0/0.bin" || true
  return 0
}

# The edge before the disk tier is wired refuses `[cache.disk]` (unknown field): say so.
start_edge_checked() { # mem disk fresh|keep
  if start_server edge "$@"; then return 0; fi
  local log=$RUN/edge/edge.log
  stop_proc edge TERM
  if [[ $EDGE_STATUS != memory-only ]] && grep -q 'unknown field `disk`' "$log"; then
    echo "edge: no disk tier in this build (it refuses [cache.disk]: $(grep -m1 -o 'unknown field `disk`[^,]*' "$log"))" | tee -a "$OUT/notes.txt"
    if [[ $EDGE_MEMORY_ONLY == 1 ]]; then
      EDGE_STATUS=memory-only
      echo "edge: running memory-only (capacity = MEM) as a reference" | tee -a "$OUT/notes.txt"
      start_server edge "$@" && return 0
    fi
    return 2
  fi
  die "edge did not start (see $log)"
}

# ---------------------------------------------------------------- load
wrk_run() { # out_file seconds url env... -- wrk pinned to CPU 1 with zipf.lua
  # A seq pass ends when every thread touched its ZIPF_DONE marker: then SIGINT (wrk
  # otherwise sleeps out -d), after a moment for the last answers.
  local out=$1 secs=$2 url=$3 pid; shift 3
  rm -f "$out".done.*
  env "$@" ZIPF_THREADS="$THREADS" ZIPF_DONE="$out.done" timeout $((secs + 60)) taskset -c 1 \
    wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 10s --latency -s "$LUA" "$url" > "$out" 2>&1 &
  pid=$!; BG[$pid]=1
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(find "$(dirname "$out")" -maxdepth 1 -name "$(basename "$out").done.*" | wc -l) >= THREADS )); then
      sleep 0.5; kill -INT "$pid" 2>/dev/null || true; break
    fi
    sleep 0.2
  done
  wait "$pid" || true
  unset "BG[$pid]"
  rm -f "$out".done.*
}
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0;
  else if (v ~ /s$/) printf "%.3f", v*1000; else print "NA" }'; }
wrk_field() { # file requests|rps|p50|p99|errors
  case $2 in
    requests) awk '/requests in/{print $1}' "$1" ;;
    rps) awk '/^Requests\/sec:/{print $2}' "$1" ;;
    p50) to_ms "$(awk '$1=="50%"{print $2}' "$1")" ;;
    p99) to_ms "$(awk '$1=="99%"{print $2}' "$1")" ;;
    errors) awk '/Socket errors:/{gsub(/,/,""); e=$4+$6+$8+$10} /Non-2xx/{e+=$5} END{print e+0}' "$1" ;;
  esac
}

fill() { # server label: probes (twice) and the whole working set (once)
  local url="http://127.0.0.1:${PORT[$1]}"
  # Twice: the edge admits to its disk only objects requested more than once (one-hit
  # wonders never reach the SSD); for ATS and nginx, which write every object, the second
  # pass is a hit and changes nothing.
  wrk_run "$OUT/raw/$1-fill-probes.txt" 600 "$url" ZIPF_MODE=seq ZIPF_N="$PROBES" ZIPF_PREFIX=/p/ ZIPF_K=0
  wrk_run "$OUT/raw/$1-fill-probes-2.txt" 600 "$url" ZIPF_MODE=seq ZIPF_N="$PROBES" ZIPF_PREFIX=/p/ ZIPF_K=0
  wrk_run "$OUT/raw/$1-fill.txt" 1800 "$url" ZIPF_MODE=seq ZIPF_N="$WS_N" ZIPF_PREFIX=/z/
}

# Requests <prefix><id>/<key>.bin for id = first, first+stride, ... (each once), one at a
# time from CPU 1, until t_start + watch s, max probes or (if > 0) that many answers; a
# refused connection is retried with the same id. Prints "<path> <epoch s> <status>" lines.
# Runs in the background: PROBE_PID.
probe_loop() { # url prefix key first stride t_start watch max stop_after_answers
  taskset -c 1 bash -c '
    id=$4; n=0; answered=0; end=$(( ${6/./} + $7 * 1000000 ))
    while (( n < $8 && ${EPOCHREALTIME/./} < end )); do
      path=$2$id/$3.bin
      code=$(curl -s -o /dev/null --max-time 2 -w "%{http_code}" "$1$path" || true)
      if [[ $code == 000 ]]; then sleep 0.01; continue; fi
      echo "$path $EPOCHREALTIME $code"; id=$((id + $5)); n=$((n + 1))
      [[ $code == 200 ]] && answered=$((answered + 1))
      (( $9 > 0 && answered >= $9 )) && break
    done' probe "$@" 2>/dev/null &
  PROBE_PID=$!; BG[$PROBE_PID]=1
}

# "<up_s> <first_hit_s>" from a probe file: seconds from t_start to the first 200 and to the
# first 200 whose path the origin did not see after t_start (so it came from the cache).
probe_result() { # probes_file t_start
  awk -v a="$2" 'NR == FNR { if ($1 >= a) seen[$2] = 1; next }
    $3 == 200 { if (up == "") up = $2 - a; if (hit == "" && !($1 in seen)) hit = $2 - a }
    END { printf "%s %s\n", (up == "" ? "NA" : sprintf("%.3f", up)), (hit == "" ? "none" : sprintf("%.3f", hit)) }' \
    "$ORIG/access.log" "$1"
}

# ---------------------------------------------------------------- phases
ZIPF_TSV=$OUT/zipf.tsv RESTART_TSV=$OUT/restart.tsv RAM_TSV=$OUT/ram.tsv

phase_zipf() { # server label
  local s=$1 label=$2 url="http://127.0.0.1:${PORT[$1]}" t0 t1 f reqs orig pss rss
  local t_fill0 t_fill1
  t_fill0=$(now); fill "$s"; t_fill1=$(now)
  wrk_run "$OUT/raw/$s-warmup.txt" "$WARMUP" "$url" ZIPF_N="$WS_N" ZIPF_S="$ZIPF_S" ZIPF_SEED=7
  f=$OUT/raw/$s-zipf.txt
  t0=$(now)
  wrk_run "$f" "$DURATION" "$url" ZIPF_N="$WS_N" ZIPF_S="$ZIPF_S" ZIPF_SEED=11
  t1=$(now)
  flush_wait
  reqs=$(wrk_field "$f" requests)
  orig=$(origin_count /z/ "$t0" "$t1")
  read -r pss rss < <(pss_of "${SPID[$s]}")
  [[ -f $ZIPF_TSV ]] || printf '#server\tmem_MiB\tdisk_MiB\tobjects\tws_MiB\tconns\tseconds\trequests\treq_s\tp50_ms\tp99_ms\terrors\torigin_reqs\thit_ratio\tpss_MiB\trss_MiB\tpss_B_per_ws_object\tfill_s\n' > "$ZIPF_TSV"
  awk -v OFS='\t' -v l="$label" -v m="$MEM_MIB" -v d="$DISK_MIB" -v n="$WS_N" -v ws="$WS_BYTES" -v c="$CONNS" \
      -v secs="$DURATION" -v r="$reqs" -v rps="$(wrk_field "$f" rps)" -v p50="$(wrk_field "$f" p50)" \
      -v p99="$(wrk_field "$f" p99)" -v e="$(wrk_field "$f" errors)" -v o="$orig" -v pss="$pss" -v rss="$rss" \
      -v fs="$(awk -v a="$t_fill0" -v b="$t_fill1" 'BEGIN{printf "%.1f", b-a}')" 'BEGIN{
    hr = (r > 0) ? sprintf("%.4f", 1 - o / r) : "NA"
    print l, m, d, n, sprintf("%.0f", ws/1048576), c, secs, r, rps, p50, p99, e, o, hr,
      sprintf("%.1f", pss/1048576), sprintf("%.1f", rss/1048576), sprintf("%.0f", pss/n), fs }' | tee -a "$ZIPF_TSV"
}

# Stop under load, start on the same cache, measure. Needs a warm server (phase_zipf).
phase_restart() { # server label signal
  local s=$1 label=$2 sig=$3 url="http://127.0.0.1:${PORT[$1]}" wrk_pid ds t_stop t_start
  local f=$OUT/raw/$s-restart-$sig
  ds=$f.ds
  rm -f "$ds".*
  env ZIPF_N="$WS_N" ZIPF_S="$ZIPF_S" ZIPF_SEED=13 ZIPF_LOG="$ds" ZIPF_THREADS="$THREADS" \
    timeout $((RESTART_PRE + RESTART_WATCH + 200)) taskset -c 1 \
    wrk -t"$THREADS" -c"$CONNS" -d"$((RESTART_PRE + RESTART_WATCH + 120))s" --timeout 5s -s "$LUA" "$url" \
    > "$f.wrk.txt" 2>&1 &
  wrk_pid=$!; BG[$wrk_pid]=1
  sleep "$RESTART_PRE"
  t_stop=$(now)
  stop_proc "$s" "$sig"
  t_start=$(now)
  launch "$s"
  # Probes: each object cached before the stop, requested once after the start.
  probe_loop "$url" /p/ 0 1 1 "$t_start" "$RESTART_WATCH" "$PROBES" 0 > "$f.probes"
  if [[ $s == ats ]]; then wait_port "${PORT[ats]}" 30 && sleep 0.5 && repin ats; fi
  wait "$PROBE_PID" || true
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" || true
  unset "BG[$wrk_pid]" "BG[$PROBE_PID]"
  flush_wait
  cat "$ds".* 2>/dev/null | sort -n > "$ds" || true
  [[ -f $RESTART_TSV ]] || printf '#server\tsignal\tup_s\tfirst_disk_hit_s\tprobes_answered\tprobe_hits\tpre_hit_ratio\thr_s0..s9 (per second from process start)\tback_to_90pct_s\n' > "$RESTART_TSV"
  # Origin requests after the start, for the probe and the /z/ series.
  awk -v a="$t_start" '$1 >= a' "$ORIG/access.log" > "$f.origin"
  python3 - "$label" "$sig" "$t_stop" "$t_start" "$RESTART_PRE" "$f.probes" "$ds" "$f.origin" \
    "$(origin_count /z/ "$(awk -v a="$t_stop" -v p="$RESTART_PRE" 'BEGIN{printf "%.6f", a - p + 1}')" "$t_stop")" \
    <<'PY' | tee -a "$RESTART_TSV"
import sys
label, sig, t_stop, t_start, pre, probes, ds, origin, pre_orig = sys.argv[1:10]
t_stop, t_start, pre, pre_orig = float(t_stop), float(t_start), int(pre), int(pre_orig)
missed = set()   # paths the origin saw after the start
z = {}           # second since start -> origin requests for /z/
for line in open(origin):
    ts, uri = line.split()
    missed.add(uri)
    if uri.startswith("/z/"):
        sec = int(float(ts) - t_start)
        z[sec] = z.get(sec, 0) + 1
client_pre, client = 0, {}
for line in open(ds):
    b, n, _h = line.split()
    t = int(b) / 10.0
    if t_stop - pre + 1 <= t < t_stop:
        client_pre += int(n)
    if t >= t_start:
        sec = int(t - t_start)
        client[sec] = client.get(sec, 0) + int(n)
up = hit = None
answered = hits = 0
for line in open(probes):
    path, t, code = line.split()
    if code != "200":
        continue
    answered += 1
    t = float(t) - t_start
    if up is None:
        up = t
    if path not in missed:
        hits += 1
        if hit is None:
            hit = t
pre_hr = 1 - pre_orig / client_pre if client_pre else None
series, back = [], None
for s in range(10):
    c = client.get(s, 0)
    if c == 0:
        series.append("-")
        continue
    hr = max(0.0, 1 - z.get(s, 0) / c)
    series.append("%.3f" % hr)
    if back is None and pre_hr and hr >= 0.9 * pre_hr:
        back = s
f = lambda v: "NA" if v is None else "%.3f" % v
print("\t".join([label, sig, f(up), f(hit) if hit is not None else "none", str(answered), str(hits),
                 f(pre_hr), " ".join(series), "NA" if back is None else str(back)]))
PY
  repin "$s"
}

phase_ram() { # server label variant mem_mib
  local s=$1 label=$2 variant=$3 mem=$4 url="http://127.0.0.1:${PORT[$1]}" pss0 pss1 rss1 t0 t1 n_orig head
  stop_proc "$s" TERM
  if [[ $s == edge ]]; then start_edge_checked "$mem" "$DISK_MIB" fresh || return 0
  else start_server "$s" "$mem" "$DISK_MIB" fresh || die "$s did not start"; fi
  # Warm the code paths and allocator (the same small object size, another prefix).
  wrk_run "$OUT/raw/$s-ram-$variant-warm.txt" 600 "$url" ZIPF_MODE=seq ZIPF_N=2000 ZIPF_PREFIX=/w/ ZIPF_K=small
  sleep 1
  read -r pss0 _ < <(pss_of "${SPID[$s]}")
  # "disk": every object requested twice, 1,000 objects apart, as the edge keeps one-hit
  # wonders off its disk (the peers write on the first request).
  local again=0
  [[ $variant == disk ]] && again=1000
  wrk_run "$OUT/raw/$s-ram-$variant-fill.txt" 3600 "$url" ZIPF_MODE=seq ZIPF_N="$RAM_OBJECTS" ZIPF_PREFIX=/r/ ZIPF_K=small ZIPF_AGAIN=$again
  # "mem": a second pass, as ATS admits an object to its RAM cache on a later read only.
  if [[ $variant == mem ]]; then
    wrk_run "$OUT/raw/$s-ram-$variant-reread.txt" 3600 "$url" ZIPF_MODE=seq ZIPF_N="$RAM_OBJECTS" ZIPF_PREFIX=/r/ ZIPF_K=small
  fi
  sleep 3
  read -r pss1 rss1 < <(pss_of "${SPID[$s]}")
  # Which objects are held: a sampled pass (every k-th id) counted at the origin.
  t0=$(now)
  wrk_run "$OUT/raw/$s-ram-$variant-check.txt" 600 "$url" ZIPF_MODE=seq ZIPF_N="$RAM_OBJECTS" \
    ZIPF_PREFIX=/r/ ZIPF_K=small ZIPF_STRIDE=$(( RAM_OBJECTS / RAM_CHECK > 0 ? RAM_OBJECTS / RAM_CHECK : 1 ))
  t1=$(now); flush_wait
  n_orig=$(origin_count /r/ "$t0" "$t1")
  head=$(curl -s -D - -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/r/1/small.bin" | wc -c)
  # "disk": restart on the same cache, then time the first hit among objects not requested
  # since the fill (ids 2, 2+stride, ...), with no other load. ATS keeps what its directory
  # held at the last sync (every 60 s by default): it gets RAM_SETTLE_ATS s first.
  local up=- first=- stride=$(( RAM_OBJECTS / RAM_CHECK > 1 ? RAM_OBJECTS / RAM_CHECK : 2 )) t_start
  if [[ $variant == disk ]]; then
    [[ $s == ats ]] && sleep "$RAM_SETTLE_ATS"
    stop_proc "$s" TERM
    t_start=$(now)
    launch "$s"
    probe_loop "$url" /r/ small 2 "$stride" "$t_start" "$RESTART_WATCH" "$RAM_CHECK" 50 \
      > "$OUT/raw/$s-ram-disk-restart.probes"
    if [[ $s == ats ]]; then wait_port "${PORT[ats]}" 30 && sleep 0.5 && repin ats; fi
    wait "$PROBE_PID" || true
    unset "BG[$PROBE_PID]"
    flush_wait
    read -r up first < <(probe_result "$OUT/raw/$s-ram-disk-restart.probes" "$t_start")
  fi
  [[ -f $RAM_TSV ]] || printf '#server\tvariant\tmem_MiB\tobjects\theld_pct\tpss0_MiB\tpss1_MiB\trss1_MiB\tgrowth_B_per_obj\tpayload_B\thead_B\tram_B_per_obj\tpss_total_B_per_obj\trestart_up_s\tfirst_hit_s\n' > "$RAM_TSV"
  awk -v OFS='\t' -v l="$label" -v v="$variant" -v m="$mem" -v n="$RAM_OBJECTS" -v chk="$RAM_CHECK" \
      -v req="$(wrk_field "$OUT/raw/$s-ram-$variant-check.txt" requests)" -v o="$n_orig" \
      -v p0="$pss0" -v p1="$pss1" -v r1="$rss1" -v pay="$RAM_OBJ_SIZE" -v h="$head" \
      -v inproc="$([[ $variant == mem && $s != nginx ]] && echo 1 || echo 0)" -v up="$up" -v first="$first" 'BEGIN{
    held = (req > 0) ? 1 - o / req : 0; if (held < 0) held = 0
    nh = n * held; g = (nh > 0) ? (p1 - p0) / nh : 0
    # ram_B_per_obj: growth minus payload and head where the objects are held in the
    # process (variant mem; not nginx, whose bodies live in files and the page cache).
    ram = inproc ? g - pay - h : g
    print l, v, m, n, sprintf("%.1f", 100 * held), sprintf("%.1f", p0/1048576), sprintf("%.1f", p1/1048576),
      sprintf("%.1f", r1/1048576), sprintf("%.0f", g), pay, h, sprintf("%.0f", ram),
      sprintf("%.0f", (nh > 0) ? p1 / nh : 0), up, first }' | tee -a "$RAM_TSV"
  stop_proc "$s" TERM
}

# ---------------------------------------------------------------- run
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet || echo -dirty)"
  echo "cpu: $(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc), RAM $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r); disk: $(df -h "$RUN" | awk 'NR==2{print $1, $2}')"
  echo "nginx $(nginx -v 2>&1 | grep -o '[0-9][0-9.]*'), ats $(traffic_server --version 2>&1 | grep -o 'Server [0-9][0-9.]*' | head -1 | cut -d' ' -f2), varnish $(varnishd -V 2>&1 | head -1 | grep -o '[0-9][0-9.]*' | head -1), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "MEM=${MEM_MIB}MiB DISK=${DISK_MIB}MiB WS=${WS_MIB}MiB (${WS_N} objects, $((WS_BYTES / 1048576)) MiB) ZIPF_S=$ZIPF_S DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS"
  echo "RESTART_PRE=$RESTART_PRE RESTART_WATCH=$RESTART_WATCH PROBES=$PROBES RAM_OBJECTS=$RAM_OBJECTS RAM_OBJ_SIZE=$RAM_OBJ_SIZE RAM_MEM=${RAM_MEM_MIB}MiB DISKONLY_MEM=${DISKONLY_MIB}MiB"
} | tee "$OUT/machine.txt"

make_origin
for s in $SERVERS; do
  label=$s
  if [[ $PHASES == *zipf* || $PHASES == *restart* ]]; then
    if [[ $s == edge ]]; then
      rc=0; start_edge_checked "$MEM_MIB" "$DISK_MIB" fresh || rc=$?
      (( rc == 0 )) || continue
      [[ $EDGE_STATUS == memory-only ]] && label=edge-memonly
    else
      start_server "$s" "$MEM_MIB" "$DISK_MIB" fresh || die "$s did not start (see $RUN/$s)"
    fi
    phase_zipf "$s" "$label"
    if [[ $PHASES == *restart* ]]; then
      sigs=$PEER_SIGNALS; [[ $s == edge ]] && sigs=$EDGE_SIGNALS
      for sig in $sigs; do phase_restart "$s" "$label" "$sig"; done
    fi
    stop_proc "$s" TERM
  fi
  if [[ $PHASES == *ram* ]]; then
    phase_ram "$s" "$label" mem "$RAM_MEM_MIB"
    [[ $s == varnish || $EDGE_STATUS == memory-only && $s == edge ]] || phase_ram "$s" "$label" disk "$DISKONLY_MIB"
  fi
  stop_proc "$s" TERM
  wipe "$s"
done
stop_proc origin TERM
: > "$ORIG/access.log"

echo
echo "results in $OUT"
for t in zipf restart ram; do
  [[ -f $OUT/$t.tsv ]] || continue
  echo "== $t"
  column -t -s $'\t' "$OUT/$t.tsv"
done
[[ -f $OUT/notes.txt ]] && cat "$OUT/notes.txt"
exit 0
