#!/usr/bin/env python3
"""A keep-alive HTTP/1.1 test server for per-request steering (one thread per connection).

  GET  /            -> {"pod": "ns/name", "got_header": <X-Virtual-Env or null>, "conn": <id>}
  GET  /big?n=N     -> N bytes of es_pattern(pod, N), header X-Pod
  POST /echo        -> the request body (Content-Length or chunked) back, header X-Pod
  GET  /close       -> {"pod": ...} with "Connection: close", then the server closes
  GET  /eof?n=N     -> N pattern bytes framed by closing the connection (no length)
  GET  /reset       -> the connection is reset (SO_LINGER 0) without an answer
  GET  /chunked     -> the GET / answer in two chunks (Transfer-Encoding: chunked)
  GET  /hang        -> the request is read, then the server closes without an answer
  GET  /cut?n=N     -> Content-Length: N, then N/2 bytes and the server closes
  GET  /delay?s=S   -> the GET / answer after S seconds
  GET  /silent      -> the request is read and never answered; the connection stays open
  POST /slowpost    -> the body is read 2 KB every 2 s (a slow reader), never answered
  ...?close=1       -> (/, /chunked) after the answer the server closes without saying so
                       (no "Connection: close": as an idle timeout or a pod going away would)
  Expect: 100-continue is answered with "100 Continue" before the body is read.

Every answer carries X-Pod: ns/name. "conn" numbers the server-side connections, so a test
can tell whether two requests arrived on one upstream connection.
"""
import argparse
import itertools
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

POD = "?"
CONN = itertools.count(1)


def pattern(pod, n):
    """Deterministic bytes that name the pod: a client checks every byte."""
    unit = ("<%s>" % pod).encode() + bytes(range(48, 58))
    reps = n // len(unit) + 1
    return (unit * reps)[:n]


def read_head(f):
    lines = []
    while True:
        line = f.readline(65537)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue
            return lines
        lines.append(line.decode("latin-1").rstrip("\r\n"))


def read_body(f, headers, sock):
    if headers.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(f.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += f.read(size)
            f.readline()
    n = int(headers.get("content-length", "0") or 0)
    return f.read(n) if n else b""


def answer(sock, code, body, ctype="application/json", close=False, extra=""):
    head = ("HTTP/1.1 %d OK\r\nX-Pod: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n"
            % (code, POD, ctype, len(body), "Connection: close\r\n" if close else "", extra))
    sock.sendall(head.encode() + body)


def serve(sock):
    conn = next(CONN)
    f = sock.makefile("rb")
    try:
        while True:
            lines = read_head(f)
            if lines is None:
                return
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for l in lines[1:]:
                k, _, v = l.partition(":")
                headers[k.strip().lower()] = v.strip()
            path, _, query = target.partition("?")
            if path == "/slowpost":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                while f.read(2048):
                    time.sleep(2)
                return
            body = read_body(f, headers, sock)
            q = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if path == "/big":
                answer(sock, 200, pattern(POD, int(q.get("n", "0"))), "application/octet-stream")
            elif path == "/echo":
                answer(sock, 200, body, "application/octet-stream")
            elif path == "/close":
                answer(sock, 200, json.dumps({"pod": POD, "conn": conn}).encode(), close=True)
                return
            elif path == "/eof":
                sock.sendall(("HTTP/1.1 200 OK\r\nX-Pod: %s\r\nConnection: close\r\n\r\n" % POD).encode()
                             + pattern(POD, int(q.get("n", "0"))))
                return
            elif path == "/reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            elif path == "/hang":
                return
            elif path == "/silent":
                while sock.recv(65536):
                    pass
                return
            elif path == "/delay":
                time.sleep(float(q.get("s", "1")))
                answer(sock, 200, json.dumps({"pod": POD, "got_header": headers.get("x-virtual-env"),
                                              "conn": conn, "method": method, "path": path}).encode())
            elif path == "/cut":
                n = int(q.get("n", "0"))
                sock.sendall(("HTTP/1.1 200 OK\r\nX-Pod: %s\r\nContent-Length: %d\r\n\r\n" % (POD, n)).encode()
                             + pattern(POD, n // 2))
                return
            elif path == "/chunked":
                body = json.dumps({"pod": POD, "got_header": headers.get("x-virtual-env"), "conn": conn,
                                   "method": method, "path": path}).encode()
                half = len(body) // 2
                sock.sendall(("HTTP/1.1 200 OK\r\nX-Pod: %s\r\nContent-Type: application/json\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n" % POD).encode()
                             + b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n"
                             % (half, body[:half], len(body) - half, body[half:]))
                if q.get("close") == "1":
                    return
            else:
                answer(sock, 200, json.dumps({"pod": POD, "got_header": headers.get("x-virtual-env"),
                                              "conn": conn, "method": method, "path": path}).encode())
                if q.get("close") == "1":
                    return
    except (OSError, ValueError):
        return
    finally:
        try:
            f.close()
            sock.close()
        except OSError:
            pass


def main():
    global POD
    ap = argparse.ArgumentParser()
    ap.add_argument("--pod", required=True)
    ap.add_argument("--env", default="")
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready-file")
    a, _ = ap.parse_known_args()
    POD = a.pod
    fam = socket.AF_INET6 if ":" in a.ip else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.ip, a.port))
    ls.listen(512)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if a.ready_file:
        open(a.ready_file, "w").close()
    while True:
        s, _ = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(s,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
