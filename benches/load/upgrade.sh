#!/usr/bin/env bash
# benches/load/upgrade.sh -- what clients see of a binary upgrade and of a config reload,
# under wrk load, beside nginx reloading its config under the same load.
#
# Each case: wrk -t2 -c$CONNS -d${DURATION}s --latency on 1 KiB hits (CPU 1), the server on
# CPU 0; $AT seconds in, the change:
#   edge-upgrade       `cdn edge --config F --upgrade` (the same release binary as a new
#                      process): takes the listeners, the old process drains and exits
#   edge-upgrade-disk  the same with a disk tier ([cache.disk]): the old process writes out
#                      and exits first, the new one recovers the disk
#   edge-reload        SIGHUP to the edge after its config file gained a site
#   nginx-reload       SIGHUP to nginx proxy_cache's master (new workers, old ones finish)
# Reported per case: req/s, wrk's socket errors (connect/read/write/timeout), non-2xx
# answers, p99 and max latency. Results under $OUT (default bench-results/upgrade-<time>/).
#
# Env: CONNS=64 DURATION=10 AT=4 SHARED=../shared/bench SKIP_BUILD=1 OUT=...
# Needs (Debian): nginx-light wrk curl. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
AT=${AT:-4}
OUT=${OUT:-$ROOT/bench-results/upgrade-$(date -u +%Y%m%d-%H%M%S)}
RUN=/tmp/perf/run/cdn-upgrade
PIDFILE=/tmp/perf/run/peers.pids
BIN=$ROOT/target/release/cdn
PORT=19184
ADMIN=19194
mkdir -p "$OUT" "$RUN"

die() { echo "upgrade.sh: $*" >&2; exit 1; }
for t in wrk curl taskset nginx; do command -v "$t" >/dev/null || die "$t missing"; done
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release --bin cdn)

[[ -f /tmp/perf/origin/obj/1k.bin ]] || "$SHARED/make-origin.sh" >/dev/null
COMPONENTS="origin nginx" "$SHARED/setup-peers.sh" > "$OUT/setup.log"
cleanup() {
  pkill -f "cdn-upgrade/edge.toml" 2>/dev/null || true
  "$SHARED/stop-peers.sh" "$PIDFILE" > /dev/null 2>&1 || true
}
trap cleanup EXIT

write_config() { # disk? extra-site?
  local f=$RUN/edge.toml
  cat > "$f" <<TOML
[node]
name = "edge-upgrade"
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
upgrade_socket = "$RUN/upgrade.sock"
[cache]
capacity = "1 GiB"
TOML
  if [[ $1 == disk ]]; then
    rm -rf "$RUN/disk"
    printf '[cache.disk]\npath = "%s"\nsize = "1 GiB"\n' "$RUN/disk" >> "$f"
  fi
  cat >> "$f" <<TOML
[[site]]
name = "bench"
hosts = ["127.0.0.1", "localhost"]
upstream = "http://127.0.0.1:19080"
TOML
  if [[ ${2:-} == more ]]; then
    printf '[[site]]\nname = "more"\nhosts = ["more.example"]\nupstream = "http://127.0.0.1:19080"\n' >> "$f"
  fi
  echo "$f"
}

start_edge() { # config [--upgrade]
  RUST_LOG=warn timeout --signal=TERM 1h taskset -c 0 "$BIN" edge --config "$1" ${2:-} \
    >> "$RUN/edge.log" 2>&1 < /dev/null &
  echo $!
}

wait_healthy() {
  for _ in $(seq 1 100); do
    timeout 2 curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && return 0
    sleep 0.1
  done
  die "the edge did not become healthy (see $RUN/edge.log)"
}

measure() { # label url change-command...
  local label=$1 url=$2
  shift 2
  curl -s -o /dev/null "$url"; curl -s -o /dev/null "$url"
  timeout 60 taskset -c 1 wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$url" > "$OUT/$label.wrk" 2>&1 &
  local wrk=$!
  sleep "$AT"
  "$@" >> "$OUT/$label.change.log" 2>&1
  wait "$wrk"
  local rps errors non2xx p99 max
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$label.wrk")
  errors=$(awk '/Socket errors/ {print $3 $4 $5 $6 $7 $8 $9 $10}' "$OUT/$label.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/$label.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$OUT/$label.wrk")
  max=$(awk '/Latency/ && !/Distribution/ {print $4; exit}' "$OUT/$label.wrk")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$rps" "${errors:-none}" "${non2xx:-0}" "$p99" "$max" \
    | tee -a "$OUT/summary.tsv"
}

printf 'case\treq/s\tsocket errors\tnon-2xx\tp99\tmax\n' | tee "$OUT/summary.tsv"

# A binary upgrade: memory only, then with a disk tier.
for variant in memory disk; do
  config=$(write_config "$variant")
  old=$(start_edge "$config")
  wait_healthy
  label=edge-upgrade
  [[ $variant == disk ]] && label=edge-upgrade-disk
  measure "$label" "http://127.0.0.1:$PORT/obj/1k.bin" start_edge "$config" --upgrade
  for _ in $(seq 1 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$old" 2>/dev/null && die "the old edge did not exit after the upgrade"
  pkill -f "cdn-upgrade/edge.toml" || true
  for _ in $(seq 1 100); do pgrep -f "cdn-upgrade/edge.toml" >/dev/null || break; sleep 0.1; done
done

# A config reload (a site added), SIGHUP.
config=$(write_config memory)
edge=$(start_edge "$config")
wait_healthy
reload_edge() { write_config memory more > /dev/null; kill -HUP "$(pgrep -P "$edge" | head -n1)"; }
measure edge-reload "http://127.0.0.1:$PORT/obj/1k.bin" reload_edge
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: more.example' "http://127.0.0.1:$PORT/obj/1k.bin")
[[ $status == 200 ]] || die "the reload did not add the site (more.example answered $status)"
pkill -f "cdn-upgrade/edge.toml" || true

# nginx proxy_cache reloading its config (SIGHUP to the master) under the same load.
nginx_master=$(awk '$1 == "nginx" {print $3}' "$PIDFILE")
measure nginx-reload "http://127.0.0.1:19082/obj/1k.bin" kill -HUP "$nginx_master"
echo "results: $OUT"
