#!/usr/bin/env python3
"""End-to-end check of floor on loopback: a real backend, floor, raw-socket clients. Asserts on
what the client and the backend saw: head rewriting, pipelining, Content-Length and chunked
bodies both ways, close-delimited responses, HEAD/204, Connection: close, upstream keep-alive
reuse, the retry on a pooled connection the backend closed, and 400 for malformed requests.

    python3 load-tests/floor/smoke.py /work/floor-target/release/floor
"""
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN = []  # (path, headers dict lower-cased, body) per request the backend got
PORTS = set()  # backend-side peer ports: one per upstream connection floor opened


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def body(self):
        if self.headers.get("transfer-encoding", "").lower().endswith("chunked"):
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def reply(self, body, extra=()):
        self.send_response(200)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_one(self):
        PORTS.add(self.client_address[1])
        body = self.body() if self.command == "POST" else b""
        SEEN.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        p = self.path
        if p == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
        elif p == "/close":
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b"until close")
            self.close_connection = True
        elif p == "/204":
            self.send_response(204)
            self.end_headers()
        elif p == "/vanish":
            # A keep-alive response, then the backend drops the connection anyway: the next
            # request that picks it from floor's pool finds it dead.
            self.reply(b"ok")
            self.close_connection = True
        elif p == "/echo":
            self.reply(body)
        else:
            self.reply(b"hello", [("connection", "keep-alive"), ("keep-alive", "timeout=5")])

    do_GET = do_POST = do_HEAD = handle_one


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def fill(self):
        got = self.s.recv(65536)
        self.buf += got
        return got

    def line(self):
        while b"\r\n" not in self.buf:
            if not self.fill():
                raise EOFError
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def take(self, n):
        while len(self.buf) < n:
            if not self.fill():
                raise EOFError
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head=False):
        status = int(self.line().split()[1])
        headers = {}
        while (line := self.line()) != b"":
            k, v = line.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if head or status < 200 or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            raw = b""
            while True:
                size_line = self.line()
                raw += size_line + b"\r\n"
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (t := self.line()) != b"":
                        raw += t + b"\r\n"
                    return status, headers, raw + b"\r\n"
                raw += self.take(size + 2)
        if "content-length" in headers:
            return status, headers, self.take(int(headers["content-length"]))
        while self.fill():
            pass
        out, self.buf = self.buf, b""
        return status, headers, out

    def closed(self):
        try:
            return self.buf == b"" and self.s.recv(1) == b""
        except ConnectionResetError:
            return True


def check(cond, what):
    if not cond:
        sys.exit("smoke FAILED: " + what)
    print("ok  " + what)


