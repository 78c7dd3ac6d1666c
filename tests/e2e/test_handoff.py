"""Parse once per hop (issue 17): a request that a pod's sk_msg program parsed and passed on
its connection to another pod of the node is not parsed again on arrival - its sender hands its
environment and length to the receiver (maps/abi.h es_ho_slot, map es_hocache), which skips its bytes.

The hand-off must change nothing a parse would give. Every case runs on two nodes with the
same pods: "ho" (hand-off on, the default) and "hoff" (--no-handoff, every request parsed on
arrival), and the answers must be the same on both - and the expected ones.

Each node: services m (-> m-dev, thread-context on, keep-alive, forwards NO header: its call
to s carries the request's env only through the thread context) and s (-> s-dev, s-proj1,
s-proj2); a client pod c (unlabelled) sends tagged requests to m's service address. A request
lands on s-<its env> only if m's thread knew its env, which on "ho" it learns from the hand-off.
"""
import json
import subprocess

import pytest

import fixtures
import harness
from harness import http_request as req

REQUEST_CONTEXT = pytest.mark.kernel_feature("request_context")
pytestmark = REQUEST_CONTEXT

NS = "ho"
PORT = 80
TP = 8080
ON = {"envsteer.io/thread-context": "on"}
k = fixtures.keyer(NS)


def make_node(name, net, agent_args, m_annotations=ON, m_args=("--keepalive",)):
    node = harness.Node(name, default_env="dev")
    try:
        fixtures.populate(
            node, NS,
            services=[("m", "127.96.%d.1" % net, {"port": PORT, "target_port": TP, "protocols": ("TCP",)}),
                      ("s", "127.96.%d.2" % net, {"port": PORT, "target_port": TP, "protocols": ("TCP",)})],
            pods=[("m-dev", "127.1.%d.1" % net, "m", "dev", {"annotations": m_annotations}),
                  ("s-dev", "127.1.%d.11" % net, "s", "dev"),
                  ("s-proj1", "127.1.%d.12" % net, "s", "dev.proj1"),
                  ("s-proj2", "127.1.%d.13" % net, "s", "dev.proj2"),
                  ("c", "127.1.%d.100" % net, "c", None)],
            servers=("s-dev", "s-proj1", "s-proj2"), port=TP)
        node.start_server(k("m-dev"), args=list(m_args))
        node.start_agent(agent_args)
    except Exception:
        node.close()
        raise
    node.net = net
    return node


@pytest.fixture(scope="module")
def nodes(e2e_prerequisites):
    on = make_node("ho", 53, [])
    try:
        off = make_node("hoff", 54, ["--no-handoff"])
    except Exception:
        on.close()
        raise
    try:
        yield on, off
    finally:
        off.close()
        on.close()


def m_vip(node):
    return "127.96.%d.1:%d" % (node.net, PORT)


def call(node, env, body=b"", chunked=False, close=False, extra=()):
    """One request to m that makes m call s (untagged: m's thread context decides)."""
    hdrs = list(extra)
    if env is not None:
        hdrs.append(("X-Virtual-Env", env))
    path = "/call?to=127.96.%d.2:%d" % (node.net, PORT)
    if chunked:
        hdrs.append(("Transfer-Encoding", "chunked"))
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:3], body[3:]) if c) + b"0\r\n\r\n"
        return req(path, hdrs, keepalive=not close) + chunks
    return req(path, hdrs, body=body, keepalive=not close)


def landed_s(answer):
    hop = answer.get("hop") or {}
    assert hop.get("ok"), "m's call failed: %s" % answer
    return answer["next"]["pod"].split("/")[-1]


def session(node, exchanges, gap=0.05):
    """exchanges: [(pieces, responses)] on one connection from pod c; the s pod of each answer."""
    r = node.session(k("c"), m_vip(node), [{"pieces": p, "responses": n} for p, n in exchanges], gap=gap)
    assert r["ok"], "session failed: %s\n%s" % (r, node.agent_log_text(3000))
    return [landed_s(x["answer"]) for ex in r["exchanges"] for x in ex["responses"]]


class Nonzero(dict):
    """Counter deltas that print only what moved."""

    def __repr__(self):
        return repr({c: v for c, v in self.items() if v})


