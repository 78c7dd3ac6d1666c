"""The thread context (issue 11): a thread's request environment is used only where envsteer
knows it - in pods that opt in (envsteer.io/thread-context: "on"), from the read of a request
until the thread answers it - and the kernel switches it off for a process it sees serving
interleaved requests. Every case here would have given a WRONG answer with a context that
outlives its request; each must give the request's own env or the caller pod's.

Node "tctx" (--default-env dev), namespace tc; service s 127.96.44.1:80 with pods s-dev,
s-proj1, s-proj2 (podserver.py). Middle pods (labelled dev, all annotated "on" except tpr-off),
each calling s:
    il   127.1.44.11  ctxserver.py --mode interleave  (reads two requests, then serves both)
    ho   127.1.44.12  ctxserver.py --mode handoff     (a worker thread answers)
    af   127.1.44.13  ctxserver.py --mode after       (calls s after answering)
    tpr  127.1.44.14  podserver.py --keepalive        (thread-per-connection: keeps the context)
    tpr-off 127.1.44.15 podserver.py, not annotated   (no context: falls back to its own env)
The test process (a host process: never steered) sends tagged requests straight to them.
"""
import json
import socket
import time

import pytest

import fixtures
import harness
from harness import http_request

NS = "tc"
S_VIP = "127.96.44.1"
PORT = 80
TP = 8080
ON = {"envsteer.io/thread-context": "on"}
REQUEST_CONTEXT = pytest.mark.kernel_feature("request_context")
pytestmark = REQUEST_CONTEXT
MIDDLE = {  # name: (ip, script, args, annotations)
    "il": ("127.1.44.11", "ctxserver.py", ["--mode", "interleave"], ON),
    "ho": ("127.1.44.12", "ctxserver.py", ["--mode", "handoff"], ON),
    "af": ("127.1.44.13", "ctxserver.py", ["--mode", "after"], ON),
    "tpr": ("127.1.44.14", None, ["--keepalive"], ON),
    "tpr-off": ("127.1.44.15", None, [], {}),
}


k = fixtures.keyer(NS)


@pytest.fixture(scope="module")
def tctx(e2e_prerequisites):
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    node = harness.Node("tctx", default_env="dev")
    try:
        node.add_service(NS, "s", S_VIP, PORT, TP, protocols=("TCP",))
        for name, ip, env in (("s-dev", "127.1.44.1", "dev"), ("s-proj1", "127.1.44.2", "dev.proj1"),
                              ("s-proj2", "127.1.44.3", "dev.proj2")):
            node.add_pod(NS, name, ip, app="s", env=env, port=TP)
        for name, (ip, _, _, ann) in MIDDLE.items():
            node.add_pod(NS, name, ip, app="mid", env="dev", port=TP, annotations=ann)
        node.write_manifests()
        for name in ("s-dev", "s-proj1", "s-proj2"):
            node.start_server(k(name))
        for name, (ip, script, args, _) in MIDDLE.items():
            if script:
                node.start_server(k(name), script=os.path.join(here, script),
                                  args=args + ["--to", "%s:%d" % (S_VIP, PORT)])
            else:
                node.start_server(k(name), args=args)
        node.start_agent()
        yield node
    finally:
        node.close()


def connect(ip):
    s = socket.create_connection((ip, TP), timeout=10)
    s.settimeout(10)
    return s


def read_response(s):
    """One HTTP/1.1 response with Content-Length from s; returns its JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed before a response head"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    n = [int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0]
    while len(rest) < n:
        chunk = s.recv(65536)
        assert chunk, "connection closed inside a body"
        rest += chunk
    return json.loads(rest[:n].decode()), rest[n:]


def tagged(path, env):
    return http_request(path, headers=[("X-Virtual-Env", env)] if env else [])


def pods_state(node):
    st = node.status_http()
    return {p["pod"]: p for p in st["pods"]}


def counter(node, name):
    return node.counters()[name]


def test_interleaving_process_is_switched_off_before_any_guess(tctx):
    """il reads a dev.proj1 request, then a dev.proj2 one, then serves both. A context that
    followed the last read would send the proj1 request's call to s-proj2 (wrong): instead
    the process is switched off at the second read and both calls take il's own env."""
    c1 = connect(MIDDLE["il"][0])
    c1.sendall(tagged("/", "dev.proj1"))
    time.sleep(0.2)  # il reads c1's request first
    c2 = connect(MIDDLE["il"][0])
    c2.sendall(tagged("/", "dev.proj2"))
    a1, _ = read_response(c1)
    a2, _ = read_response(c2)
    c1.close()
    c2.close()
    assert [a1["calls"][0]["pod"], a2["calls"][0]["pod"]] == [k("s-dev"), k("s-dev")], (a1, a2)
    p = pods_state(tctx)[k("il")]
    assert p["thread_context"] == "switched-off", p
    assert p["switched_off_processes"][0]["reason"] == "read-while-serving", p
    assert p["switched_off_processes"][0]["pid"] == tctx.pod(k("il")).server.pid, p
    _, m = tctx.admin_get("/metrics")
    assert 'envsteer_thread_context{pod="tc/il",state="switched-off"} 1' in m
    assert 'envsteer_thread_context_switched_off{pod="tc/il",reason="read-while-serving"} 1' in m
    ex = tctx.explain(k("il"), k("s") + ":%d" % PORT)
    assert ex["thread_context"] == "switched-off", ex
    # the agent says so in its log, once
    harness.wait_until(lambda: "thread context switched off for pid %d" % tctx.pod(k("il")).server.pid
                       in tctx.agent_log_text(), 10, what="log line")


