"""Every feature with pods in their own network namespaces, on two nodes (topology.py).

Node n1's agent runs in n1's namespace (as a systemd install or a hostNetwork pod would); node
n2's runs as the DaemonSet runs it: in a namespace of its own with a veth into n2's bridge
(hostNetwork: false), sharing no namespace with any pod, as root with exactly the capabilities
daemonset/daemonset.yaml adds (a bounding set; hostPID is this test's pid namespace). Client
cl2 on n2 runs as uid 65534 (the agent must enter a namespace of another user's process). Namespace tp, --default-env dev:

    s  198.19.0.1 / fd00:96::1 :80 -> s-dev (n1, dev), s-proj1 (n2, dev.proj1),
                                      s-proj2 (n1, dev.proj2), s-proj3 (n2, dev.proj3: ready
                                      in the manifests, but nothing listens: connects refused)
                                      keep-alive podserver.py (answers "peer": who called)
    a  198.19.0.2 -> a-dev (n1), a-proj1 (n2)       thread-context: on (entry hop)
    b  198.19.0.3 -> b-dev (n1)                     thread-context: on, forwards nothing
    c  198.19.0.4 -> c-dev (n1), c-proj1 (n2)
    p  198.19.0.5 -> p-dev (n1)                     tiers/threads_tier.py: a pooled middle tier
                                                    (keep-alive pool to c, forwards nothing),
                                                    thread-context: on
    t  198.19.0.6 -> t-evl (n1, dev)                the middle tiers in Go, Node, asyncio
    u  198.19.0.7 -> t-thr (n1, dev)                ... in Java, Python threads; thread-context:
                                                    on (test_never_wrong.py's tiers, to c)
    clients: cl (n1, unlabelled -> dev), cl-proj1 (n1, dev.proj1), cl2 (n2, dev, uid 65534),
             gone (n1, dev)

Servers see the calling pod's own address on every request, also the ones re-routed through
the agent's relay: its upstreams are opened inside the calling pod's namespace.
"""
import errno
import json
import os
import signal
import subprocess
import time

import pytest

import fixtures
import harness
import topology

NS = "tp"
k = fixtures.keyer(NS)
HERE = os.path.dirname(os.path.abspath(__file__))
THREADS_TIER = os.path.join(HERE, "tiers", "threads_tier.py")
ON = {"envsteer.io/thread-context": "on"}
S4, S6 = "198.19.0.1:80", "[fd00:96::1]:80"
A, B, C, P = "198.19.0.2:80", "198.19.0.3:80", "198.19.0.4:80", "198.19.0.5:80"


def _wait_listening(node, key, ip, port, timeout=10.0):
    pod = node.pod(key)
    code = ("import socket,sys,time\n"
            "d=time.monotonic()+%r\n"
            "while time.monotonic()<d:\n"
            "  try:\n"
            "    socket.create_connection((%r,%d),0.5).close(); sys.exit(0)\n"
            "  except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n" % (timeout, ip, port))
    r = subprocess.run(pod.netns.prefix() + [harness.PYTHON, "-c", code], timeout=timeout + 10)
    assert r.returncode == 0, "%s not listening on %s:%d" % (key, ip, port)