def both(nodes, build):
    """Runs build(node) -> exchanges on both nodes; returns (answers on, answers off, counter
    deltas on, deltas off)."""
    out = []
    for node in nodes:
        before = node.counters()
        got = session(node, build(node))
        after = node.counters()
        out.append((got, {c: after[c] - before.get(c, 0) for c in after}))
    (a_on, d_on), (a_off, d_off) = out
    d_on, d_off = Nonzero(d_on), Nonzero(d_off)
    assert a_on == a_off, "the hand-off changed where requests land: %s vs %s (parsed)" % (a_on, a_off)
    assert d_off["handoff_sent"] == 0 and d_off["handoff_taken"] == 0, d_off
    return a_on, d_on


WANT = {"dev.proj1": "s-proj1", "dev.proj2": "s-proj2", "dev.proj1.alice": "s-proj1", "dev": "s-dev",
        None: "s-dev"}


def test_keepalive_requests_handed_off_each_to_its_env(nodes):
    envs = ["dev.proj1", "dev.proj2", None, "dev.proj1.alice", "dev", "dev.proj2", "dev.proj1"]
    got, d = both(nodes, lambda n: [([call(n, e)], 1) for e in envs])
    assert got == [WANT[e] for e in envs]
    # every request: whole GETs from the first byte of a send, no body
    assert d["handoff_sent"] == len(envs), d
    assert d["handoff_taken"] == len(envs), d
    assert d["handoff_mismatch"] == 0, d


def test_bodies_by_content_length_are_skipped_whole(nodes):
    """Bodies framed by Content-Length, sent with their head and in pieces: the receiver skips
    head and body, and the request after the body is its own."""
    body = b"b" * 3000

    def build(n):
        r1 = call(n, "dev.proj2", body=body)
        r2 = call(n, "dev.proj1", body=b"x" * 10)
        cut = len(r2) - 7  # the head, then its body in a later send
        return [([r1], 1), ([r2[:cut], r2[cut:]], 1), ([call(n, None)], 1), ([call(n, "dev.proj2")], 1)]
    got, d = both(nodes, build)
    assert got == ["s-proj2", "s-proj1", "s-dev", "s-proj2"]
    assert d["handoff_taken"] == 4 and d["handoff_mismatch"] == 0, d


def test_chunked_body_is_parsed_and_the_next_handed_off(nodes):
    got, d = both(nodes, lambda n: [([call(n, "dev.proj1")], 1), ([call(n, "dev.proj2", body=b"abcdefgh", chunked=True)], 1),
                                    ([call(n, "dev.proj1")], 1)])
    assert got == ["s-proj1", "s-proj2", "s-proj1"]
    # the chunked one: its end is not known from its head, so it is parsed on arrival
    assert d["handoff_sent"] == 2 and d["handoff_taken"] == 2, d


def test_first_request_chunked_then_handed_off(nodes):
    """No record for the connection's first request (its end is not known from its head): it
    is parsed on arrival, and the receiver goes on looking at the next boundaries."""
    got, d = both(nodes, lambda n: [([call(n, "dev.proj2", body=b"abcdefgh", chunked=True)], 1)]
                  + [([call(n, e)], 1) for e in ("dev.proj1", "dev.proj2", None)])
    assert got == ["s-proj2", "s-proj1", "s-proj2", "s-dev"]
    assert d["handoff_sent"] == 3 and d["handoff_taken"] == 3, d


def test_head_in_several_sends_is_parsed(nodes):
    """A head not in one send from its first byte is not handed off (the sender notes only a
    request that begins a message); it is parsed on arrival, and right."""
    def build(n):
        r = call(n, "dev.proj2")
        return [([call(n, "dev.proj1")], 1), ([r[:20], r[20:]], 1), ([call(n, "dev.proj1")], 1)]
    got, d = both(nodes, build)
    assert got == ["s-proj1", "s-proj2", "s-proj1"]
    assert d["handoff_taken"] >= 2 and d["handoff_mismatch"] == 0, d


def test_pipelined_requests_same_as_parsed(nodes):
    """Two requests in one send: a read that spans both gives no context (the pod's own env,
    dev), with or without the hand-off."""
    got, d = both(nodes, lambda n: [([call(n, "dev.proj1")], 1),
                                    ([call(n, "dev.proj2") + call(n, "dev.proj1")], 2)])
    assert got[0] == "s-proj1"
    assert all(p in ("s-dev", "s-proj2", "s-proj1") for p in got), got
    assert d["handoff_mismatch"] == 0, d


