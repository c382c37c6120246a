#!/usr/bin/env python3
"""tls_probe.py HOST PORT PATH COUNT -- COUNT new connections one after another, each a TCP
connect, a full TLS handshake (no session resumption), one HTTP/1.1 GET with
`Connection: close` and the whole response read; prints the p50 and p99 of the handshake
(connect + TLS) and of the whole exchange, in ms.

Run beside a load generator, it measures what a new client of a loaded server waits for,
which wrk's latency does not show: wrk times a request only from its write, after the
handshake, so with `Connection: close` its figure is mostly its own event loop's length.
Loopback only."""
import socket, ssl, sys, time

host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if host not in ("localhost", "127.0.0.1", "::1"):
    sys.exit("tls_probe.py: loopback only")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_alpn_protocols(["http/1.1"])
request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
handshakes, exchanges = [], []
for _ in range(count):
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=None) as tls:
            handshaken = time.perf_counter()
            tls.sendall(request)
            got = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                got += chunk
            done = time.perf_counter()
    if not got.startswith(b"HTTP/1.1 200"):
        sys.exit(f"tls_probe.py: unexpected answer {got[:40]!r}")
    handshakes.append((handshaken - start) * 1000)
    exchanges.append((done - start) * 1000)
q = lambda v, f: sorted(v)[min(len(v) - 1, int(len(v) * f))]
print(f"{q(handshakes, .5):.2f}\t{q(handshakes, .99):.2f}\t{q(exchanges, .5):.2f}\t{q(exchanges, .99):.2f}")
