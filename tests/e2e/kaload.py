#!/usr/bin/env python3
"""Keep-alive HTTP clients for the per-request steering tests (run inside a client pod).

  kaload.py --to IP:PORT --sequence ENV,ENV,..     one http.client connection, one GET /
                                                     per entry ("-" = no header); prints
                                                     {"answers": [{"env","pod","conn"}...],
                                                      "connects": n}
  kaload.py --to IP:PORT --load SPEC.json           SPEC: {"clients": 200, "seconds": 6,
                                                     "expect": {"ENV": ["ns/pod", ...]},
                                                     "big": [sizes], "post": [sizes]}
       every client thread keeps one connection and sends random requests (GET /, GET /big,
       POST /echo, with or without Expect: 100-continue, chunked or not) of random envs;
       every answer is checked: the pod is one the env resolves to, every byte is exact.
       Prints {"requests", "misrouted", "failed", "bytes", "errors": [...first 20]}.

Bounded: --load stops after "seconds"; every socket has a timeout.
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from kaserver import pattern  # noqa: E402


def sequence(host, port, envs, timeout):
    """Entries: ENV, ENV@/path, "-" (no header), or @wait:FILE (create FILE.reached, then wait up
    to 30 s for FILE: a test knows every answer before it has arrived). A failed request is
    recorded with its error; the next one uses a new connection."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    out = []
    connects = 0
    for entry in envs:
        if entry.startswith("@wait:"):
            open(entry[6:] + ".reached", "w").close()
            end = time.monotonic() + (3 if "short" in entry else 30)
            while not __import__("os").path.exists(entry[6:]) and time.monotonic() < end:
                time.sleep(0.02)
            continue
        env, _, path = entry.partition("@")
        if c.sock is None:
            connects += 1
        hdrs = {} if env == "-" else {"X-Virtual-Env": env}
        t0 = time.monotonic()
        try:
            c.request("GET", path or "/", headers=hdrs)
            r = c.getresponse()
            body = json.loads(r.read())
            out.append({"env": env, "pod": body["pod"], "conn": body["conn"], "got_header": body.get("got_header")})
            if r.getheader("Connection", "").lower() == "close":
                c.close()
        except Exception as e:  # noqa: BLE001
            out.append({"env": env, "error": "%s: %s" % (type(e).__name__, e),
                        "seconds": round(time.monotonic() - t0, 3)})
            c.close()
            c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.close()
    return {"answers": out, "connects": connects}


def load(host, port, spec, timeout):
    expect = {k: set(v) for k, v in spec["expect"].items()}
    envs = list(expect)
    deadline = time.monotonic() + float(spec.get("seconds", 5))
    lock = threading.Lock()
    st = {"requests": 0, "misrouted": 0, "failed": 0, "bytes": 0, "errors": [], "reconnects": 0}

    def note(kind, msg):
        with lock:
            st[kind] += 1
            if len(st["errors"]) < 20:
                st["errors"].append(msg)

    def worker(seed):
        rnd = random.Random(seed)
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        while time.monotonic() < deadline:
            env = rnd.choice(envs)
            hdrs = {} if env == "-" else {"X-Virtual-Env": env}
            kind = rnd.random()
            body = None
            try:
                if kind < 0.6:
                    c.request("GET", "/", headers=hdrs)
                elif kind < 0.8:
                    n = rnd.choice(spec.get("big", [100000]))
                    c.request("GET", "/big?n=%d" % n, headers=hdrs)
                else:
                    n = rnd.choice(spec.get("post", [10000]))
                    body = rnd.randbytes(n)
                    if rnd.random() < 0.3:
                        hdrs["Expect"] = "100-continue"
                    if rnd.random() < 0.3:
                        hdrs["Transfer-Encoding"] = "chunked"
                        c.request("POST", "/echo", body=iter([body[: n // 2], body[n // 2:]]), headers=hdrs,
                                  encode_chunked=True)
                    else:
                        c.request("POST", "/echo", body=body, headers=hdrs)
                r = c.getresponse()
                data = r.read()
                pod = r.getheader("X-Pod")
            except Exception as e:  # noqa: BLE001
                note("failed", "%s %s: %r" % (env, kind, e))
                c.close()
                c = http.client.HTTPConnection(host, port, timeout=timeout)
                with lock:
                    st["reconnects"] += 1
                continue
            with lock:
                st["requests"] += 1
                st["bytes"] += len(data)
            if pod not in expect[env]:
                note("misrouted", "env %s answered by %s" % (env, pod))
            elif kind < 0.6:
                if json.loads(data)["pod"] != pod:
                    note("failed", "body/header pod differ")
            elif kind < 0.8:
                if data != pattern(pod, n):
                    note("failed", "big response of %d bytes from %s differs (got %d)" % (n, pod, len(data)))
            elif data != body:
                note("failed", "echo of %d bytes differs (got %d)" % (n, len(data)))
        c.close()

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(int(spec.get("clients", 10)))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout + float(spec.get("seconds", 5)) + 30)
    return st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--sequence")
    ap.add_argument("--load")
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()
    host, _, port = a.to.rpartition(":")
    if a.sequence:
        res = sequence(host, int(port), a.sequence.split(","), a.timeout)
    else:
        with open(a.load) as f:
            res = load(host, int(port), json.load(f), a.timeout)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
