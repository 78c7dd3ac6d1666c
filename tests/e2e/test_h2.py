"""HTTP/2 and gRPC: every stream routed by its own environment (README "HTTP/2 and gRPC").

Node (agent with --h2-listen 127.0.0.1:0, default env dev; the addresses of the shared node, a
test's own node uses 127.96.81.x / 127.1.81.x):
    g     127.96.80.1  :50051 "grpc" (gRPC, grpcserver.py) and :80 appProtocol kubernetes.io/h2c
                       (h2server.py, prior knowledge) -> g-dev (dev), g-proj1 (dev.proj1),
                       g-proj2 (dev.proj2)
    one   127.96.80.2  :50051 "grpc" -> o-dev (dev) only: one backend set, never diverted
    nodef 127.96.80.3  :50051 "grpc" -> n-proj1 (dev.proj1), n-proj2 (dev.proj2): no pod of the
                       default env
    u     127.96.80.4  :81 (port "tcp-81", not declared HTTP/2) -> the g pods' h2server.py
    mid   127.96.80.5  :50051 "grpc" -> mid-dev (dev): a middle tier calling g over one channel
    clients: c-plain (unlabelled: the default env dev), c-p1 (dev.proj1)
Connections from the clients to a multi-set service's declared HTTP/2 port go to the agent's
endpoint, which routes each stream by its own x-virtual-env (else the caller's own env)."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

import fixtures
import harness

NS = "h2"
GP = 50051
HERE = os.path.dirname(os.path.abspath(__file__))
SYS_PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else harness.PYTHON
GRPCSERVER = os.path.join(HERE, "grpcserver.py")
GRPCCLIENT = os.path.join(HERE, "grpcclient.py")
H2SERVER = os.path.join(HERE, "h2server.py")
NPM_DIR = os.environ.get("ENVSTEER_NPM_DIR") or "/var/cache/envsteer-npm"

k = fixtures.keyer(NS)
EXPECT = {"dev": k("g-dev"), "dev.proj1": k("g-proj1"), "dev.proj2": k("g-proj2"), "-": k("g-dev"),
          "dev.proj1.alice": k("g-proj1"), "test": k("g-dev")}


def grpc_port(name="grpc", port=GP):
    return {"name": name, "port": port, "target_port": port, "protocol": "TCP"}


def _tcp_ok(ip, port):
    try:
        socket.create_connection((ip, port), 1).close()
        return True
    except OSError:
        return False


def start_pod_server(node, name, argv, ip, port):
    pod = node.pod(k(name))
    proc = node._popen(list(argv), pod.cgroup_dir, "srv-%s-%d.log" % (name, port), pod.netns)
    harness.wait_until(lambda: proc.poll() is not None or _tcp_ok(ip, port), 20, 0.1, "%s:%d up" % (name, port))
    assert proc.poll() is None, harness._read_file(os.path.join(node.log_dir, "srv-%s-%d.log" % (name, port)), 3000)
    return proc


def build(node, net):
    """The node of the module docstring, on pod addresses 127.1.NET.x and service addresses
    127.96.NET.x (the shared node and a test's own node exist side by side)."""
    ip = lambda n: "127.1.%d.%d" % (net, n)  # noqa: E731
    node.vip = {name: "127.96.%d.%d" % (net, n) for name, n in (("g", 1), ("one", 2), ("nodef", 3), ("u", 4), ("mid", 5))}
    fixtures.populate(
        node, NS,
        services=[("g", node.vip["g"], dict(protocols=(), extra_ports=[
                      grpc_port(), {"name": "web", "port": 80, "target_port": 8080, "protocol": "TCP",
                                    "app_protocol": "kubernetes.io/h2c"}])),
                  ("one", node.vip["one"], dict(protocols=(), extra_ports=[grpc_port()])),
                  ("nodef", node.vip["nodef"], dict(protocols=(), extra_ports=[grpc_port()])),
                  ("u", node.vip["u"], dict(protocols=("TCP",), port=81, target_port=8080, selector={"app": "g"})),
                  ("mid", node.vip["mid"], dict(protocols=(), extra_ports=[grpc_port()]))],
        pods=[("g-dev", ip(1), "g", "dev"), ("g-proj1", ip(2), "g", "dev.proj1"),
              ("g-proj2", ip(3), "g", "dev.proj2"), ("o-dev", ip(4), "one", "dev"),
              ("n-proj1", ip(5), "nodef", "dev.proj1"), ("n-proj2", ip(6), "nodef", "dev.proj2"),
              ("mid-dev", ip(7), "mid", "dev"),
              ("c-plain", ip(11), "c", None), ("c-p1", ip(12), "c", "dev.proj1")])
    node.servers = {}
    for name, n in [("g-dev", 1), ("g-proj1", 2), ("g-proj2", 3), ("o-dev", 4), ("n-proj1", 5), ("n-proj2", 6)]:
        node.servers[name] = start_pod_server(node, name, [SYS_PY, GRPCSERVER, ip(n), str(GP), k(name)], ip(n), GP)
    for name, n in [("g-dev", 1), ("g-proj1", 2), ("g-proj2", 3)]:
        start_pod_server(node, name, [SYS_PY, H2SERVER, ip(n), "8080", k(name)], ip(n), 8080)
    start_pod_server(node, "mid-dev", [SYS_PY, GRPCSERVER, ip(7), str(GP), k("mid-dev"),
                                       "%s:%d" % (node.vip["g"], GP)], ip(7), GP)
    node.start_agent(["--h2-listen", "127.0.0.1:0"])
    return node


@pytest.fixture(scope="module")
def shared(e2e_prerequisites):
    """One node for the tests that change nothing on it (they compare metrics before/after)."""
    node = harness.Node("h2s", default_env="dev")
    try:
        yield build(node, 80)
    finally:
        node.close()


@pytest.fixture
def h2node(make_node):
    """A node of its own (tests that kill pods, restart the agent, or read high-water marks)."""
    return build(make_node("h2", default_env="dev"), 81)


class Metrics:
    """/metrics before and after: delta(name, labels)."""

    def __init__(self, node):
        self.node = node
        self.before = self._all()

    def _all(self):
        code, body = self.node.admin_get("/metrics")
        assert code == 200, body
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, _, v = line.rpartition(" ")
                out[key] = float(v)
        return out

    def delta(self, name, labels=None):
        key = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "")
        return self._all().get(key, 0.0) - self.before.get(key, 0.0)


