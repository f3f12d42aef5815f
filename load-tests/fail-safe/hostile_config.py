#!/usr/bin/env python3
"""A hostile file at the config path of a running switchyard (--workers 1): a FIFO nothing writes
to, a symlink to /dev/zero, a 50 MB YAML file, or a directory, put there by rename. Times /livez
three times after, with RSS, then SIGTERM. Loopback only; stops what it started.

    load-tests/fail-safe/hostile_config.py target/debug/switchyard fifo|zero|big|dir
"""
import os, socket, subprocess, sys, tempfile, time

from ports import free_port

BIN, CASE = sys.argv[1], sys.argv[2]


d = tempfile.mkdtemp()
pp, ap = free_port(), free_port()
cfg = f"""listeners: [{{ name: public, bind: "127.0.0.1:{pp}" }}]
admin: {{ bind: "127.0.0.1:{ap}" }}
upstreams: {{ a: {{ backends: ["127.0.0.1:1"] }} }}
routes: [{{ name: r, split: [{{ upstream: a, weight: 1 }}] }}]
"""
path = f"{d}/c.yaml"
open(path, "w").write(cfg)
log = open(f"{d}/log", "wb")
p = subprocess.Popen([BIN, "run", "-c", path, "--workers", "1"], stderr=log, stdout=subprocess.DEVNULL)


def livez(timeout=5):
    t = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", ap), timeout=timeout)
        s.settimeout(timeout)
        s.sendall(b"GET /livez HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        return f"{s.recv(15)!r} in {1000 * (time.time() - t):.0f} ms"
    except OSError as e:
        return f"failed after {1000 * (time.time() - t):.0f} ms ({e})"


def rss():
    return " ".join(l.split()[0] + l.split()[1] + "kB" for l in open(f"/proc/{p.pid}/status")
                    if l.startswith(("VmRSS", "VmHWM")))


def big(t):
    with open(t, "w") as f:
        f.write(cfg)
        f.write(("#" + "x" * 99 + "\n") * 500000)


try:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", ap), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    print("before:", livez(), rss())
    make = {"fifo": os.mkfifo, "zero": lambda t: os.symlink("/dev/zero", t), "big": big, "dir": os.mkdir}[CASE]
    tmp = f"{d}/tmp"
    make(tmp)
    if os.path.isdir(tmp):
        os.remove(path)
    os.rename(tmp, path)
    time.sleep(1.0)
    for i in range(3):
        print(f"{CASE} /livez #{i}:", livez(5), rss())
    rejected = [l for l in open(f"{d}/log", "rb").read().splitlines() if b"config rejected:" in l]
    print("logged:", rejected[-1][:220] if rejected else "nothing")
    t = time.time()
    p.terminate()
    try:
        p.wait(8)
        print(f"SIGTERM: exited {p.returncode} in {time.time() - t:.2f}s")
    except subprocess.TimeoutExpired:
        print("SIGTERM: still running after 8 s")
finally:
    if p.poll() is None:
        p.kill()
        p.wait()
