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
  podclient.py --to IP:PORT --session JSON         raw HTTP/1.x on ONE connection:
      JSON is a list of exchanges {"pieces": [base64...], "responses": n}; each piece is one
      send() (TCP_NODELAY, --gap seconds between pieces, default 0.05, so each leaves in its
      own segment), then n HTTP responses are read (framed by Content-Length):
      {"ok": bool, "peername": ..., "exchanges": [{"responses": [{"status", "answer"}...]}]}
      Several requests in one piece are pipelined; several exchanges form a keep-alive
      sequence. JSON may also be given as @FILE (also for --echo).
  podclient.py --to IP:PORT --echo JSON            non-HTTP bytes on ONE connection: JSON is a
      list of base64 payloads; each is sent and as many bytes read back:
      {"ok": bool, "peername": ..., "rounds": [{"sent": n, "received": m, "equal": bool}]}

Addresses: "127.96.0.1:80" or "[fd00:96::1]:80". Every network operation has a timeout,
and every loop is bounded in count and time. Only used with loopback / test-netns addresses.
"""
import argparse
import base64
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


def _recv_before(sock, deadline):
    """One recv() bounded by the deadline; b"" at the close."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("read timed out")
    sock.settimeout(remaining)
    return sock.recv(65536)


def _recv_all(sock, deadline, limit=1 << 20):
    chunks = []
    total = 0
    while total < limit:
        data = _recv_before(sock, deadline)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def _recv_one_response(sock, deadline):
    """The bytes of one response: up to the end of its Content-Length body, like HTTP
    libraries do even with "Connection: close" (else up to the close)."""
    buf = b""
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            for line in head.decode("latin-1").split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length" and len(rest) >= int(v.strip()):
                    return buf
        data = _recv_before(sock, deadline)
        if not data:
            return buf
        buf += data


def get_request(path, addr, extra_headers=()):
    """The bytes of the GET request http_get() sends (extra headers right after Host)."""
    extra = "".join("%s: %s\r\n" % (k, v) for k, v in extra_headers)
    return ("GET %s HTTP/1.1\r\nHost: %s\r\n%sUser-Agent: envsteer-e2e\r\n"
            "Connection: close\r\n\r\n" % (path, addr, extra)).encode("latin-1")


def send_pieces(sock, pieces, gap=0.05):
    """Each piece in its own send() (TCP_NODELAY, gap seconds apart): separate segments."""
    if len(pieces) > 1:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, piece in enumerate(pieces):
        if i and gap > 0:
            time.sleep(gap)
        sock.sendall(piece)


def http_get(addr, path="/", timeout=5.0, extra_headers=(), split=()):
    """One HTTP/1.0-style GET on a fresh connection (Connection: close).

    extra_headers: (name, value) pairs sent right after Host. split: byte offsets at which
    the request is cut into pieces, one send() each (separate segments). Returns a dict: {"ok": True, "status": int,
    "answer": parsed JSON or text, "peername": ..., "sockname": ..., "sent": request as
    latin-1} or {"ok": False, "errno": ..., "error": ...}.
    """
    family, host, port = parse_addr(addr)
    deadline = time.monotonic() + timeout
    sock = socket.socket(family, socket.SOCK_STREAM)
    stage = "connect"
    req = get_request(path, addr, extra_headers)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        peer = fmt_addr(sock.getpeername())
        local = fmt_addr(sock.getsockname())
        stage = "exchange"
        if split:
            cuts = [0] + sorted(c for c in split if 0 < c < len(req)) + [len(req)]
            send_pieces(sock, [req[a:b] for a, b in zip(cuts, cuts[1:]) if b > a])
        else:
            sock.sendall(req)
        raw = _recv_one_response(sock, deadline)
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
            "peername": peer, "sockname": local, "sent": req.decode("latin-1")}