def grpc_client(node, pod, to, *args, timeout=90):
    r = node.run_in_pod(k(pod), [SYS_PY, GRPCCLIENT, "--to", to] + list(args), timeout=timeout)
    lines = (r.stdout or "").strip().splitlines()
    assert r.returncode == 0 and lines, (r.returncode, r.stdout, harness._read_file(
        os.path.join(node.log_dir, "client-%s-%s.log" % (NS, pod)), 3000), node.agent_log_text(4000))
    return json.loads(lines[-1])


def metric(node, name, labels=None):
    return fixtures.metric(node, name, labels, default=0.0)


def test_grpc_one_channel_every_call_by_its_own_env(shared):
    """One channel from an unlabelled pod; concurrent calls alternating dev, dev.proj1,
    dev.proj2 and untagged on its one connection: each answered by its own env's pod,
    payloads byte-exact, the untagged ones by the caller's own (the default)."""
    mm = Metrics(shared)
    node = shared
    before = node.counters()
    st0 = json.loads(node.status().stdout)["agent"]["h2"]
    envs = ["dev", "dev.proj1", "dev.proj2", "-", "dev.proj1.alice", "test"]
    res = grpc_client(node, "c-plain", "%s:%d" % (shared.vip["g"], GP), "mix", "--envs=" + ",".join(envs), "--calls", "60",
                      "--concurrency", "12")
    ans = res["answers"]
    failed = [a for a in ans if "error" in a]
    wrong = [a for a in ans if "error" not in a and a["pod"] != EXPECT[a["env"]]]
    assert not failed and not wrong, json.dumps(res)[:3000]
    assert all(a["exact"] for a in ans), ans
    # the app's header reaches the pod unchanged; unlabelled callers insert nothing
    assert all(a["seen"] == (None if a["env"] == "-" else a["env"]) for a in ans), ans
    after = node.counters()
    assert after["h2_diverted"] - before["h2_diverted"] == 1, (before, after)  # one connection
    assert mm.delta("envsteer_h2_connections_total", {"event": "accepted"}) == 1
    assert mm.delta("envsteer_h2_streams_total",
                  {"service": "h2/g:50051", "env": "dev.proj1", "outcome": "header"}) == 20  # incl. alice
    assert mm.delta("envsteer_h2_streams_total",
                  {"service": "h2/g:50051", "env": "dev", "outcome": "caller"}) == 10
    # a stream whose env is unknown everywhere ("test") starts from the default, as HTTP/1.x
    assert mm.delta("envsteer_h2_streams_total",
                  {"service": "h2/g:50051", "env": "dev", "outcome": "header"}) == 20
    st = json.loads(node.status().stdout)["agent"]["h2"]
    d = {k2: st["streams_by_outcome"].get(k2, 0) - st0["streams_by_outcome"].get(k2, 0) for k2 in ("header", "caller")}
    assert d == {"header": 50, "caller": 10}, (st0, st)
    assert st["counters"]["connections_total.accepted"] - st0["counters"]["connections_total.accepted"] == 1, st
    text = node.status(json_out=False).stdout
    assert "HTTP/2 endpoint 127.0.0.1:" in text and "streams: " in text, text


def test_labelled_caller_untagged_streams_get_its_env(shared):
    """A dev.proj1 pod: untagged calls go to its own env and carry it (auto-inject); tagged
    ones go by their tag."""
    mm = Metrics(shared)
    res = grpc_client(shared, "c-p1", "%s:%d" % (shared.vip["g"], GP), "mix", "--envs=-,dev.proj2,dev", "--calls", "12")
    ans = res["answers"]
    exp = {"-": k("g-proj1"), "dev.proj2": k("g-proj2"), "dev": k("g-dev")}
    assert all("error" not in a and a["pod"] == exp[a["env"]] and a["exact"] for a in ans), ans
    assert all(a["seen"] == ("dev.proj1" if a["env"] == "-" else a["env"]) for a in ans), ans
    assert mm.delta("envsteer_h2_headers_inserted_total") == 4


