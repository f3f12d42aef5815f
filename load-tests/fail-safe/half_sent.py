#!/usr/bin/env python3
"""300 half-sent requests to the admin port (or, with `ops`, to an ops listener): how many are
still open after N seconds, and the process's file descriptors. Loopback only; stops what it
started.

    load-tests/fail-safe/half_sent.py target/debug/switchyard admin|ops [SECONDS]
"""
import os, socket, subprocess, sys, tempfile, time

from ports import free_port

BIN = sys.argv[1]
WHICH = sys.argv[2] if len(sys.argv) > 2 else "admin"
WAIT = float(sys.argv[3]) if len(sys.argv) > 3 else 15


d = tempfile.mkdtemp()
pp, ap, op = free_port(), free_port(), free_port()
ops = f'ops: {{ bind: "127.0.0.1:{op}" }}\n' if WHICH == "ops" else ""
open(f"{d}/c.yaml", "w").write(f"""listeners: [{{ name: public, bind: "127.0.0.1:{pp}" }}]
admin: {{ bind: "127.0.0.1:{ap}" }}
{ops}upstreams: {{ a: {{ backends: ["127.0.0.1:1"] }} }}
routes: [{{ name: r, split: [{{ upstream: a, weight: 1 }}] }}]
""")
port = op if WHICH == "ops" else ap
p = subprocess.Popen([BIN, "run", "-c", f"{d}/c.yaml", "--workers", "1"], stderr=subprocess.DEVNULL)
try:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    conns = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /livez HTTP/1.1\r\nhost: a\r\n")
        conns.append(s)
    time.sleep(WAIT)

    def is_open(s):
        s.setblocking(False)
        try:
            return s.recv(1) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    n = sum(is_open(s) for s in conns)
    print(f"{WHICH}: {n} of 300 half-sent connections still open after {WAIT:.0f} s; "
          f"process fds {len(os.listdir(f'/proc/{p.pid}/fd'))}")
finally:
    p.terminate()
    p.wait(10)
