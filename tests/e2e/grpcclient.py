#!/usr/bin/env python3
"""gRPC client for the HTTP/2 per-stream tests (python3-grpcio); one channel (one HTTP/2
connection) per run; prints one JSON object. Every call has a deadline.

  grpcclient.py --to VIP:PORT mix --envs dev,dev.proj1,- --calls 40 --concurrency 8
      concurrent Echo calls on the one channel, envs in turn ("-": no metadata); random
      payloads; each answer: the pod, the env it saw, whether the payload came back byte-exact
  grpcclient.py --to VIP:PORT semantics --env dev.proj1
      unary, server/client/bidi streaming, a 5 MiB message each way, status + message +
      trailing metadata, a deadline, a cancellation (seen by the server), all with that env
  grpcclient.py --to VIP:PORT kill --env A --other B --marker FILE
      a slow server stream with env A (FILE is written when its first message arrived: the
      test then kills A's pod) while Echo calls with env B go on on the same channel
  grpcclient.py --to VIP:PORT loop --env E --seconds S
      Echo calls one after the other for S seconds (deadline 2 s each, waiting for the channel
      to be ready within it): each one's outcome
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import sys
import threading
import time

import grpc

BIG = 64 * 1024 * 1024


def md(env):
    return None if env in (None, "-") else (("x-virtual-env", env),)


def parse_head(b):
    line, _, rest = b.partition(b"\n")
    return json.loads(line), rest


def channel(to):
    # reconnect backoff at most 1 s (default 120 s): a test waits for a reconnection
    return grpc.insecure_channel(to, options=[("grpc.max_receive_message_length", BIG),
                                              ("grpc.max_send_message_length", BIG),
                                              ("grpc.enable_retries", 0),
                                              ("grpc.initial_reconnect_backoff_ms", 200),
                                              ("grpc.max_reconnect_backoff_ms", 1000)])


def m(ch, kind, name):
    f = {"uu": ch.unary_unary, "us": ch.unary_stream, "su": ch.stream_unary, "ss": ch.stream_stream}[kind]
    return f("/envsteer.H2/" + name)


def err(e):
    return {"code": e.code().name, "details": e.details()}


def mix(ch, a):
    envs = a.envs.split(",")
    rnd = random.Random(a.seed)
    echo = m(ch, "uu", a.method)
    jobs = []
    for i in range(a.calls):
        env = envs[i % len(envs)]
        jobs.append((env, rnd.randbytes(rnd.randint(1, a.max_size))))

    def one(job):
        env, payload = job
        try:
            r = echo(payload, metadata=md(env), timeout=a.timeout)
            if a.method == "Fwd":
                j = json.loads(r)
                return {"env": env, "tier": j["tier"], "pod": j["next"]["pod"], "seen": j["next"]["env"]}
            h, rest = parse_head(r)
            return {"env": env, "pod": h["pod"], "seen": h["env"], "exact": rest == payload, "peer": h.get("peer")}
        except grpc.RpcError as e:
            return {"env": env, "error": err(e)}
    with concurrent.futures.ThreadPoolExecutor(a.concurrency) as ex:
        res = list(ex.map(one, jobs))
    return {"answers": res}


def semantics(ch, a):
    env, out = a.env, {}
    meta = md(env)
    r = m(ch, "uu", "Echo")(b"hello", metadata=meta, timeout=a.timeout)
    h, rest = parse_head(r)
    out["unary"] = {"pod": h["pod"], "exact": rest == b"hello"}
    got = list(m(ch, "us", "Down")(json.dumps({"n": 5, "size": 1000}).encode(), metadata=meta, timeout=a.timeout))
    out["server_stream"] = {"pods": sorted({parse_head(x)[0]["pod"] for x in got}), "count": len(got),
                            "sizes": sorted({len(x) for x in got})}
    chunks = [os.urandom(1000 + i) for i in range(20)]
    r = json.loads(m(ch, "su", "Up")(iter(chunks), metadata=meta, timeout=a.timeout))
    out["client_stream"] = {"pod": r["pod"], "count": r["count"],
                            "exact": r["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()}
    got = list(m(ch, "ss", "Bidi")(iter(chunks), metadata=meta, timeout=a.timeout))
    out["bidi"] = {"pods": sorted({parse_head(x)[0]["pod"] for x in got}), "count": len(got),
                   "exact": [parse_head(x)[1] for x in got] == chunks}
    big = os.urandom(5 * 1024 * 1024 + 17)
    r = m(ch, "uu", "Echo")(big, metadata=meta, timeout=a.timeout * 3)
    h, rest = parse_head(r)
    out["big"] = {"pod": h["pod"], "exact": rest == big, "bytes": len(rest)}
    try:
        m(ch, "uu", "Fail").with_call(json.dumps({"code": "INVALID_ARGUMENT", "message": "boom: bad input"}).encode(),
                                      metadata=meta, timeout=a.timeout)
        out["status"] = {"error": "no error"}
    except grpc.RpcError as e:
        out["status"] = {"code": e.code().name, "details": e.details(),
                         "trailer": dict(e.trailing_metadata() or ()).get("x-detail")}
    def cancelled():
        return json.loads(m(ch, "uu", "Stats")(b"", metadata=meta, timeout=a.timeout))["cancelled"]

    def server_saw(before):
        deadline = time.monotonic() + 5
        after = before
        while time.monotonic() < deadline and after == before:
            time.sleep(0.1)
            after = cancelled()
        time.sleep(0.3)
        return cancelled() - before
    before = cancelled()
    t0 = time.monotonic()
    try:
        m(ch, "uu", "Sleep")(json.dumps({"ms": 3000}).encode(), metadata=meta, timeout=0.5)
        out["deadline"] = {"error": "no error"}
    except grpc.RpcError as e:
        out["deadline"] = {"code": e.code().name, "seconds": round(time.monotonic() - t0, 2)}
    out["deadline"]["server_saw"] = server_saw(before)
    before = cancelled()
    fut = m(ch, "uu", "Sleep").future(json.dumps({"ms": 5000}).encode(), metadata=meta, timeout=a.timeout)
    time.sleep(0.5)
    fut.cancel()
    out["cancel"] = {"client": fut.cancelled(), "server_saw": server_saw(before)}
    return out


def kill(ch, a):
    out = {"other": []}
    stop = threading.Event()

    def others():
        echo = m(ch, "uu", "Echo")
        while not stop.is_set():
            try:
                h, _ = parse_head(echo(b"x", metadata=md(a.other), timeout=a.timeout))
                out["other"].append({"pod": h["pod"]})
            except grpc.RpcError as e:
                out["other"].append({"error": err(e)})
            time.sleep(0.05)
    t = threading.Thread(target=others)
    t.start()
    got = []
    try:
        for x in m(ch, "us", "Down")(json.dumps({"n": 100, "size": 100, "delay_ms": 100}).encode(),
                                     metadata=md(a.env), timeout=a.timeout):
            got.append(parse_head(x)[0]["pod"])
            if len(got) == 1:
                with open(a.marker, "w") as f:
                    f.write("1")
        out["stream"] = {"messages": len(got), "pods": sorted(set(got)), "error": None}
    except grpc.RpcError as e:
        out["stream"] = {"messages": len(got), "pods": sorted(set(got)), "error": err(e)}
    time.sleep(1.0)  # the other env's calls go on after the failure
    stop.set()
    t.join()
    return out


def loop(ch, a):
    echo = m(ch, "uu", "Echo")
    res = []
    t_end = time.monotonic() + a.seconds
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        try:
            h, _ = parse_head(echo(b"x", metadata=md(a.env), timeout=2.0, wait_for_ready=True))
            res.append({"t": round(t0, 3), "pod": h["pod"], "took": round(time.monotonic() - t0, 3)})
        except grpc.RpcError as e:
            res.append({"t": round(t0, 3), "error": err(e), "took": round(time.monotonic() - t0, 3)})
            time.sleep(0.1)
        time.sleep(0.05)
    return {"calls": res}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--to", required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mix")
    s.add_argument("--envs", required=True)
    s.add_argument("--calls", type=int, default=40)
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--max-size", type=int, default=32768)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--method", default="Echo", help="Echo, or Fwd (through a middle tier)")
    s = sub.add_parser("semantics")
    s.add_argument("--env", required=True)
    s = sub.add_parser("kill")
    s.add_argument("--env", required=True)
    s.add_argument("--other", required=True)
    s.add_argument("--marker", required=True)
    s = sub.add_parser("loop")
    s.add_argument("--env", required=True)
    s.add_argument("--seconds", type=float, default=5)
    a = p.parse_args()
    ch = channel(a.to)
    out = {"mix": mix, "semantics": semantics, "kill": kill, "loop": loop}[a.cmd](ch, a)
    ch.close()
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # grpc's threads


if __name__ == "__main__":
    main()