def test_single_set_service_is_not_touched(shared):
    mm = Metrics(shared)
    node = shared
    before = node.counters()
    res = grpc_client(node, "c-plain", "%s:%d" % (shared.vip["one"], GP), "mix", "--envs=dev.proj1,-", "--calls", "6")
    assert all("error" not in a and a["pod"] == k("o-dev") for a in res["answers"]), res
    after = node.counters()
    assert after["h2_diverted"] == before["h2_diverted"], (before, after)
    assert after["steered_own_env"] + after["steered_default"] > before["steered_own_env"] + before["steered_default"]
    assert mm.delta("envsteer_h2_connections_total", {"event": "accepted"}) == 0


def curl_each_env(node, mode, path, stream=None):
    """One curl per env (and one untagged, "-") in HTTP/2 `mode` to service g from c-plain: each
    answered over HTTP/2 by its own env's pod, which got the header as sent (on HTTP/2 stream
    `stream` when given). Returns how many connections it made."""
    envs = ["dev.proj1", "dev", "dev.proj2", "-", "dev.proj1.alice"]
    for e in envs:
        argv = ["curl", "-sS", mode, "--max-time", "20", "-w", "\\n%{http_version}\\n"]
        if e != "-":
            argv += ["-H", "X-Virtual-Env: " + e]
        r = node.run_in_pod(k("c-plain"), argv + ["http://%s%s" % (node.vip["g"], path)], timeout=30)
        assert r.returncode == 0, (r, node.agent_log_text(3000))
        body, version = [l for l in r.stdout.splitlines() if l.strip()]
        assert json.loads(body)["pod"] == EXPECT[e] and version == "2", (e, r.stdout)
        assert json.loads(body)["got_header"] == (None if e == "-" else e), (e, r.stdout)
        if stream is not None:
            assert json.loads(body)["stream"] == stream, (e, r.stdout)
    return len(envs)


def test_curl_and_nghttp_prior_knowledge(shared):
    """curl --http2-prior-knowledge, one request per connection (Debian 12's curl 7.88 fails the
    second request on a reused prior-knowledge connection, direct to a pod too: "Error in the
    HTTP2 framing layer"), and nghttp with several streams on one connection."""
    mm = Metrics(shared)
    node = shared
    curl_each_env(node, "--http2-prior-knowledge", "/")
    r = node.run_in_pod(k("c-plain"), ["nghttp", "-n", "-s", "-H", "X-Virtual-Env: dev.proj2"] +
                        ["http://%s/%d" % (shared.vip["g"], i) for i in range(4)], timeout=30)
    assert r.returncode == 0, r
    assert mm.delta("envsteer_h2_streams_total",
                  {"service": "h2/g:80", "env": "dev.proj1", "outcome": "header"}) == 2
    assert mm.delta("envsteer_h2_streams_total",
                  {"service": "h2/g:80", "env": "dev.proj2", "outcome": "header"}) == 5
    assert mm.delta("envsteer_h2_connections_total", {"event": "accepted"}) == 6


def test_curl_h2c_upgrade_each_env_by_its_own_pod(shared):
    """curl --http2 (an HTTP/1.1 request with Upgrade: h2c and HTTP2-Settings) to the declared h2c
    port: the endpoint answers 101, the connection goes on as HTTP/2 with the request as stream 1,
    routed by its own env header like any stream. A plain HTTP/1.1 request on the declared port is
    answered 505 and the connection closed (counted http1_refused), never sent to a pod."""
    mm = Metrics(shared)
    node = shared
    n = curl_each_env(node, "--http2", "/up", stream=1)
    # the labelled caller's untagged upgrade: its own env (dev.proj1), header inserted
    r = node.run_in_pod(k("c-p1"), ["curl", "-sS", "--http2", "--max-time", "20", "http://%s/" % shared.vip["g"]],
                        timeout=30)
    assert r.returncode == 0, r
    got = json.loads(r.stdout)
    assert {x: got.get(x) for x in ("pod", "got_header", "stream", "body")} == \
        {"pod": k("g-proj1"), "got_header": "dev.proj1", "stream": 1, "body": 0}, r.stdout
    # plain HTTP/1.1 on the declared port: 505, closed, counted; no pod saw it
    r = node.run_in_pod(k("c-plain"), ["curl", "-sS", "--http1.1", "--max-time", "20", "-H", "X-Virtual-Env: dev.proj2",
                                       "-w", "\\n%{http_code}\\n", "http://%s/" % shared.vip["g"]], timeout=30)
    assert r.returncode == 0, r
    assert r.stdout.strip().splitlines()[-1] == "505", r.stdout
    assert mm.delta("envsteer_h2_connections_total", {"event": "h2c_upgrade"}) == n + 1
    assert mm.delta("envsteer_h2_connections_total", {"event": "http1_refused"}) == 1
    assert mm.delta("envsteer_h2_connections_total", {"event": "accepted"}) == n + 2
    assert mm.delta("envsteer_h2_streams_total",
                    {"service": "h2/g:80", "env": "dev.proj1", "outcome": "header"}) == 2
    assert mm.delta("envsteer_h2_streams_total",
                    {"service": "h2/g:80", "env": "dev.proj1", "outcome": "caller"}) == 1

