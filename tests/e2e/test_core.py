"""Connect-time steering on one node: the semantics of DESIGN.md, observed end to end.

One node (--default-env dev) is shared by the module. Services (namespace shop):
    a  127.96.1.1:80 -> pods a-dev (dev), a-proj1 (dev.proj1), a-projab (dev.proj-ab)
    b  127.96.1.2:80 -> pods b-dev (dev)
    c  127.96.1.3:80 -> pods c-dev (dev), c-alice (dev.proj1.alice)
    d  127.96.1.4:80 -> pods d-proj1 (dev.proj1) only: no pod in the default env
    e  127.96.1.5:80 -> pod e-remote (dev), a pod on another node (no cgroup annotation)
    f  127.96.1.6:80 -> the pods of a, targetPort "http" (a named container port)
Callers (no service selects them): caller-dev, caller-proj1, caller-alice
(dev.proj1.alice), caller-nolabel (no env label -> default env dev) and caller-abc
(dev.proj-abc: unknown, falls back by segment to dev, never to dev.proj-ab).

In this issue a connection's effective environment is the calling pod's own environment (the
HTTP header context comes with the next issue), so at each hop of a chain the environment is
that of the pod making the call.
"""
import pytest

import fixtures
import harness
from harness import backend_pods, chain_hops, frontend

NS = "shop"
SVC = {"a": "127.96.1.1", "b": "127.96.1.2", "c": "127.96.1.3", "d": "127.96.1.4",
       "e": "127.96.1.5", "f": "127.96.1.6"}
PORT = 80
TARGET_PORT = 8080

BACKENDS = [  # (name, app, ip, env)
    ("a-dev", "a", "127.1.1.1", "dev"),
    ("a-proj1", "a", "127.1.1.2", "dev.proj1"),
    ("a-projab", "a", "127.1.1.3", "dev.proj-ab"),
    ("b-dev", "b", "127.1.1.11", "dev"),
    ("c-dev", "c", "127.1.1.21", "dev"),
    ("c-alice", "c", "127.1.1.22", "dev.proj1.alice"),
    ("d-proj1", "d", "127.1.1.31", "dev.proj1"),
]
CALLERS = [  # (name, ip, env or None)
    ("caller-dev", "127.1.1.101", "dev"),
    ("caller-proj1", "127.1.1.102", "dev.proj1"),
    ("caller-alice", "127.1.1.103", "dev.proj1.alice"),
    ("caller-nolabel", "127.1.1.104", None),
    ("caller-abc", "127.1.1.105", "dev.proj-abc"),
]
CALLER_ENV = {"caller-dev": "dev", "caller-proj1": "dev.proj1",
              "caller-alice": "dev.proj1.alice", "caller-nolabel": "dev",
              "caller-abc": "dev.proj-abc"}

# caller -> answering pod at each hop of caller -> a -> b -> c.
CHAIN_EXPECTED = {
    "caller-dev": ["a-dev", "b-dev", "c-dev"],
    "caller-proj1": ["a-proj1", "b-dev", "c-dev"],
    "caller-alice": ["a-proj1", "b-dev", "c-dev"],
    "caller-nolabel": ["a-dev", "b-dev", "c-dev"],
    "caller-abc": ["a-dev", "b-dev", "c-dev"],
}
# caller -> (answering pod, resolved env, outcome) for a direct call to c and to d.
DIRECT_C = {
    "caller-dev": ("c-dev", "dev", "own"),
    "caller-proj1": ("c-dev", "dev", "fallback"),
    "caller-alice": ("c-alice", "dev.proj1.alice", "own"),
    "caller-nolabel": ("c-dev", "dev", "own"),
    "caller-abc": ("c-dev", "dev", "fallback"),
}
DIRECT_D = {
    "caller-dev": None,
    "caller-proj1": "d-proj1",
    "caller-alice": "d-proj1",
    "caller-nolabel": None,
    "caller-abc": None,
}


k = fixtures.keyer(NS)


def svc_addr(s):
    return "%s:%d" % (SVC[s], PORT)


@pytest.fixture(scope="module")
def core(e2e_prerequisites):
    node = harness.Node("core", default_env="dev")
    try:
        for s, ip in SVC.items():
            if s == "f":  # same pods as a, reached through a named targetPort
                node.add_service(NS, s, ip, PORT, "http", selector={"app": "a"},
                                 protocols=("TCP",))
            else:
                node.add_service(NS, s, ip, PORT, TARGET_PORT)
        for name, app, ip, env in BACKENDS:
            node.add_pod(NS, name, ip, app=app, env=env, port=TARGET_PORT)
        node.add_pod(NS, "e-remote", "127.1.1.41", app="e", env="dev", local=False,
                     port=TARGET_PORT)
        for name, ip, env in CALLERS:
            node.add_pod(NS, name, ip, app="caller", env=env, port=TARGET_PORT)
        node.write_manifests()
        for name, *_ in BACKENDS:
            node.start_server(k(name))
        node.start_server(k("e-remote"))
        node.start_agent()
        yield node
    finally:
        node.close()


