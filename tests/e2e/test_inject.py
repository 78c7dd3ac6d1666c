"""Header insertion from the pod's own environment (auto-inject, on by default), and the counting of
requests whose environment resolves elsewhere than their (pooled) connection.

Node: service s (127.96.23.1:80) with pods s-dev (dev) and s-proj1 (dev.proj1), keep-alive
servers; client pods c-proj1 (dev.proj1) and c-dev (dev). Clients are not serving any
request, so their threads have no request environment."""
import pytest

import fixtures
import harness
from harness import http_request

NS = "inj"
VIP = "127.96.23.1"


k = fixtures.keyer(NS)


def build(make_node, name, extra_args=()):
    node = make_node(name, default_env="dev")
    fixtures.populate(node, NS, services=[("s", VIP)],
                      pods=[("s-dev", "127.1.23.1", "s", "dev"), ("s-proj1", "127.1.23.2", "s", "dev.proj1"),
                            ("c-proj1", "127.1.23.11", "c", "dev.proj1"), ("c-dev", "127.1.23.12", "c", "dev")],
                      servers=("s-dev", "s-proj1"), server_args=["--keepalive"])
    node.start_agent(list(extra_args))
    return node


def answers(res):
    assert res.get("ok"), res
    return [r["answer"] for ex in res["exchanges"] for r in ex["responses"]]


# The insertion and the tx counters are the header programs' (request context, 6.3+):
# skipped, with the agent's reason, where its probe says absent (see conftest.py).
REQUEST_CONTEXT = pytest.mark.kernel_feature("request_context")


@pytest.mark.parametrize("args,auto", [
    pytest.param([], True, marks=REQUEST_CONTEXT),
    pytest.param(["--auto-inject"], True, marks=REQUEST_CONTEXT),
    (["--no-auto-inject"], False),
], ids=["default-on", "flag-on", "flag-off"])
def test_auto_inject_inserts_the_pods_own_env(make_node, args, auto):
    """auto-inject is on by default: a labelled pod's request carries its own env unless it
    carries one already; --auto-inject is still accepted, --no-auto-inject switches it off."""
    node = build(make_node, "inj-" + "-".join(a.strip("-") for a in args) if args else "inj-default",
                 args)
    res = node.session(k("c-proj1"), VIP, [{"pieces": [http_request("/")]}], port=80)
    (ans,) = answers(res)
    assert ans["pod"] == k("s-proj1"), ans  # connect-time by the pod's env either way
    if auto:
        assert ans["got_header"] == "dev.proj1", ans
        assert ans["head"].startswith("GET / HTTP/1.1\r\nX-Virtual-Env: dev.proj1\r\nHost:"), ans
    else:
        assert ans["got_header"] is None, ans
    st = node.status_http()
    assert st["settings"]["auto_inject"] is auto, st["settings"]
    # a header the application sent is never changed
    res = node.session(k("c-proj1"), VIP, [{"pieces": [
        http_request("/", headers=[("X-Virtual-Env", "dev")])]}], port=80)
    (ans,) = answers(res)
    assert ans["got_header"] == "dev", ans


@REQUEST_CONTEXT
def test_unlabelled_pod_inserts_nothing(make_node):
    """A pod without the env label has no env of its own to insert (the default env is a
    fallback, not knowledge): its request leaves exactly as sent, and still lands on the
    default env's pod."""
    node = make_node("inj-unlab", default_env="dev")
    node.add_service(NS, "s", VIP, 80, 8080)
    node.add_pod(NS, "s-dev", "127.1.23.1", app="s", env="dev")
    node.add_pod(NS, "s-proj1", "127.1.23.2", app="s", env="dev.proj1")
    node.add_pod(NS, "c-none", "127.1.23.13", app="c")
    node.write_manifests()
    for p in ("s-dev", "s-proj1"):
        node.start_server(k(p), args=["--keepalive"])
    node.start_agent([])
    res = node.session(k("c-none"), VIP, [{"pieces": [http_request("/")]}], port=80)
    (ans,) = answers(res)
    assert ans["pod"] == k("s-dev"), ans
    assert ans["got_header"] is None, ans
    assert ans["head"].startswith("GET / HTTP/1.1\r\nHost:"), ans


@REQUEST_CONTEXT
def test_pooled_connection_routes_each_request_by_its_env(make_node):
    node = build(make_node, "mismatch")
    before = node.counters()
    # c-dev's keep-alive connection is routed to s-dev at connect(); then requests of
    # dev.proj1 (resolves to s-proj1: re-routed), dev (its own connection), dev.proj1.zed
    # (falls back to dev.proj1: re-routed, now in the kernel over the bound upstream)
    res = node.session(k("c-dev"), VIP, [
        {"pieces": [http_request("/", headers=[("X-Virtual-Env", "dev.proj1")])]},
        {"pieces": [http_request("/", headers=[("X-Virtual-Env", "dev")])]},
        {"pieces": [http_request("/", headers=[("X-Virtual-Env", "dev.proj1.zed")])]},
    ], port=80)
    got = answers(res)
    assert [a["pod"] for a in got] == [k("s-proj1"), k("s-dev"), k("s-proj1")], got
    after = node.counters()

    def d(name):
        return after[name] - before[name]
    assert d("tx_env_mismatch") == 2, (before, after)
    assert d("tx_has_header") == 3, (before, after)
    assert (d("req_slow_path"), d("req_rerouted_kernel"), d("req_passed")) == (1, 1, 1), (before, after)
    assert d("req_failed") == 0, (before, after)
