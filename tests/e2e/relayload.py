#!/usr/bin/env python3
"""Clients for the relay's bound and isolation tests (test_relay.py). Prints one JSON line.

  --victim N      N requests, one new connection each (each takes the relay's slow path when
                  re-routed): {"seconds": [...], "pods": [...], "errors": [...]}
  --attack K      K connections, each a POST of --body bytes to --path, streamed in 64 KiB
                  sends for at most --seconds: {"conns": [{"sent", "error"}...]}
  --hold K        K connections, each one GET, answer read, then held open --seconds:
                  {"answered": n, "errors": [...]}
All bounded in time; only to the --to address (a service address of the test node).
"""
import argparse
import json
import socket
import threading
import time


def addr(to):
    host, _, port = to.rpartition(":")
    return host, int(port)


def get(to, env, path="/", timeout=5.0):
    s = socket.create_connection(addr(to), timeout=timeout)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: %s\r\n\r\n"
                   % (path, env)).encode())
        # framed by Content-Length: the connection is the client's own pod's, which stays
        # open when the re-routed answer's server closes its upstream
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(65536)
            if not d:
                raise OSError("closed before the answer's head")
            data += d
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError("bad answer %r" % data[:80])
        n = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                n = int(value)
        while len(body) < n:
            d = s.recv(65536)
            if not d:
                raise OSError("closed within the answer's body")
            body += d
        return json.loads(body[:n])
    finally:
        s.close()


def victim(a):
    out = {"seconds": [], "pods": [], "errors": []}
    deadline = time.monotonic() + a.seconds
    for _ in range(a.victim):
        if time.monotonic() > deadline:
            out["errors"].append("out of time")
            break
        t = time.monotonic()
        try:
            out["pods"].append(get(a.to, a.env, timeout=a.timeout)["pod"])
            out["seconds"].append(time.monotonic() - t)
        except (OSError, ValueError) as e:
            out["errors"].append("%s after %.2fs" % (e, time.monotonic() - t))
    return out


def attack_one(a, res):
    """Streams POSTs for --seconds, reconnecting after each failure (at most 200 connections)."""
    conns, errors, sent_max = 0, [], 0
    deadline = time.monotonic() + a.seconds
    chunk = b"x" * a.chunk
    while time.monotonic() < deadline and conns < 200:
        conns += 1
        sent = 0
        s = None
        try:
            s = socket.create_connection(addr(a.to), timeout=a.timeout)
            s.settimeout(1.0)
            s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: %s\r\nContent-Length: %d\r\n\r\n"
                       % (a.path, a.env, a.body)).encode())
            while sent < a.body and time.monotonic() < deadline:
                try:
                    sent += s.send(chunk)
                except socket.timeout:
                    continue  # back-pressure: the send waits
        except OSError as e:
            errors.append(e.errno)
            time.sleep(0.05)
        finally:
            sent_max = max(sent_max, sent)
            if s is not None:
                s.close()
    res.append({"conns": conns, "errors": errors[:20], "failed": len(errors), "sent_max": sent_max})


def attack(a):
    res = []
    ts = [threading.Thread(target=attack_one, args=(a, res)) for _ in range(a.attack)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(a.seconds + 10)
    return {"conns": res}


def hold(a):
    socks, errors, answered = [], [], 0
    for _ in range(a.hold):
        try:
            s = socket.create_connection(addr(a.to), timeout=a.timeout)
            s.sendall(("GET / HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: %s\r\n\r\n" % a.env).encode())
            d = s.recv(65536)
            if d.startswith(b"HTTP/1.1 200"):
                answered += 1
            else:
                errors.append("answer %r" % d[:40])
            socks.append(s)
        except OSError as e:
            errors.append(str(e))
    time.sleep(a.seconds)
    for s in socks:
        s.close()
    return {"answered": answered, "errors": errors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--env", required=True)
    ap.add_argument("--path", default="/slowpost")
    ap.add_argument("--victim", type=int)
    ap.add_argument("--attack", type=int)
    ap.add_argument("--hold", type=int)
    ap.add_argument("--body", type=int, default=64 << 20)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    if a.victim:
        print(json.dumps(victim(a)))
    elif a.attack:
        print(json.dumps(attack(a)))
    elif a.hold:
        print(json.dumps(hold(a)))


if __name__ == "__main__":
    main()
