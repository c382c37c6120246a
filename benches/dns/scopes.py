#!/usr/bin/env python3
"""scopes.py -- the ECS scopes two servers answer for the same clients (for benches/dns/run.sh).

Usage: scopes.py SUBNETS N NAME SERVER:PORT[=LABEL] ...
Asks each server NAME A once for each of the first N subnets of the file SUBNETS (one
`address/prefix` a line, as examples/ecs_queries.rs writes them) over UDP, and prints per
server and address family the count of answers at each scope prefix length, the median,
and how many answers named the same CNAME target as the first server's (region agreement).
Standard library only; loopback targets only; every wait is bounded.
"""
import collections
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dnsq  # noqa: E402


def ask(sock, server, name, subnet):
    qid, packet = dnsq.query(name, "A", subnet)
    for _ in range(3):
        sock.sendto(packet, server)
        try:
            for _ in range(16):
                msg, _ = sock.recvfrom(65535)
                if struct.unpack("!H", msg[:2])[0] == qid:
                    rcode, records, scope = dnsq.parse(msg)
                    cname = next((r[6:] for r in records if r.startswith("CNAME ")), None)
                    return cname, scope
        except socket.timeout:
            continue
    return None, None


def main():
    args = sys.argv[1:]
    if len(args) < 4:
        sys.exit(__doc__)
    path, n, name, servers = args[0], int(args[1]), args[2], args[3:]
    subnets = [line.strip() for line in open(path) if line.strip()][:n]
    results = []
    for spec in servers:
        target, _, label = spec.partition("=")
        host, port = target.rsplit(":", 1)
        if not host.startswith("127."):
            sys.exit("refusing non-loopback target " + host)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.5)
        answers = [ask(sock, (host, int(port)), name, s) for s in subnets]
        sock.close()
        results.append((label or target, answers))
    first = results[0][1]
    print("# scope prefix lengths for %d clients asking %s A (count per scope; median)" % (len(subnets), name))
    for label, answers in results:
        for family, want in (("IPv4", False), ("IPv6", True)):
            scopes = [a[1] for s, a in zip(subnets, answers) if (":" in s) == want and a[1] is not None]
            if not scopes:
                continue
            counts = collections.Counter(scopes)
            median = sorted(scopes)[len(scopes) // 2]
            hist = " ".join("/%d:%d" % (k, counts[k]) for k in sorted(counts))
            print("%-8s %s n=%d median=/%d  %s" % (label, family, len(scopes), median, hist))
        same = sum(1 for a, b in zip(first, answers) if a[0] is not None and a[0].split(".")[0] == (b[0] or "").split(".")[0])
        unanswered = sum(1 for a in answers if a[0] is None)
        print("%-8s region as %s: %d of %d; no CNAME: %d" % (label, results[0][0], same, len(subnets), unanswered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
