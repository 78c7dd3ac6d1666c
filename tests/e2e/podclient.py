#!/usr/bin/env python3
"""A short-lived client that runs inside a "pod" (a cgroup) and reports what it saw.

It prints exactly one JSON object on stdout and exits 0 (even when the connection
failed: the failure is the observation), or exits 2 on bad usage.

  podclient.py --to IP:PORT [--path /]            one TCP HTTP GET
      {"ok": true, "answer": {...}, "peername": "ip:port", "sockname": "ip:port"}
      {"ok": false, "errno": "ECONNREFUSED", "error": "..."}
  podclient.py --to IP:PORT --udp                  unconnected sendto + recvfrom
      {"ok": true, "answer": "ns/pod", "from": "ip:port"}
  podclient.py --to IP:PORT --udp --connected      connect + send + recv + getpeername
  podclient.py --to IP:PORT --loop N --duration S  N sequential connects (each a GET /),
      paced over about S seconds:
      {"ok": bool, "attempts": N, "failures": F, "errors": {"ECONNREFUSED": 3},
       "pods": {"ns/pod": count}, "elapsed": seconds}
      --connect-only: connect()+close() only; "pods" stays empty.

Addresses: "127.96.0.1:80" or "[fd00:96::1]:80". Every network operation has a timeout,
and every loop is bounded in count and time. Only used with loopback / test-netns addresses.
"""
import argparse
import errno as errno_mod
import json
import socket
import sys
import time


def parse_addr(s):
    """'1.2.3.4:80' or '[::1]:80' -> (family, host, port)."""
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
        return socket.AF_INET6, host, int(port)
    host, _, port = s.rpartition(":")
    if ":" in host:
        raise ValueError("IPv6 addresses must be written as [addr]:port: " + s)
    return socket.AF_INET, host, int(port)


def fmt_addr(sa):
    """A socket address tuple -> 'ip:port' / '[ip]:port'."""
    host, port = sa[0], sa[1]
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def errno_name(exc):
    if isinstance(exc, socket.timeout):
        return "ETIMEDOUT"
    code = getattr(exc, "errno", None)
    if code is None:
        return type(exc).__name__
    return errno_mod.errorcode.get(code, str(code))


def _recv_all(sock, deadline, limit=1 << 20):
    chunks = []
    total = 0
    while total < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("read timed out")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def http_get(addr, path="/", timeout=5.0):
    """One HTTP/1.0-style GET on a fresh connection (Connection: close).

    Returns a dict: {"ok": True, "status": int, "answer": parsed JSON or text,
    "peername": ..., "sockname": ...} or {"ok": False, "errno": ..., "error": ...}.
    """
    family, host, port = parse_addr(addr)
    deadline = time.monotonic() + timeout
    sock = socket.socket(family, socket.SOCK_STREAM)
    stage = "connect"
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        peer = fmt_addr(sock.getpeername())
        local = fmt_addr(sock.getsockname())
        stage = "exchange"
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: envsteer-e2e\r\n"
               "Connection: close\r\n\r\n" % (path, addr)).encode()
        sock.sendall(req)
        raw = _recv_all(sock, deadline)
    except (OSError, socket.timeout) as e:
        return {"ok": False, "errno": errno_name(e), "error": str(e), "stage": stage}
    finally:
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return {"ok": False, "errno": "EPROTO", "error": "bad response: %r" % raw[:200],
                "peername": peer, "sockname": local}
    text = body.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
    except ValueError:
        answer = text
    return {"ok": 200 <= status < 300, "status": status, "answer": answer,
            "peername": peer, "sockname": local}


def udp_exchange(addr, payload=b"ping", timeout=3.0, connected=False):
    family, host, port = parse_addr(addr)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.settimeout(timeout)
        res = {}
        if connected:
            sock.connect((host, port))
            res["peername"] = fmt_addr(sock.getpeername())
            sock.send(payload)
            data = sock.recv(65536)
            res["from"] = res["peername"]
        else:
            sock.sendto(payload, (host, port))
            data, src = sock.recvfrom(65536)
            res["from"] = fmt_addr(src)
        res.update(ok=True, answer=data.decode("utf-8", "replace"))
        return res
    except (OSError, socket.timeout) as e:
        return {"ok": False, "errno": errno_name(e), "error": str(e)}
    finally:
        sock.close()


def connect_loop(addr, count, duration, connect_only=False, timeout=2.0, max_time=None):
    """count sequential connects paced over ~duration seconds; bounded by max_time."""
    family, host, port = parse_addr(addr)
    max_time = max_time if max_time is not None else duration * 4 + 20
    start = time.monotonic()
    interval = duration / count if count and duration > 0 else 0.0
    failures = 0
    errors = {}
    pods = {}
    first_failure = None
    attempts = 0
    for i in range(count):
        now = time.monotonic()
        if now - start > max_time:
            break
        target = start + i * interval
        if target > now:
            time.sleep(target - now)
        attempts += 1
        if connect_only:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect((host, port))
                r = {"ok": True}
            except (OSError, socket.timeout) as e:
                r = {"ok": False, "errno": errno_name(e), "error": str(e)}
            finally:
                sock.close()
        else:
            r = http_get(addr, "/", timeout)
        if r.get("ok"):
            ans = r.get("answer")
            if isinstance(ans, dict) and "pod" in ans:
                pods[ans["pod"]] = pods.get(ans["pod"], 0) + 1
        else:
            failures += 1
            name = r.get("errno", "?")
            errors[name] = errors.get(name, 0) + 1
            if first_failure is None:
                first_failure = {"index": i, "t": round(time.monotonic() - start, 3), **r}
    elapsed = time.monotonic() - start
    return {"ok": failures == 0 and attempts == count, "attempts": attempts,
            "failures": failures, "errors": errors, "pods": pods,
            "first_failure": first_failure, "elapsed": round(elapsed, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, help="IP:PORT or [IPv6]:PORT")
    ap.add_argument("--path", default="/")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--udp", action="store_true")
    ap.add_argument("--connected", action="store_true", help="UDP: use connect()+send()")
    ap.add_argument("--loop", type=int, default=0, help="number of connects (loop mode)")
    ap.add_argument("--duration", type=float, default=3.0, help="loop mode: pace over S s")
    ap.add_argument("--connect-only", action="store_true")
    ap.add_argument("--ready-file", help="loop mode: create this file once the loop starts")
    args = ap.parse_args(argv)

    if args.loop < 0 or args.loop > 100000:
        ap.error("--loop must be in 0..100000")
    if args.loop:
        if args.ready_file:
            with open(args.ready_file, "w") as f:
                f.write("started\n")
        res = connect_loop(args.to, args.loop, args.duration, args.connect_only,
                           timeout=min(args.timeout, 2.0))
    elif args.udp:
        res = udp_exchange(args.to, timeout=args.timeout, connected=args.connected)
    else:
        res = http_get(args.to, args.path, args.timeout)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