def test_one_connection_per_request(nodes):
    for env in ("dev.proj1", "dev.proj2", None):
        got, d = both(nodes, lambda n: [([call(n, env, close=True)], 1)])
        assert got == [WANT[env]]
        assert d["handoff_taken"] == 1, d


def test_host_process_sends_nothing_to_hand_off(nodes):
    """A request from outside any pod (no sk_msg): parsed on arrival as before."""
    on, _ = nodes
    before = on.counters()
    r = on.session(None, "127.1.%d.1:%d" % (on.net, TP), [{"pieces": [call(on, "dev.proj2")], "responses": 1}])
    assert r["ok"], r
    assert landed_s(r["exchanges"][0]["responses"][0]["answer"]) == "s-proj2"
    after = on.counters()
    assert after["handoff_taken"] == before["handoff_taken"]


def test_curl_keepalive_through_the_hand_off(nodes):
    """curl, several URLs on one connection, from pod c."""
    for node in nodes:
        before = node.counters()
        # one curl per env, two URLs each on one keep-alive connection (--next)
        got = []
        for env in ("dev.proj1", "dev.proj2"):
            url = "http://%s/call?to=127.96.%d.2:%d" % (m_vip(node), node.net, PORT)
            r = node.run_in_pod(k("c"), ["curl", "-sS", "--max-time", "10", "-H", "X-Virtual-Env: " + env,
                                         url, "--next", "-sS", "--max-time", "10", "-H",
                                         "X-Virtual-Env: " + env, url])
            assert r.returncode == 0, (r.stdout, node.agent_log_text(2000))
            got.append([landed_s(a) for a in harness.json_documents(r.stdout)])
        assert got == [["s-proj1", "s-proj1"], ["s-proj2", "s-proj2"]]
        taken = node.counters()["handoff_taken"] - before["handoff_taken"]
        assert taken == (4 if node is nodes[0] else 0), taken


def test_handoff_cache_is_bounded(nodes):
    """The bound (law 2): records wait in es_hocache, a per-CPU array of 16 slots (nothing to
    allocate, nothing a pod can grow; a record overwritten before it is taken costs its receiver
    one parse). (That each record is taken once is in the exact counts above: taken == sent.)"""
    on, _ = nodes
    got = session(on, [([call(on, e)], 1) for e in ("dev.proj1", "dev.proj2", "dev.proj1")])
    assert got == ["s-proj1", "s-proj2", "s-proj1"]
    maps = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                                     timeout=30, check=True).stdout)
    mine = [m for m in maps if m.get("name") == "es_hocache"]  # one per running agent
    assert mine and all((m["type"], m["max_entries"]) == ("percpu_array", 16) for m in mine), mine


def test_no_pod_with_the_thread_context_no_records(e2e_prerequisites):
    """Cheap where unused (law 3): on a node where no pod has the thread context nobody parses
    requests on arrival, so senders write no records (es_config ES_CFG_F_LOCAL_CTX); m's calls
    then go by its own environment (dev), with or without a tag."""
    node = make_node("honoctx", 55, [], m_annotations={})
    try:
        before = node.counters()
        got = session(node, [([call(node, e)], 1) for e in ("dev.proj1", "dev.proj2", None)])
        assert got == ["s-dev", "s-dev", "s-dev"]
        d = Nonzero({c: v - before.get(c, 0) for c, v in node.counters().items()})
        assert d["tx_request"] >= 3 and d["handoff_sent"] == 0 and d["handoff_taken"] == 0, d
    finally:
        node.close()


def test_receivers_without_the_thread_context_get_no_records(nodes):
    """Cheap where unused (law 3): on a node where a pod has the thread context, a request to
    a pod that does not (s's, straight from c) carries no record: only receivers that parse on
    arrival are handed the parse (es_backend ES_BE_F_LOCAL_CTX, copied at connect), so no
    sender pays for a record nobody takes, and none pushes taken ones out of the cache."""
    for node in nodes:
        envs = ["dev", "dev.proj1", None, "dev.proj2", "dev"]  # three out on their connection to s-dev
        before = node.counters()
        got = []
        for e in envs:  # s's servers close after each answer: a connection per request
            r = node.session(k("c"), "127.96.%d.2:%d" % (node.net, PORT),
                             [{"pieces": [req("/", [("X-Virtual-Env", e)] if e else [])], "responses": 1}])
            assert r["ok"], "session failed: %s\n%s" % (r, node.agent_log_text(3000))
            got += [x["answer"]["pod"].split("/")[-1] for ex in r["exchanges"] for x in ex["responses"]]
        assert got == [WANT[e] for e in envs], got
        d = Nonzero({c: v - before.get(c, 0) for c, v in node.counters().items()})
        assert d["tx_request"] >= len(envs) and d["handoff_sent"] == 0 and d["handoff_taken"] == 0, d


