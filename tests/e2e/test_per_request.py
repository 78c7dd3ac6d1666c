"""Per-request steering on pooled (keep-alive) connections: every HTTP/1.x request is routed
by its own environment, whatever pod its connection was made to.

Node: service s (127.96.60.1:80 -> 8080) with keep-alive pods (kaserver.py) s-dev (dev),
s-proj1 (dev.proj1), s-proj2 (dev.proj2); client pods c-dev (dev) and c-plain (unlabelled:
dev by --default-env). Connections from the clients are made to s-dev at connect(); requests
of dev.proj1 / dev.proj2 on them are re-routed: the first one of a connection through the
agent (slow path), later ones in the kernel over the bound upstream."""
import json
import os
import shutil
import subprocess
import time

import pytest

import fixtures
import harness

NS = "pr"
VIP = "127.96.60.1"
TO = VIP + ":80"
HERE = os.path.dirname(os.path.abspath(__file__))
KASERVER = os.path.join(HERE, "kaserver.py")
KALOAD = os.path.join(HERE, "kaload.py")

EXPECT = {"dev": "pr/s-dev", "dev.proj1": "pr/s-proj1", "dev.proj1.alice": "pr/s-proj1",
          "dev.proj2": "pr/s-proj2", "-": "pr/s-dev"}


k = fixtures.keyer(NS)


def build(make_node, name, extra_args=()):
    node = make_node(name, default_env="dev")
    fixtures.populate(node, NS, services=[("s", VIP)],
                      pods=[("s-dev", "127.1.60.1", "s", "dev"), ("s-proj1", "127.1.60.2", "s", "dev.proj1"),
                            ("s-proj2", "127.1.60.3", "s", "dev.proj2"), ("c-dev", "127.1.60.11", "c", "dev"),
                            ("c-plain", "127.1.60.12", "c", None)],
                      servers=("s-dev", "s-proj1", "s-proj2"), server_script=KASERVER)
    node.start_agent(list(extra_args))
    return node


def run_json(node, pod, argv, timeout=60.0):
    return fixtures.run_json(node, k(pod), argv, timeout)


def sequence(node, pod, envs, timeout=10.0):
    """kaload --sequence ("=": an entry may begin with "-", the untagged one)."""
    return run_json(node, pod, [harness.PYTHON, KALOAD, "--to", TO, "--sequence=" + ",".join(envs),
                                "--timeout", str(timeout)], timeout=timeout * len(envs) + 40)


def check_one_connection(res, envs):
    """kaload --sequence answers: one connection, every request answered by its env's pod with
    the app's header unchanged (an untagged one carries c-dev's own env: auto-inject)."""
    assert res["connects"] == 1, res
    assert [a["pod"] for a in res["answers"]] == [EXPECT[e] for e in envs], res
    assert [a["got_header"] for a in res["answers"]] == ["dev" if e == "-" else e for e in envs], res


def delta(before, after, *names):
    return tuple(after[n] - before[n] for n in names)


def test_python_http_client_alternating_envs_on_one_connection(make_node):
    node = build(make_node, "py")
    before = node.counters()
    envs = ["dev", "dev.proj1", "dev", "dev.proj2", "dev.proj1.alice", "-", "dev.proj1", "dev.proj2", "dev"]
    res = sequence(node, "c-dev", envs)
    check_one_connection(res, envs)
    after = node.counters()
    # 2 targets other than the connection's own: first request of each via the agent
    assert delta(before, after, "req_slow_path", "req_rerouted_kernel", "req_passed", "req_failed") == \
        (2, 3, 4, 0), (before, after)
    # each re-routed target used one upstream connection for all its requests
    proj1_conns = {a["conn"] for a in res["answers"] if a["pod"] == "pr/s-proj1"}
    assert len(proj1_conns) == 1, res
    _, m = node.admin_get("/metrics")
    assert 'envsteer_requests_total{service="pr/s:80",env="dev.proj1",path="slow"} 1' in m, m
    assert 'envsteer_requests_total{service="pr/s:80",env="dev.proj1",path="kernel"} 2' in m, m


