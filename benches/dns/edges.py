#!/usr/bin/env python3
"""edges.py -- a health endpoint on each of many edge addresses (benches/dns/run.sh, REGIONS=N).

Usage: edges.py PORT MAX_SECONDS ADDRESS...
Listens on every ADDRESS:PORT (loopback only) and answers any request with 200 "ok",
keeping the connection open, as an edge's admin /healthz does: a GeoDNS probing a
thousand edges keeps one connection per edge, where one shared endpoint would take a
new connection per probe (and overflow its accept queue). One thread, asyncio. Exits
by itself after MAX_SECONDS.
"""
import asyncio
import sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port, seconds, addresses):
    servers = [await asyncio.start_server(serve, a, port, backlog=1024) for a in addresses]
    await asyncio.sleep(seconds)
    for s in servers:
        s.close()


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    addrs = sys.argv[3:]
    if not all(a.startswith("127.") for a in addrs):
        sys.exit("edges.py: loopback addresses only")
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), addrs))
