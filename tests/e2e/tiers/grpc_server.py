#!/usr/bin/env python3
"""A gRPC server (python3-grpcio, generic handler: no protoc, raw bytes messages).

  grpc_server.py IP PORT POD

Unary method /envsteer.Who/Get answers the JSON bytes {"pod": POD, "got_header": <the
x-virtual-env metadata of the call or null>}.
"""
import json
import os
import signal
import sys
from concurrent import futures

import grpc


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: grpc_server.py IP PORT POD")
    ip, port, pod = sys.argv[1:4]

    def get(request, context):
        md = dict(context.invocation_metadata())
        return json.dumps({"pod": pod, "got_header": md.get("x-virtual-env")}).encode()

    handler = grpc.method_handlers_generic_handler(
        "envsteer.Who", {"Get": grpc.unary_unary_rpc_method_handler(get)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    if server.add_insecure_port("%s:%s" % (ip, port)) == 0:
        sys.exit("cannot listen on %s:%s" % (ip, port))
    server.start()
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