def test_entry_hop_unlabelled_client_sends_the_header(make_node):
    node = build(make_node, "entry")
    res = sequence(node, "c-plain", ["dev.proj1", "dev.proj1", "-", "dev.proj2"])
    assert [a["pod"] for a in res["answers"]] == ["pr/s-proj1", "pr/s-proj1", "pr/s-dev", "pr/s-proj2"], res
    assert res["connects"] == 1, res


def test_curl_several_urls_on_one_connection(make_node):
    node = build(make_node, "curl")
    envs = ["dev.proj1", "dev", "dev.proj2", "dev.proj1"]
    argv = ["curl", "-sS", "--max-time", "20"]
    for i, e in enumerate(envs):
        if i:
            argv.append("--next")
        argv += ["-H", "X-Virtual-Env: " + e, "-w", "\\n%{num_connects}\\n", "http://%s/" % TO]
    r = node.run_in_pod(k("c-dev"), argv, timeout=40)
    assert r.returncode == 0, r
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    bodies = [json.loads(l) for l in lines[0::2]]
    connects = [int(l) for l in lines[1::2]]
    assert [b["pod"] for b in bodies] == [EXPECT[e] for e in envs], r.stdout
    assert connects == [1, 0, 0, 0], r.stdout  # one connection for all four


NODE_CLIENT = r"""
const http = require('http');
// one keep-alive connection, or with "fresh" a new connection per request (agent: false)
const agent = process.argv[4] === 'fresh' ? false : new http.Agent({keepAlive: true, maxSockets: 1});
const envs = process.argv[3].split(',');
const [host, port] = process.argv[2].split(':');
const out = [];
function one(i) {
  if (i >= envs.length) { if (agent) agent.destroy(); console.log(JSON.stringify(out)); return; }
  const req = http.get({host, port, path: '/', agent, headers: {'X-Virtual-Env': envs[i]}}, (res) => {
    let b = '';
    res.on('data', (d) => b += d);
    res.on('end', () => {
      const j = JSON.parse(b);
      out.push({pod: j.pod, conn: j.conn, reused: req.reusedSocket});
      setTimeout(() => one(i + 1), 20);  // the socket is back in the agent's free pool
    });
  });
  req.on('error', (e) => { out.push({error: String(e)}); one(i + 1); });
  req.setTimeout(10000, () => req.destroy(new Error('timeout')));
}
one(0);
"""

JAVA_CLIENT = r"""
import java.io.*;
import java.net.*;
public class KaClient {
  public static void main(String[] a) throws Exception {
    StringBuilder sb = new StringBuilder("[");
    String[] envs = a[1].split(",");
    for (int i = 0; i < envs.length; i++) {
      // a[2]: the path (default "/"; kaserver's /close answers with "Connection: close" and closes)
      String path = a.length > 2 ? a[2] : "/";
      HttpURLConnection c = (HttpURLConnection) new URL("http://" + a[0] + path).openConnection();
      c.setConnectTimeout(10000);
      c.setReadTimeout(10000);
      c.setRequestProperty("X-Virtual-Env", envs[i]);
      InputStream in = c.getInputStream();
      String body = new String(in.readAllBytes(), "UTF-8");
      in.close();  // fully read and closed: the connection goes back to the keep-alive cache
      if (i > 0) sb.append(",");
      sb.append(body);
    }
    System.out.println(sb.append("]"));
  }
}
"""


def test_node_default_agent_keepalive(make_node):
    node = build(make_node, "node")
    script = os.path.join(node.tmp, "client.js")
    with open(script, "w") as f:
        f.write(NODE_CLIENT)
    envs = ["dev", "dev.proj1", "dev.proj2", "dev.proj1", "dev"]
    out = run_json(node, "c-dev", [shutil.which("node") or "node", script, TO, ",".join(envs)])
    assert [o.get("pod") for o in out] == [EXPECT[e] for e in envs], out
    assert [o["reused"] for o in out] == [False, True, True, True, True], out