@pytest.fixture(scope="module")
def topo(e2e_prerequisites):
    t = topology.Topology("tp", agent_netns={2: "own"}, agent_caps={2: topology.daemonset_caps()})
    try:
        t.add_service(NS, "s", 1)
        for n in ("a", "b", "c", "p", "t", "u"):
            t.add_service(NS, n, {"a": 2, "b": 3, "c": 4, "p": 5, "t": 6, "u": 7}[n],
                          protocols=("TCP",))
        ka = ["--keepalive"]
        t.add_pod(1, NS, "s-dev", app="s", env="dev", server_args=ka)
        t.add_pod(2, NS, "s-proj1", app="s", env="dev.proj1", server_args=ka)
        t.add_pod(1, NS, "s-proj2", app="s", env="dev.proj2", server_args=ka)
        t.add_pod(2, NS, "s-proj3", app="s", env="dev.proj3")
        t.add_pod(1, NS, "a-dev", app="a", env="dev", annotations=ON)
        t.add_pod(2, NS, "a-proj1", app="a", env="dev.proj1", annotations=ON)
        t.add_pod(1, NS, "b-dev", app="b", env="dev", annotations=ON)
        t.add_pod(1, NS, "c-dev", app="c", env="dev", server_args=ka)
        t.add_pod(2, NS, "c-proj1", app="c", env="dev.proj1", server_args=ka)
        t.add_pod(1, NS, "p-dev", app="p", env="dev", annotations=ON)
        t.add_pod(1, NS, "t-evl", app="t", env="dev")
        t.add_pod(1, NS, "t-thr", app="u", env="dev", annotations=ON)
        t.add_pod(1, NS, "cl", app="client")
        t.add_pod(1, NS, "cl-proj1", app="client", env="dev.proj1")
        t.add_pod(2, NS, "cl2", app="client", env="dev", run_as=65534)
        t.add_pod(1, NS, "gone", app="client", env="dev")
        t.start(servers=[k(x) for x in ("s-dev", "s-proj1", "s-proj2", "a-dev", "a-proj1", "b-dev",
                                        "c-dev", "c-proj1")])
        n1 = t.node(1)
        pdev = n1.pod(k("p-dev"))
        n1._popen([harness.PYTHON, THREADS_TIER, pdev.ip, "8080", C, "plain", k("p-dev")],
                  pdev.cgroup_dir, "tier-p-dev.log", pdev.netns)
        _wait_listening(n1, k("p-dev"), pdev.ip, 8080)
        yield t
    finally:
        t.close()


def host(addr):
    """'1.2.3.4:5' / '[fd00::1]:5' -> the address alone."""
    return addr.rsplit(":", 1)[0].strip("[]")


def relay(node):
    return node.status_http()["per_request"]


def req(env=None, path="/", keepalive=True):
    hdrs = [("X-Virtual-Env", env)] if env else []
    return harness.http_request(path, headers=hdrs, keepalive=keepalive)


def session(t, caller, target, envs, **kw):
    """One keep-alive connection from caller, one request per env; [(pod, peer)] answered."""
    r = t.session(k(caller), target, [{"pieces": [req(e)]} for e in envs], **kw)
    return r, [(x["responses"][0]["answer"]["pod"], host(x["responses"][0]["answer"]["peer"]))
               for x in r.get("exchanges", []) if x["responses"]]


# ------------------------------------------------------------------------- connect time

@pytest.mark.parametrize("caller,target,want", [
    ("cl", S4, "s-dev"),            # within n1
    ("cl-proj1", S4, "s-proj1"),    # n1 -> n2
    ("cl2", S4, "s-dev"),           # n2 -> n1 (agent in its own namespace)
    ("cl-proj1", S6, "s-proj1"),    # IPv6, n1 -> n2
    ("cl2", S6, "s-dev"),           # IPv6, n2 -> n1
])
def test_connect_time_steering_keeps_pod_address(topo, caller, target, want):
    r = topo.request(k(caller), target)
    assert r["ok"], r
    assert r["answer"]["pod"] == k(want), r
    assert r["peername"] == target, r  # getpeername reports the service address
    v4, v6 = topo.ips(k(caller))
    assert host(r["answer"]["peer"]) == (v6 if target == S6 else v4), r


@pytest.mark.parametrize("target", [S4, S6])
@pytest.mark.parametrize("connected", [False, True], ids=["sendto", "connected"])
def test_udp_across_nodes_reports_service_address(topo, target, connected):
    r = topo.udp(k("cl-proj1"), target, connected=connected)
    assert r["ok"] and r["answer"] == k("s-proj1"), r
    assert r["from"] == target, r