def h2raw(node, pod, mode, env):
    r = node.run_in_pod(k(pod), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", "%s:80" % node.vip["g"], mode,
                                 "--env", env], timeout=40)
    assert r.returncode == 0, (r, node.agent_log_text(3000))
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_server_goaway_graceful(shared):
    """The server sends a graceful GOAWAY covering both streams it has: both are answered on the old
    upstream connection; a stream opened after it goes on a new upstream connection (answered while
    the old connection still finishes its slow stream)."""
    mm = Metrics(shared)
    res = h2raw(shared, "c-plain", "goaway", "dev.proj2")
    slow, ga, new = res["/slow?ms=1500"], res["/goaway"], res["/conn"]
    for x in (slow, ga, new):
        assert x["done"] and x.get("status") == 200 and "reset" not in x, res
        assert x["body"]["pod"] == k("g-proj2") and x["body"]["got_header"] == "dev.proj2", res
    assert slow["body"]["conn"] == ga["body"]["conn"] != new["body"]["conn"], res
    assert res["order"] == ["/goaway", "/conn", "/slow?ms=1500"], res
    assert mm.delta("envsteer_h2_upstreams_total", {"event": "goaway"}) == 1
    assert mm.delta("envsteer_h2_upstreams_total", {"event": "connect"}) == 2


def test_server_push_is_a_protocol_error_of_that_upstream(shared):
    """Upstreams get SETTINGS_ENABLE_PUSH 0: a server that pushes anyway commits a connection error
    (PROTOCOL_ERROR). Its upstream connection is dropped: the stream it was answering fails (503
    from the endpoint, before any response began), the client's connection goes on: the next stream
    of the same env goes on a new upstream connection and is answered. Nothing pushed reaches the
    client."""
    mm = Metrics(shared)
    res = h2raw(shared, "c-plain", "push", "dev.proj1")
    p, nxt = res["/push"], res["/conn"]
    assert p["done"] and p.get("status") == 503 and "envsteer" in str(p["body"]), res
    assert nxt["done"] and nxt.get("status") == 200 and nxt["body"]["pod"] == k("g-proj1"), res
    assert mm.delta("envsteer_h2_upstreams_total", {"event": "lost"}) == 1
    assert mm.delta("envsteer_h2_upstreams_total", {"event": "connect"}) == 2
    assert mm.delta("envsteer_h2_streams_total",
                    {"service": "h2/g:80", "env": "dev.proj1", "outcome": "upstream_failed"}) == 1

def test_h2c_upgrade_with_a_small_body(shared):
    """An h2c Upgrade request with a body (Content-Length, at most 64 KiB): the endpoint reads it
    whole, answers 101, and stream 1 carries the request with its body byte for byte to the pod of
    its env. A larger body is answered 413, a chunked one 411 (each says why), nothing reaches a pod."""
    mm = Metrics(shared)
    to = "%s:80" % shared.vip["g"]
    for n, env in ((1000, "dev.proj2"), (64 * 1024, "dev.proj1")):
        r = shared.run_in_pod(k("c-plain"), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", to, "upgrade",
                                             "--env", env, "--body", str(n)], timeout=40)
        assert r.returncode == 0, (r, shared.agent_log_text(3000))
        res = json.loads(r.stdout.strip().splitlines()[-1])
        want = hashlib.sha256(bytes((i * 7) % 251 for i in range(n))).hexdigest()
        assert res["http1_status"] == 101 and res.get("status") == 200, res
        assert res["body"]["pod"] == EXPECT[env] and res["body"]["stream"] == 1, res
        assert res["body"]["body"] == n and res["body"]["sha"] == want, res
    for extra, code, why in ((["--body", str(64 * 1024 + 1)], 413, "over 64 KiB"),
                             (["--body", "10", "--chunked"], 411, "chunked")):
        r = shared.run_in_pod(k("c-plain"), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", to, "upgrade",
                                             "--env", "dev.proj1"] + extra, timeout=40)
        assert r.returncode == 0, r
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["http1_status"] == code and why in res["http1_body"], res
    assert mm.delta("envsteer_h2_connections_total", {"event": "h2c_upgrade"}) == 2
    assert mm.delta("envsteer_h2_connections_total", {"event": "http1_refused"}) == 2