def test_java_httpurlconnection_keepalive(make_node):
    node = build(make_node, "java")
    src = os.path.join(node.tmp, "KaClient.java")
    with open(src, "w") as f:
        f.write(JAVA_CLIENT)
    envs = ["dev.proj1", "dev", "dev.proj2", "dev.proj1", "dev.proj1.alice"]
    out = run_json(node, "c-dev", [shutil.which("java") or "java", src, TO, ",".join(envs)], timeout=120)
    assert [o["pod"] for o in out] == [EXPECT[e] for e in envs], out
    # HttpURLConnection kept one connection: the dev pod saw a single server-side connection
    # and the proj1 upstream one
    assert len({o["conn"] for o in out if o["pod"] == "pr/s-proj1"}) == 1, out


def test_200_concurrent_keepalive_clients_random_envs(make_node):
    node = build(make_node, "load")
    before = node.counters()
    spec = {"clients": 200, "seconds": 8,
            "expect": {e: [p] for e, p in EXPECT.items()},
            "big": [1000, 300000, 3 * 1024 * 1024], "post": [10, 70000, 400000]}
    path = os.path.join(node.tmp, "load.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    st = run_json(node, "c-dev", [harness.PYTHON, KALOAD, "--to", TO, "--load", path, "--timeout", "30"],
                  timeout=150)
    assert st["requests"] >= 400, st
    assert (st["misrouted"], st["failed"]) == (0, 0), json.dumps({
        "errors": st["errors"], "client_resets": node.status_http()["per_request"].get("client_resets"),
        "counters": {k: v for k, v in node.counters().items() if v and k.startswith(("req_", "hint", "connect_h", "relay"))}})
    after = node.counters()
    assert delta(before, after, "req_failed", "rsp_dropped") == (0, 0), (before, after)
    assert after["req_rerouted_kernel"] - before["req_rerouted_kernel"] > 0, (before, after)
    # every client closed: the agent closes their upstreams
    harness.wait_until(lambda: node.status_http()["per_request"]["upstreams_active"] == 0, timeout=10,
                       what="upstreams closed after the clients")


def test_client_closes_mid_response(make_node):
    node = build(make_node, "midclose")
    prog = ("import socket,sys\n"
            "s=socket.create_connection(('%s',80),timeout=10)\n"
            "s.sendall(b'GET /big?n=20000000 HTTP/1.1\\r\\nHost: x\\r\\nX-Virtual-Env: dev.proj1\\r\\n\\r\\n')\n"
            "got=0\n"
            "while got<200000:\n"
            "    d=s.recv(65536)\n"
            "    if not d: break\n"
            "    got+=len(d)\n"
            "s.close()\nprint(got)\n" % VIP)
    r = node.run_in_pod(k("c-dev"), [harness.PYTHON, "-c", prog], timeout=30)
    assert r.returncode == 0 and int(r.stdout.strip()) >= 200000, r
    harness.wait_until(lambda: node.status_http()["per_request"]["closed"]["client_gone"] >= 1, timeout=10,
                       what="the upstream of the closed client closed")
    res = sequence(node, "c-dev", ["dev.proj1", "dev", "dev.proj1"])
    assert [a["pod"] for a in res["answers"]] == ["pr/s-proj1", "pr/s-dev", "pr/s-proj1"], res