def assert_explain_agrees(node, frm, svc, observed_pod, env=None, expect_env=None,
                          outcome=None):
    ex = node.explain(frm, k(svc) + ":%d" % PORT, env=env)
    fe = frontend(ex, svc_addr(svc), "TCP")
    ctx = "explain %s -> %s: %s" % (frm, svc, ex)
    if observed_pod is None:
        assert fe.get("outcome") == "refused", ctx
        assert not fe.get("backends"), ctx
        return ex
    assert k(observed_pod) in backend_pods(fe), ctx
    if expect_env is not None:
        assert fe.get("resolved_env") == expect_env, ctx
    if outcome is not None:
        assert fe.get("outcome") == outcome, ctx
    return ex


@pytest.mark.parametrize("caller", [c[0] for c in CALLERS])
def test_chain_each_hop_answered_by_the_right_variant(core, caller):
    res = core.call_chain(k(caller), [svc_addr("a"), svc_addr("b"), svc_addr("c")])
    hops = chain_hops(res)
    observed = [h["pod"] for h in hops]
    assert observed == [k(p) for p in CHAIN_EXPECTED[caller]], res
    # getpeername() at every hop reports the service address, not the pod's
    assert [h["peername"] for h in hops] == [svc_addr("a"), svc_addr("b"), svc_addr("c")], res
    # explain (read from the live maps) agrees with what was observed, hop by hop
    froms = [k(caller)] + observed[:-1]
    for frm, svc, pod in zip(froms, "abc", CHAIN_EXPECTED[caller]):
        env_of_from = CALLER_ENV.get(frm.split("/")[1]) or core.pod_env(frm)
        exp_outcome, exp_env, exp_pods = core.expected(k(svc), env_of_from)
        assert k(pod) in exp_pods  # the table above agrees with the model
        ex = assert_explain_agrees(core, frm, svc, pod, expect_env=exp_env, outcome=exp_outcome)
        assert ex.get("env") == env_of_from, ex


@pytest.mark.parametrize("caller", [c[0] for c in CALLERS])
def test_direct_call_walks_env_chain(core, caller):
    pod, env, outcome = DIRECT_C[caller]
    r = core.request(k(caller), SVC["c"], PORT)
    assert r["ok"], r
    assert r["answer"]["pod"] == k(pod), r
    ex = assert_explain_agrees(core, k(caller), "c", pod, expect_env=env, outcome=outcome)
    assert ex["env_source"] == ("default" if caller == "caller-nolabel" else "pod-label"), ex
    if caller == "caller-alice":
        walk = frontend(ex, svc_addr("c"))["walk"]
        assert (walk[0]["env"], walk[0]["ready"]) == ("dev.proj1.alice", 1), ex