def test_request_answered_by_another_thread_switches_off(tctx):
    """ho's main thread reads, a worker answers: the call is made without a context (own env)
    and the process is switched off when the worker writes the response."""
    c = connect(MIDDLE["ho"][0])
    c.sendall(tagged("/", "dev.proj1"))
    a, _ = read_response(c)
    c.close()
    assert a["calls"][0]["pod"] == k("s-dev"), a
    harness.wait_until(lambda: pods_state(tctx)[k("ho")]["thread_context"] == "switched-off", 5,
                       what="ho switched off")
    p = pods_state(tctx)[k("ho")]
    assert p["switched_off_processes"][0]["reason"] == "answered-by-other-thread", p


def test_context_ends_with_the_response(tctx):
    """af answers a dev.proj1 request, then calls s: that call is not the request's (own env)."""
    before = counter(tctx, "thread_ctx_closed")
    c = connect(MIDDLE["af"][0])
    c.sendall(tagged("/", "dev.proj1"))
    read_response(c)
    c.close()
    time.sleep(0.3)  # af's late call
    c = connect(MIDDLE["af"][0])
    c.sendall(tagged("/last", None))
    a, _ = read_response(c)
    c.close()
    assert a["calls"][0]["pod"] == k("s-dev"), a
    assert counter(tctx, "thread_ctx_closed") > before
    # af is still thread-per-request: its context is on
    assert pods_state(tctx)[k("af")]["thread_context"] == "on"


@pytest.mark.parametrize("env,want", [("dev.proj1", "s-proj1"), ("dev.proj2", "s-proj2"), (None, "s-dev")])
def test_thread_per_request_pod_keeps_the_context(tctx, env, want):
    """tpr (thread-per-connection, opted in) forwards nothing: its call still lands in the
    request's env; tpr-off, the same server without the annotation, falls back to its own."""
    for pod, expect in (("tpr", want), ("tpr-off", "s-dev")):
        c = connect(MIDDLE[pod][0])
        c.sendall(tagged("/call?to=%s:%d" % (S_VIP, PORT), env))
        a, _ = read_response(c)
        c.close()
        assert a["next"]["pod"] == k(expect), (pod, a)
    st = pods_state(tctx)
    assert st[k("tpr")]["thread_context"] == "on" and st[k("tpr-off")]["thread_context"] == "off", st


def test_pipelined_requests_give_no_context(tctx):
    """Two pipelined requests of different envs in one send: the thread reads both at once,
    so what it serves is ambiguous; each call lands in its own env's chain or tpr's own env,
    never in the other request's."""
    before = counter(tctx, "thread_ctx_ambiguous")
    c = connect(MIDDLE["tpr"][0])
    path = "/call?to=%s:%d" % (S_VIP, PORT)
    c.sendall(tagged(path, "dev.proj2") + tagged(path, "dev.proj1"))
    a1, rest = read_response(c)
    if rest:
        c2data = rest
    else:
        c2data = b""
    # the second response may already be in rest
    s2 = _Prefixed(c, c2data)
    a2, _ = read_response(s2)
    c.close()
    assert a1["next"]["pod"] in (k("s-proj2"), k("s-dev")), a1
    assert a2["next"]["pod"] in (k("s-proj1"), k("s-dev")), a2
    assert counter(tctx, "thread_ctx_ambiguous") > before


class _Prefixed:
    def __init__(self, sock, prefix):
        self.sock, self.prefix = sock, prefix

    def recv(self, n):
        if self.prefix:
            out, self.prefix = self.prefix, b""
            return out
        return self.sock.recv(n)
