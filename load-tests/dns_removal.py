#!/usr/bin/env python3
"""How long a pod removed from DNS still gets requests, under steady load.

    dns_removal.py SWITCHYARD_BINARY

Everything on loopback and bounded in time: dnsmasq on a free port answering from its own hosts
file; four pods (small HTTP/1.1 servers in this process, on 127.0.0.2-5, one port) that note
when each request arrives; switchyard discovering them (`discover: { dns, refresh }`); a
fixed-rate keep-alive client. Each cycle removes one pod from DNS (rewrite + SIGHUP, timed once
dnsmasq says it has read the file), waits, then puts it back. Reported per removal: the time
from the removal to the last request the pod got, and per re-addition the time to its first;
and every request's outcome. One monotonic clock (this process's) times all of it.

Knobs (environment): REFRESH (5s), TTL (30, the records' TTL in seconds), RATE (400 req/s),
CONNECTIONS (16), CYCLES (4), PORTS: PROXY_PORT (18380), ADMIN_PORT (19380).
"""
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REFRESH = os.environ.get("REFRESH", "5s")
TTL = int(os.environ.get("TTL", "30"))
RATE = float(os.environ.get("RATE", "400"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))
CYCLES = int(os.environ.get("CYCLES", "4"))
PROXY_PORT = int(os.environ.get("PROXY_PORT", "18380"))
ADMIN_PORT = int(os.environ.get("ADMIN_PORT", "19380"))
NAME = "app.test"
PODS = [f"127.0.0.{i}" for i in range(2, 6)]