def test_upstream_closes_and_resets(make_node):
    node = build(make_node, "upclose")
    # "Connection: close" after a complete response: the client reads it and reconnects
    res = sequence(node, "c-dev", ["dev.proj1", "dev.proj1@/close", "dev.proj1", "dev"])
    assert [a.get("pod") for a in res["answers"]] == ["pr/s-proj1"] * 3 + ["pr/s-dev"], res
    assert res["connects"] == 2, res
    # the upstream is reset mid-request: the client sees an error (not a hang) at once, and
    # its next request (new connection) works
    res = sequence(node, "c-dev", ["dev.proj1", "dev.proj1@/reset", "dev.proj1"], timeout=8)
    a = res["answers"]
    assert a[0]["pod"] == "pr/s-proj1" and "error" in a[1] and a[1]["seconds"] < 5, res
    assert a[2].get("pod") == "pr/s-proj1", res
    assert node.status_http()["per_request"]["clients_destroyed"] >= 1


def _sequence_with_waits(node, pod, entries, on_wait, timeout=10.0):
    """sequence() whose "@wait" entries (numbered here) pause the client until on_wait(i) has
    returned; bounded."""
    flags = []
    out = []
    for e in entries:
        if e == "@wait":
            flags.append(os.path.join(node.tmp, "go-%d" % len(flags)))
            out.append("@wait:" + flags[-1])
        else:
            out.append(e)
    t, box = fixtures.in_background(lambda: sequence(node, pod, out, timeout=timeout))
    for i, f in enumerate(flags):
        harness.wait_until(lambda: os.path.exists(f + ".reached") or not t.is_alive(), timeout=30,
                           what="the client at wait %d" % i)
        on_wait(i)
        open(f, "w").close()
    t.join(90)
    assert "error" not in box, box
    return box["result"]


def test_server_closes_right_after_complete_responses(make_node):
    """The server closes the upstream within a millisecond of a complete response, without
    "Connection: close" (an idle timeout, a pod going away would do so), length- or
    chunk-framed: the upstream owed the client nothing, so the client is left alone and its next
    request on the same connection binds a new upstream. Decided from the framing the kernel
    followed, not from how soon the close came after the response."""
    node = build(make_node, "closeidle")

    def closed(i):
        harness.wait_until(lambda: node.status_http()["per_request"]["upstreams_active"] == 0, timeout=10,
                           what="the closed upstream settled")
    res = _sequence_with_waits(node, "c-dev", [
        "dev.proj1", "dev.proj1@/?close=1", "@wait", "dev.proj1", "dev.proj1@/chunked",
        "dev.proj1@/chunked?close=1", "@wait", "dev.proj1", "dev"], closed)
    pods = [a.get("pod") for a in res["answers"]]
    assert pods == ["pr/s-proj1"] * 6 + ["pr/s-dev"], res
    assert res["connects"] == 1, res
    st = node.status_http()["per_request"]
    assert st["clients_destroyed"] == 0 and st["closed"]["by_server"] == 2, st
    assert st["upstreams_opened"] == 3, st


def test_server_closes_while_owing_the_client(make_node):
    """The upstream closes while it owes the client something: a request it read and never
    answered, a response cut short, a response framed by the close. The client cannot get what
    it waits for: its connection is reset at once (counted by reason), never left to hang; its
    next request (a new connection) works."""
    # the relay's resets: connections made to c-dev's own pod (a hinted one to s-proj1 would
    # carry these requests itself, and see the server's close as a direct connection does)
    node = build(make_node, "owing", ["--no-connect-hints"])
    for path, reason in (("/hang", "request_unanswered"), ("/cut?n=200000", "response_cut"),
                         ("/eof?n=5000", "until_close")):
        before = node.status_http()["per_request"]["client_resets"][reason]
        res = sequence(node, "c-dev", ["dev.proj1", "dev.proj1@" + path, "dev.proj1"], timeout=8)
        a = res["answers"]
        assert a[0].get("pod") == "pr/s-proj1", (path, res)
        assert "error" in a[1] and a[1]["seconds"] < 5, (path, res)
        assert a[2].get("pod") == "pr/s-proj1" and res["connects"] == 2, (path, res)
        after = node.status_http()["per_request"]["client_resets"][reason]
        assert after == before + 1, (path, before, after, node.agent_log_text(3000))