def test_header_inserted_from_pod_label_across_nodes(topo):
    r = topo.request(k("cl-proj1"), S4)
    assert r["ok"] and r["answer"]["got_header"] == "dev.proj1", r
    r = topo.request(k("cl"), S4)  # unlabelled: nothing of its own to insert
    assert r["ok"] and r["answer"]["got_header"] is None, r


# ------------------------------------------------------------------------- per request, relay

@pytest.mark.parametrize("caller,target", [("cl", S4), ("cl2", S4), ("cl", S6)],
                         ids=["n1", "n2-own-netns", "n1-ipv6"])
def test_per_request_rerouting_server_sees_client_pod(topo, caller, target):
    node = topo.home(k(caller))
    before = relay(node)
    envs = ["dev", "dev.proj1", "dev.proj2", "dev.proj1", "dev.proj2", "dev"]
    r, got = session(topo, caller, target, envs)
    assert r["ok"], r
    assert [p for p, _ in got] == [k(x) for x in ("s-dev", "s-proj1", "s-proj2", "s-proj1",
                                                   "s-proj2", "s-dev")], got
    v4, v6 = topo.ips(k(caller))
    # every request, re-routed or not, first on its upstream (through the relay) or later
    # (in the kernel), reaches its server from the client pod's own address
    assert {peer for _, peer in got} == {v6 if target == S6 else v4}, got
    after = relay(node)
    assert after["upstreams_opened"] >= before["upstreams_opened"] + 2, after
    assert after["errors"]["pod_netns"] == before["errors"]["pod_netns"], after
    assert after["errors"]["connect"] == before["errors"]["connect"], after


@pytest.mark.parametrize("caller", ["cl", "cl2"], ids=["n1", "n2-own-netns"])
def test_relay_resets_client_in_its_pod_namespace(topo, caller):
    """s-proj3 refuses connects: the relay cannot get an upstream and resets the client
    connection with SOCK_DESTROY, which finds the socket only in the pod's namespace."""
    node = topo.home(k(caller))
    before = relay(node)
    t0 = time.monotonic()
    r, got = session(topo, caller, S4, ["dev", "dev.proj3"], timeout=8.0)
    took = time.monotonic() - t0
    assert got == [(k("s-dev"), topo.ips(k(caller))[0])], r
    assert not r["ok"] and r.get("errno") in ("ECONNRESET", "ECONNABORTED"), r
    after = relay(node)
    assert after["clients_destroyed"] >= before["clients_destroyed"] + 1, after
    assert after["errors"]["reset_failed"] == before["errors"]["reset_failed"], after
    assert after["client_resets"]["no_upstream"] >= before["client_resets"]["no_upstream"] + 1
    assert took < 8.0, took  # reset, not left to time out


# ------------------------------------------------------------------------- the chain

def tagged(topo, caller, target, path, env):
    r = topo.session(k(caller), target, [{"pieces": [req(env, path, keepalive=False)]}],
                     timeout=15.0)
    assert r["ok"], r
    return r["exchanges"][0]["responses"][0]["answer"]


def test_chain_across_nodes_header_context_without_forwarding(topo):
    """cl (n1) -> a, tagged dev.proj1: the connection goes to a-dev (n1) at connect, the
    request is re-routed to a-proj1 (n2); a-proj1 calls b without forwarding the header (b-dev
    on n1, the header inserted from a-proj1's thread); b-dev (whose agent parsed it on
    ingress) calls c without forwarding it: c-proj1 (n2), through a re-routed request."""
    ans = tagged(topo, "cl", A, "/call?to=%s&to=%s" % (B, C), "dev.proj1")
    assert ans["pod"] == k("a-proj1"), ans
    assert host(ans["peer"]) == topo.ips(k("cl"))[0], ans
    b = ans["next"]
    assert ans["hop"]["ok"] and b["pod"] == k("b-dev"), ans
    assert b["got_header"] == "dev.proj1", b  # inserted on n2 from a-proj1's thread
    assert host(b["peer"]) == topo.ips(k("a-proj1"))[0], b
    c = b["next"]
    assert b["hop"]["ok"] and c["pod"] == k("c-proj1"), b
    assert c["got_header"] == "dev.proj1", c
    assert host(c["peer"]) == topo.ips(k("b-dev"))[0], c  # re-routed: still b-dev's address
    assert b["hop"]["peername"] == C, b


