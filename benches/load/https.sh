#!/usr/bin/env bash
# benches/load/https.sh -- HTTPS hit throughput, TLS handshakes and HTTP/2: the edge beside
# nginx (proxy_cache, ssl, http2) in front of the same demo origin, in one run, same
# certificate (ECDSA P-256), TLS 1.2/1.3 on both. Servers pinned to CPU 0, the load
# generators to CPU 1; loopback only.
#
# Usage: benches/load/https.sh   (env: DURATION=10 CONNS=64 SIZES="1k 16k" SKIP_BUILD=1
#                                  H2=0 H2_REQUESTS=300000 PROBES=300)
# Cases (each for the edge, then nginx, back to back):
#   "hit SIZE": keep-alive HTTPS GETs of a cached object (wrk, one handshake per connection);
#   "handshake": `Connection: close` on every request, so each is a new full TLS 1.3
#      handshake (wrk); beside the load, tls_probe.py opens PROBES new connections one
#      after another and times what a new client waits for: connect + handshake, and the
#      whole exchange. (wrk's own latency starts at the request's write, after the
#      handshake, and with wrk's core saturated is mostly its own event loop's length.)
#   "h2 m=1", "h2 m=10": HTTP/2 hits of 1 KiB, 16 connections x 1 or 10 streams (h2load),
#      with h2load's request-time mean, standard deviation and maximum; only when h2load is
#      installed and H2 is not 0.
#   "h3 SIZE", "h2 SIZE m=10": the edge alone (nginx 1.22 has no HTTP/3), 1 KiB and 16 KiB
#      hits over HTTP/3 (benches/h3_load.rs, built here) and over HTTP/2 (h2load), both 16
#      connections x 10 streams, back to back: h3 per server core against h2's; H3=0 skips,
#      H3_ROUNDS=N alternates the two N times.
# Every case reports the server's CPU (user + system of its process, from /proc) and
# req/s per server core: where the load generator saturates its core, that is the figure
# that compares the servers.
# Needs (Debian): nginx-light wrk curl openssl python3; optional: nghttp2-client (h2load).
# Every process started is stopped by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUN=/tmp/perf/run/cdn-https
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
SIZES=${SIZES:-1k 16k}
ORIGIN_PORT=${ORIGIN_PORT:-19180}
EDGE_PORT=${EDGE_PORT:-19181}
EDGE_ADMIN_PORT=${EDGE_ADMIN_PORT:-19191}
EDGE_HTTPS_PORT=${EDGE_HTTPS_PORT:-19443}
NGINX_PORT=${NGINX_PORT:-19444}
BIN=$ROOT/target/release/cdn

die() { echo "https.sh: $*" >&2; exit 1; }
for t in wrk curl taskset nginx openssl; do command -v "$t" >/dev/null || die "$t missing"; done
[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && nice -n 10 cargo build --release --quiet)
if [[ ${H3:-1} != 0 ]]; then
  H3_LOAD=$(cd "$ROOT" && nice -n 10 cargo bench --bench h3_load --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "h3_load" and m.get("executable"):
        print(m["executable"])')
  [[ -x $H3_LOAD ]] || die "benches/h3_load.rs did not build"
fi
mkdir -p "$RUN"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null

RUST_LOG=warn "$BIN" origin --listen "127.0.0.1:$ORIGIN_PORT" > "$RUN/origin.log" 2>&1 &
PIDS+=($!)
cat > "$RUN/edge.toml" <<TOML
[node]
name = "bench"
listen = "127.0.0.1:$EDGE_PORT"
admin_listen = "127.0.0.1:$EDGE_ADMIN_PORT"
https_listen = "127.0.0.1:$EDGE_HTTPS_PORT"
[limits]
max_connections_per_ip = 0
[[site]]
name = "bench"
hosts = ["localhost"]
upstream = "http://127.0.0.1:$ORIGIN_PORT"
tls = { cert = "$RUN/cert.pem", key = "$RUN/key.pem" }
TOML
RUST_LOG=warn taskset -c 0 "$BIN" edge --config "$RUN/edge.toml" > "$RUN/edge.log" 2>&1 &
PIDS+=($!)
EDGE_PID=$!
cat > "$RUN/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  proxy_cache_path $RUN/nginx-cache levels=1:2 keys_zone=bench:64m max_size=1g inactive=1h;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    server_name localhost;
    ssl_certificate $RUN/cert.pem;
    ssl_certificate_key $RUN/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN_PORT;
      proxy_cache bench;
      proxy_cache_valid 200 1h;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
    }
  }
}
CONF
rm -rf "$RUN/nginx-cache"
taskset -c 0 nginx -c "$RUN/nginx.conf" -p "$RUN" > "$RUN/nginx.log" 2>&1 &
PIDS+=($!)