def test_pod_removed_while_bound(make_node):
    node = build(make_node, "podgone")
    flag = os.path.join(node.tmp, "go")
    t, box = fixtures.in_background(lambda: sequence(
        node, "c-dev", ["dev.proj1", "dev.proj1", "@wait:" + flag, "dev.proj1", "dev.proj1", "dev"]))
    # both answers are in (the client waits): the upstream owes the client nothing
    harness.wait_until(lambda: os.path.exists(flag + ".reached") or not t.is_alive(), timeout=30,
                       what="the client's first two answers")
    assert node.status_http()["per_request"]["upstreams_active"] == 1
    # a new dev.proj1 pod, the bound one removed (its server stops at once, possibly within a
    # millisecond of the last response)
    node.add_pod(NS, "s-proj1b", "127.1.60.4", app="s", env="dev.proj1")
    node.start_server(k("s-proj1b"), script=KASERVER)
    node.remove_pod(k("s-proj1"))
    node.wait_explain(k("c-dev"), k("s"), lambda e: '"pr/s-proj1"' not in json.dumps(e), env="dev.proj1")
    # the pod's server went away and the pod left the set, in either order: the upstream owed
    # nothing, so it is closed and the client is left alone
    harness.wait_until(lambda: node.status_http()["per_request"]["upstreams_active"] == 0, timeout=10,
                       what="the upstream to the removed pod closed")
    st = node.status_http()["per_request"]
    assert st["clients_destroyed"] == 0, st
    open(flag, "w").close()
    t.join(60)
    assert "error" not in box, box
    pods = [a.get("pod") for a in box["result"]["answers"]]
    assert pods[2] is not None, json.dumps({n: v for n, v in node.counters().items() if n.startswith(("req", "rsp"))})
    assert pods == ["pr/s-proj1", "pr/s-proj1", "pr/s-proj1b", "pr/s-proj1b", "pr/s-dev"], box
    assert box["result"]["connects"] == 1, box


def test_agent_restart_while_bound(make_node):
    node = build(make_node, "restart")
    flag = os.path.join(node.tmp, "go")
    t, box = fixtures.in_background(lambda: sequence(
        node, "c-dev", ["dev.proj1", "@wait:" + flag, "dev.proj1", "dev.proj1", "dev.proj2"], timeout=8))
    # the first answer is in (the client waits), its upstream still bound
    harness.wait_until(lambda: os.path.exists(flag + ".reached") or not t.is_alive(), timeout=30,
                       what="the client's first answer")
    assert node.status_http()["per_request"]["upstreams_active"] == 1
    node.kill_agent()
    node.start_agent()
    open(flag, "w").close()
    t.join(90)
    assert "error" not in box, box
    a = box["result"]["answers"]
    # the connection whose upstream died with the agent was reset by the new agent: the
    # request on it fails at once; the client reconnects and everything works again
    assert a[0]["pod"] == "pr/s-proj1", a
    assert "error" in a[1] and a[1]["seconds"] < 5, a
    assert [x.get("pod") for x in a[2:]] == ["pr/s-proj1", "pr/s-proj2"], a
    assert "reset" in node.agent_log_text(), node.agent_log_text()


PIPELINE = r"""
import json, socket, sys
def req(env):
    return ("GET / HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: %s\r\n\r\n" % env).encode()
def responses(s, n):
    f = s.makefile("rb")
    out = []
    for _ in range(n):
        line = f.readline()
        if not line:
            break
        hdrs = {}
        while True:
            h = f.readline().decode().strip()
            if not h:
                break
            k, _, v = h.partition(":")
            hdrs[k.lower()] = v.strip()
        out.append(json.loads(f.read(int(hdrs["content-length"])))["pod"])
    return out
res = {}
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.sendall(req("dev.proj1") + req("dev.proj1"))          # same target: both, in order
res["same"] = responses(s, 2)
s.close()
s = socket.create_connection((sys.argv[1], 80), timeout=5)
try:
    s.sendall(req("dev.proj1") + req("dev"))            # another target pipelined
    res["send"] = "ok"
except OSError as e:
    res["send"] = e.errno
res["mixed"] = responses(s, 1)
s.close()
print(json.dumps(res))
"""


