#!/usr/bin/env python3
"""Sends raw bytes on one TCP connection and reads HTTP/1.1 responses back (test client).

  rawclient.py --to IP:PORT --send B64 [--send B64 ...] --responses N [--gap-ms 50]

Each --send is one send() (TCP_NODELAY, --gap-ms apart). Reads N responses framed by
Content-Length (or chunked), then waits 0.5 s for anything more. Prints one JSON line:
{"responses": [{"status", "pod" (X-Pod), "body"}], "extra": <bytes after them>,
"send_error" (when a send failed), "error": <errno name or null>}. Loopback / test-netns addresses only; bounded by --timeout.
"""
import argparse
import base64
import errno
import json
import socket
import time


class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError()
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self):
        status = self.line().decode("latin-1")
        headers = {}
        while True:
            l = self.line()
            if not l:
                break
            k, _, v = l.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = self.take(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                n = int(self.line().split(b";")[0], 16)
                if n == 0:
                    while self.line():
                        pass
                    break
                body += self.take(n)
                self.take(2)
        else:
            body = b""
        code = int(status.split(" ")[1]) if " " in status else 0
        if code == 100:
            return self.response()
        return {"status": code, "pod": headers.get("x-pod"), "body": body.decode("latin-1")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--send", action="append", default=[])
    ap.add_argument("--responses", type=int, required=True)
    ap.add_argument("--gap-ms", type=float, default=50)
    ap.add_argument("--timeout", type=float, default=10)
    a = ap.parse_args()
    host, port = a.to.rsplit(":", 1)
    out = {"responses": [], "extra": "", "error": None}
    s = socket.create_connection((host, int(port)), timeout=a.timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(a.timeout)
    r = Reader(s)
    try:
        try:
            for i, b in enumerate(a.send):
                if i:
                    time.sleep(a.gap_ms / 1000.0)
                s.sendall(base64.b64decode(b))
        except OSError as e:  # a refused send: what was sent before may still be answered
            out["send_error"] = errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)
        for _ in range(a.responses):
            out["responses"].append(r.response())
        s.settimeout(0.5)
        try:
            r.fill()
        except (socket.timeout, EOFError):
            pass
        out["extra"] = r.buf.decode("latin-1")
    except OSError as e:
        out["error"] = errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)
    except EOFError:
        out["error"] = "EOF"
    finally:
        s.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
