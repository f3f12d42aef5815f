#!/usr/bin/env python3
"""A small fixed-rate HTTP/1.1 load generator, for when oha is not installed.

    fixed_rate.py URL RATE SECONDS [CONNECTIONS]

Request i is due at start + i/RATE; a free keep-alive connection sends it, and its latency is
counted from when it was due, not from when it was sent (corrected for coordinated omission,
like oha --latency-correction and wrk2). Loopback only. Prints one JSON line: requests, errors,
non-2xx and p50/p90/p99/p99.9 in microseconds. Python tops out at a few thousand requests per
second: use oha for higher rates.
"""
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def worker(host, port, path, due_queue, lat, counts):
    reader = writer = None
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    while True:
        due = await due_queue.get()
        if due is None:
            break
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - due)
            counts["requests"] += 1
            if not 200 <= status < 300:
                counts["non2xx"] += 1
        except Exception:
            counts["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None


async def main(url, rate, seconds, conns):
    u = urlsplit(url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    assert host in ("127.0.0.1", "localhost", "::1"), "loopback only"
    lat, counts = [], {"requests": 0, "errors": 0, "non2xx": 0}
    q = asyncio.Queue(maxsize=conns)
    tasks = [asyncio.create_task(worker(host, port, path, q, lat, counts)) for _ in range(conns)]
    start = time.perf_counter() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        await q.put(start + i / rate)
    for _ in tasks:
        await q.put(None)
    await asyncio.gather(*tasks)
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6) if lat else None

    counts.update(p50_us=pct(50), p90_us=pct(90), p99_us=pct(99), p999_us=pct(99.9))
    print(json.dumps(counts))


if __name__ == "__main__":
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    conns = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    asyncio.run(main(url, rate, seconds, conns))
