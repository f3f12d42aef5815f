#!/usr/bin/env python3
"""Helpers for rollout-blast.sh (standard library only, loopback only, bounded in time).

  rollout_blast.py backend NAME PORT [--fail-at EPOCH --fail-percent N --first-failure FILE]
                                     [--fail-random P --seed S] [--lifetime SECONDS]
      A keep-alive HTTP/1.1 backend answering 200 "NAME"; from wall-clock time EPOCH on it
      answers exactly N percent of requests (evenly spread) with 500, and writes the time of
      its first 500 to FILE. With --fail-random it answers each request with 500 with
      probability P percent (P may be fractional, e.g. 0.5), independently, from seed S. It
      exits by itself after SECONDS (default 300).
  rollout_blast.py load URL RATE SECONDS CONNS OUT [--until ADMIN_URL]
      Sends RATE requests a second for SECONDS over CONNS keep-alive connections, paced on a
      fixed schedule (a slow answer does not lower the rate of the other connections); writes
      one line per request to OUT: "<scheduled epoch> <status> <lag s>" (status 0: no answer).
      With --until, it also polls ADMIN_URL (a GET /rollouts/ROUTE) twice a second and stops
      early once the rollout is no longer progressing; the last answer is written to OUT.json.
  rollout_blast.py report FIRST_FAILURE_FILE JOURNAL LOAD_OUT
      Prints the time from the canary's first failure to its weight 0 and the failed requests.
"""
import asyncio
import json
import random
import sys
import time


def backend(name, port, fail_at=None, fail_percent=0, first_failure=None, fail_random=None,
            seed=0, lifetime=300):
    state = {"n": 0, "first": None}
    rng = random.Random(seed)
    ok = f"HTTP/1.1 200 OK\r\ncontent-length: {len(name) + 1}\r\nx-backend: {name}\r\n\r\n{name}\n".encode()
    bad = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 7\r\n\r\nfailed\n"

    def answer():
        if fail_random is not None:
            return bad if rng.random() * 100 < fail_random else ok
        if fail_at is None or time.time() < fail_at:
            return ok
        n = state["n"]
        state["n"] += 1
        if (n + 1) * fail_percent // 100 > n * fail_percent // 100:
            if state["first"] is None:
                state["first"] = time.time()
                if first_failure:
                    with open(first_failure, "w") as f:
                        f.write(repr(state["first"]))
            return bad
        return ok

    async def conn(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(answer())
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(conn, "127.0.0.1", port, backlog=1024)
        async with server:
            # Bounded even if the script driving it dies.
            try:
                await asyncio.wait_for(server.serve_forever(), lifetime)
            except asyncio.TimeoutError:
                pass

    asyncio.run(main())


async def get_json(url):
    """GET a loopback admin URL; the parsed JSON body, or None."""
    host_port, path = url.split("//", 1)[1].split("/", 1)
    host, port = host_port.rsplit(":", 1)
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /{path} HTTP/1.1\r\nhost: {host_port}\r\nconnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return json.loads(data.split(b"\r\n\r\n", 1)[1])
    except Exception:
        return None


def load(url, rate, seconds, conns, out, until=None):
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    request = f"GET / HTTP/1.1\r\nhost: {host_port}\r\n\r\n".encode()
    results = []
    start = time.time() + 0.2
    interval = conns / rate
    stop = {"at": start + seconds, "last": None}

    async def one(i):
        reader = writer = None
        k = 0
        while True:
            at = start + (i / conns) * interval + k * interval
            if at >= stop["at"]:
                break
            k += 1
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(0.0, time.time() - at)
            status = 0
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
            except Exception:
                if writer is not None:
                    writer.close()
                reader = writer = None
            results.append((at, status, lag))

    async def watch():
        while until and time.time() < stop["at"]:
            await asyncio.sleep(0.5)
            v = await get_json(until)
            if v is not None:
                stop["last"] = v
                if v.get("state") not in ("pending", "progressing"):
                    stop["at"] = time.time()

    async def main():
        await asyncio.gather(watch(), *(one(i) for i in range(conns)))

    asyncio.run(main())
    with open(out, "w") as f:
        for at, status, lag in sorted(results):
            f.write(f"{at:.6f} {status} {lag:.6f}\n")
    if until:
        with open(out + ".json", "w") as f:
            json.dump(stop["last"], f)


def report(first_failure_file, journal, load_out):
    try:
        first = float(open(first_failure_file).read())
    except OSError:
        print("the canary never failed: was it given traffic?")
        return 1
    rolled = None
    for line in open(journal):
        e = json.loads(line)
        if e["to"]["state"] in ("rolled-back", "aborted") and e["time_ms"] / 1000 >= first - 1:
            rolled = e
            break
    sent = [line.split() for line in open(load_out)]
    total = len(sent)
    failed = [(float(at), int(s)) for at, s, _ in sent if int(s) != 200]
    lags = sorted(float(lag) for _, _, lag in sent)
    p99_lag = lags[int(len(lags) * 0.99)] * 1000 if lags else 0
    print(f"requests sent: {total}, not 200: {len(failed)}, client send lag p99 {p99_lag:.1f} ms "
          "(large: the client could not keep the rate)")
    if rolled is None:
        print("the canary was never rolled back")
        return 1
    at = rolled["time_ms"] / 1000
    print(f"canary weight 0 {(at - first) * 1000:.0f} ms after its first failure")
    print(f"failed client requests (blast radius): {len(failed)}, "
          f"{sum(1 for t, _ in failed if t < at)} of them sent before the rollback")
    print(f"reason: {rolled['reason']}")
    print(f"weights after: {rolled['weights']}")
    return 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "backend":
        opts = dict(zip(args[2::2], args[3::2]))
        backend(
            args[0],
            int(args[1]),
            float(opts["--fail-at"]) if "--fail-at" in opts else None,
            int(opts.get("--fail-percent", 0)),
            opts.get("--first-failure"),
            float(opts["--fail-random"]) if "--fail-random" in opts else None,
            int(opts.get("--seed", 0)),
            float(opts.get("--lifetime", 300)),
        )
    elif cmd == "load":
        opts = dict(zip(args[5::2], args[6::2]))
        load(args[0], float(args[1]), float(args[2]), int(args[3]), args[4], opts.get("--until"))
    elif cmd == "report":
        sys.exit(report(*args))
    else:
        sys.exit(__doc__)