def test_chain_across_nodes_pooled_middle_tier(topo):
    """cl -> a -> p (a keep-alive pool to c, forwards nothing) -> c, requests of several
    environments one after the other: each reaches the c pod of its environment over p's
    pooled connections, from p-dev's own address."""
    want = {"dev.proj1": "c-proj1", "dev": "c-dev", None: "c-dev"}
    pdev = topo.ips(k("p-dev"))[0]
    for env in ["dev.proj1", "dev", "dev.proj1", None, "dev.proj1"]:
        ans = tagged(topo, "cl", A, "/call?to=%s" % P, env)
        assert ans["pod"] == k("a-proj1" if env == "dev.proj1" else "a-dev"), ans
        tier = ans["next"]
        assert ans["hop"]["ok"] and tier["tier"] == k("p-dev"), ans
        assert tier["backend"] == k(want[env]), (env, tier)
        assert host(tier["backend_peer"]) == pdev, tier


# ------------------------------------------------------------------------- namespace gone

HOLD = r"""
import socket, sys, time
s = socket.create_connection(("198.19.0.1", 80), 5)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev.proj1\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(65536)
print("answered", flush=True)
time.sleep(60)
"""


def agent_fds(node):
    out = {}
    d = "/proc/%d/fd" % node.agent_pid()
    for f in os.listdir(d):
        try:
            out[f] = os.readlink(os.path.join(d, f))
        except OSError:
            pass
    return out


def gauges(node):
    st = relay(node)
    return {g: st[g] for g in ("upstreams_active", "upstreams_pooled", "upstreams_connecting",
                               "clients", "pod_netns")}


def settled(node):
    """No pool upkeep under way (other pods' bound upstreams, e.g. the pooled tier's, stay)."""
    g = gauges(node)
    return g if g["upstreams_pooled"] == 0 and g["upstreams_connecting"] == 0 else None


