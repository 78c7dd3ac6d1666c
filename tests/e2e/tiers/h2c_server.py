#!/usr/bin/env python3
"""An HTTP/2 cleartext server that accepts the HTTP/1.1 Upgrade to h2c (python3-h2).

  h2c_server.py IP PORT POD

nghttpd (nghttp2-server) speaks h2c only with prior knowledge: it answers an
`Upgrade: h2c` request with HTTP/2 frames right away, which curl rejects ("Received HTTP/0.9")
-- and Node's http2 module does not implement the upgrade either. So this small server does
it with the h2 state machine:

  - an HTTP/1.1 request with `Upgrade: h2c` and `HTTP2-Settings` -> "101 Switching Protocols",
    then HTTP/2 on the same connection; the upgrade request is stream 1 and is answered there;
  - every HTTP/2 request (any path) -> 200 {"pod": POD, "got_header": <x-virtual-env of that
    request or null>, "proto": "h2c", "stream": id};
  - any other HTTP/1.1 request (e.g. GET /healthz) -> 200 {"pod", "got_header",
    "proto": "http/1.1"} and the connection is closed.
One thread per connection; every socket has a timeout.
"""
import json
import os
import signal
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events

POD = "?"


def body_for(got, proto, stream=None):
    obj = {"pod": POD, "got_header": got, "proto": proto}
    if stream is not None:
        obj["stream"] = stream
    return (json.dumps(obj) + "\n").encode()


def answer(conn, sid, got):
    b = body_for(got, "h2c", sid)
    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                            ("content-length", str(len(b)))])
    conn.send_data(sid, b, end_stream=True)


def serve(sock):
    sock.settimeout(30)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d or len(buf) > 65536:
            return
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            hdrs[k.strip().lower()] = v.strip()
    got = hdrs.get("x-virtual-env")
    if hdrs.get("upgrade", "").lower() != "h2c" or "http2-settings" not in hdrs:
        b = body_for(got, "http/1.1")
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(b), b))
        return
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_upgrade_connection(hdrs["http2-settings"])
    answer(conn, 1, got)  # the upgrade request is stream 1 (half-closed by the client)
    sock.sendall(conn.data_to_send())
    data = rest
    while True:
        if data:
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    h = {k.decode() if isinstance(k, bytes) else k:
                         v.decode() if isinstance(v, bytes) else v for k, v in ev.headers}
                    answer(conn, ev.stream_id, h.get("x-virtual-env"))
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        data = sock.recv(65536)
        if not data:
            return


def handle(sock):
    try:
        serve(sock)
    except Exception as e:  # noqa: BLE001
        sys.stderr.write("h2c: %s: %s\n" % (type(e).__name__, e))
    finally:
        sock.close()


def main():
    global POD
    if len(sys.argv) != 4:
        sys.exit("usage: h2c_server.py IP PORT POD")
    ip, port, POD = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ls = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, port))
    ls.listen(64)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    while True:
        s, _ = ls.accept()
        threading.Thread(target=handle, args=(s,), daemon=True).start()


if __name__ == "__main__":
    main()
