#!/usr/bin/env python3
"""The application of a test "pod": an HTTP server (TCP) plus a UDP echo on IP:PORT.

  GET /                          -> {"pod": "ns/name", "env": "<label>"}
  GET /call?to=IP:PORT[&to=...]  -> calls the first target itself (GET /call?to=<rest>, or
                                    GET / when it is the last), and answers
                                    {"pod": ..., "env": ..., "hop": {"to": target, "ok": bool,
                                     "peername": ..., "errno": ...}, "next": <downstream JSON>}
  UDP datagram                   -> reply "ns/name" to the sender

Every JSON answer also carries "got_header" (the value of the env header this request arrived
with, or null) and "head" (the request head exactly as received: request line, header lines
and the empty line, as a latin-1 string), so tests can check what a hop received byte for
byte. A /call hop reports the request it sent as "sent" (latin-1).

Options (defaults = the plain behaviour above):
  --env-header NAME      the header reported as "got_header" (default X-Virtual-Env)
  --forward-header NAME  /call forwards the incoming NAME header (when present) on its own
                         outbound request, right after the Host header
  --keepalive            HTTP/1.1 keep-alive: no "Connection: close", one thread serves all
                         requests of a connection in turn (thread-per-connection)
  --single-thread        one thread (the main one) serves every connection in turn, like a
                         worker of a thread pool
  --echo                 no HTTP: a TCP echo server (each connection's bytes are sent back
                         unchanged) on IP:PORT; UDP as above
  GET /multi?to=T1&to=T2..      -> GET / to each target in turn from the same thread:
                                    {..., "calls": [{"to", "ok", "errno", "pod"}...]}
  GET /echo?to=IP:PORT&p=B64&p=.. -> sends each payload (urlsafe base64) on one connection to
                                    an echo server, reads it back: {..., "hop": {"ok",
                                    "peername", "sockname", "rounds": [...]}}
  GET /call?...&split=10,40  this hop (and every later hop) sends its outbound request in
                         pieces cut at these byte offsets, one send() each (TCP_NODELAY,
                         50 ms apart): separate segments
  A request body (Content-Length or chunked) is read and dropped, so keep-alive requests with
  bodies work.

The downstream call is made from this process, so it is steered by this pod's cgroup:
a chain A -> B -> C shows which variant answered each hop. Used only with loopback or
test-netns addresses.
"""
import argparse
import base64
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podclient  # noqa: E402

POD = "?"
ENV = ""
ENV_HEADER = "X-Virtual-Env"
FORWARD_HEADER = None
KEEPALIVE = False


class RecordingReader:
    """Wraps the handler's rfile: remembers the bytes returned by readline() (the request
    line and the header lines), so the head can be reported exactly as received."""

    def __init__(self, f):
        self._f = f
        self.buf = bytearray()

    def readline(self, *a):
        line = self._f.readline(*a)
        self.buf += line
        return line

    def read(self, *a):
        return self._f.read(*a)

    def __getattr__(self, name):
        return getattr(self._f, name)


