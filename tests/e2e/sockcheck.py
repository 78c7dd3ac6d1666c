#!/usr/bin/env python3
"""Socket behaviour on a steered connection (one that sits in envsteer's sockhash).

Connects to ADDR, sends one HTTP request whose response the server sends back, and checks
ioctl(FIONREAD), poll(), epoll and close() the way an application relies on them. Prints
JSON. Used only with loopback addresses.
"""
import fcntl
import json
import select
import socket
import struct
import sys
import termios
import time


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    out = {}
    s = socket.create_connection((host, int(port)), timeout=5)
    s.setblocking(True)
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN)
    # nothing sent yet: nothing readable
    p = select.poll()
    p.register(s, select.POLLIN)
    out["poll_idle"] = len(p.poll(100))
    out["epoll_idle"] = len(ep.poll(0.1))
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    out["poll_ready"] = len(p.poll(3000))
    out["epoll_ready"] = len(ep.poll(3))
    time.sleep(0.3)  # let the whole response arrive
    avail = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    out["fionread"] = avail
    out["received"] = len(data)
    out["status_line"] = data.split(b"\r\n", 1)[0].decode("latin-1")
    out["peername"] = "%s:%d" % s.getpeername()[:2]
    ep.close()
    s.close()
    out["closed"] = s.fileno() == -1
    print(json.dumps(out))


if __name__ == "__main__":
    main()