def test_streams_refused_by_a_goaway_are_retried(shared):
    """RFC 9113 6.8: streams above a GOAWAY's last-stream-id were not processed. The server
    (python3-h2) answers a POST with a GOAWAY below it: the endpoint sends the stream again,
    body and all, on a new upstream connection (the covered slow stream still finishes on the
    old one). A server that refuses every time: 2 retries, then 503, counted."""
    mm = Metrics(shared)
    key = "%d-%d" % (os.getpid(), time.monotonic_ns())
    r = shared.run_in_pod(k("c-plain"), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", "%s:80" % shared.vip["g"],
                                         "refuse", "--env", "dev.proj2", "--key", key], timeout=60)
    assert r.returncode == 0, (r, shared.agent_log_text(3000))
    res = json.loads(r.stdout.strip().splitlines()[-1])
    slow, once, always = res["/slow?ms=1000"], res["/refuse-once?k=" + key], res["/refuse-always"]
    assert slow["done"] and slow.get("status") == 200 and slow["body"]["pod"] == k("g-proj2"), res
    assert once["done"] and once.get("status") == 200 and once["body"]["pod"] == k("g-proj2"), res
    assert once["body"]["body"] == 12000 and once["body"]["sha"] == hashlib.sha256(b"r" * 12000).hexdigest(), res
    assert once["body"]["conn"] != slow["body"]["conn"], res
    assert always["done"] and always.get("status") == 503 and "envsteer" in str(always["body"]), res
    assert mm.delta("envsteer_h2_retries_total", {"event": "retried"}) == 3
    assert mm.delta("envsteer_h2_retries_total", {"event": "gave_up"}) == 1
    assert mm.delta("envsteer_h2_upstreams_total", {"event": "connect"}) == 4
    assert mm.delta("envsteer_h2_streams_total",
                    {"service": "h2/g:80", "env": "dev.proj2", "outcome": "upstream_failed"}) == 1


def test_endpoint_serves_nothing_to_undiverted_connections(shared):
    """A connection to the endpoint that no managed pod's connect() sent there (no record in
    es_h2_conns) is closed before a byte is read or sent, whatever it sends: counted."""
    mm = Metrics(shared)
    ep = shared.status_http()["h2"]["listen"]
    for send in ("", "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n", "GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"):
        r = shared.run_in_pod(k("c-plain"), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", ep, "silent",
                                             "--hold", "10", "--send", send], timeout=30)
        assert r.returncode == 0, r
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["closed"] and res["got"] == "", (send, res)
    assert mm.delta("envsteer_h2_connections_total", {"event": "unknown_caller"}) == 3
    assert mm.delta("envsteer_h2_connections_total", {"event": "accepted"}) == 0


def silent_client(node, pod, hold):
    r = node.run_in_pod(k(pod), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", "%s:80" % node.vip["g"], "silent",
                                 "--hold", str(hold)], timeout=hold + 30)
    assert r.returncode == 0, r
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_silent_clients_time_out_and_one_pod_cannot_take_every_slot(h2node):
    """Diverted connections that never send their first bytes: each pod may hold at most
    --h2-max-clients-per-pod of them (beyond: closed at accept, counted), and each is closed
    after --h2-opening-timeout-ms (counted). Meanwhile another pod's gRPC calls are served."""
    node = h2node
    node.stop_agent()
    node.start_agent(["--h2-listen", "127.0.0.1:0", "--h2-opening-timeout-ms", "6000",
                      "--h2-max-clients-per-pod", "3"])
    mm = Metrics(node)
    held = [fixtures.in_background(lambda: silent_client(node, "c-plain", 40)) for _ in range(3)]
    harness.wait_until(lambda: metric(node, "envsteer_h2_clients") == 3, 20, what="3 silent clients accepted")
    extra = silent_client(node, "c-plain", 5)
    assert extra["closed"] and extra["got"] == "", extra
    assert mm.delta("envsteer_h2_connections_total", {"event": "refused_max_clients_per_pod"}) == 1
    # another pod is not held up by them
    res = grpc_client(node, "c-p1", "%s:%d" % (node.vip["g"], GP), "mix", "--envs=dev.proj2,-", "--calls", "4")
    exp = {"-": k("g-proj1"), "dev.proj2": k("g-proj2")}
    assert all("error" not in a and a["pod"] == exp[a["env"]] for a in res["answers"]), res
    for t, box in held:
        t.join(60)
        assert not t.is_alive() and "error" not in box, box
        r = box["result"]
        # closed by the endpoint, not before the timeout (measured from before the accept)
        assert r["closed"] and r["got"] == "" and 5.5 <= r["after"] < 40, r
    assert mm.delta("envsteer_h2_connections_total", {"event": "opening_timeout"}) == 3
    harness.wait_until(lambda: metric(node, "envsteer_h2_clients") == 0, 10, what="all closed")


def _listening_in(netns, ip, port):
    code = "import socket; socket.create_connection((%r, %d), 1).close()" % (ip, port)
    return subprocess.run(netns.prefix() + [harness.PYTHON, "-c", code], capture_output=True,
                          timeout=20).returncode == 0