def _read_response(sock, buf, deadline):
    """One HTTP response framed by Content-Length (or by close) from sock; buf holds bytes
    already read. Returns (response dict, remaining bytes)."""
    while b"\r\n\r\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("read timed out")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError(errno_mod.ECONNRESET, "closed before a response head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    if length is None:
        body = rest + _recv_all(sock, deadline)
        rest = b""
    else:
        while len(rest) < length:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("read timed out")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError(errno_mod.ECONNRESET, "closed inside a body")
            rest += data
        body, rest = rest[:length], rest[length:]
    text = body.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
    except ValueError:
        answer = text
    return {"status": status, "answer": answer}, rest


def http_session(addr, exchanges, timeout=5.0, gap=0.05):
    """Raw HTTP on one connection. exchanges: [{"pieces": [bytes...], "responses": n}];
    each piece is one send() (separate segments), then n responses are read."""
    family, host, port = parse_addr(addr)
    deadline = time.monotonic() + timeout
    sock = socket.socket(family, socket.SOCK_STREAM)
    res = {"ok": False, "exchanges": []}
    stage = "connect"
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        res["peername"] = fmt_addr(sock.getpeername())
        res["sockname"] = fmt_addr(sock.getsockname())
        stage = "exchange"
        buf = b""
        for ex in exchanges:
            send_pieces(sock, ex["pieces"], gap)
            got = []
            res["exchanges"].append({"responses": got})
            for _ in range(ex.get("responses", 1)):
                r, buf = _read_response(sock, buf, deadline)
                got.append(r)
        res["ok"] = True
        return res
    except (OSError, socket.timeout, ValueError, IndexError) as e:
        res.update(errno=errno_name(e), error=str(e), stage=stage)
        return res
    finally:
        sock.close()


def echo_session(addr, payloads, timeout=5.0):
    """Non-HTTP bytes on one connection: send each payload, read as many bytes back."""
    family, host, port = parse_addr(addr)
    deadline = time.monotonic() + timeout
    sock = socket.socket(family, socket.SOCK_STREAM)
    res = {"ok": False, "rounds": []}
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        res["peername"] = fmt_addr(sock.getpeername())
        res["sockname"] = fmt_addr(sock.getsockname())
        for p in payloads:
            sock.sendall(p)
            got = b""
            while len(got) < len(p):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("read timed out")
                sock.settimeout(remaining)
                data = sock.recv(65536)
                if not data:
                    break
                got += data
            res["rounds"].append({"sent": len(p), "received": len(got), "equal": got == p})
            if got != p:
                res["got_head"] = base64.b64encode(got[:200]).decode()
                return res
        res["ok"] = True
        return res
    except (OSError, socket.timeout) as e:
        res.update(errno=errno_name(e), error=str(e))
        return res
    finally:
        sock.close()


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


def _spec(arg):
    """A JSON argument, or "@path" of a file holding it (for specs too long for argv)."""
    if arg.startswith("@"):
        with open(arg[1:]) as f:
            return f.read()
    return arg


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
    ap.add_argument("--session", help="JSON list of {pieces: [base64], responses: n}")
    ap.add_argument("--gap", type=float, default=0.05, help="session: seconds between pieces")
    ap.add_argument("--echo", help="JSON list of base64 payloads (non-HTTP echo rounds)")
    args = ap.parse_args(argv)

    if args.loop < 0 or args.loop > 100000:
        ap.error("--loop must be in 0..100000")
    if args.loop:
        if args.ready_file:
            with open(args.ready_file, "w") as f:
                f.write("started\n")
        res = connect_loop(args.to, args.loop, args.duration, args.connect_only,
                           timeout=min(args.timeout, 2.0))
    elif args.session:
        exchanges = [{"pieces": [base64.b64decode(p) for p in ex["pieces"]],
                      "responses": int(ex.get("responses", 1))}
                     for ex in json.loads(_spec(args.session))]
        res = http_session(args.to, exchanges, args.timeout, args.gap)
    elif args.echo:
        res = echo_session(args.to, [base64.b64decode(p) for p in json.loads(_spec(args.echo))],
                           args.timeout)
    elif args.udp:
        res = udp_exchange(args.to, timeout=args.timeout, connected=args.connected)
    else:
        res = http_get(args.to, args.path, args.timeout)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
