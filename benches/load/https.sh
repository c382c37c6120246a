#!/usr/bin/env bash
# benches/load/https.sh -- HTTPS hit throughput and TLS handshakes/s: the edge beside nginx
# (proxy_cache, ssl) in front of the same demo origin, in one run, same certificate (ECDSA
# P-256), TLS 1.2/1.3 on both. Servers pinned to CPU 0, wrk to CPU 1; loopback only.
#
# Usage: benches/load/https.sh            (env: DURATION=10 CONNS=64 SIZES="1k 16k" SKIP_BUILD=1
#                                           H2=0 H2_REQUESTS=200000)
# Cases: "hit SIZE": keep-alive HTTPS GETs of a cached object (one handshake per connection);
#        "handshake": Connection: close on every request, so each is a new full handshake;
#        "h2 hit 1k": HTTP/2, 16 connections x 10 streams (h2load), only when h2load is
#        installed and H2 is not 0.
# Needs (Debian): nginx-light wrk curl openssl; optional: nghttp2-client (h2load). Every
# process started is stopped by PID.
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
printf 'case\tserver\treq/s\tp50\tp99\n'
run() { # label port path server extra-wrk-args...
  local label=$1 port=$2 path=$3 server=$4; shift 4
  local out
  out=$(timeout $((DURATION + 30)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" \
    "https://localhost:$port$path" 2>&1)
  printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$server" \
    "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
    "$(awk '$1=="50%"{print $2}' <<<"$out")" "$(awk '$1=="99%"{print $2}' <<<"$out")"
}
for size in $SIZES; do
  for server in edge nginx; do
    port=$EDGE_HTTPS_PORT; [[ $server == nginx ]] && port=$NGINX_PORT
    # Warm: the object is cached on both before the run.
    curl -skf -o /dev/null "https://localhost:$port/obj/$size.bin"
    curl -skf -o /dev/null "https://localhost:$port/obj/$size.bin"
    run "hit $size" "$port" "/obj/$size.bin" "$server"
  done
done
for server in edge nginx; do
  port=$EDGE_HTTPS_PORT; [[ $server == nginx ]] && port=$NGINX_PORT
  run "handshake" "$port" "/obj/1k.bin" "$server" -H "Connection: close"
done
if [[ ${H2:-1} != 0 ]] && command -v h2load >/dev/null; then
  for server in edge nginx; do
    port=$EDGE_HTTPS_PORT; [[ $server == nginx ]] && port=$NGINX_PORT
    out=$(timeout 120 taskset -c 1 h2load -n "${H2_REQUESTS:-200000}" -c 16 -m 10 \
      "https://localhost:$port/obj/1k.bin" 2>&1)
    grep -q "succeeded, 0 failed" <<<"$out" || die "h2load against $server failed: $out"
    printf '%s\t%s\t%s\t-\t-\n' "h2 hit 1k" "$server" \
      "$(awk '/^finished in/{print $4}' <<<"$out")"
  done
fi