class Handler(BaseHTTPRequestHandler):
    server_version = "envsteer-podserver/1"
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def setup(self):
        super().setup()
        self.rfile = RecordingReader(self.rfile)

    def handle_one_request(self):
        self.rfile.buf = bytearray()
        super().handle_one_request()

    def _reply(self, code, obj):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if not KEEPALIVE:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _drain_body(self):
        """Read (and drop) a request body framed by Content-Length or chunked, so the next
        request on a keep-alive connection starts where it should."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if te.endswith("chunked"):
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return
                self.rfile.read(size)
                self.rfile.readline(65537)
        n = self.headers.get("Content-Length")
        if n and n.strip().isdigit():
            self.rfile.read(int(n))

    def do_GET(self):
        url = urlsplit(self.path)
        base = {"pod": POD, "env": ENV, "got_header": self.headers.get(ENV_HEADER),
                "head": bytes(self.rfile.buf).decode("latin-1"),
                "peer": podclient.fmt_addr(self.client_address)}
        self._drain_body()
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
            extra = []
            if FORWARD_HEADER and self.headers.get(FORWARD_HEADER) is not None:
                extra.append((FORWARD_HEADER, self.headers.get(FORWARD_HEADER)))
            split = parse_qs(url.query).get("split", [""])[0]
            if split and rest:
                path += "&split=" + split
            cuts = [int(x) for x in split.split(",") if x.strip().isdigit()]
            r = podclient.http_get(first, path, timeout=4.0, extra_headers=extra,
                                   split=cuts)
            hop = {"to": first, "ok": bool(r.get("ok"))}
            for k in ("peername", "errno", "error", "status", "sent"):
                if k in r:
                    hop[k] = r[k]
            self._reply(200, {**base, "hop": hop, "next": r.get("answer")})
            return
        if url.path == "/multi":
            # several outbound calls (GET /) one after the other, from this same thread
            calls = []
            for t in parse_qs(url.query).get("to", [])[:8]:
                r = podclient.http_get(t, "/", timeout=4.0)
                ans = r.get("answer")
                calls.append({"to": t, "ok": bool(r.get("ok")), "errno": r.get("errno"),
                              "pod": ans.get("pod") if isinstance(ans, dict) else None})
            self._reply(200, {**base, "calls": calls})
            return
        if url.path == "/echo":
            q = parse_qs(url.query)
            target = (q.get("to") or [None])[0]
            if not target:
                self._reply(400, {**base, "error": "no target"})
                return
            payloads = [base64.urlsafe_b64decode(p) for p in q.get("p", [])]
            r = podclient.echo_session(target, payloads, timeout=4.0)
            self._reply(200, {**base, "hop": {"to": target, **r}})
            return
        self._reply(404, {**base, "error": "not found"})


def make_http_server(host, port, single_thread=False, mapped=False):
    """mapped: an IPv4 host served on an AF_INET6 socket as ::ffff:a.b.c.d (a JVM's default)."""
    if mapped and ":" not in host:
        host = "::ffff:" + host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(HTTPServer if single_thread else ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 512

    return Server((host, port), Handler)


def make_echo_server(host, port):
    """A threaded TCP echo server: every byte received is sent back unchanged."""
    import socketserver

    class EchoHandler(socketserver.BaseRequestHandler):
        def handle(self):
            # the client's address, so a test can tell which echo pod it reached
            sys.stderr.write("echo: connection from %s\n" % podclient.fmt_addr(self.client_address))
            sys.stderr.flush()
            self.request.settimeout(30)
            while True:
                try:
                    data = self.request.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.request.sendall(data)

    class Server(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

    return Server((host, port), EchoHandler)


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
    global POD, ENV, ENV_HEADER, FORWARD_HEADER, KEEPALIVE
    ap = argparse.ArgumentParser()
    ap.add_argument("--pod", required=True, help="ns/name")
    ap.add_argument("--env", default="")
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready-file")
    ap.add_argument("--env-header", default="X-Virtual-Env")
    ap.add_argument("--forward-header")
    ap.add_argument("--keepalive", action="store_true")
    ap.add_argument("--echo", action="store_true")
    ap.add_argument("--single-thread", action="store_true")
    ap.add_argument("--v4-mapped", action="store_true",
                    help="serve an IPv4 address on an AF_INET6 socket, as ::ffff:a.b.c.d")
    ap.add_argument("--also-ip", action="append", default=[],
                    help="serve on this address too (e.g. the pod's IPv6 address)")
    args = ap.parse_args()
    POD, ENV = args.pod, args.env
    ENV_HEADER, FORWARD_HEADER, KEEPALIVE = args.env_header, args.forward_header, args.keepalive
    if KEEPALIVE:
        Handler.protocol_version = "HTTP/1.1"

    stop = threading.Event()
    servers = []
    for ip in [args.ip] + args.also_ip:
        if args.echo:
            servers.append(make_echo_server(ip, args.port))
        else:
            servers.append(make_http_server(ip, args.port, args.single_thread, args.v4_mapped))
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        usock = socket.socket(family, socket.SOCK_DGRAM)
        usock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        usock.bind((ip, args.port))
        usock.settimeout(0.5)
        threading.Thread(target=udp_echo, args=(usock, stop), daemon=True).start()
    httpd = servers[0]
    for extra in servers[1:]:
        threading.Thread(target=extra.serve_forever, kwargs={"poll_interval": 0.5},
                         daemon=True).start()

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
