#!/usr/bin/env python3
"""HTTP/2 cleartext server with prior knowledge (python3-h2), for curl --http2-prior-knowledge.

  h2server.py IP PORT POD

Every request (any path) -> 200 {"pod": POD, "got_header": <x-virtual-env or null>, "stream": id,
"body": <bytes of request body>}. GET /big?n=N answers N bytes (for flow-control tests). Paths
for the endpoint's upstream semantics (their answers add "conn": the connection's number):
  /conn         answered at once
  /slow?ms=N    answered after N ms
  /goaway       a graceful GOAWAY (NO_ERROR, last-stream-id = the highest stream seen) goes out
                first, then the answer; the streams it covers are still answered, then the
                connection closes
  /push         a PUSH_PROMISE (the endpoint disabled push: a protocol error of this server),
                then the answer
  /refuse-once?k=KEY   the first request of KEY in this server's life: a GOAWAY whose
                last-stream-id is below this stream (not processed: RFC 9113 6.8), and no
                answer; later ones of KEY are answered (the earlier streams of that connection
                are still answered, then it closes)
  /refuse-always       every time as the first time above
One thread per connection; sockets time out.
"""
import json
import os
import signal
import socket
import sys
import hashlib
import itertools
import threading
import time

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import GoAwayFrame, PushPromiseFrame

POD = "?"
CONNS = itertools.count(1)
REFUSED = set()
REFUSED_LOCK = threading.Lock()


def refuses(path):
    if path.startswith("/refuse-always"):
        return True
    if not path.startswith("/refuse-once"):
        return False
    with REFUSED_LOCK:
        if path in REFUSED:
            return False
        REFUSED.add(path)
        return True


def serve(sock):
    sock.settimeout(0.05)
    cid = next(CONNS)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    reqs, bodies, pending, delayed = {}, {}, {}, {}
    state = {"goaway": False, "open": 0, "max_sid": 0}

    def answer(sid):
        h = reqs.pop(sid)
        path = h.get(":path", "/")
        if path.startswith("/slow?ms="):
            delayed[sid] = (time.monotonic() + int(path.split("=", 1)[1]) / 1000.0, h)
            return
        answer_now(sid, h)

    def answer_now(sid, h):
        path = h.get(":path", "/")
        if path == "/goaway":
            # raw: python3-h2 sends nothing on a connection after its own GOAWAY
            sock.sendall(conn.data_to_send() + GoAwayFrame(0, last_stream_id=state["max_sid"], error_code=0).serialize())
            state["goaway"] = True
        if path == "/push":
            pp = PushPromiseFrame(sid, promised_stream_id=2, flags=["END_HEADERS"])
            pp.data = conn.encoder.encode([(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                                          (":path", "/pushed")])
            sock.sendall(conn.data_to_send() + pp.serialize())
        if path.startswith("/big?n="):
            pending[sid] = b"y" * int(path.split("=", 1)[1])
            conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(pending[sid])))])
        else:
            body = bodies.pop(sid, b"")
            a = {"pod": POD, "got_header": h.get("x-virtual-env"), "stream": sid, "body": len(body),
                 "sha": hashlib.sha256(body).hexdigest()}
            if path.split("?")[0] in ("/conn", "/slow", "/goaway", "/push", "/refuse-once"):
                a["conn"] = cid
            b = (json.dumps(a) + "\n").encode()
            conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                    ("content-length", str(len(b)))])
            conn.send_data(sid, b, end_stream=True)

    def push_pending():
        for sid in list(pending):
            data = pending[sid]
            while data:
                n = min(len(data), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                conn.send_data(sid, data[:n], end_stream=(n == len(data)))
                data = data[n:]
            if data:
                pending[sid] = data
            else:
                del pending[sid]

    idle_until = time.monotonic() + 60
    while time.monotonic() < idle_until:
        for sid in [d for d in delayed if delayed[d][0] <= time.monotonic()]:
            answer_now(sid, delayed.pop(sid)[1])
        try:
            data = sock.recv(65536)
        except socket.timeout:
            data = None
        if data == b"":
            return
        if data:
            idle_until = time.monotonic() + 60
        for ev in conn.receive_data(data or b""):
            if isinstance(ev, h2.events.RequestReceived):
                h = {(k.decode() if isinstance(k, bytes) else k):
                     (v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers}
                if refuses(h.get(":path", "/")):
                    # raw, as for /goaway; this stream is above the last-stream-id: never answered
                    sock.sendall(conn.data_to_send() + GoAwayFrame(
                        0, last_stream_id=max(0, ev.stream_id - 2), error_code=0).serialize())
                    state["goaway"] = True
                    continue
                state["max_sid"] = max(state["max_sid"], ev.stream_id)
                reqs[ev.stream_id] = h
                if ev.stream_ended:
                    answer(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_ended and ev.stream_id in reqs:
                    answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id in reqs:
                    answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                pending.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                return
        push_pending()
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        if state["goaway"] and not reqs and not delayed and not pending:
            time.sleep(0.2)  # the last answer on its way, then the close that follows a GOAWAY
            return


def handle(sock):
    try:
        serve(sock)
    except Exception as e:  # noqa: BLE001
        sys.stderr.write("h2server: %s: %s\n" % (type(e).__name__, e))
    finally:
        sock.close()


def main():
    global POD
    if len(sys.argv) != 4:
        sys.exit("usage: h2server.py IP PORT POD")
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