def test_ipv6_requests_handed_off(e2e_prerequisites):
    """IPv6 pods (a network namespace of the test's own, fd00:1:56::/64): the hand-off's key
    (request.h es_ho_addr) is built from IPv6 addresses on both sides."""
    node = harness.Node("ho6", default_env="dev")
    try:
        netns = node.add_netns("ho6")
        pods = [("m-dev", "fd00:1:56::1", "m", "dev", ON), ("s-dev", "fd00:1:56::11", "s", "dev", {}),
                ("s-proj1", "fd00:1:56::12", "s", "dev.proj1", {}),
                ("s-proj2", "fd00:1:56::13", "s", "dev.proj2", {}), ("c", "fd00:1:56::100", "c", None, {})]
        for _, ip, _, _, _ in pods:
            netns.add_addr(ip + "/128")
        node.add_service(NS, "m", "fd00:96:56::1", PORT, TP, protocols=("TCP",))
        node.add_service(NS, "s", "fd00:96:56::2", PORT, TP, protocols=("TCP",))
        for name, ip, app, env, ann in pods:
            kw = {"annotations": ann} if ann else {}
            if env:
                kw["env"] = env
            node.add_pod(NS, name, ip, app=app, port=TP, netns=netns, **kw)
        node.write_manifests()
        for name in ("s-dev", "s-proj1", "s-proj2"):
            node.start_server(k(name))
        node.start_server(k("m-dev"), args=["--keepalive"])
        node.start_agent()
        envs = ["dev.proj1", "dev.proj2", None, "dev.proj1"]
        path = "/call?to=[fd00:96:56::2]:%d" % PORT
        reqs = [req(path, [("X-Virtual-Env", e)] if e else []) for e in envs]
        before = node.counters()
        r = node.session(k("c"), "[fd00:96:56::1]:%d" % PORT, [{"pieces": [q], "responses": 1} for q in reqs])
        assert r["ok"], "session failed: %s\n%s" % (r, node.agent_log_text(3000))
        got = [landed_s(x["answer"]) for ex in r["exchanges"] for x in ex["responses"]]
        assert got == [WANT[e] for e in envs]
        d = Nonzero({c: v - before.get(c, 0) for c, v in node.counters().items()})
        assert d["handoff_sent"] == len(envs) and d["handoff_taken"] == len(envs), d
    finally:
        node.close()


def test_ipv4_mapped_sockets_handed_off(e2e_prerequisites):
    """IPv4 on AF_INET6 sockets (::ffff:a.b.c.d: a JVM's default, client and server): the
    sender's sk_msg sees IPv6 addresses where the receiver's ingress sees an IPv4 packet, and a
    dual-stack server's ingress an AF_INET6 socket; the hand-off's key (request.h es_ho_addr)
    takes IPv4-mapped addresses as IPv4, so the records meet. Each request still lands on its
    env's pod (m's thread learns it from the record), and every record is taken."""
    node = make_node("homap", 57, [], m_args=("--keepalive", "--v4-mapped"))
    try:
        envs = ["dev.proj1", "dev.proj2", None, "dev.proj1.alice"]
        for target in ("[::ffff:127.96.57.1]:%d" % PORT, m_vip(node)):  # mapped, then plain client
            before = node.counters()
            r = node.session(k("c"), target, [{"pieces": [call(node, e)], "responses": 1} for e in envs])
            assert r["ok"], "session to %s failed: %s\n%s" % (target, r, node.agent_log_text(3000))
            got = [landed_s(x["answer"]) for ex in r["exchanges"] for x in ex["responses"]]
            assert got == [WANT[e] for e in envs], target
            d = Nonzero({c: v - before.get(c, 0) for c, v in node.counters().items()})
            # every request of c was taken by m from its record; m's calls to s (some on
            # connections a hint made to s-proj1) write none: s's pods do not have the thread
            # context (es_backend ES_BE_F_LOCAL_CTX)
            assert d["handoff_taken"] == len(envs) and d["handoff_sent"] == len(envs), (target, d)
    finally:
        node.close()
