"""A real gRPC server (grpcio) for switchyard's tests, on 127.0.0.1 at a free port.

Usage: grpc_peer.py NAME       prints "PORT <n>" once serving, runs until killed.
       grpc_peer.py --call ADDR METHOD PAYLOAD TIMEOUT_S
                                a client: one unary call, prints "<STATUS_NAME> <reply or details>"

Service `test.Echo` (generic handlers: bytes in, bytes out, no protoc):
  Unary(payload)          -> b"NAME:" + payload, or, by payload:
                             b"status:N"  aborts with status N and a message
                             b"sleep:MS"  answers after MS ms (or the deadline), b"NAME:slept"
                             b"deadline"  answers with the time the call had left, in ms
  Stream(payload)         -> payload b"N": N messages b"NAME:i", then OK
                             b"N:status:C": N messages, then status C in the trailers
  Control(payload)        -> b"fail:C" makes every Unary call fail with C (0: stop failing),
                             b"health:SERVING|NOT_SERVING" sets the health service's answer
Also grpc.health.v1.Health (grpcio-health-checking), for "" and "test.Echo".
"""

import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

NAME = sys.argv[1].encode() if len(sys.argv) > 1 else b""
state = {"fail": 0}
lock = threading.Lock()
health_servicer = health.HealthServicer()


def unary(request, context):
    with lock:
        fail = state["fail"]
    if fail:
        context.abort(_code(fail), "told to fail")
    if request.startswith(b"status:"):
        code = int(request[len(b"status:"):])
        context.abort(_code(code), "asked for status %d" % code)
    if request.startswith(b"sleep:"):
        ms = int(request[len(b"sleep:"):])
        end = time.monotonic() + ms / 1000.0
        while time.monotonic() < end and context.is_active():
            time.sleep(0.005)
        return NAME + b":slept"
    if request == b"deadline":
        left = context.time_remaining()
        return b"%d" % (-1 if left is None else int(left * 1000))
    return NAME + b":" + request


def stream(request, context):
    parts = request.split(b":status:")
    for i in range(int(parts[0])):
        yield NAME + b":%d" % i
    if len(parts) > 1:
        context.abort(_code(int(parts[1])), "stream ended with status %s" % parts[1].decode())


def greet(requests, context):
    # Speaks first, before reading anything (a subscription, a chat), then echoes.
    yield NAME + b":hello"
    for r in requests:
        yield NAME + b":" + r


def control(request, context):
    if request.startswith(b"fail:"):
        with lock:
            state["fail"] = int(request[len(b"fail:"):])
    elif request.startswith(b"health:"):
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(request[len(b"health:"):].decode())
        health_servicer.set("", status)
        health_servicer.set("test.Echo", status)
    return b"ok"


def _code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c
    return grpc.StatusCode.UNKNOWN


def _ident(b):
    return b


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _ident, _ident),
        "Control": grpc.unary_unary_rpc_method_handler(control, _ident, _ident),
        "Greet": grpc.stream_stream_rpc_method_handler(greet, _ident, _ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("test.Echo", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    server.wait_for_termination()


def call(addr, method, payload, timeout):
    with grpc.insecure_channel(addr) as channel:
        stub = channel.unary_unary(method, request_serializer=_ident, response_deserializer=_ident)
        try:
            reply = stub(payload.encode(), timeout=float(timeout))
            print("OK %s" % reply.decode(), flush=True)
        except grpc.RpcError as e:
            print("%s %s" % (e.code().name, e.details()), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--call":
        call(*sys.argv[2:6])
    else:
        main()