def main():
    floor = sys.argv[1]
    bport, fport = free_port(), free_port()
    server = ThreadingHTTPServer(("127.0.0.1", bport), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen([floor, f"127.0.0.1:{fport}", f"127.0.0.1:{bport}"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", fport), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        run(fport)
    finally:
        proc.terminate()
        proc.wait()
        server.shutdown()


def run(port):
    c = Client(port)
    c.send(b"GET /h HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
           b"Keep-Alive: 5\r\nUpgrade: h2c\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n")
    status, headers, body = c.response()
    path, seen, _ = SEEN[-1]
    check(status == 200 and body == b"hello", "GET relayed")
    check(seen.get("host") == "bench" and seen.get("accept") == "*/*", "host and end-to-end headers kept")
    check(not {"connection", "keep-alive", "x-secret", "upgrade"} & seen.keys(),
          "hop-by-hop and Connection-listed request headers dropped")
    check(seen.get("x-forwarded-for") == "1.2.3.4, 127.0.0.1", "x-forwarded-for appended")
    check("connection" not in headers and "keep-alive" not in headers,
          "hop-by-hop response headers dropped")

    before = len(PORTS)
    for i in range(20):
        c.send(b"GET /n HTTP/1.1\r\nhost: b\r\n\r\n")
        check(c.response()[2] == b"hello", f"sequential request {i}") if i == 19 else c.response()
    check(len(PORTS) == before, "sequential requests reuse the pooled backend connection")

    c.send(b"GET /a HTTP/1.1\r\nhost: b\r\n\r\nGET /chunked HTTP/1.1\r\nhost: b\r\n\r\n"
           b"HEAD /c HTTP/1.1\r\nhost: b\r\n\r\nGET /204 HTTP/1.1\r\nhost: b\r\n\r\n"
           b"POST /echo HTTP/1.1\r\nhost: b\r\ncontent-length: 4\r\n\r\nbodyGET /d HTTP/1.1\r\nhost: b\r\n\r\n")
    r = [c.response(), c.response(), c.response(head=True), c.response(), c.response(), c.response()]
    check([x[0] for x in r] == [200, 200, 200, 204, 200, 200], "six pipelined requests answered in order")
    check(r[1][2] == b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
          "chunked response passed through to its end, trailer included")
    check(r[2][1].get("content-length") == "5" and r[3][2] == b"", "HEAD and 204 carry no body")
    check(r[4][2] == b"body" and r[5][2] == b"hello", "pipelined POST body and the request after it")

    c.send(b"POST /echo HTTP/1.1\r\nhost: b\r\ncontent-length: 11\r\n\r\nhel")
    time.sleep(0.05)
    c.send(b"lo ")
    time.sleep(0.05)
    c.send(b"world")
    check(c.response()[2] == b"hello world", "Content-Length request body in three reads")
    c.send(b"POST /echo HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    time.sleep(0.05)
    c.send(b"2;e=1\r\nde\r\n0\r\n\r\n")
    check(c.response()[2] == b"abcde" and SEEN[-1][1].get("transfer-encoding") == "chunked",
          "chunked request body forwarded with its framing")

    c.send(b"POST /echo HTTP/1.1\r\nhost: b\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
    check(c.response()[0] == 100, "100 Continue answered before the body")
    c.send(b"hi")
    r = c.response()
    check(r[2] == b"hi" and "expect" not in SEEN[-1][1], "body after 100 Continue")

    c.send(b"GET /vanish HTTP/1.1\r\nhost: b\r\n\r\n")
    c.response()
    time.sleep(0.1)
    n, conns = len(SEEN), len(PORTS)
    c.send(b"GET /after HTTP/1.1\r\nhost: b\r\n\r\n")
    check(c.response()[2] == b"hello" and len(SEEN) == n + 1 and len(PORTS) == conns + 1,
          "a pooled connection the backend closed is retried once on a fresh one")

    c.send(b"GET /close HTTP/1.1\r\nhost: b\r\n\r\n")
    status, headers, body = c.response()
    check(body == b"until close" and headers.get("connection") == "close" and c.closed(),
          "close-delimited response relayed, client connection closed after it")

    c = Client(port)
    c.send(b"GET /x HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
    status, headers, body = c.response()
    check(headers.get("connection") == "close" and c.closed(), "Connection: close from the client honoured")

    c = Client(port)
    c.send(b"GET /x HTTP/1.0\r\n\r\n")
    status, headers, body = c.response()
    check(body == b"hello" and c.closed(), "HTTP/1.0 request answered, then closed")

    for bad in [b"GET /bad HTTP/1.1\r\nho st: b\r\n\r\n",
                b"POST /bad HTTP/1.1\r\nhost: b\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                b"GET /bad HTTP/1.1\r\n\r\n"]:
        c = Client(port)
        c.send(bad)
        status = c.response()[0]
        check(status == 400 and c.closed(), f"400 for {bad[:40]!r}")
    c = Client(port)
    c.send(b"GET /big HTTP/1.1\r\nhost: b\r\nx: " + b"a" * 20000 + b"\r\n\r\n")
    check(c.response()[0] == 431, "431 for a head larger than the buffer")
    check(not [s for s in SEEN if s[0] in ("/bad", "/big")], "no malformed request reached the backend")


if __name__ == "__main__":
    main()
