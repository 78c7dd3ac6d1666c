#!/usr/bin/env python3
"""A deliberately *not* thread-per-request HTTP/1.1 server, for the thread-context tests.

Same start-up options as podserver.py (--pod --env --ip --port --ready-file); --mode picks how
it breaks the thread-per-request pattern. Every answer is JSON {"pod", "mode", "calls": [...]}
where each call is the downstream GET / answer ({"pod": ...}) of the service given by --to.

  interleave   one thread accepts two connections, reads the request of each, then serves
               the first (calls --to, answers), then the second: it read a request while it
               was serving another (an event loop's pattern)
  handoff      the main thread reads a request; a worker thread calls --to and writes the
               response (a request answered by another thread than its reader: Go, Netty)
  after        thread-per-connection, but the call to --to is made *after* the response was
               written; GET /last answers with what that late call got (work done after the
               request is not the request's)

Only loopback or test-netns addresses; every socket operation has a timeout.
"""
import argparse
import json
import socket
import threading


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return head.split("\r\n", 1)[0].split(" ")[1]


def call(to):
    host, port = to.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    return json.loads(body.decode())


def answer(conn, obj):
    body = json.dumps(obj).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pod", required=True)
    ap.add_argument("--env", default="")
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--mode", required=True, choices=["interleave", "handoff", "after"])
    ap.add_argument("--to", required=True)
    a = ap.parse_args()

    ls = socket.socket(socket.AF_INET6 if ":" in a.ip else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.ip, a.port))
    ls.listen(64)
    open(a.ready_file, "w").close()
    last = {}

    def reply(conn, calls):
        answer(conn, {"pod": a.pod, "mode": a.mode, "calls": calls})

    while True:
        if a.mode == "interleave":
            c1, _ = ls.accept()
            c2, _ = ls.accept()
            for c in (c1, c2):
                c.settimeout(10)
            read_request(c1)
            read_request(c2)
            for c in (c1, c2):
                reply(c, [call(a.to)])
        elif a.mode == "handoff":
            c, _ = ls.accept()
            c.settimeout(10)
            read_request(c)
            t = threading.Thread(target=lambda c=c: reply(c, [call(a.to)]))
            t.start()
            t.join()
        else:
            c, _ = ls.accept()
            c.settimeout(10)
            path = read_request(c)
            if path == "/last":
                reply(c, [last.get("call")])
                continue
            reply(c, [])
            last["call"] = call(a.to)


if __name__ == "__main__":
    main()
