#!/usr/bin/env python3
"""Out of file descriptors: switchyard under RLIMIT_NOFILE=64 with 200 client connections held
open to its public listener, then one request waiting at the admin port. Prints switchyard's CPU
and its "accept" log lines per second over 4 s, then frees the descriptors and times the waiting
request and a fresh /status. Loopback only; stops what it started.

    load-tests/fail-safe/fd_exhaustion.py target/debug/switchyard [WORKERS]
"""
import os, socket, subprocess, sys, tempfile, time

from ports import free_port

BIN = sys.argv[1]
WORKERS = sys.argv[2] if len(sys.argv) > 2 else "1"


d = tempfile.mkdtemp()
pp, ap = free_port(), free_port()
with open(f"{d}/c.yaml", "w") as f:
    f.write(f"""listeners: [{{ name: public, bind: "127.0.0.1:{pp}" }}]
admin: {{ bind: "127.0.0.1:{ap}" }}
upstreams: {{ a: {{ backends: ["127.0.0.1:1"] }} }}
routes: [{{ name: r, split: [{{ upstream: a, weight: 1 }}] }}]
""")
log = open(f"{d}/log", "wb")
p = subprocess.Popen(["prlimit", "--nofile=64:64", BIN, "run", "-c", f"{d}/c.yaml", "--workers", WORKERS],
                     stderr=log, stdout=subprocess.DEVNULL)
try:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", ap), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    conns = []
    for _ in range(200):
        try:
            conns.append(socket.create_connection(("127.0.0.1", pp), timeout=2))
        except OSError:
            break
    time.sleep(0.5)

    def ticks():
        f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])

    def lines():
        return sum(1 for l in open(f"{d}/log", "rb") if b"accept" in l)

    adm = socket.create_connection(("127.0.0.1", ap), timeout=2)
    adm.sendall(b"GET /livez HTTP/1.1\r\nhost: a\r\n\r\n")
    t0, c0, l0 = time.time(), ticks(), lines()
    time.sleep(4)
    t1, c1, l1 = time.time(), ticks(), lines()
    hz = os.sysconf("SC_CLK_TCK")
    print(f"workers={WORKERS} held={len(conns)} cpu={100 * (c1 - c0) / hz / (t1 - t0):.0f}% "
          f"accept-log-lines/s={(l1 - l0) / (t1 - t0):.0f} log-bytes={os.path.getsize(f'{d}/log')}")
    for c in conns:
        c.close()
    t2 = time.time()
    adm.settimeout(10)
    try:
        got = adm.recv(100)
        print(f"waiting admin /livez answered {time.time() - t2:.2f}s after fds were freed: {got[:15]!r}")
    except OSError as e:
        print(f"waiting admin /livez: no answer within 10 s of freeing fds ({e})")
    t3 = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", ap), timeout=5)
        s.settimeout(5)
        s.sendall(b"GET /status HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        print(f"fresh /status: {s.recv(15)!r} in {time.time() - t3:.2f}s")
    except OSError as e:
        print(f"fresh /status failed: {e}")
finally:
    p.terminate()
    p.wait(10)
