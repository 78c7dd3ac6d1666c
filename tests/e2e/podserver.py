#!/usr/bin/env python3
"""The application of a test "pod": an HTTP server (TCP) plus a UDP echo on IP:PORT.

  GET /                          -> {"pod": "ns/name", "env": "<label>"}
  GET /call?to=IP:PORT[&to=...]  -> calls the first target itself (GET /call?to=<rest>, or
                                    GET / when it is the last), and answers
                                    {"pod": ..., "env": ..., "hop": {"to": target, "ok": bool,
                                     "peername": ..., "errno": ...}, "next": <downstream JSON>}
  UDP datagram                   -> reply "ns/name" to the sender

The downstream call is made from this process, so it is steered by this pod's cgroup:
a chain A -> B -> C shows which variant answered each hop. Used only with loopback or
test-netns addresses.
"""
import argparse
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podclient  # noqa: E402

POD = "?"
ENV = ""


class Handler(BaseHTTPRequestHandler):
    server_version = "envsteer-podserver/1"
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def _reply(self, code, obj):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        base = {"pod": POD, "env": ENV}
        if url.path == "/":
            self._reply(200, base)
            return
        if url.path == "/call":
            targets = parse_qs(url.query).get("to", [])
            if not targets:
                self._reply(400, {**base, "error": "no target"})
                return
            first, rest = targets[0], targets[1:]
            path = "/call?" + "&".join("to=" + t for t in rest) if rest else "/"
            r = podclient.http_get(first, path, timeout=4.0)
            hop = {"to": first, "ok": bool(r.get("ok"))}
            for k in ("peername", "errno", "error", "status"):
                if k in r:
                    hop[k] = r[k]
            self._reply(200, {**base, "hop": hop, "next": r.get("answer")})
            return
        self._reply(404, {**base, "error": "not found"})


def make_http_server(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 512

    return Server((host, port), Handler)


def udp_echo(sock, stop):
    while not stop.is_set():
        try:
            data, src = sock.recvfrom(65536)
        except socket.timeout:
            continue
        except OSError:
            return
        try:
            sock.sendto(POD.encode(), src)
        except OSError:
            pass


def main():
    global POD, ENV
    ap = argparse.ArgumentParser()
    ap.add_argument("--pod", required=True, help="ns/name")
    ap.add_argument("--env", default="")
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready-file")
    args = ap.parse_args()
    POD, ENV = args.pod, args.env

    httpd = make_http_server(args.ip, args.port)
    family = socket.AF_INET6 if ":" in args.ip else socket.AF_INET
    usock = socket.socket(family, socket.SOCK_DGRAM)
    usock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    usock.bind((args.ip, args.port))
    usock.settimeout(0.5)
    stop = threading.Event()
    threading.Thread(target=udp_echo, args=(usock, stop), daemon=True).start()

    def on_term(signum, frame):
        stop.set()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(tmp, args.ready_file)
    httpd.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
