"""The relay of re-routed requests (issue 14): isolated per client, bounded, non-blocking.

Node: service s (127.96.61.1:80 -> 8080) with keep-alive pods (kaserver.py) s-dev (dev) and
s-proj1 (dev.proj1); client pods c-att (the attacker), c-vic (the victim), both dev. Requests
tagged dev.proj1 on connections made to s-dev are re-routed: the first one of a connection
through the agent's relay. The attacks of the issue run against the victim, with assertions on
what the victim sees and on the bounds. The slow-server attack on a victim is in
test_relay_stress.py."""
import json
import os
import time

import fixtures
import harness

NS = "rl"
VIP = "127.96.61.1"
TO = VIP + ":80"
HERE = os.path.dirname(os.path.abspath(__file__))
KASERVER = os.path.join(HERE, "kaserver.py")
KALOAD = os.path.join(HERE, "kaload.py")
RELAYLOAD = os.path.join(HERE, "relayload.py")


k = fixtures.keyer(NS)


def build(make_node, name, extra_args=()):
    node = make_node(name, default_env="dev")
    node.add_service(NS, "s", VIP, 80, 8080)
    node.add_pod(NS, "s-dev", "127.1.61.1", app="s", env="dev")
    node.add_pod(NS, "s-proj1", "127.1.61.2", app="s", env="dev.proj1")
    node.add_pod(NS, "c-att", "127.1.61.11", app="c", env="dev")
    node.add_pod(NS, "c-vic", "127.1.61.12", app="c", env="dev")
    node.write_manifests()
    for p in ("s-dev", "s-proj1"):
        node.start_server(k(p), script=KASERVER)
    node.start_agent(list(extra_args))
    return node


def run_json(node, pod, argv, timeout=60.0):
    return fixtures.run_json(node, k(pod), argv, timeout)


def relay(node):
    return node.status_http()["per_request"]


def victim(node, n=30, errors=None):
    """n re-routed requests, a new connection each; their latencies. Errors fail the test
    unless a list is given to collect them in."""
    res = run_json(node, "c-vic", [harness.PYTHON, RELAYLOAD, "--to", TO, "--env", "dev.proj1",
                                   "--victim", str(n), "--seconds", "60"], timeout=90)
    if errors is None:
        assert res["errors"] == [], res
    else:
        errors += res["errors"]
    assert res["pods"] == ["rl/s-proj1"] * len(res["pods"]) and len(res["pods"]) + len(res["errors"]) == n, res
    return res["seconds"]


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_request_slower_than_the_idle_timeout_gets_its_response(make_node):
    """An upstream with an outstanding request is never idle: a response slower than
    --upstream-idle-ms arrives; the idle upstream is closed afterwards."""
    node = build(make_node, "slowanswer", ["--upstream-idle-ms", "1000"])
    t0 = time.monotonic()
    res = run_json(node, "c-vic", [harness.PYTHON, KALOAD, "--to", TO, "--sequence",
                                   "dev.proj1@/delay?s=3,dev.proj1", "--timeout", "10"], timeout=40)
    assert [a.get("pod") for a in res["answers"]] == ["rl/s-proj1"] * 2, res
    assert time.monotonic() - t0 >= 3.0
    assert res["connects"] == 1, res
    st = relay(node)
    assert st["client_resets"]["response_timeout"] == 0, st


def test_response_slower_than_the_response_timeout_fails_the_client(make_node):
    """A server that never answers (and never closes): the client is reset once the upstream
    has been silent for --response-timeout-ms, counted; it does not hang."""
    node = build(make_node, "resptimeout", ["--response-timeout-ms", "1500"])
    res = run_json(node, "c-vic", [harness.PYTHON, KALOAD, "--to", TO, "--sequence",
                                   "dev.proj1@/silent,dev.proj1", "--timeout", "15"], timeout=60)
    a = res["answers"]
    assert "error" in a[0] and 1.0 <= a[0]["seconds"] < 6, res
    assert a[1].get("pod") == "rl/s-proj1" and res["connects"] == 2, res
    st = relay(node)
    assert st["client_resets"]["response_timeout"] == 1, st
    assert st["clients_destroyed"] >= 1, st


def test_one_pod_cannot_take_the_relay_table(make_node):
    """A pod holding many connections, each with a re-routed request, gets its share of the
    relay; beyond it its connections are reset (counted). Another pod is still served."""
    node = build(make_node, "share", ["--relay-clients-per-pod", "4"])
    t, box = fixtures.in_background(lambda: run_json(
        node, "c-att", [harness.PYTHON, RELAYLOAD, "--to", TO, "--env", "dev.proj1", "--hold", "10",
                        "--seconds", "6"], timeout=60))
    harness.wait_until(lambda: relay(node)["client_resets"]["pod_share"] >= 6, timeout=20,
                       what="the connections beyond the pod's share reset")
    assert relay(node)["clients"] <= 4 + 1, relay(node)
    assert victim(node, 5)  # another pod: served
    t.join(60)
    assert "error" not in box, box
    assert box["result"]["answered"] == 4, box
    harness.wait_until(lambda: relay(node)["clients"] == 0, timeout=10, what="the held clients forgotten")


def test_connection_per_request_reuses_warm_upstreams(make_node):
    """One connection per re-routed request: after the first, each request takes a pooled,
    pre-connected upstream (the pool refills as they are taken); every answer from its own
    environment; a used upstream is never handed to another client; pooled upstreams close when
    unused and when their pod leaves."""
    node = build(make_node, "pool")
    secs = victim(node, 40)
    assert len(secs) == 40
    st = relay(node)
    assert st["pool_taken"] >= 30, st
    assert st["upstreams_opened"] == 40, st  # a bind per client
    assert st["connects"] >= 40, st  # a fresh upstream each
    harness.wait_until(lambda: relay(node)["upstreams_pooled"] == 0, timeout=10,
                       what="the pooled upstreams closed when unused")
    assert relay(node)["closed"]["pool_idle"] >= 1
    # a pod leaving its set takes its pooled upstreams with it
    victim(node, 3)
    assert relay(node)["upstreams_pooled"] >= 1
    node.remove_pod(k("s-proj1"))
    harness.wait_until(lambda: relay(node)["upstreams_pooled"] == 0, timeout=10,
                       what="the pooled upstreams of the removed pod closed")