def test_unknown_env_falls_back_by_segment_not_by_prefix(core):
    # dev.proj-abc -> dev; a-projab (dev.proj-ab) is a string prefix but not a parent
    for _ in range(5):
        r = core.request(k("caller-abc"), SVC["a"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k("a-dev"), r
    ex = core.explain(k("caller-abc"), k("a"))
    fe = frontend(ex, svc_addr("a"))
    assert [w["env"] for w in fe["walk"]][:2] == ["dev.proj-abc", "dev"], ex
    assert fe["resolved_env"] == "dev" and backend_pods(fe) == [k("a-dev")], ex


@pytest.mark.parametrize("caller", [c[0] for c in CALLERS])
def test_no_ready_pod_in_chain_or_default_is_refused(core, caller):
    want = DIRECT_D[caller]
    r = core.request(k(caller), SVC["d"], PORT)
    if want is None:
        assert not r["ok"] and r["errno"] == "ECONNREFUSED", r
    else:
        assert r["ok"] and r["answer"]["pod"] == k(want), r
    assert_explain_agrees(core, k(caller), "d", want)


def test_explain_env_flag_overrides(core):
    ex = core.explain(k("caller-dev"), k("c") + ":80", env="dev.proj1.alice")
    assert ex["env"] == "dev.proj1.alice" and ex["env_source"] == "flag", ex
    fe = frontend(ex, svc_addr("c"))
    assert fe["resolved_env"] == "dev.proj1.alice", ex
    assert backend_pods(fe) == [k("c-alice")], ex
    assert {"address": "127.1.1.22:8080", "pod": k("c-alice")} in fe["backends"], ex


def test_getpeername_reports_service_address(core):
    r = core.request(k("caller-proj1"), SVC["a"], PORT)
    assert r["ok"] and r["answer"]["pod"] == k("a-proj1"), r
    assert r["peername"] == svc_addr("a"), r


def test_client_in_pod_cgroup_itself_is_steered(core):
    # every other test runs its client in a child cgroup of the pod's dir; this one in the dir
    out = core.run_in_pod(k("caller-alice"), [harness.PYTHON, harness.PODCLIENT, "--to",
                                              svc_addr("c")], child_cgroup=False)
    r = core._parse_client(out)
    assert r["ok"] and r["answer"]["pod"] == k("c-alice"), r


def test_udp_sendto_recvfrom_reports_service_address(core):
    r = core.udp(k("caller-alice"), SVC["c"], PORT)
    assert r["ok"], r
    assert r["answer"] == k("c-alice"), r
    assert r["from"] == svc_addr("c"), r
    r = core.udp(k("caller-proj1"), SVC["a"], PORT, connected=True)
    assert r["ok"] and r["answer"] == k("a-proj1"), r
    assert r["peername"] == svc_addr("a"), r


def test_remote_pod_is_a_backend(core):
    r = core.request(k("caller-alice"), SVC["e"], PORT)
    assert r["ok"] and r["answer"]["pod"] == k("e-remote"), r
    assert_explain_agrees(core, k("caller-alice"), "e", "e-remote", expect_env="dev",
                          outcome="fallback")


def test_connects_to_non_service_addresses_are_untouched(core):
    # a pod IP directly: not rewritten even though the caller's env has its own variant
    r = core.request(k("caller-proj1"), "127.1.1.1", TARGET_PORT)
    assert r["ok"] and r["answer"]["pod"] == k("a-dev"), r
    assert r["peername"] == "127.1.1.1:%d" % TARGET_PORT, r
    # a service IP on a port the service does not have: untouched, nothing listens
    r = core.request(k("caller-proj1"), SVC["a"], 81)
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r


def test_host_process_is_not_steered(core):
    # nothing listens on the ClusterIP: an unsteered connect is refused
    r = core.host_request(SVC["a"], PORT)
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r
    # a process in an unmanaged cgroup inside the node's subtree is not steered either
    d = core.make_cgroup("unmanaged")
    r = core.client_in_cgroup(d, "--to", svc_addr("a"))
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r
    # with a host server on the ClusterIP: the host reaches it, pods still get their variant
    srv = core.start_host_server("on-vip", SVC["a"], PORT)
    try:
        r = core.host_request(SVC["a"], PORT)
        assert r["ok"] and r["answer"]["pod"] == "host/on-vip", r
        r = core.client_in_cgroup(d, "--to", svc_addr("a"))
        assert r["ok"] and r["answer"]["pod"] == "host/on-vip", r
        r = core.request(k("caller-proj1"), SVC["a"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k("a-proj1"), r
    finally:
        core.stop_process(srv)


def _wait_resolved(node, frm, svc, env_wanted, pods_wanted):
    return node.wait_explain(
        frm, k(svc), lambda ex: (frontend(ex, svc_addr(svc)).get("resolved_env") == env_wanted
                                 and backend_pods(frontend(ex, svc_addr(svc))) == pods_wanted))


def test_relabel_moves_new_connections(core):
    caller = k("caller-proj1")
    r = core.request(caller, SVC["a"], PORT)
    assert r["answer"]["pod"] == k("a-proj1"), r
    try:
        core.set_env(k("a-proj1"), "dev.proj2")
        _wait_resolved(core, caller, "a", "dev", [k("a-dev")])
        for _ in range(3):
            r = core.request(caller, SVC["a"], PORT)
            assert r["ok"] and r["answer"]["pod"] == k("a-dev"), r
        # the relabelled pod is now dev.proj2's own variant
        ex = core.explain(caller, k("a"), env="dev.proj2.bob")
        fe = frontend(ex, svc_addr("a"))
        assert fe["resolved_env"] == "dev.proj2" and backend_pods(fe) == [k("a-proj1")], ex
        # relabelling a caller moves its connections too
        core.set_env(k("caller-dev"), "dev.proj1")
        _wait_resolved(core, k("caller-dev"), "d", "dev.proj1", [k("d-proj1")])
        r = core.request(k("caller-dev"), SVC["d"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k("d-proj1"), r
        core.set_env(k("caller-dev"), "dev.proj1.alice")
        _wait_resolved(core, k("caller-dev"), "c", "dev.proj1.alice", [k("c-alice")])
        r = core.request(k("caller-dev"), SVC["c"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k("c-alice"), r
    finally:
        core.set_env(k("a-proj1"), "dev.proj1", write=False)
        core.set_env(k("caller-dev"), "dev")
        _wait_resolved(core, caller, "a", "dev.proj1", [k("a-proj1")])
        _wait_resolved(core, k("caller-dev"), "c", "dev", [k("c-dev")])
    r = core.request(caller, SVC["a"], PORT)
    assert r["ok"] and r["answer"]["pod"] == k("a-proj1"), r


def test_readiness_flip_moves_new_connections(core):
    caller = k("caller-alice")
    try:
        core.set_ready(k("c-alice"), False)
        ex = _wait_resolved(core, caller, "c", "dev", [k("c-dev")])
        fe = frontend(ex, svc_addr("c"))
        assert (fe["walk"][0]["env"], fe["walk"][0]["ready"]) == ("dev.proj1.alice", 0), ex
        assert fe["outcome"] == "fallback", ex
        r = core.request(caller, SVC["c"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k("c-dev"), r
    finally:
        core.set_ready(k("c-alice"), True)
        _wait_resolved(core, caller, "c", "dev.proj1.alice", [k("c-alice")])
    r = core.request(caller, SVC["c"], PORT)
    assert r["ok"] and r["answer"]["pod"] == k("c-alice"), r


def test_no_ready_pod_anywhere_refuses_and_chain_reports_it(core):
    try:
        core.set_ready(k("b-dev"), False)
        core.wait_explain(k("caller-dev"), k("b"),
                          lambda ex: frontend(ex, svc_addr("b")).get("outcome") == "refused")
        r = core.request(k("caller-dev"), SVC["b"], PORT)
        assert not r["ok"] and r["errno"] == "ECONNREFUSED", r
        # in a chain, a-dev's own call to b is the one refused
        hops = chain_hops(core.call_chain(k("caller-dev"), [svc_addr("a"), svc_addr("b")]))
        assert hops[0]["pod"] == k("a-dev"), hops
        assert not hops[1]["ok"] and hops[1]["errno"] == "ECONNREFUSED", hops
    finally:
        core.set_ready(k("b-dev"), True)
        _wait_resolved(core, k("caller-dev"), "b", "dev", [k("b-dev")])
    r = core.request(k("caller-dev"), SVC["b"], PORT)
    assert r["ok"] and r["answer"]["pod"] == k("b-dev"), r


def test_status_and_admin_endpoints(core):
    code, _ = core.admin_get("/healthz")
    assert code == 200
    code, _ = core.admin_get("/readyz")
    assert code == 200
    st = core.status_http()
    assert isinstance(st, dict) and st, st
    r = core.status(json_out=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("{"), r.stdout


def test_named_target_port(core):
    for caller, pod in (("caller-proj1", "a-proj1"), ("caller-dev", "a-dev")):
        r = core.request(k(caller), SVC["f"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k(pod), r
        assert r["peername"] == svc_addr("f"), r
    ex = core.explain(k("caller-proj1"), k("f"))
    fe = frontend(ex, svc_addr("f"))
    assert fe["backends"] == [{"address": "127.1.1.2:%d" % TARGET_PORT, "pod": k("a-proj1")}], ex


def test_pod_added_and_removed_while_running(core):
    caller = k("caller-alice")
    r = core.request(caller, SVC["a"], PORT)
    assert r["ok"] and r["answer"]["pod"] == k("a-proj1"), r
    core.add_pod(NS, "a-alice", "127.1.1.4", app="a", env="dev.proj1.alice", port=TARGET_PORT)
    try:
        core.start_server(k("a-alice"))
        core.write_manifests()
        _wait_resolved(core, caller, "a", "dev.proj1.alice", [k("a-alice")])
        r = core.request(caller, SVC["a"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k("a-alice"), r
        # others are not affected
        r = core.request(k("caller-proj1"), SVC["a"], PORT)
        assert r["ok"] and r["answer"]["pod"] == k("a-proj1"), r
    finally:
        core.remove_pod(k("a-alice"))
    _wait_resolved(core, caller, "a", "dev.proj1", [k("a-proj1")])
    r = core.request(caller, SVC["a"], PORT)
    assert r["ok"] and r["answer"]["pod"] == k("a-proj1"), r
