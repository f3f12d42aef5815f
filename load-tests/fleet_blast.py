#!/usr/bin/env python3
"""Helpers for fleet-blast.sh (standard library only, loopback only, bounded in time).

  fleet_blast.py watch OUT SECONDS ADMIN...
      Polls GET /rollouts/app on every admin address every 20 ms; writes to OUT (JSON) the
      first wall-clock time each replica showed the canary at weight 0.
  fleet_blast.py blast-report FIRST_FAILURE WATCH_OUT LOAD_OUT...
      Time from the canary's first failure until every replica had it at 0; failed requests.
  fleet_blast.py failover STEP AFTER_MS ADMIN...
      Once the rollout has been AFTER_MS ms at step STEP, finds the leader, SIGKILLs it (its pid
      from /status), and reports the time until another replica leads and until the rollout's
      next step decision (from its history).
  fleet_blast.py publishers ETCD FLEET N SECONDS CANARY_RATE FAIL_AFTER OUT
      N light publishers of the keys a replica writes (a lease each, kept alive; a report every
      250 ms with counters growing at CANARY_RATE canary requests/s, all failing from
      FAIL_AFTER seconds on). Stops after SECONDS or once the fleet's rollout ended; writes the
      failure start and the decision time to OUT.
  fleet_blast.py etcd-usage PID ETCD
      Prints etcd's CPU seconds so far and a few of its own counters (JSON).
"""
import base64
import http.client
import json
import os
import random
import signal
import sys
import threading
import time


def get_json(addr, path, timeout=2):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return json.loads(r.read() or b"null")
    finally:
        c.close()


def weights(view):
    return [w["weight"] for w in view.get("weights", [])]


def watch(out, seconds, admins):
    first = {}
    deadline = time.time() + float(seconds)
    while time.time() < deadline and len(first) < len(admins):
        for a in admins:
            if a in first:
                continue
            try:
                w = weights(get_json(a, "/rollouts/app", 1))
            except Exception:
                continue
            if len(w) == 2 and w[1] == 0:
                first[a] = time.time()
        time.sleep(0.02)
    with open(out, "w") as f:
        json.dump(first, f)


def blast_report(first_failure_file, watch_out, *loads):
    try:
        first = float(open(first_failure_file).read())
    except OSError:
        print("the canary never failed: was it given traffic?")
        return 1
    zero = json.load(open(watch_out))
    sent = []
    for l in loads:
        sent += [line.split() for line in open(l)]
    failed = [(float(at), int(s)) for at, s, _ in sent if int(s) != 200]
    lags = sorted(float(lag) for _, _, lag in sent)
    p99 = lags[int(len(lags) * 0.99)] * 1000 if lags else 0
    print(f"requests sent: {len(sent)} over {len(loads)} replicas, not 200: {len(failed)}, "
          f"client send lag p99 {p99:.1f} ms")
    if len(zero) < len(loads):
        print(f"only {len(zero)} of {len(loads)} replicas took the canary to 0")
        return 1
    for a, t in sorted(zero.items()):
        print(f"  replica {a}: canary weight 0 {(t - first) * 1000:.0f} ms after the first failure")
    last = max(zero.values())
    print(f"every replica at canary weight 0 {(last - first) * 1000:.0f} ms after the first failure")
    print(f"failed client requests fleet-wide (blast radius): {len(failed)}")
    return 0


def failover(at_step, after_ms, *admins):
    # Far enough into the step that its decision is due soon after the kill.
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            v = get_json(admins[0], "/rollouts/app", 1)
        except Exception:
            time.sleep(0.02)
            continue
        if v["step"] == int(at_step) and v["step_elapsed_ms"] >= int(after_ms):
            break
        if v["step"] is not None and v["step"] > int(at_step):
            print(f"the rollout went past step {at_step} before the kill")
            return 1
        time.sleep(0.02)
    status = {a: get_json(a, "/status") for a in admins}
    leader = [a for a, s in status.items() if s["fleet"]["leading"]]
    if not leader:
        print("no leader")
        return 1
    leader = leader[0]
    node = status[leader]["fleet"]["node"]
    pid = [n["pid"] for n in status[leader]["fleet"]["nodes"] if n["node"] == node][0]
    before = get_json(admins[0], "/rollouts/app")
    step = before["step"]
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    others = [a for a in admins if a != leader]
    led = decided = None
    deadline = killed + 60
    while time.time() < deadline and decided is None:
        for a in others:
            try:
                v = get_json(a, "/rollouts/app", 1)
            except Exception:
                continue
            if led is None and v["fleet"]["leading"]:
                led = time.time()
            if v["step"] != step:
                later = [e for e in v["history"] if e["time_ms"] / 1000 > killed]
                if later:
                    decided = later[0]["time_ms"] / 1000
                    print(f"next decision: {later[0]['reason']} (by {v['fleet']['by']})")
                break
        time.sleep(0.02)
    print(f"leader {node} killed at step {step}")
    if led:
        print(f"  another replica leads {(led - killed) * 1000:.0f} ms after SIGKILL")
    if decided:
        print(f"  next step decision {(decided - killed) * 1000:.0f} ms after SIGKILL")
    return 0 if decided else 1


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class Etcd:
    def __init__(self, addr):
        self.host, self.port = addr.rsplit(":", 1)
        self.conn = None

    def post(self, path, body):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=5)
                self.conn.request("POST", path, json.dumps(body))
                r = self.conn.getresponse()
                return json.loads(r.read() or b"null")
            except (OSError, http.client.HTTPException):
                self.conn = None
        raise OSError("etcd unreachable")