def seconds(d):
    for unit, scale in (("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)):
        if d.endswith(unit) and d[: -len(unit)].replace(".", "").isdigit():
            return float(d[: -len(unit)]) * scale
    raise SystemExit(f"REFRESH={d}: write e.g. 5s or 500ms")


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Pods:
    """HTTP/1.1 keep-alive servers that note every request's arrival time."""

    def __init__(self):
        self.arrivals = {ip: [] for ip in PODS}
        self.servers = []

    async def start(self):
        for _ in range(20):
            port = free_port(socket.SOCK_STREAM)
            try:
                for ip in PODS:
                    self.servers.append(
                        await asyncio.start_server(lambda r, w, ip=ip: self.serve(ip, r, w), ip, port)
                    )
                self.port = port
                return
            except OSError:
                for s in self.servers:
                    s.close()
                self.servers = []
        raise SystemExit("no port free on 127.0.0.2-5")

    async def serve(self, ip, reader, writer):
        body = f"pod {ip}\n".encode()
        resp = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.arrivals[ip].append(time.monotonic())
                writer.write(resp)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


class Dns:
    def __init__(self, workdir):
        self.hosts = os.path.join(workdir, "hosts")
        self.reads = 0
        self.read_event = asyncio.Event()

    async def start(self, ips):
        self.write(ips)
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        for _ in range(5):
            self.port = free_port()
            self.proc = await asyncio.create_subprocess_exec(
                binary, "--keep-in-foreground", "--conf-file=/dev/null",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--local=/test/", "--pid-file=", "--log-facility=-", f"--port={self.port}",
                f"--addn-hosts={self.hosts}", f"--local-ttl={TTL}",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            asyncio.ensure_future(self.watch())
            try:
                await asyncio.wait_for(self.wait_read(1), 10)
                return
            except asyncio.TimeoutError:
                self.stop()
        raise SystemExit("dnsmasq did not start")

    async def watch(self):
        while line := await self.proc.stderr.readline():
            if f"read {self.hosts}".encode() in line:
                self.reads += 1
                self.read_event.set()

    async def wait_read(self, n):
        while self.reads < n:
            self.read_event.clear()
            await self.read_event.wait()

    def write(self, ips):
        tmp = self.hosts + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(f"{ip} {NAME}\n" for ip in ips)
        os.chmod(tmp, 0o644)  # dnsmasq reads it as `nobody` once it has dropped root
        os.replace(tmp, self.hosts)

    async def set(self, ips):
        """Replaces the records; returns the time dnsmasq had read them."""
        before = self.reads
        self.write(ips)
        self.proc.send_signal(signal.SIGHUP)
        await asyncio.wait_for(self.wait_read(before + 1), 10)
        return time.monotonic()

    def stop(self):
        if self.proc.returncode is None:
            self.proc.kill()


async def load(stop_at, counts):
    """RATE requests per second over CONNECTIONS keep-alive connections until stop_at."""
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{PROXY_PORT}\r\n\r\n".encode()
    due = asyncio.Queue(maxsize=CONNECTIONS)

    async def worker():
        reader = writer = None
        while (t := await due.get()) is not None:
            if t > time.monotonic():
                await asyncio.sleep(t - time.monotonic())
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", PROXY_PORT)
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n")
                               if l.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                counts["requests"] += 1
                counts["non2xx"] += not 200 <= status < 300
            except Exception:
                counts["errors"] += 1
                if writer:
                    writer.close()
                reader = writer = None

    tasks = [asyncio.create_task(worker()) for _ in range(CONNECTIONS)]
    t = time.monotonic()
    while t < stop_at:
        await due.put(t)
        t += 1 / RATE
    for _ in tasks:
        await due.put(None)
    await asyncio.gather(*tasks)


async def main(binary):
    refresh = seconds(REFRESH)
    # A lookup comes at the sooner of refresh and TTL (never within 1 s): wait that, and more.
    interval = max(1.0, min(refresh, TTL))
    gap = interval + 2
    work = tempfile.mkdtemp(prefix="switchyard-dns-removal.")
    os.chmod(work, 0o755)
    pods = Pods()
    await pods.start()
    dns = Dns(work)
    await dns.start(PODS)
    conf = os.path.join(work, "switchyard.yaml")
    with open(conf, "w") as f:
        f.write(f"""listeners: [{{ name: public, bind: "127.0.0.1:{PROXY_PORT}" }}]
admin: {{ bind: "127.0.0.1:{ADMIN_PORT}" }}
resolver: "127.0.0.1:{dns.port}"
upstreams:
  app:
    discover: {{ dns: "{NAME}:{pods.port}", refresh: {REFRESH} }}
routes:
  - {{ name: app, split: [{{ upstream: app, weight: 1 }}] }}
""")
    log = open(os.path.join(work, "switchyard.log"), "w")
    proxy = await asyncio.create_subprocess_exec(
        binary, "run", "-c", conf, "--no-watch", stdout=log, stderr=log,
        env={**os.environ, "RUST_LOG": "info"})
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", PROXY_PORT)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        counts = {"requests": 0, "errors": 0, "non2xx": 0}
        start = time.monotonic()
        end = start + 2 + CYCLES * (2 * gap + interval)
        traffic = asyncio.create_task(load(end, counts))
        await asyncio.sleep(2)
        removals, additions = [], []
        for i in range(CYCLES):
            pod = PODS[i % len(PODS)]
            rest = [p for p in PODS if p != pod]
            # A random phase against switchyard's lookup schedule, so that the numbers spread
            # over the whole interval instead of repeating one phase.
            await asyncio.sleep(random.uniform(0, interval))
            removals.append((pod, await dns.set(rest)))
            await asyncio.sleep(gap)
            additions.append((pod, await dns.set(PODS)))
            await asyncio.sleep(gap)
        await traffic
    finally:
        proxy.terminate()
        await proxy.wait()
        dns.stop()
        for s in pods.servers:
            s.close()

    to_last = []
    for (pod, removed), (_, back) in zip(removals, additions):
        last = max((a for a in pods.arrivals[pod] if a < back), default=removed)
        to_last.append(max(0.0, last - removed) * 1000)
    to_first = []
    for pod, t in additions:
        after = [a for a in pods.arrivals[pod] if a >= t]
        to_first.append((after[0] - t) * 1000 if after else float("nan"))
    out = {
        "refresh": REFRESH, "ttl_s": TTL, "rate": RATE, "cycles": CYCLES, **counts,
        "removal_to_last_request_ms": [round(x) for x in to_last],
        "addition_to_first_request_ms": [round(x) for x in to_first],
        "removal_to_last_request_ms_max": round(max(to_last)),
        "removal_to_last_request_ms_median": round(statistics.median(to_last)),
    }
    print(json.dumps(out))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
