#!/usr/bin/env python3
"""Concurrent keep-alive HTTP clients with random environments (run inside a client pod).

  load.py --to IP:PORT [--clients 12] [--seconds 4.5] [--envs dev,dev.proj1,dev.proj2,-]
          [--first ENV] [--max-requests N] [--timeout 10]

--first: one request with that env ("-": none) before the load, on its own connection,
answered before any other request is sent (e.g. the request that makes a bridge open its
channel). Then every client thread keeps one http.client connection (a new one only after an
error) and sends GET / with X-Virtual-Env: <random env> ("-" = no header) until --seconds
pass or --max-requests requests were sent in all.

Prints one JSON line: {"requests", "failed", "errors": [first 20],
"answers": [[env, tier, backend, got_header, backend_got_header, count]...],
"first": <the answer to --first>}; answers are the tier's JSON fields, grouped.
"""
import argparse
import collections
import http.client
import json
import random
import threading
import time


def one(c, env):
    hdrs = {} if env == "-" else {"X-Virtual-Env": env}
    c.request("GET", "/", headers=hdrs)
    r = c.getresponse()
    data = r.read()
    try:
        ans = json.loads(data)
    except ValueError:
        raise RuntimeError("status %d, not JSON: %r" % (r.status, data[:200]))
    if r.status != 200 or "error" in ans:
        raise RuntimeError("status %d: %s" % (r.status, ans.get("error")))
    return ans


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=4.5)
    ap.add_argument("--envs", default="dev,dev.proj1,dev.proj2,-")
    ap.add_argument("--first")
    ap.add_argument("--max-requests", type=int, default=200000)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()
    host, _, port = a.to.rpartition(":")
    port = int(port)
    envs = a.envs.split(",")
    lock = threading.Lock()
    st = {"requests": 0, "failed": 0, "errors": []}
    groups = collections.Counter()
    out = {}

    def record(env, ans):
        key = (env, ans.get("tier"), ans.get("backend"), ans.get("got_header"),
               ans.get("backend_got_header"))
        with lock:
            groups[key] += 1

    def fail(env, e):
        with lock:
            st["failed"] += 1
            if len(st["errors"]) < 20:
                st["errors"].append("%s: %s: %s" % (env, type(e).__name__, e))

    if a.first is not None:
        c = http.client.HTTPConnection(host, port, timeout=a.timeout)
        try:
            out["first"] = one(c, a.first)
            st["requests"] += 1
            record(a.first, out["first"])
        except Exception as e:  # noqa: BLE001
            st["requests"] += 1
            fail(a.first, e)
        c.close()

    deadline = time.monotonic() + a.seconds
    budget = [a.max_requests]

    def worker(seed):
        rnd = random.Random(seed)
        c = http.client.HTTPConnection(host, port, timeout=a.timeout)
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
                st["requests"] += 1
            env = rnd.choice(envs)
            try:
                record(env, one(c, env))
            except Exception as e:  # noqa: BLE001
                fail(env, e)
                c.close()
                c = http.client.HTTPConnection(host, port, timeout=a.timeout)
        c.close()

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(a.seconds + a.timeout + 5)
    with lock:
        out.update(st)
        out["answers"] = [list(k) + [n] for k, n in sorted(groups.items(), key=str)]
        out["unfinished"] = sum(t.is_alive() for t in ts)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
