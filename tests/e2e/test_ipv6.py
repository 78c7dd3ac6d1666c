"""IPv6 services (connect6 / sendmsg6 / recvmsg6 / getpeername6).

The test makes its own network namespace (lo up, pod addresses fd00:1::N/128 on lo); pod
servers and clients run inside it and inside their cgroups. The service address
[fd00:96::1]:80 is configured nowhere (no route): only steering makes it reachable.
    a  [fd00:96::1]:80 -> a-dev (fd00:1::1, dev), a-proj1 (fd00:1::2, dev.proj1)
    callers c-dev, c-proj1, c-alice (dev.proj1.alice), c-nolabel (-> default env dev)
"""
import pytest

import fixtures
import harness
from harness import backend_pods, frontend

NS = "shop"
VIP = "fd00:96::1"
PORT = 80
TP = 8080
S = "[fd00:96::1]:80"


k = fixtures.keyer(NS)


@pytest.fixture(scope="module")
def v6(e2e_prerequisites):
    node = harness.Node("v6", default_env="dev")
    try:
        netns = node.add_netns("v6")
        pods = [("a-dev", "fd00:1::1", "a", "dev"), ("a-proj1", "fd00:1::2", "a", "dev.proj1"),
                ("c-dev", "fd00:1::11", "client", "dev"),
                ("c-proj1", "fd00:1::12", "client", "dev.proj1"),
                ("c-alice", "fd00:1::13", "client", "dev.proj1.alice"),
                ("c-nolabel", "fd00:1::14", "client", None)]
        for _, ip, _, _ in pods:
            netns.add_addr(ip + "/128")
        node.add_service(NS, "a", VIP, PORT, TP)
        for name, ip, app, env in pods:
            node.add_pod(NS, name, ip, app=app, env=env, port=TP, netns=netns)
        node.write_manifests()
        node.start_server(k("a-dev"))
        node.start_server(k("a-proj1"))
        node.start_agent()
        yield node
    finally:
        node.close()


EXPECTED = {"c-dev": ("a-dev", "dev"), "c-proj1": ("a-proj1", "dev.proj1"),
            "c-alice": ("a-proj1", "dev.proj1"), "c-nolabel": ("a-dev", "dev")}


@pytest.mark.parametrize("caller", sorted(EXPECTED))
def test_ipv6_service_steered_by_env(v6, caller):
    pod, env = EXPECTED[caller]
    r = v6.request(k(caller), VIP, PORT)
    assert r["ok"], r
    assert r["answer"]["pod"] == k(pod), r
    assert r["peername"] == S, r
    ex = v6.explain(k(caller), k("a") + ":80")
    fe = frontend(ex, S)
    assert fe["resolved_env"] == env and k(pod) in backend_pods(fe), ex
    assert {"address": "[fd00:1::%s]:8080" % ("1" if pod == "a-dev" else "2"),
            "pod": k(pod)} in fe["backends"], ex


@pytest.mark.parametrize("connected", [False, True], ids=["sendto", "connected"])
def test_ipv6_udp_reports_service_address(v6, connected):
    r = v6.udp(k("c-alice"), VIP, PORT, connected=connected)
    assert r["ok"], r
    assert r["answer"] == k("a-proj1"), r
    assert r["from"] == S, r


def test_ipv6_pod_address_untouched(v6):
    r = v6.request(k("c-proj1"), "fd00:1::1", TP)
    assert r["ok"] and r["answer"]["pod"] == k("a-dev"), r
    assert r["peername"] == "[fd00:1::1]:8080", r


def test_ipv6_relabel_moves_new_connections(v6):
    try:
        v6.set_env(k("c-dev"), "dev.proj1")
        v6.wait_explain(k("c-dev"), k("a"),
                        lambda ex: frontend(ex, S).get("resolved_env") == "dev.proj1")
        r = v6.request(k("c-dev"), VIP, PORT)
        assert r["ok"] and r["answer"]["pod"] == k("a-proj1"), r
    finally:
        v6.set_env(k("c-dev"), "dev")
        v6.wait_explain(k("c-dev"), k("a"),
                        lambda ex: frontend(ex, S).get("resolved_env") == "dev")
