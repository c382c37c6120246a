#!/usr/bin/env python3
"""dnsq.py -- one DNS query over UDP, printed on one line (for benches/dns/run.sh).

Usage: dnsq.py SERVER PORT NAME [TYPE] [--ecs SUBNET] [--wait SECONDS]
Prints: rcode=NOERROR answers=[CNAME x.; A 1.2.3.4; ...] ecs_scope=N
With --wait, retries until an answer arrives (exit 1 if none by then): a readiness check.
Standard library only; dig is not needed. Loopback targets only.
"""
import ipaddress
import random
import socket
import struct
import sys
import time

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "AAAA": 28, "OPT": 41}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def query(name, qtype, ecs=None):
    qid = random.randrange(65536)
    additional = b""
    if ecs:
        net = ipaddress.ip_network(ecs, strict=False)
        nbytes = (net.prefixlen + 7) // 8
        data = struct.pack("!HBB", 1 if net.version == 4 else 2, net.prefixlen, 0)
        data += net.network_address.packed[:nbytes]
        opt = struct.pack("!HH", 8, len(data)) + data
        additional = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(opt)) + opt
    header = struct.pack("!HHHHHH", qid, 0x0000, 1, 0, 0, 1 if ecs else 0)
    return qid, header + encode_name(name) + struct.pack("!HH", TYPES[qtype], 1) + additional


def read_name(msg, off):
    labels, jumped, end = [], False, off
    for _ in range(128):
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            jumped = True
            continue
        if n == 0:
            if not jumped:
                end = off + 1
            return ".".join(labels) + ".", end
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    raise ValueError("name loop")


def parse(msg):
    _, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = read_name(msg, off)
        off += 4
    records, scope = [], None
    rcode = flags & 0xF
    for i in range(an + ns + ar):
        _, off = read_name(msg, off)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        rdata = msg[off:off + rdlen]
        if i < an:
            if rtype == 5:
                records.append("CNAME " + read_name(msg, off)[0])
            elif rtype == 1:
                records.append("A " + socket.inet_ntop(socket.AF_INET, rdata))
            elif rtype == 28:
                records.append("AAAA " + socket.inet_ntop(socket.AF_INET6, rdata))
            else:
                records.append("type%d" % rtype)
        elif rtype == 41:
            p = 0
            while p + 4 <= len(rdata):
                code, length = struct.unpack("!HH", rdata[p:p + 4])
                if code == 8 and length >= 4:
                    scope = rdata[p + 7]
                p += 4 + length
        off += rdlen
    return RCODES.get(rcode, str(rcode)), records, scope


def main():
    args = sys.argv[1:]
    ecs, wait = None, 0.0
    if "--ecs" in args:
        i = args.index("--ecs"); ecs = args[i + 1]; del args[i:i + 2]
    if "--wait" in args:
        i = args.index("--wait"); wait = float(args[i + 1]); del args[i:i + 2]
    if len(args) < 3:
        sys.exit(__doc__)
    server, port, name = args[0], int(args[1]), args[2]
    qtype = args[3] if len(args) > 3 else "A"
    if not (server.startswith("127.") or server == "::1"):
        sys.exit("refusing non-loopback target " + server)
    deadline = time.monotonic() + wait
    while True:
        qid, packet = query(name, qtype, ecs)
        sock = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.5)
        try:
            sock.sendto(packet, (server, port))
            while True:
                msg, _ = sock.recvfrom(65535)
                if struct.unpack("!H", msg[:2])[0] == qid:
                    break
            rcode, records, scope = parse(msg)
            print("rcode=%s answers=[%s] ecs_scope=%s" % (rcode, "; ".join(records), scope))
            return 0
        except (socket.timeout, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                print("no answer from %s:%d" % (server, port))
                return 1
            time.sleep(0.1)
        finally:
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
