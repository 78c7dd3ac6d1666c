#!/usr/bin/env python3
"""Middle tier on Python threads: http.server.ThreadingHTTPServer (HTTP/1.1 keep-alive; the
thread that reads a request also makes its outbound call), outbound calls through a shared
pool of keep-alive http.client connections (a connection made by one thread is reused by
another).

  threads_tier.py IP PORT TO MODE POD

Same contract as go_tier.go: GET /healthz -> "ok"; GET / -> GET http://TO/ (MODE "fwd":
forwarding the incoming X-Virtual-Env header, "plain": not), answers
{"tier", "got_header", "backend", "backend_got_header", "backend_peer"} (502 + "error" on failure).
"""
import http.client
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Pool:
    """Idle keep-alive connections to one host, shared by all threads (at most 8 kept)."""

    def __init__(self, host, port, keep=8):
        self.host, self.port, self.keep = host, port, keep
        self.idle = []
        self.lock = threading.Lock()

    def get(self):
        with self.lock:
            if self.idle:
                return self.idle.pop()
        return http.client.HTTPConnection(self.host, self.port, timeout=5)

    def put(self, c):
        with self.lock:
            if len(self.idle) < self.keep:
                self.idle.append(c)
                return
        c.close()


def main():
    if len(sys.argv) != 6:
        sys.exit("usage: threads_tier.py IP PORT TO fwd|plain POD")
    ip, port, to, mode, pod = sys.argv[1:6]
    host, _, tport = to.rpartition(":")
    pool = Pool(host, int(tport))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def _reply(self, code, obj):
            body = (json.dumps(obj) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/healthz":
                body = b"ok\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            inenv = self.headers.get("X-Virtual-Env")
            out = {"tier": pod, "got_header": inenv}
            headers = {"X-Virtual-Env": inenv} if mode == "fwd" and inenv is not None else {}
            c = pool.get()
            try:
                c.request("GET", "/", headers=headers)
                r = c.getresponse()
                ans = json.loads(r.read())
            except Exception as e:  # noqa: BLE001
                c.close()
                out["error"] = "%s: %s" % (type(e).__name__, e)
                self._reply(502, out)
                return
            pool.put(c)
            out["backend"] = ans.get("pod")
            out["backend_got_header"] = ans.get("got_header")
            out["backend_peer"] = ans.get("peer")  # the tier as its backend saw it
            self._reply(200, out)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

    srv = Server((ip, int(port)), Handler)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    srv.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