def test_endpoint_on_the_agent_pods_own_address(e2e_prerequisites):
    """The DaemonSet's shape: the agent in a network namespace of its own (hostNetwork: false)
    under exactly the DaemonSet's capabilities, --h2-listen on that namespace's own address (what
    $(POD_IP) gives it), pods in namespaces of their own behind a bridge. One gRPC channel from
    an unlabelled pod: every call answered by its own env's pod, every server sees the calling
    pod's address. The pod dialling the endpoint itself is closed unread (unknown_caller)."""
    import topology
    topo = topology.Topology("h2own", nodes=1, default_env="dev", agent_netns={1: "own"},
                             agent_caps={1: topology.daemonset_caps()})
    try:
        topo.add_service("h2own", "g", 1, protocols=(), extra_ports=[grpc_port()])
        pods = {"g-dev": topo.add_pod(1, "h2own", "g-dev", app="g", env="dev"),
                "g-proj1": topo.add_pod(1, "h2own", "g-proj1", app="g", env="dev.proj1")}
        cl = topo.add_pod(1, "h2own", "cl", app="cl")
        topo.write()
        node = topo.node(1)
        for name, pod in pods.items():
            node._popen([SYS_PY, GRPCSERVER, pod.ips[0], str(GP), pod.key], pod.cgroup_dir, "srv-%s.log" % name,
                        pod.netns)
            harness.wait_until(lambda: _listening_in(cl.netns, pod.ips[0], GP), 20, 0.2, "%s listening" % name)
        agent_ip = topology.POD_V4 % (1, 10)  # the agent's namespace: the node's first pod address
        node.start_agent(["--h2-listen", "%s:15002" % agent_ip])
        assert node.status_http()["h2"]["listen"] == "%s:15002" % agent_ip
        r = node.run_in_pod(cl.key, [SYS_PY, GRPCCLIENT, "--to", "%s:%d" % (topology.SVC_V4 % 1, GP), "mix",
                                     "--envs", "dev.proj1,-", "--calls", "12", "--concurrency", "4"], timeout=90)
        assert r.returncode == 0 and r.stdout.strip(), (r.returncode, r.stdout, node.agent_log_text(3000))
        calls = json.loads(r.stdout.strip().splitlines()[-1])["answers"]
        want = {"dev.proj1": pods["g-proj1"].key, "-": pods["g-dev"].key}
        assert len(calls) == 12 and all("error" not in c and c["pod"] == want[c["env"]] and c["exact"]
                                        for c in calls), calls
        assert all(c["peer"].startswith("ipv4:%s:" % cl.ips[0]) for c in calls), calls
        r = node.run_in_pod(cl.key, [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", "%s:15002" % agent_ip, "silent",
                                     "--hold", "10", "--send", "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n"],
                            timeout=30)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["closed"] and res["got"] == "", res
        h2 = node.status_http()["h2"]
        assert h2["counters"]["connections_total.unknown_caller"] == 1, h2
        assert h2["counters"]["errors_total.pod_netns"] == 0, h2
    finally:
        topo.close()


NODE_CLIENT = r"""
const grpc = require('@grpc/grpc-js');
const crypto = require('crypto');
const [to, envsArg, n] = process.argv.slice(2);
const envs = envsArg.split(',');
const client = new grpc.Client(to, grpc.credentials.createInsecure());
const ident = (b) => b;
const out = [];
let left = Number(n);
for (let i = 0; i < Number(n); i++) {
  const env = envs[i % envs.length];
  const md = new grpc.Metadata();
  if (env !== '-') md.set('x-virtual-env', env);
  const payload = crypto.randomBytes(1 + (i * 7919) % 20000);
  client.makeUnaryRequest('/envsteer.H2/Echo', ident, ident, payload, md, {deadline: Date.now() + 15000},
    (err, resp) => {
      if (err) out.push({env, error: err.code + ' ' + err.details});
      else {
        const nl = resp.indexOf(10);
        const h = JSON.parse(resp.slice(0, nl).toString());
        out.push({env, pod: h.pod, exact: resp.slice(nl + 1).equals(payload)});
      }
      if (--left === 0) { client.close(); console.log(JSON.stringify(out)); }
    });
}
"""


def test_grpc_js_one_channel(shared, tmp_path):
    """Node's @grpc/grpc-js: one client (one connection), concurrent calls of mixed envs."""
    mm = Metrics(shared)
    if not os.path.isfile(os.path.join(NPM_DIR, "node_modules", "@grpc", "grpc-js", "package.json")):
        pytest.fail("@grpc/grpc-js is not installed in %s: run scripts/npm-deps.sh" % NPM_DIR)
    script = tmp_path / "client.js"
    script.write_text(NODE_CLIENT)
    os.chmod(tmp_path, 0o755)
    envs = ["dev.proj2", "-", "dev.proj1", "dev"]
    r = shared.run_in_pod(k("c-plain"), ["env", "NODE_PATH=" + os.path.join(NPM_DIR, "node_modules"),
                                         shutil.which("node") or "node", str(script),
                                         "%s:%d" % (shared.vip["g"], GP), ",".join(envs), "24"], timeout=60)
    assert r.returncode == 0, r
    ans = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(ans) == 24
    assert all("error" not in a and a["pod"] == EXPECT[a["env"]] and a["exact"] for a in ans), ans
    assert mm.delta("envsteer_h2_connections_total", {"event": "accepted"}) == 1


