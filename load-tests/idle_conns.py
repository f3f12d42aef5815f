#!/usr/bin/env python3
"""What idle keep-alive client connections cost switchyard in memory, and whether it comes back.

    idle_conns.py SWITCHYARD_BINARY

Everything on loopback and bounded: a small HTTP/1.1 keep-alive backend in this process (a
thread of its own), switchyard in front of it with one listener, and a client that opens
CONNECTIONS keep-alive connections to it. Phases, each measured by the proxy's RSS
(/proc/PID/status):

  start      after start and a few warm-up requests
  silent     CONNECTIONS connections open, none has sent anything
  closed     after the client closed them all and the proxy closed its ends
  cycle K    CONNECTIONS connections open, each sent one request and read its answer
             ("answered": RSS just after the last answer), then idle for IDLE seconds (RSS
             and KB/conn); "closed" once they are all closed again, "later" after LATER more
             seconds of light traffic (CYCLES times)

"Closed" is a signal, not a sleep: the proxy's open sockets (/proc/PID/fd) are counted until
they are back to what they were before the phase. RSS is read after it has been still for
SETTLE seconds (the kernel's view, including memory the allocator keeps but does not use).

Knobs (environment): CONNECTIONS (10000), CYCLES (3), IDLE (15 s), LATER (15 s), WORKERS (switchyard workers, 2),
PARALLEL (requests in flight at once while the connections send their one request, 64),
SETTLE (0.5 s), PROXY_PORT and ADMIN_PORT (free ones), TIMEOUT (whole run, 300 s).
The caller raises the fd limit (idle-conns.sh does: ulimit -n).
"""
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time

