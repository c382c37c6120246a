#!/usr/bin/env python3
"""regions.py -- both servers' configs for N regions (benches/dns/run.sh, REGIONS=N).

Usage: regions.py N GDNSD_DIR OURS_REGIONS_TOML
The regions: the shared config's four (us-east, us-west, eu-west, ap-southeast) first, the
rest r004, r005, ... on a Fibonacci lattice between 55 S and 70 N (evenly spread over where
people live, deterministic). Writes our [[region]] tables (4 edges each, 127.1.<region>.1-4,
each probed at http://<its address>:20081/health, which edges.py serves) to
OURS_REGIONS_TOML, the edge addresses one a line to OURS_REGIONS_TOML.edges, and in
GDNSD_DIR a gdnsd config (a city_auto map of the same regions, at most 254: gdnsd's limit
per map; the CNAME targets' states from an extfile, all UP), its zones and the extfile.
"""
import math
import sys

GDNSD_CONFIG = """options => {
  listen => [ 127.0.0.1:20053 ]
  udp_threads => 1
  tcp_threads => 1
  zones_rfc1035_threads => 1
  run_dir => %(g)s/run
  state_dir => %(g)s/state
  edns_client_subnet => true
  min_ttl => 5
}
service_types => {
  region_state => { plugin => extfile, file => %(g)s/extfile/regions, direct => true, def_down => false, interval => 2 }
}
plugins => {
  geoip => {
    maps => {
      city_auto => {
        geoip2_db => dbip-city-lite.mmdb
        datacenters => [ %(names)s ]
        auto_dc_coords => {
%(coords)s
        }
        auto_dc_limit => 3
        nets => { 127.0.0.0/8 => [ eu-west, us-east, us-west ] }
      }
    }
    resources => {
      cdn_region => {
        map => city_auto
        service_types => region_state
        dcmap => {
%(dcmap)s
        }
      }
    }
  }
}
"""

CDN_ZONE = """$TTL 300
@        SOA ns1 hostmaster 1 7200 1800 259200 300
@        NS  ns1
ns1      A   127.0.0.1
static   A   192.0.2.10
assets   60  DYNC geoip!cdn_region
"""

EDGE_ZONE = """$TTL 300
@        SOA ns1.cdn.test. hostmaster.cdn.test. 1 7200 1800 259200 300
@        NS  ns1.cdn.test.
"""


def regions(n):
    out = [("us-east", 39.04, -77.49), ("us-west", 45.60, -121.18),
           ("eu-west", 53.35, -6.26), ("ap-southeast", 1.35, 103.82)][:n]
    rest = n - len(out)
    lo, hi = math.sin(math.radians(-55)), math.sin(math.radians(70))
    for i in range(rest):
        z = lo + (hi - lo) * (i + 0.5) / rest
        lat = math.degrees(math.asin(z))
        lon = (i * 137.50776405) % 360 - 180
        out.append(("r%03d" % len(out), round(lat, 2), round(lon, 2)))
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    n, g, ours = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if not 1 <= n <= 256:
        sys.exit("regions.py: N must be 1..256")
    all_regions = regions(n)
    with open(ours, "w") as f:
        for i, (name, lat, lon) in enumerate(all_regions):
            edges = ", ".join(
                '{ address = "127.1.%d.%d", probe = "http://127.1.%d.%d:20081/health" }' % (i, e, i, e)
                for e in range(1, 5))
            f.write('[[region]]\nname = "%s"\nlat = %s\nlon = %s\nedge = [%s]\n\n' % (name, lat, lon, edges))
    with open(ours + ".edges", "w") as f:
        f.write("".join("127.1.%d.%d\n" % (i, e) for i in range(n) for e in range(1, 5)))
    dcs = all_regions[:254]
    with open(g + "/config", "w") as f:
        f.write(GDNSD_CONFIG % {
            "g": g,
            "names": " ".join(r[0] for r in dcs),
            "coords": "\n".join("          %s => [ %s, %s ]" % r for r in dcs),
            "dcmap": "\n".join("          %s => %s.edge.test." % (r[0], r[0]) for r in dcs),
        })
    with open(g + "/zones/cdn.test", "w") as f:
        f.write(CDN_ZONE)
    with open(g + "/zones/edge.test", "w") as f:
        f.write(EDGE_ZONE)
    with open(g + "/extfile/regions", "w") as f:
        f.write("".join("%s.edge.test. => UP\n" % r[0] for r in dcs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