def test_pod_namespace_gone_while_bound_nothing_leaks(topo):
    n1 = topo.node(1)
    g0 = harness.wait_until(lambda: settled(n1), 15, 0.2, "the relay of n1 without pool upkeep")
    base = agent_fds(n1)
    pod = n1.pod(k("gone"))
    ns_ino = os.stat(pod.netns.path).st_ino
    proc = n1._popen([harness.PYTHON, "-c", HOLD], pod.cgroup_dir, "hold.log", pod.netns,
                     stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "answered", (line, n1.agent_log_text(3000))
        g = gauges(n1)
        assert g["upstreams_active"] >= g0["upstreams_active"] + 1, (g0, g)
        assert g["pod_netns"] == g0["pod_netns"] + 1, (g0, g)
        assert "net:[%d]" % ns_ino in agent_fds(n1).values()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        n1.procs.remove(proc)
    pod.netns.close()  # the pod is gone: its processes, then its namespace

    def sockets(fds):
        return {v for v in fds.values() if v.startswith("socket:")}

    def released():
        now = agent_fds(n1)
        # no handle of the namespace, no socket that was not there before (upstreams, pooled
        # ones, sock_diag sockets in that namespace)
        pidfds = [v for v in now.values() if "pidfd" in v]
        g = settled(n1)
        return (g and all(g[x] <= g0[x] for x in g) and "net:[%d]" % ns_ino not in now.values()
                and sockets(now) <= sockets(base)
                and len(pidfds) <= len([v for v in base.values() if "pidfd" in v]))

    harness.wait_until(released, 15, 0.2, "the agent of n1 holds nothing of the gone pod")
    st = relay(n1)
    assert st["errors"]["pod_netns"] == 0, st


# ------------------------------------------------------------------------- agent restart

HOLD_UNTIL_RESET = r"""
import errno, socket, sys
s = socket.create_connection(("198.19.0.1", 80), 5)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev.proj1\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(65536)
head, _, body = buf.partition(b"\r\n\r\n")
n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
while len(body) < n:
    body += s.recv(65536)
print("answered", flush=True)
s.settimeout(30)
try:
    print("data" if s.recv(1) else "eof", flush=True)
except socket.timeout:
    print("timeout", flush=True)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)), flush=True)
"""


def test_agent_restart_resets_bound_clients_in_pod_namespace(topo):
    """An agent restarted after a crash resets the client connections whose upstreams died
    with the old one (else they would wait for ever): on n2, whose agent lives in a namespace of its own, for
    a client of another user."""
    n2 = topo.node(2)
    pod = n2.pod(k("cl2"))
    d = n2._client_cgroup(pod)
    proc = n2._popen([harness.PYTHON, "-c", HOLD_UNTIL_RESET], d, "hold-restart.log", pod.netns,
                     stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "answered", n2.agent_log_text(3000)
        n2.kill_agent()  # a crash: its upstreams die with it, its bindings stay pinned
        n2.start_agent()
        out, _ = proc.communicate(timeout=40)
        assert out.strip() in ("ECONNABORTED", "ECONNRESET"), out
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        n2.procs.remove(proc)
        n2._rmdir_cgroup(d)
    st = relay(n2)
    assert st["clients_destroyed"] >= 1 and st["errors"]["reset_failed"] == 0, st
    # and the restarted agent steers and re-routes as before
    r, got = session(topo, "cl2", S4, ["dev", "dev.proj1"])
    assert r["ok"] and [p for p, _ in got] == [k("s-dev"), k("s-proj1")], r
    assert {peer for _, peer in got} == {topo.ips(k("cl2"))[0]}, got


# ------------------------------------------------------------------------- without the privileges

def test_without_sys_ptrace_the_relay_falls_back_and_counts(e2e_prerequisites):
    """An agent that cannot enter a pod's namespace (here: no CAP_SYS_PTRACE, and a pod of
    another user) still routes every request right; its upstreams then come from its own
    namespace, and it says so (errors.pod_netns, a log line)."""
    caps = [c for c in topology.daemonset_caps() if c != "SYS_PTRACE"]
    t = topology.Topology("tq", nodes=1, agent_netns={1: "own"}, agent_caps={1: caps})
    try:
        t.add_service(NS, "s", 1)
        t.add_pod(1, NS, "s-dev", app="s", env="dev", server_args=["--keepalive"])
        t.add_pod(1, NS, "s-proj1", app="s", env="dev.proj1", server_args=["--keepalive"])
        t.add_pod(1, NS, "c", app="client", env="dev", run_as=65534)
        t.start(servers=[k("s-dev"), k("s-proj1")])
        r, got = session(t, "c", S4, ["dev", "dev.proj1"])
        assert r["ok"] and [p for p, _ in got] == [k("s-dev"), k("s-proj1")], r
        assert got[0][1] == t.ips(k("c"))[0], got  # connect time: the pod's own address
        assert got[1][1] != t.ips(k("c"))[0], got  # the relay's: not the pod's
        n = t.node(1)
        assert relay(n)["errors"]["pod_netns"] >= 1
        log = n.agent_log_text()
        assert "degraded: per-request steering: without CAP_SYS_PTRACE the relay" in log, log[:3000]
        assert "network namespace of client" in log, log[:3000]
    finally:
        t.close()


GRPCSERVER = os.path.join(HERE, "grpcserver.py")
GRPCCLIENT = os.path.join(HERE, "grpcclient.py")
SYS_PY = "/usr/bin/python3"  # Debian's python3-grpcio


def test_h2_streams_from_a_pod_namespace(e2e_prerequisites):
    """HTTP/2 per stream with pods in their own namespaces: one gRPC channel from an unlabelled
    pod to a declared gRPC port, calls of dev, dev.proj1 and untagged mixed on it; every call is
    answered by its own environment's pod, and every server sees the calling pod's own address
    (the agent's endpoint opens its upstreams inside the caller's namespace)."""
    topo = topology.Topology("h2tp", nodes=1, default_env="dev")
    try:
        topo.add_service("h2tp", "g", 1, protocols=(), extra_ports=[
            {"name": "grpc", "port": 50051, "target_port": 50051, "protocol": "TCP"}])
        pods = {"g-dev": topo.add_pod(1, "h2tp", "g-dev", app="g", env="dev"),
                "g-proj1": topo.add_pod(1, "h2tp", "g-proj1", app="g", env="dev.proj1")}
        cl = topo.add_pod(1, "h2tp", "cl", app="cl")
        topo.write()
        node = topo.node(1)
        for name, pod in pods.items():
            ip = pod.ips[0]
            node._popen([SYS_PY, GRPCSERVER, ip, "50051", pod.key], pod.cgroup_dir, "srv-%s.log" % name, pod.netns)
            _wait_listening(node, cl.key, ip, 50051)
        node.start_agent(["--h2-listen", topology.GW_V4 % 1 + ":15002"])
        r = node.run_in_pod(cl.key, [SYS_PY, GRPCCLIENT, "--to", "198.19.0.1:50051", "mix",
                                     "--envs", "dev,dev.proj1,-", "--calls", "24", "--concurrency", "6"],
                            timeout=90)
        assert r.returncode == 0 and r.stdout.strip(), (r.returncode, r.stdout, node.agent_log_text(3000))
        calls = json.loads(r.stdout.strip().splitlines()[-1])["answers"]
        want = {"dev": pods["g-dev"].key, "dev.proj1": pods["g-proj1"].key, "-": pods["g-dev"].key}
        assert len(calls) == 24 and all("error" not in c for c in calls), calls
        assert all(c["pod"] == want[c["env"]] and c["exact"] for c in calls), calls
        assert all(c["peer"].startswith("ipv4:%s:" % cl.ips[0]) for c in calls), calls
        h2 = node.status_http()["h2"]
        assert h2["counters"]["errors_total.pod_netns"] == 0, h2
        assert h2["counters"]["connections_total.accepted"] >= 1, h2
    finally:
        topo.close()


# ------------------------------------------------------------------------- explain, trace

def test_explain_and_trace_name_pods_of_other_namespaces_and_nodes(topo):
    """explain and trace on n1 for a caller in its own namespace: the walk resolves to the pod
    on n2 (its address in n2's range), the traced decisions name the calling pod and the
    backend pod, and a re-routed request's decision too."""
    n1 = topo.node(1)
    ex = n1.explain(k("cl-proj1"), k("s") + ":80")
    fe = harness.frontend(ex, S4)
    assert fe["resolved_env"] == "dev.proj1", ex
    assert fe["backends"] == [{"address": topo.ips(k("s-proj1"))[0] + ":8080",
                               "pod": k("s-proj1")}], ex
    tr = fixtures.Trace(n1, "--json", "--pod", k("cl-proj1"), "--count", "3", "--duration", "20")
    r, got = session(topo, "cl-proj1", S4, ["dev.proj1", "dev.proj2"])
    assert r["ok"] and [p for p, _ in got] == [k("s-proj1"), k("s-proj2")], r
    ev = tr.events()
    conn = [e for e in ev if not e["kind"].startswith("request-")]
    assert len(conn) == 1, ev
    c = conn[0]
    assert c["kind"] == "steered" and c["pod"] == k("cl-proj1") and c["service"] == k("s"), c
    assert c["backend"] == topo.ips(k("s-proj1"))[0] + ":8080", c
    assert c["backend_pod"] == k("s-proj1") and c["env_source"] == "pod", c
    reqs = [e["kind"] for e in ev if e["kind"].startswith("request-")]
    assert reqs[0] == "request-pass" and reqs[1] in ("request-slow", "request-redirect"), ev


# ------------------------------------------------------------------------- a real client

def test_curl_keepalive_rerouted_per_request_from_a_pod(topo):
    """curl with several URLs on one connection (--next, its connection cache), each with
    another env: one connect, every request answered by its own env's pod (within n1 and
    across to n2), every server sees the curl pod's own address."""
    envs = ["dev", "dev.proj1", "dev.proj2", "dev.proj1", "dev"]
    argv = ["curl", "-sS", "--max-time", "10"]
    for i, env in enumerate(envs):
        if i:
            argv.append("--next")
        argv += ["-H", "X-Virtual-Env: " + env, "-w", "\\n@ %{num_connects}\\n",
                 "http://%s/" % S4]
    r = topo.home(k("cl")).run_in_pod(k("cl"), argv, timeout=60)
    assert r.returncode == 0, r
    answers = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    connects = [l.split()[1] for l in r.stdout.splitlines() if l.startswith("@ ")]
    assert connects == ["1", "0", "0", "0", "0"], r.stdout
    want = {"dev": "s-dev", "dev.proj1": "s-proj1", "dev.proj2": "s-proj2"}
    assert [a["pod"] for a in answers] == [k(want[e]) for e in envs], answers
    assert {host(a["peer"]) for a in answers} == {topo.ips(k("cl"))[0]}, answers


# ------------------------------------------------------------------------- real runtimes

# The middle tiers of test_never_wrong.py (Go net/http, Node http, aiohttp, a Java thread
# pool, Python threads with a shared keep-alive pool) in pods of their own namespaces on n1,
# calling c (c-dev on n1, c-proj1 on n2) with their runtime's pooled keep-alive client; the
# load comes from cl2 on n2 (12 keep-alive clients, random envs). The event-loop tiers forward
# the header (so their pooled connections carry every env: re-routed per request), the
# thread-per-request ones do not (the thread context carries it). Every answer must be the
# env's own pod: none wrong, none fallen back, none failed.
from test_never_wrong import LOAD, runtimes  # noqa: E402,F401  (the tiers, built once)

TIER_CASES = [("go", "fwd", "t-evl", "198.19.0.6"), ("node", "fwd", "t-evl", "198.19.0.6"),
              ("aio", "fwd", "t-evl", "198.19.0.6"), ("java", "plain", "t-thr", "198.19.0.7"),
              ("threads", "plain", "t-thr", "198.19.0.7")]


@pytest.mark.parametrize("tier,mode,pod,svc", TIER_CASES, ids=[c[0] + "-" + c[1] for c in TIER_CASES])
def test_real_runtime_middle_tier_across_nodes(topo, runtimes, tier, mode, pod, svc):
    n1, n2 = topo.node(1), topo.home(k("cl2"))
    p = n1.pod(k(pod))
    proc = n1._popen(runtimes[tier] + [p.ip, "8080", C, mode, k(pod)], p.cgroup_dir,
                     "tier-%s.log" % tier, p.netns)
    try:
        _wait_listening(n1, k(pod), p.ip, 8080, timeout=30)
        res = fixtures.run_json(n2, k("cl2"), [harness.PYTHON, LOAD, "--to", svc + ":80",
                                               "--clients", "12", "--seconds", "2.5",
                                               "--max-requests", "20000", "--timeout", "10"],
                                timeout=70)
    finally:
        n1.stop_process(proc)
    # [env, tier, backend, header the tier got, header the backend got, count]
    count = {"correct": 0, "other": 0}
    for env, tpod, backend, _, _, n in res["answers"]:
        right = n2.expected(k("c"), "dev" if env == "-" else env)[2]
        count["correct" if tpod == k(pod) and backend in right else "other"] += n
    msg = "%s/%s: %s\n%s" % (tier, mode, count, json.dumps(res)[:4000])
    assert res["requests"] >= 20 and res["unfinished"] == 0, msg
    assert res["failed"] == 0 and count == {"correct": res["requests"], "other": 0}, msg