CONNECTIONS = int(os.environ.get("CONNECTIONS", "10000"))
CYCLES = int(os.environ.get("CYCLES", "3"))
WORKERS = int(os.environ.get("WORKERS", "2"))
PARALLEL = int(os.environ.get("PARALLEL", "64"))
SETTLE = float(os.environ.get("SETTLE", "0.5"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PROXY_PORT = int(os.environ.get("PROXY_PORT") or free_port())
ADMIN_PORT = int(os.environ.get("ADMIN_PORT") or free_port())
TIMEOUT = float(os.environ.get("TIMEOUT", "300"))
LATER = float(os.environ.get("LATER", "15"))
IDLE = float(os.environ.get("IDLE", "15"))
BODY = b"x" * 1024
REQUEST = b"GET /idle HTTP/1.1\r\nHost: idle.test\r\nUser-Agent: idle_conns\r\nAccept: */*\r\n\r\n"
DEADLINE = time.monotonic() + TIMEOUT


def left():
    remaining = DEADLINE - time.monotonic()
    if remaining <= 0:
        raise SystemExit(f"idle_conns: out of time ({TIMEOUT:.0f} s)")
    return remaining


def backend():
    """A keep-alive backend answering every request with 1 KiB; returns its port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (
        len(BODY),
        BODY,
    )

    def serve(conn):
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    conn.sendall(answer)

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("switchyard exited")


def settled_rss_mb(pid):
    """RSS once it has not moved for SETTLE seconds (bounded by the run's deadline)."""
    last = rss_kb(pid)
    while True:
        time.sleep(min(SETTLE, left()))
        now = rss_kb(pid)
        if now == last:
            return now / 1024
        last = now


def sockets(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def wait_sockets(pid, want, cmp):
    while not cmp(sockets(pid), want):
        left()
        time.sleep(0.05)


def read_answer(sock, buf):
    """Reads one response (Content-Length framed) from `sock`; returns the leftover bytes."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("idle_conns: the proxy closed a connection before answering")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise SystemExit(f"idle_conns: status {status.decode()}: {head[:200]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("idle_conns: the proxy closed a connection mid-body")
        rest += data
    return rest[length:]


def open_all(n):
    conns = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(max(1.0, min(30.0, left())))
        s.connect(("127.0.0.1", PROXY_PORT))
        conns.append(s)
    return conns


def one_request_each(conns):
    """Every connection sends one request and reads its answer, PARALLEL at a time."""
    sel = selectors.DefaultSelector()
    pending = list(reversed(conns))
    in_flight = {}
    for s in conns:
        s.setblocking(False)

    def start_one():
        s = pending.pop()
        s.sendall(REQUEST)
        in_flight[s] = b""
        sel.register(s, selectors.EVENT_READ)

    while pending or in_flight:
        while pending and len(in_flight) < PARALLEL:
            start_one()
        events = sel.select(timeout=min(10.0, left()))
        if not events:
            raise SystemExit("idle_conns: no answer within 10 s")
        for key, _ in events:
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                raise SystemExit("idle_conns: the proxy closed a connection before answering")
            buf = in_flight[s] + data
            if b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"idle_conns: {head[:200]!r}")
                if len(rest) >= len(BODY):
                    sel.unregister(s)
                    del in_flight[s]
                    continue
            in_flight[s] = buf
    sel.close()


def trickle(seconds):
    """Light traffic (about 50 req/s) for `seconds` on a few fresh connections (they land on
    every worker), as a proxy that goes on serving sees: allocators give freed memory back
    after a delay, some only when their thread allocates again."""
    conns = open_all(8)
    end = time.monotonic() + seconds
    rest = [b""] * len(conns)
    while time.monotonic() < end:
        for i, s in enumerate(conns):
            s.sendall(REQUEST)
            rest[i] = read_answer(s, rest[i])
        time.sleep(0.15)
    for s in conns:
        s.close()


def main():
    binary = sys.argv[1]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CONNECTIONS + 512:
        raise SystemExit(
            f"idle_conns: fd limit {soft} < CONNECTIONS + 512; raise it (ulimit -n) first"
        )
    port = backend()
    work = tempfile.mkdtemp(prefix="switchyard-idle.")
    config = os.path.join(work, "idle.yaml")
    with open(config, "w") as f:
        f.write(
            f"""listeners:
  - name: public
    bind: 127.0.0.1:{PROXY_PORT}
    limits:
      # Idle keep-alive connections must outlive the measurement.
      header_read_timeout: 10m
      idle_timeout: 1h
      max_connections: {CONNECTIONS * 2}
admin:
  bind: 127.0.0.1:{ADMIN_PORT}
state_dir: {work}
upstreams:
  app:
    backends: ["127.0.0.1:{port}"]
routes:
  - name: all
    match: {{ path_prefix: / }}
    split: [{{ upstream: app, weight: 100 }}]
"""
        )
    log = open(os.path.join(work, "switchyard.log"), "w")
    proxy = subprocess.Popen(
        [binary, "run", "-c", config, "--workers", str(WORKERS)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            try:
                warm = open_all(1)[0]
                break
            except OSError:
                if proxy.poll() is not None:
                    raise SystemExit(f"switchyard exited; log in {work}/switchyard.log")
                time.sleep(0.05)
        warm.settimeout(10)
        rest = b""
        for _ in range(100):
            warm.sendall(REQUEST)
            rest = read_answer(warm, rest)
        warm.close()
        time.sleep(0.2)
        base = sockets(proxy.pid)
        print(f"switchyard {binary}, {WORKERS} workers; {CONNECTIONS} connections; pid {proxy.pid}")
        print(
            f"{'phase':<10} {'RSS MB':>8} {'KB/conn':>8} {'answered':>9} {'closed':>8}"
            f" {'later':>8}"
        )
        start = settled_rss_mb(proxy.pid)
        print(f"{'start':<10} {start:8.1f}")

        conns = open_all(CONNECTIONS)
        wait_sockets(proxy.pid, base + CONNECTIONS, lambda n, w: n >= w)
        held = settled_rss_mb(proxy.pid)
        print(f"{'silent':<10} {held:8.1f} {(held - start) * 1024 / CONNECTIONS:8.1f}")
        for s in conns:
            s.close()
        wait_sockets(proxy.pid, base, lambda n, w: n <= w)
        after = settled_rss_mb(proxy.pid)
        print(f"{'closed':<10} {after:8.1f}")

        for cycle in range(1, CYCLES + 1):
            conns = open_all(CONNECTIONS)
            wait_sockets(proxy.pid, base + CONNECTIONS, lambda n, w: n >= w)
            t0 = time.monotonic()
            one_request_each(conns)
            took = time.monotonic() - t0
            answered = settled_rss_mb(proxy.pid)
            time.sleep(min(IDLE, left()))
            held = settled_rss_mb(proxy.pid)
            per = (held - start) * 1024 / CONNECTIONS
            backends = sockets(proxy.pid) - base - CONNECTIONS
            for s in conns:
                s.close()
            wait_sockets(proxy.pid, base + backends, lambda n, w: n <= w)
            after = settled_rss_mb(proxy.pid)
            trickle(LATER)
            wait_sockets(proxy.pid, base + backends, lambda n, w: n <= w)
            later = settled_rss_mb(proxy.pid)
            print(
                f"{'cycle ' + str(cycle):<10} {held:8.1f} {per:8.1f} {answered:9.1f} {after:8.1f}"
                f" {later:8.1f}   ({CONNECTIONS / took:.0f} req/s, {backends} backend connections)"
            )
            after = later
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        log.close()


if __name__ == "__main__":
    main()