def publishers(etcd_addr, fleet, n, seconds, canary_rate, fail_after, out):
    n, seconds, canary_rate, fail_after = int(n), float(seconds), float(canary_rate), float(fail_after)
    e = Etcd(etcd_addr)
    key = f"/switchyard/{fleet}/control/rollouts/app"
    kv = e.post("/v3/kv/range", {"key": b64(key)})["kvs"][0]
    state = json.loads(base64.b64decode(kv["value"]))
    fp, epoch = state["fingerprint"], state["epoch"]
    start = time.time()
    fail_at = start + fail_after
    stop = threading.Event()
    puts = [0]
    lock = threading.Lock()

    def one(i):
        e = Etcd(etcd_addr)
        lease = e.post("/v3/lease/grant", {"TTL": 5})["ID"]
        node = f"pub-{i}"
        process = f"{random.getrandbits(64):016x}"
        key = f"/switchyard/{fleet}/nodes/{node}"
        # Spread over the interval, as replicas started at different times are.
        time.sleep(random.random() * 0.25)
        next_keepalive = time.time() + 1.5
        while not stop.is_set():
            now = time.time()
            ok = canary_rate * (min(now, fail_at) - start)
            bad = canary_rate * max(0.0, now - fail_at)
            req, fails = int(ok + bad), int(bad)
            stable = int(canary_rate * 19 * (now - start))
            report = {
                "node": node, "process": process, "pid": 0,
                "started_ms": int(start * 1000), "time_ms": int(now * 1000),
                "routes": {"app": {
                    "fingerprint": fp, "epoch": epoch, "weights": [95, 5],
                    "reading": {
                        "canary": [req, fails], "stable": [stable, 0], "breaker_opens": 0,
                        "shadow": [0, 0],
                        "canary_latency": [1000, req] if req else [],
                        "stable_latency": [1000, stable] if stable else [],
                    },
                }},
            }
            e.post("/v3/kv/put", {"key": b64(key), "value": b64(json.dumps(report)), "lease": lease})
            with lock:
                puts[0] += 1
            if now > next_keepalive:
                e.post("/v3/lease/keepalive", {"ID": lease})
                next_keepalive = now + 1.5
            time.sleep(max(0.0, 0.25 - (time.time() - now)))
        e.post("/v3/lease/revoke", {"ID": lease})

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    decided = None
    deadline = start + seconds
    while time.time() < deadline:
        kv = e.post("/v3/kv/range", {"key": b64(key)})["kvs"][0]
        st = json.loads(base64.b64decode(kv["value"]))
        if st["epoch"] != epoch:
            decided = st["history"][-1]
            break
        time.sleep(0.02)
    elapsed = time.time() - start
    stop.set()
    for t in threads:
        t.join(timeout=5)
    with open(out, "w") as f:
        json.dump({"fail_at": fail_at, "decided": decided, "puts": puts[0], "seconds": elapsed}, f)
    if decided is None:
        print(f"{n} publishers: no decision within {seconds}s")
        return 1
    print(f"{n} publishers, {canary_rate:g} canary req/s each: {puts[0] / elapsed:.0f} puts/s; "
          f"the leader decided {decided['time_ms'] - fail_at * 1000:.0f} ms after the canary "
          f"started failing: {decided['reason']}")
    return 0


def etcd_usage(pid, etcd_addr):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        rss = [l.split()[1] for l in f if l.startswith("VmRSS:")][0]
    host, port = etcd_addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    want = {"etcd_server_proposals_committed_total", "etcd_mvcc_put_total", "etcd_mvcc_txn_total",
            "etcd_mvcc_db_total_size_in_bytes", "etcd_debugging_mvcc_db_total_size_in_bytes"}
    m = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in want:
            m[parts[0]] = float(parts[1])
    print(json.dumps({"cpu_s": cpu, "rss_kb": int(rss), "time": time.time(), **m}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "watch":
        watch(args[0], args[1], args[2:])
    elif cmd == "blast-report":
        sys.exit(blast_report(*args))
    elif cmd == "failover":
        sys.exit(failover(*args))
    elif cmd == "publishers":
        sys.exit(publishers(*args))
    elif cmd == "etcd-usage":
        etcd_usage(*args)
    else:
        sys.exit(__doc__)