def test_grpc_semantics_pass_through(shared):
    """Unary, server/client/bidi streaming, 5 MiB each way with raised limits, status and
    message and trailing metadata, a deadline, a cancellation the server sees."""
    res = grpc_client(shared, "c-plain", "%s:%d" % (shared.vip["g"], GP), "semantics", "--env", "dev.proj1", timeout=120)
    P = k("g-proj1")
    assert res["unary"] == {"pod": P, "exact": True}, res
    assert res["server_stream"] == {"pods": [P], "count": 5, "sizes": [1000]}, res
    assert res["client_stream"] == {"pod": P, "count": 20, "exact": True}, res
    assert res["bidi"] == {"pods": [P], "count": 20, "exact": True}, res
    assert res["big"] == {"pod": P, "exact": True, "bytes": 5 * 1024 * 1024 + 17}, res
    assert res["status"] == {"code": "INVALID_ARGUMENT", "details": "boom: bad input", "trailer": "boom: bad input"}, res
    # the deadline: the client gives up in time, and the server's call is cancelled too
    assert res["deadline"]["code"] == "DEADLINE_EXCEEDED" and res["deadline"]["seconds"] < 2.5, res
    assert res["deadline"]["server_saw"] == 1, res
    assert res["cancel"] == {"client": True, "server_saw": 1}, res  # RST_STREAM went on upstream


def test_ping_goaway_and_settings(shared):
    r = shared.run_in_pod(k("c-plain"), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", "%s:80" % shared.vip["g"],
                                         "frames", "--env", "dev.proj2"], timeout=30)
    assert r.returncode == 0, r
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["pong"] == "envsteer", res
    assert res["answer"]["pod"] == k("g-proj2"), res
    assert res["settings"].get("2") == 0 and res["settings"].get("3") == 128, res  # no push; max streams
    assert res["closed_after_goaway"], res


def test_no_ready_pod_for_the_chain_is_unavailable(shared):
    """nodef has pods in dev.proj1 and dev.proj2 only: an untagged stream of a dev caller has no
    ready pod in its chain: UNAVAILABLE on that stream (counted); the others are answered."""
    mm = Metrics(shared)
    res = grpc_client(shared, "c-plain", "%s:%d" % (shared.vip["nodef"], GP), "mix", "--envs=dev.proj1,-,dev.proj2",
                      "--calls", "9", "--concurrency", "3")
    for a in res["answers"]:
        if a["env"] == "-":
            assert a.get("error", {}).get("code") == "UNAVAILABLE", res
        else:
            assert a.get("pod") == k("n-" + a["env"].split(".")[1]), res
    assert mm.delta("envsteer_h2_streams_total",
                  {"service": "h2/nodef:50051", "env": "dev", "outcome": "no_ready_pod"}) == 3


def test_upstream_pod_dies_mid_stream(h2node, tmp_path):
    """A server stream of dev.proj1 whose pod dies: that call fails UNAVAILABLE, calls of
    dev.proj2 on the same connection go on."""
    node = h2node
    marker = str(tmp_path / "first")
    os.chmod(tmp_path, 0o777)
    t, box = fixtures.in_background(lambda: grpc_client(
        node, "c-plain", "%s:%d" % (h2node.vip["g"], GP), "kill", "--env", "dev.proj1", "--other", "dev.proj2",
        "--marker", marker, timeout=90))
    harness.wait_until(lambda: os.path.exists(marker) or not t.is_alive(), 30, 0.05, "first message")
    node.stop_process(node.servers["g-proj1"])
    t.join(90)
    assert not t.is_alive() and "error" not in box, box
    res = box["result"]
    assert res["stream"]["error"] and res["stream"]["error"]["code"] == "UNAVAILABLE", res["stream"]
    assert 1 <= res["stream"]["messages"] < 100 and res["stream"]["pods"] == [k("g-proj1")], res["stream"]
    others = res["other"]
    assert len(others) >= 5 and all(o.get("pod") == k("g-proj2") for o in others), others
    assert metric(node, "envsteer_h2_streams_total",
                  {"service": "h2/g:50051", "env": "dev.proj1", "outcome": "upstream_failed"}) == 1


def test_agent_restart_clients_reconnect(h2node):
    """While calls run on one channel the agent restarts: the client sees its connection end
    (GOAWAY), calls fail fast while no endpoint listens, then the channel reconnects to the
    new agent and calls are routed by their env again; no call hangs."""
    node = h2node
    t, box = fixtures.in_background(lambda: grpc_client(
        node, "c-plain", "%s:%d" % (h2node.vip["g"], GP), "loop", "--env", "dev.proj1", "--seconds", "12", timeout=60))
    time.sleep(2)
    node.stop_agent()
    time.sleep(0.5)
    node.start_agent(["--h2-listen", "127.0.0.1:0"])
    t.join(60)
    assert "error" not in box, box
    calls = box["result"]["calls"]
    assert calls and max(c["took"] for c in calls) < 2.6, calls  # nothing hangs
    assert all(c.get("pod") in (None, k("g-proj1")) for c in calls), calls  # never another env's
    failed = [i for i, c in enumerate(calls) if "error" in c]
    assert failed and calls[0].get("pod") == k("g-proj1"), calls  # the restart was seen
    assert all(c.get("pod") == k("g-proj1") for c in calls[failed[-1] + 1:]) and failed[-1] < len(calls) - 5, \
        [(i, c) for i, c in enumerate(calls) if "error" in c or i in (0, len(calls) - 1)]
    assert metric(node, "envsteer_h2_connections_total", {"event": "accepted"}) >= 1


