#!/usr/bin/env python3
"""A raw HTTP/2 client (python3-h2) for the endpoint's bounds and connection-level frames.
Prints one JSON object.

  h2raw.py --to IP:PORT flood --streams N --envs dev.proj1,dev.proj2 --size BYTES --hold S
      opens N streams (GET /big?n=BYTES, envs in turn) and reads nothing for S seconds (a
      client that never reads), then counts what came: streams refused, bytes received
  h2raw.py --to IP:PORT frames --env E
      PING (its ACK), a request answered, then GOAWAY from the client: the endpoint closes
  h2raw.py --to IP:PORT goaway --env E
      /slow?ms=1500 and /goaway on one connection (the server's graceful GOAWAY covers both),
      then /conn once /goaway is answered, while /slow is still in flight
  h2raw.py --to IP:PORT push --env E
      /push (the server sends a PUSH_PROMISE), then /conn on the same connection
Streams are reported as {"status", "body" (JSON when it parses), "reset" (error code)}.
"""
import argparse
import json
import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def connect(to, window=65535):
    host, port = to.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), 5)
    s.settimeout(5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window, h2.settings.SettingCodes.ENABLE_PUSH: 0})
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def headers(path, env):
    h = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
    if env and env != "-":
        h.append(("x-virtual-env", env))
    return h


def flood(a):
    s, c = connect(a.to, window=65535)
    envs = a.envs.split(",")
    opened = 0
    for i in range(a.streams):
        sid = c.get_next_available_stream_id()
        try:
            c.send_headers(sid, headers("/big?n=%d" % a.size, envs[i % len(envs)]), end_stream=True)
            opened += 1
        except h2.exceptions.TooManyStreamsError:
            break
    s.sendall(c.data_to_send())
    time.sleep(a.hold)  # read nothing: the endpoint must not buffer without bound
    refused, got, ended = 0, 0, 0
    s.settimeout(2)
    t_end = time.monotonic() + 3
    while time.monotonic() < t_end:
        try:
            d = s.recv(1 << 20)
        except socket.timeout:
            break
        if not d:
            break
        for ev in c.receive_data(d):
            if isinstance(ev, h2.events.StreamReset) and ev.error_code == 7:  # REFUSED_STREAM
                refused += 1
            elif isinstance(ev, h2.events.DataReceived):
                got += ev.flow_controlled_length
            elif isinstance(ev, h2.events.StreamEnded):
                ended += 1
        out = c.data_to_send()
        if out:
            s.sendall(out)
    s.close()
    return {"opened": opened, "refused": refused, "bytes": got, "ended": ended,
            "peer_max_streams": c.remote_settings.max_concurrent_streams}


def frames(a):
    s, c = connect(a.to)
    out = {}
    c.ping(b"envsteer")
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers("/", a.env), end_stream=True)
    s.sendall(c.data_to_send())
    body = b""
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end and ("pong" not in out or "answer" not in out):
        d = s.recv(65536)
        if not d:
            break
        for ev in c.receive_data(d):
            if isinstance(ev, h2.events.PingAckReceived):
                out["pong"] = ev.ping_data.decode()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                out["settings"] = {str(int(k)): v.new_value for k, v in ev.changed_settings.items()}
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                out["answer"] = json.loads(body)
        o = c.data_to_send()
        if o:
            s.sendall(o)
    c.close_connection()
    s.sendall(c.data_to_send())
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 5:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            closed = True
            break
    out["closed_after_goaway"] = closed
    s.close()
    return out


class Streams:
    """Streams of one connection: send, then wait for them to end."""

    def __init__(self, to):
        self.s, self.c = connect(to)
        self.st = {}

    def send(self, path, env):
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, headers(path, env), end_stream=True)
        self.s.sendall(self.c.data_to_send())
        self.st[sid] = {"path": path, "body": b""}
        return sid

    def wait(self, sids, timeout=15):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end and not all("done" in self.st[i] for i in sids):
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                continue
            if not d:
                break
            for ev in self.c.receive_data(d):
                x = self.st.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived) and x is not None:
                    x["status"] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if x is not None:
                        x["body"] += ev.data
                elif isinstance(ev, h2.events.StreamEnded) and x is not None:
                    x["done"] = time.monotonic()
                elif isinstance(ev, h2.events.StreamReset) and x is not None:
                    x["reset"] = int(ev.error_code)
                    x["done"] = time.monotonic()
            o = self.c.data_to_send()
            if o:
                self.s.sendall(o)

    def report(self):
        out = {}
        for sid, x in self.st.items():
            r = {k: v for k, v in x.items() if k not in ("body", "done")}
            r["done"] = "done" in x
            try:
                r["body"] = json.loads(x["body"])
            except ValueError:
                r["body"] = x["body"].decode(errors="replace")
            out[x["path"]] = r
        order = sorted(self.st, key=lambda i: self.st[i].get("done", 1e18))
        out["order"] = [self.st[i]["path"] for i in order]
        return out


def goaway(a):
    t = Streams(a.to)
    slow = t.send("/slow?ms=1500", a.env)
    g = t.send("/goaway", a.env)
    t.wait([g])
    t.wait([t.send("/conn", a.env)])
    t.wait([slow])
    return t.report()


def push(a):
    t = Streams(a.to)
    t.wait([t.send("/push", a.env)])
    t.wait([t.send("/conn", a.env)])
    return t.report()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--to", required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--streams", type=int, default=200)
    f.add_argument("--envs", default="dev.proj1,dev.proj2,-")
    f.add_argument("--size", type=int, default=4 << 20)
    f.add_argument("--hold", type=float, default=3)
    f = sub.add_parser("frames")
    f.add_argument("--env", default="dev.proj1")
    for m in ("goaway", "push"):
        f = sub.add_parser(m)
        f.add_argument("--env", default="dev.proj1")
    a = p.parse_args()
    print(json.dumps({"flood": flood, "frames": frames, "goaway": goaway, "push": push}[a.cmd](a)))


if __name__ == "__main__":
    main()
