#!/usr/bin/env python3
"""gRPC server for the HTTP/2 per-stream tests (python3-grpcio, generic handlers, raw bytes).

  grpcserver.py IP PORT POD [NEXT]

Every answer names the pod. Methods of service envsteer.H2 (requests/answers are bytes):
  Echo      unary: answer = JSON head line {"pod","env"(x-virtual-env metadata)} + "\\n" + request
  Down      server streaming: request JSON {"n", "size", "delay_ms"}; n answers of `size` bytes
            (each: JSON head line + filler), delay_ms apart
  Up        client streaming: answer JSON {"pod","env","count","bytes","sha256"} of what arrived
  Bidi      bidirectional: every request echoed as in Echo
  Fail      unary: aborts with the status code and message given as JSON {"code","message"}, and
            trailing metadata x-detail: <message>
  Sleep     unary: sleeps up to JSON {"ms"} (checking for cancellation); answers {"pod","slept"}
  Stats     unary: {"pod", "cancelled": calls of Sleep that saw their cancellation}
  Fwd       unary (with NEXT, a VIP:PORT): a middle tier; calls NEXT's Echo over ONE channel
            opened at start (one HTTP/2 connection for every caller), forwarding the caller's
            x-virtual-env metadata; answers {"tier": POD, "env", "next": <NEXT's head line>}
"""
import hashlib
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

POD = "?"
CANCELLED = [0]
LOCK = threading.Lock()


def env_of(context):
    return dict(context.invocation_metadata()).get("x-virtual-env")


def head(context, **extra):
    d = {"pod": POD, "env": env_of(context), "peer": context.peer()}
    d.update(extra)
    return json.dumps(d).encode() + b"\n"


def echo(request, context):
    return head(context) + request


def down(request, context):
    req = json.loads(request)
    for i in range(req["n"]):
        h = head(context, i=i)
        yield h + b"x" * max(0, req["size"] - len(h))
        if req.get("delay_ms"):
            time.sleep(req["delay_ms"] / 1000.0)


def up(request_iterator, context):
    h = hashlib.sha256()
    n = b = 0
    for r in request_iterator:
        n += 1
        b += len(r)
        h.update(r)
    return json.dumps({"pod": POD, "env": env_of(context), "count": n, "bytes": b,
                       "sha256": h.hexdigest()}).encode()


def bidi(request_iterator, context):
    for r in request_iterator:
        yield head(context) + r


def fail(request, context):
    req = json.loads(request)
    context.set_trailing_metadata((("x-detail", req["message"]),))
    context.abort(grpc.StatusCode[req["code"]], req["message"])


def sleep(request, context):
    req = json.loads(request)
    t0 = time.monotonic()
    while time.monotonic() - t0 < req["ms"] / 1000.0:
        if not context.is_active():
            with LOCK:
                CANCELLED[0] += 1
            return b""
        time.sleep(0.02)
    return json.dumps({"pod": POD, "slept": req["ms"]}).encode()


def stats(request, context):
    with LOCK:
        return json.dumps({"pod": POD, "cancelled": CANCELLED[0]}).encode()


NEXT = [None]


def fwd(request, context):
    env = env_of(context)
    r = NEXT[0](request, metadata=(("x-virtual-env", env),) if env else None, timeout=10)
    return json.dumps({"tier": POD, "env": env, "next": json.loads(r.partition(b"\n")[0])}).encode()


def main():
    global POD
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: grpcserver.py IP PORT POD [NEXT]")
    ip, port, POD = sys.argv[1:4]
    if len(sys.argv) == 5:
        NEXT[0] = grpc.insecure_channel(sys.argv[4]).unary_unary("/envsteer.H2/Echo")
    h = grpc.method_handlers_generic_handler("envsteer.H2", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Down": grpc.unary_stream_rpc_method_handler(down),
        "Up": grpc.stream_unary_rpc_method_handler(up),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Stats": grpc.unary_unary_rpc_method_handler(stats),
        "Fwd": grpc.unary_unary_rpc_method_handler(fwd),
    })
    big = 64 * 1024 * 1024
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), handlers=[h],
                         options=[("grpc.max_receive_message_length", big),
                                  ("grpc.max_send_message_length", big)])
    if server.add_insecure_port("%s:%s" % (ip, port)) == 0:
        sys.exit("cannot listen on %s:%s" % (ip, port))
    server.start()
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