for _ in $(seq 1 100); do
  curl -skf -o /dev/null "https://localhost:$EDGE_HTTPS_PORT/obj/1k.bin" &&
    curl -skf -o /dev/null "https://localhost:$NGINX_PORT/obj/1k.bin" && break
  sleep 0.1
done

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "cpu: $(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc)"
  echo "nginx: $(nginx -v 2>&1 | grep -o '[0-9][0-9.]*'), wrk: $(wrk -v 2>&1 | head -1 | grep -o '[0-9][0-9.]*' | head -1), openssl: $(openssl version | awk '{print $2}')"
}
NGINX_WORKER=$(pgrep -P "$(cat "$RUN/nginx.pid")" | head -1)
pid_of() { if [[ $1 == edge ]]; then echo "$EDGE_PID"; else echo "$NGINX_WORKER"; fi; }
port_of() { if [[ $1 == edge ]]; then echo "$EDGE_HTTPS_PORT"; else echo "$NGINX_PORT"; fi; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Server CPU % of one core between two tick readings over SECONDS.
cpu_pct() { awk -v a="$1" -v b="$2" -v s="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.0f", (b - a) / hz / s * 100}'; }
per_core() { awk -v r="$1" -v p="$2" 'BEGIN{ if (p > 0) printf "%.0f", r / (p / 100); else print "-" }'; }

printf 'case\tserver\treq/s\tp50\tp99\tserver_cpu%%\treq/s_per_server_core\textra\n'
run() { # label server path extra-wrk-args...
  local label=$1 server=$2 path=$3; shift 3
  local out pid t0 t1 start end rps extra=""
  pid=$(pid_of "$server")
  t0=$(cpu_ticks "$pid"); start=$(date +%s.%N)
  out=$(timeout $((DURATION + 30)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" \
    "https://localhost:$(port_of "$server")$path" 2>&1)
  t1=$(cpu_ticks "$pid"); end=$(date +%s.%N)
  if [[ -n ${PROBE_PID:-} ]]; then wait "$PROBE_PID" || true; extra=$(cat "$PROBE_OUT"); fi
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  local pct; pct=$(cpu_pct "$t0" "$t1" "$(awk -v a="$start" -v b="$end" 'BEGIN{print b - a}')")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$server" "$rps" \
    "$(awk '$1=="50%"{print $2}' <<<"$out")" "$(awk '$1=="99%"{print $2}' <<<"$out")" \
    "$pct" "$(per_core "$rps" "$pct")" "$extra"
}
for size in $SIZES; do
  for server in edge nginx; do
    # Warm: the object is cached on both before the run.
    curl -skf -o /dev/null "https://localhost:$(port_of "$server")/obj/$size.bin"
    curl -skf -o /dev/null "https://localhost:$(port_of "$server")/obj/$size.bin"
    run "hit $size" "$server" "/obj/$size.bin"
  done
done
for server in edge nginx; do
  # The probe starts 2 s into the load and runs beside it.
  PROBE_OUT=$RUN/probe-$server.txt
  : > "$PROBE_OUT"
  ( sleep 2; taskset -c 1 timeout $((DURATION + 20)) python3 "$ROOT/benches/load/tls_probe.py" \
      localhost "$(port_of "$server")" /obj/1k.bin "${PROBES:-300}" |
      awk '{printf "new client: handshake p50 %s p99 %s ms, whole request p50 %s p99 %s ms", $1, $2, $3, $4}' \
      > "$PROBE_OUT" ) &
  PROBE_PID=$!
  run "handshake" "$server" "/obj/1k.bin" -H "Connection: close"
  PROBE_PID=
done
if [[ ${H2:-1} != 0 ]] && command -v h2load >/dev/null; then
  for streams in 1 10; do
    for server in edge nginx; do
      pid=$(pid_of "$server")
      t0=$(cpu_ticks "$pid"); start=$(date +%s.%N)
      out=$(timeout 120 taskset -c 1 h2load -n "${H2_REQUESTS:-300000}" -c 16 -m "$streams" \
        "https://localhost:$(port_of "$server")/obj/1k.bin" 2>&1)
      t1=$(cpu_ticks "$pid"); end=$(date +%s.%N)
      grep -q "succeeded, 0 failed" <<<"$out" || die "h2load against $server failed: $out"
      rps=$(awk '/^finished in/{print $4}' <<<"$out")
      pct=$(cpu_pct "$t0" "$t1" "$(awk -v a="$start" -v b="$end" 'BEGIN{print b - a}')")
      printf '%s\t%s\t%s\t-\t-\t%s\t%s\t%s\n' "h2 1k m=$streams" "$server" "$rps" "$pct" \
        "$(per_core "$rps" "$pct")" \
        "$(awk '/^time for request:/{printf "request time mean %s sd %s max %s", $6, $7, $5}' <<<"$out")"
    done
  done
fi
if [[ ${H3:-1} != 0 ]] && command -v h2load >/dev/null; then
  # One unmeasured h3 run first: the first h3 load after the handshake case was the
  # lowest of every sitting (1 KiB 77,015 per core against 100,863-105,592 after it).
  taskset -c 1 "$H3_LOAD" "https://localhost:$EDGE_HTTPS_PORT/obj/1k.bin" 16 10 2 > /dev/null 2>&1 || true
  # H3_ROUNDS=N alternates h3 and h2 N times per size (the h3 rows vary more from run to
  # run than the others: report every round, or their median).
  for round in $(seq 1 "${H3_ROUNDS:-1}"); do
  for size in 1k 16k; do
    curl -skf -o /dev/null "https://localhost:$EDGE_HTTPS_PORT/obj/$size.bin"
    t0=$(cpu_ticks "$EDGE_PID"); start=$(date +%s.%N)
    out=$(timeout $((DURATION + 30)) taskset -c 1 "$H3_LOAD" \
      "https://localhost:$EDGE_HTTPS_PORT/obj/$size.bin" 16 10 "$DURATION" 2>&1)
    t1=$(cpu_ticks "$EDGE_PID"); end=$(date +%s.%N)
    grep -q "errors 0" <<<"$out" || die "h3_load failed: $out"
    rps=$(awk '/^requests/{print $4}' <<<"$out")
    pct=$(cpu_pct "$t0" "$t1" "$(awk -v a="$start" -v b="$end" 'BEGIN{print b - a}')")
    printf '%s\t%s\t%s\t-\t-\t%s\t%s\t%s\n' "h3 $size m=10" edge "$rps" "$pct" "$(per_core "$rps" "$pct")" ""
    t0=$(cpu_ticks "$EDGE_PID"); start=$(date +%s.%N)
    out=$(timeout 120 taskset -c 1 h2load -D "$DURATION" -c 16 -m 10 \
      "https://localhost:$EDGE_HTTPS_PORT/obj/$size.bin" 2>&1)
    t1=$(cpu_ticks "$EDGE_PID"); end=$(date +%s.%N)
    rps=$(awk '/^finished in/{print $4}' <<<"$out")
    pct=$(cpu_pct "$t0" "$t1" "$(awk -v a="$start" -v b="$end" 'BEGIN{print b - a}')")
    printf '%s\t%s\t%s\t-\t-\t%s\t%s\t%s\n' "h2 $size m=10" edge "$rps" "$pct" "$(per_core "$rps" "$pct")" ""
  done
  done
fi