def test_bounds_streams_and_a_client_that_never_reads(h2node):
    """200 streams asking 4 MiB each, read by nobody: streams beyond the limit are refused,
    and what the endpoint holds for the connection stays within its windows."""
    node = h2node
    r = node.run_in_pod(k("c-plain"), [SYS_PY, os.path.join(HERE, "h2raw.py"), "--to", "%s:80" % h2node.vip["g"],
                                       "flood", "--streams", "200", "--size", str(4 << 20), "--hold", "3"],
                        timeout=60)
    assert r.returncode == 0, r
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["peer_max_streams"] == 128, res
    assert res["refused"] >= 200 - 128, res
    assert metric(node, "envsteer_h2_errors_total", {"kind": "max_streams"}) == res["refused"], res
    # 3 backend sets in use: 3 upstream connection windows (2 MiB each) at most, plus one
    # stream window toward the client; measured, not assumed
    held = metric(node, "envsteer_h2_max_buffered_bytes_per_client")
    assert 0 < held <= 3 * (2 << 20) + (1 << 20), held
    harness.wait_until(lambda: metric(node, "envsteer_h2_clients") == 0, 10, what="connection closed")
    harness.wait_until(lambda: metric(node, "envsteer_h2_buffered_bytes") == 0, 10, what="buffers freed")


def test_trace_shows_each_stream(shared):
    node = shared
    tr = fixtures.Trace(node, "--json", "--count", "5", "--duration", "30", "--service", "h2/g")
    grpc_client(node, "c-plain", "%s:%d" % (shared.vip["g"], GP), "mix", "--envs=dev.proj1,-", "--calls", "4",
                "--concurrency", "1")
    evs = tr.events(40)
    streams = [e for e in evs if e["kind"] == "stream"]
    assert len(streams) == 4, evs
    by_env = {}
    for e in streams:
        by_env.setdefault(e["env_source"], []).append(e)
        assert e["pod"] == k("c-plain") and e["stream"] % 2 == 1, e
    assert {e["env_requested"] for e in by_env["request"]} == {"dev.proj1"}, streams
    assert {e["backend_pod"] for e in by_env["request"]} == {k("g-proj1")}, streams
    assert {e["backend_pod"] for e in by_env["default"]} == {k("g-dev")}, streams


def test_undeclared_port_preface_is_counted(shared):
    """HTTP/2 on a port not declared HTTP/2 of a multi-set service: not diverted; the preface
    is counted (h2_unrouted) and every stream stays on the connection's pod (the caller's)."""
    node = shared
    before = node.counters()
    r = node.run_in_pod(k("c-plain"), ["nghttp", "-n", "-s", "-H", "X-Virtual-Env: dev.proj1",
                                       "http://%s:81/" % shared.vip["u"]], timeout=30)
    assert r.returncode == 0, r
    after = node.counters()
    assert after["h2_unrouted"] - before["h2_unrouted"] == 1, (before, after)
    assert after["h2_diverted"] == before["h2_diverted"], (before, after)
    r = node.run_in_pod(k("c-plain"), ["curl", "-sS", "--http2-prior-knowledge", "-H", "X-Virtual-Env: dev.proj1",
                                       "http://%s:81/" % shared.vip["u"]], timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout)["pod"] == k("g-dev"), r  # the caller's env
    # the operator is told what to declare: status (with the count) and explain (per port)
    hints = node.status_http()["h2"]["hints"]
    assert any("not declared HTTP/2" in h and "appProtocol" in h for h in hints), hints
    ex = node.explain(k("c-plain"), k("u"))
    assert all("per connection" in f["http2"] and "appProtocol" in f["http2"] for f in ex["frontends"]), ex
    ex = node.explain(k("c-plain"), k("g"))
    assert all(f["http2"].startswith("per stream") for f in ex["frontends"]), ex
    ex = node.explain(k("c-plain"), k("one"))
    assert all("http2" not in f for f in ex["frontends"]), ex  # one backend set: nothing to route per stream


def test_shared_middle_tier_one_channel(shared):
    """A shared middle tier (mid-dev, dev) calls g over ONE long-lived channel and forwards the
    caller's metadata; 12 concurrent callers of mixed environments: each call reaches its own
    environment's g pod through it (mid has one backend set: the callers' connections to it are
    not diverted; its channel to g is)."""
    node = shared
    mm = Metrics(node)
    mid = node.vip["mid"]
    envs = ["dev.proj1", "dev.proj2", "dev", "dev.proj1.alice", "-", "dev.proj2"]
    res = grpc_client(node, "c-plain", "%s:%d" % (mid, GP), "mix", "--method", "Fwd", "--envs=" + ",".join(envs),
                      "--calls", "48", "--concurrency", "12")
    ans = res["answers"]
    assert all("error" not in a and a["tier"] == k("mid-dev") for a in ans), ans
    wrong = [a for a in ans if a["pod"] != EXPECT[a["env"]]]
    assert not wrong, wrong
    # the tier forwards what it got; an untagged call carries none, and mid-dev is labelled
    # dev: its own env is inserted (auto-inject)
    assert all(a["seen"] == ("dev" if a["env"] == "-" else a["env"]) for a in ans), ans
    assert mm.delta("envsteer_h2_connections_total", {"event": "accepted"}) == 1  # the tier's one channel
