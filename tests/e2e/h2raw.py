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
  h2raw.py --to IP:PORT refuse --env E --key K
      /slow?ms=1000, then POST /refuse-once?k=K with a 12000-byte body (the server's GOAWAY
      leaves it unprocessed: the endpoint sends it again), then POST /refuse-always (refused
      every time: the endpoint gives up)
  h2raw.py --to IP:PORT silent --hold S [--send TEXT]
      connects, sends TEXT (default nothing: a silent client), then waits up to S seconds;
      reports whether and when the endpoint closed, and what it sent
  h2raw.py --to IP:PORT upgrade --env E --body N [--chunked]
      an HTTP/1.1 POST with Upgrade: h2c and a body of N bytes (Content-Length, or chunked);
      after a 101, the HTTP/2 preface: stream 1 is the answer to the POST
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

    def send(self, path, env, body=b""):
        sid = self.c.get_next_available_stream_id()
        h = headers(path, env)
        if body:
            h[0] = (":method", "POST")
            h.append(("content-length", str(len(body))))
        self.c.send_headers(sid, h, end_stream=not body)
        if body:
            self.c.send_data(sid, body, end_stream=True)
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


def refuse(a):
    t = Streams(a.to)
    slow = t.send("/slow?ms=1000", a.env)
    once = t.send("/refuse-once?k=" + a.key, a.env, body=b"r" * 12000)
    t.wait([once, slow])
    t.wait([t.send("/refuse-always", a.env, body=b"a" * 100)])
    return t.report()


def silent(a):
    host, port = a.to.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), 5)
    t0 = time.monotonic()
    got, closed = b"", False
    if a.send:
        try:
            s.sendall(a.send.encode().decode("unicode_escape").encode("latin-1"))
        except OSError:  # closed under it already
            pass
    while time.monotonic() - t0 < a.hold:
        s.settimeout(max(0.01, a.hold - (time.monotonic() - t0)))
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not d:
            closed = True
            break
        got += d
    out = {"closed": closed, "after": round(time.monotonic() - t0, 3), "got": got.decode(errors="replace")}
    s.close()
    return out


def upgrade(a):
    import base64
    host, port = a.to.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), 5)
    s.settimeout(10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = c.initiate_upgrade_connection()
    if isinstance(settings, bytes):
        settings = settings.decode()
    body = bytes((i * 7) % 251 for i in range(a.body))
    head = ["POST /up HTTP/1.1", "Host: %s" % a.to, "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
            "HTTP2-Settings: %s" % settings]
    if a.env != "-":
        head.append("X-Virtual-Env: %s" % a.env)
    if a.chunked:
        head.append("Transfer-Encoding: chunked")
        payload = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    else:
        head.append("Content-Length: %d" % len(body))
        payload = body
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    first, _, rest = buf.partition(b"\r\n\r\n")
    status = int(first.split(b" ", 2)[1]) if first.startswith(b"HTTP/1.1 ") else 0
    out = {"http1_status": status}
    if status != 101:
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                rest += d
        except OSError:
            pass
        out["http1_body"] = rest.decode(errors="replace")
        return out
    s.sendall(c.data_to_send())
    data = rest
    rbody = b""
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end and "done" not in out:
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                out["status"] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                rbody += ev.data
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 1:
                out["done"] = True
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == 1:
                out["reset"] = int(ev.error_code)
                out["done"] = True
        o = c.data_to_send()
        if o:
            s.sendall(o)
        if "done" in out:
            break
        data = s.recv(65536)
        if not data:
            break
    try:
        out["body"] = json.loads(rbody)
    except ValueError:
        out["body"] = rbody.decode(errors="replace")
    s.close()
    return out


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
    for m in ("goaway", "push", "refuse"):
        f = sub.add_parser(m)
        f.add_argument("--env", default="dev.proj1")
        if m == "refuse":
            f.add_argument("--key", required=True)
    f = sub.add_parser("silent")
    f.add_argument("--hold", type=float, default=10)
    f.add_argument("--send", default="")
    f = sub.add_parser("upgrade")
    f.add_argument("--env", default="dev.proj1")
    f.add_argument("--body", type=int, default=1000)
    f.add_argument("--chunked", action="store_true")
    a = p.parse_args()
    print(json.dumps({"flood": flood, "frames": frames, "goaway": goaway, "push": push, "refuse": refuse,
                      "silent": silent, "upgrade": upgrade}[a.cmd](a)))


if __name__ == "__main__":
    main()