def test_pipelined_requests_keep_their_order(make_node):
    """Pipelined requests for the same target go out in order; one for another target than
    the request before it could be answered out of order, so it is refused (EACCES on the
    send, counted) after the earlier request went out and is answered."""
    import errno
    node = build(make_node, "pipe")
    before = node.counters()
    res = run_json(node, "c-dev", [harness.PYTHON, "-c", PIPELINE, VIP])
    assert res["same"] == ["pr/s-proj1", "pr/s-proj1"], res
    assert res["send"] == errno.EACCES and res["mixed"] == ["pr/s-proj1"], res
    after = node.counters()
    assert delta(before, after, "req_pipeline_refused") == (1,), (before, after)


BURST = r"""
import errno, json, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n = 200
s.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev.proj1\r\nContent-Length: %d\r\n\r\n" % (n * 100))
sent, err = 0, None
for i in range(n):
    try:
        s.send(b"x" * 100)
        sent += 1
    except OSError as e:
        err = e.errno
        break
print(json.dumps({"sent": sent, "errno": err}))
"""


def test_slow_path_queue_is_bounded(make_node):
    """The agent is stopped (SIGSTOP) while a client streams a body to a re-routed target:
    every send is a frame queued for the agent; after --max-frames (64) the client's send
    fails with EACCES (counted) instead of queueing without end. The agent, continued,
    serves new connections normally."""
    import errno
    import signal
    node = build(make_node, "burst")
    before = node.counters()
    node.agent.send_signal(signal.SIGSTOP)
    try:
        res = run_json(node, "c-dev", [harness.PYTHON, "-c", BURST, VIP])
    finally:
        node.agent.send_signal(signal.SIGCONT)
    assert res["errno"] == errno.EACCES and 60 <= res["sent"] <= 70, res
    after = node.counters()
    assert after["req_failed"] > before["req_failed"], (before, after)
    again = sequence(node, "c-dev", ["dev.proj1", "dev", "dev.proj1"])
    assert [a["pod"] for a in again["answers"]] == ["pr/s-proj1", "pr/s-dev", "pr/s-proj1"], again


def test_trace_shows_each_requests_decision(make_node):
    node = build(make_node, "trace")
    tr = fixtures.Trace(node, "--json", "--pod", k("c-dev"), "--count", "4", "--duration", "20")
    res = sequence(node, "c-dev", ["dev.proj1", "dev.proj1", "dev"])
    assert [a["pod"] for a in res["answers"]] == ["pr/s-proj1", "pr/s-proj1", "pr/s-dev"], res
    ev = tr.events()
    assert [e["kind"] for e in ev] == ["steered", "request-slow", "request-redirect", "request-pass"], ev
    slow = ev[1]
    assert slow["service"] == k("s") and slow["env_requested"] == "dev.proj1", slow
    assert slow["env_resolved"] == "dev.proj1" and slow["pod_env"] == "dev", slow


def test_relay_cannot_be_reached_by_pods(make_node):
    """The relay socket is a connected loopback pair whose listener was closed at once: the
    agent listens on nothing but its admin endpoint, so no pod can reach or forge frames."""
    node = build(make_node, "relay")
    res = sequence(node, "c-dev", ["dev.proj1"])
    assert res["answers"][0]["pod"] == "pr/s-proj1", res
    r = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=10)
    mine = [l for l in r.stdout.splitlines() if "pid=%d," % node.agent.pid in l]
    assert len(mine) == 1 and node.admin in mine[0], r.stdout
    assert node.status_http()["per_request"]["relay_cookie"] > 0
