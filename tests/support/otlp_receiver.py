"""A real OTLP/HTTP trace receiver for tests: decodes every export with the official
opentelemetry-proto package (installed by scripts/test.sh) and prints what it decoded.

Usage: python3 otlp_receiver.py [--fail-first N] [--status CODE]

Listens on 127.0.0.1 on a free port and prints `port N` first. Then, one JSON object a line:
  {"post": {"status": S, "spans": N, "content_type": ...}}   for every POST it answered
  {"span": {...}}                                           for every span it decoded
  {"error": "..."}                                          for anything malformed
--fail-first N answers the first N POSTs with 503 and `Retry-After: 0` (a collector that is
briefly overloaded); --status CODE answers every POST with CODE (a collector that refuses).
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

LOCK = threading.Lock()
STATE = {"posts": 0}


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    return getattr(v, kind)


def attrs(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            emit({"error": "attribute %s appears twice" % kv.key})
        out[kv.key] = any_value(kv.value)
    return out


def span_json(resource, scope, s):
    return {
        "trace_id": s.trace_id.hex(),
        "span_id": s.span_id.hex(),
        "parent_span_id": s.parent_span_id.hex(),
        "trace_state": s.trace_state,
        "flags": s.flags,
        "name": s.name,
        "kind": trace_pb2.Span.SpanKind.Name(s.kind),
        "start": s.start_time_unix_nano,
        "end": s.end_time_unix_nano,
        "attributes": attrs(s.attributes),
        "status_code": trace_pb2.Status.StatusCode.Name(s.status.code),
        "status_message": s.status.message,
        "resource": resource,
        "scope": scope,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with LOCK:
            STATE["posts"] += 1
            n = STATE["posts"]
        status = 200
        if ARGS.status:
            status = ARGS.status
        elif n <= ARGS.fail_first:
            status = 503
        ctype = self.headers.get("Content-Type", "")
        if self.path != "/v1/traces":
            emit({"error": "POST to %s, not /v1/traces" % self.path})
        if ctype != "application/x-protobuf":
            emit({"error": "Content-Type %r" % ctype})
        req = trace_service_pb2.ExportTraceServiceRequest()
        spans = []
        try:
            req.ParseFromString(body)
            for rs in req.resource_spans:
                resource = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    scope = {"name": ss.scope.name, "version": ss.scope.version}
                    for s in ss.spans:
                        spans.append(span_json(resource, scope, s))
        except DecodeError as e:
            emit({"error": "not an ExportTraceServiceRequest: %s" % e})
            status = 400
        # Spans of a refused export are not taken: the sender will send them again.
        if status == 200:
            for s in spans:
                emit({"span": s})
        emit({"post": {"status": status, "spans": len(spans), "content_type": ctype,
                       "auth": self.headers.get("Authorization")}})
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(answer)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--status", type=int, default=0)
    ARGS = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    emit_port = "port %d\n" % server.server_address[1]
    sys.stdout.write(emit_port)
    sys.stdout.flush()
    server.serve_forever()
